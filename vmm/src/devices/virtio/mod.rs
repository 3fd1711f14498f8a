//! Virtio devices and the virtio-mmio transport.
//!
//! - [`device`]: the [`VirtioDevice`] contract between transport and device, the interrupt
//!   abstraction, and how devices get their events on the device event-loop thread.
//! - [`chain`]: validation of the descriptor chains a guest hands over.
//! - [`block`]: virtio-blk on raw image files.
//! - [`event_loop`]: the device event-loop thread that serves all devices.
//! - [`fs`]: virtio-fs, a host directory served by a vhost-user backend (virtiofsd).
//! - [`mmio`]: the virtio-mmio (version 2) transport, a bus device in front of each device.
//! - [`rng`]: virtio-rng fed by getrandom(2).
//! - [`test_utils`]: the driver's side of a virtqueue in plain guest memory, for device tests
//!   and benchmarks.

pub mod block;
pub mod chain;
pub mod device;
pub mod event_loop;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
#[doc(hidden)]
pub mod test_utils;
pub mod vsock;

pub use device::{
    ActivateError, ActivationEvent, DeviceError, EventRegistry, InterruptKind, IrqTrigger,
    VirtioDevice, VirtioInterrupt,
};

/// Feature bit every device offers: only modern (virtio 1.x) drivers are accepted.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
