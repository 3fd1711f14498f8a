//! Local images: a store of unpacked root filesystems with their run configuration, import of
//! OCI image layouts and `docker save` archives, the built-in busybox image, and the disk
//! images (rootfs ext4, agent initramfs) that vm isolation boots from.

pub mod busybox;
pub mod disk;
pub mod import;
pub mod layer;
pub mod store;
pub mod tree_hash;

pub use store::{ImageConfig, ImageStore};
