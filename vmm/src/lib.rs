//! The sandbox microVM monitor.
//!
//! One process per sandbox: guest memory, one thread per vCPU, one event-loop thread for
//! devices, and a seccomp filter on each of them.

pub mod devices;
