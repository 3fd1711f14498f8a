//! virtio-blk (device type 2): disks backed by raw image files.

pub mod config;
pub mod device;
pub mod disk;

pub use config::{BlockConfig, BlockConfigError, BLOCK_ID_LEN};
pub use device::{Block, BlockError, BlockStats, Completion};
pub use disk::{DiskError, DiskImage};
