//! virtio-net (device type 1): a NIC whose frames go to a TAP interface on the host.

pub mod backend;
pub mod config;
pub mod datapath;
pub mod device;
pub mod tap;
#[cfg(test)]
pub(crate) mod testing;

pub use backend::{MemoryBackend, NetBackend};
pub use config::{MacAddr, NetConfig, NetConfigError};
pub use datapath::{NetEngine, NetStats};
pub use device::Net;
pub use tap::{Tap, TapError};
