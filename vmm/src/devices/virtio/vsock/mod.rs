//! virtio-vsock (device type 19) with the host side on unix sockets, no AF_VSOCK on the host.
//!
//! - [`packet`]: the wire header and moving packets in and out of descriptor chains.
//! - [`connection`]: one stream, its state machine and credit accounting.
//! - [`muxer`]: the unix listener, the per-port sockets and the routing between them.
//! - [`device`]: the virtio device and its event-loop glue.

pub mod config;
pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;

pub use config::{VsockConfig, VsockConfigError};
pub use device::{Vsock, VsockError, VsockStats};

#[cfg(test)]
mod tests;
