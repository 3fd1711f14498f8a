//! virtio-fs (device type 26): a host directory shared with the guest, served by a
//! vhost-user backend process (virtiofsd) that reads and writes guest memory itself.
//!
//! - [`config`]: the tag and socket, and the device's configuration space.
//! - [`vhost_user`]: the frontend side of the vhost-user session with the backend.
//! - [`device`]: the virtio device: ring hand-over, interrupts, backend failure.

pub mod config;
pub mod device;
pub mod vhost_user;

pub use config::{FsConfig, FsConfigError};
pub use device::{Fs, FsError};

#[cfg(test)]
mod tests;
