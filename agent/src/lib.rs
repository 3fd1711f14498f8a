//! The sandbox agent: PID 1 in the guest and the container engine, in the guest and natively.

pub mod confined;
pub mod engine;
pub mod init;
pub mod protocol;
pub mod server;
