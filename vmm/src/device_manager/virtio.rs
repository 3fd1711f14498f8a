//! Puts virtio devices into a VM being built: each gets a virtio-mmio transport in the next
//! MMIO slot (announced on the kernel command line), an irqfd for its interrupt line, one
//! ioeventfd per queue on QueueNotify (datamatch = queue index), and a place on the device
//! event loop.

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use log::info;

use super::{DeviceManagerError, MmioDeviceManager, MmioSlot};
use crate::config::VmConfig;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::event_loop::{DeviceEventLoop, EventLoopError, EventLoopHandle};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::mmio::{MmioError, MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::device::NetError;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::VirtioDevice;
use crate::vstate::memory::GuestMemory;
use crate::vstate::stop::{StopHandle, VmExit};
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("disk {index} ({path}): {source}")]
    Disk {
        index: usize,
        path: String,
        #[source]
        source: BlockError,
    },
    #[error("NIC {index} (TAP {tap}): {source}")]
    Net {
        index: usize,
        tap: String,
        #[source]
        source: NetError,
    },
    #[error("vsock ({path}): {source}")]
    Vsock {
        path: String,
        #[source]
        source: VsockError,
    },
    #[error("virtio-fs {index} (tag {tag}): {source}")]
    Fs {
        index: usize,
        tag: String,
        #[source]
        source: FsError,
    },
    #[error("virtio-rng: cannot create its eventfd: {0}")]
    Rng(#[source] std::io::Error),
    #[error("{device}: virtio-mmio transport: {source}")]
    Transport {
        device: String,
        #[source]
        source: MmioError,
    },
    #[error("{device}: {source}")]
    Slot {
        device: String,
        #[source]
        source: DeviceManagerError,
    },
    #[error("{device}: {source}")]
    Kvm {
        device: String,
        #[source]
        source: VmError,
    },
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
}

/// A device that has been placed in the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedDevice {
    pub name: String,
    pub slot: MmioSlot,
}

/// What placing a virtio device needs of the VM being built.
pub struct VmParts<'a> {
    pub mmio: &'a mut MmioDeviceManager,
    pub vm: &'a Vm,
    pub memory: &'a GuestMemory,
    /// Device backends hold this to end the VM on a fatal error.
    pub stop: &'a StopHandle,
}

/// The virtio devices of one VM and the event loop that will serve them.
pub struct VirtioDevices {
    event_loop: DeviceEventLoop,
    attached: Vec<AttachedDevice>,
}

impl VirtioDevices {
    pub fn new() -> Result<Self, AttachError> {
        Ok(Self {
            event_loop: DeviceEventLoop::new()?,
            attached: Vec::new(),
        })
    }

    pub fn attached(&self) -> &[AttachedDevice] {
        &self.attached
    }

    /// Attaches every device `config` asks for, in a fixed order (disks, NICs, vsock, shared
    /// directories, then the entropy device) so that a guest sees the same layout for the same configuration.
    pub fn attach_configured(
        &mut self,
        parts: &mut VmParts<'_>,
        config: &VmConfig,
    ) -> Result<(), AttachError> {
        for (index, disk) in config.disks.iter().enumerate() {
            let block = Block::from_config(disk).map_err(|source| AttachError::Disk {
                index,
                path: disk.path.display().to_string(),
                source,
            })?;
            self.attach(parts, &format!("virtio-blk{index}"), block)?;
        }
        for (index, nic) in config.nets.iter().enumerate() {
            let net = Net::from_config(nic).map_err(|source| AttachError::Net {
                index,
                tap: nic.tap.clone(),
                source,
            })?;
            self.attach(parts, &format!("virtio-net{index}"), net)?;
        }
        if let Some(vsock_config) = &config.vsock {
            let vsock = Vsock::new(vsock_config).map_err(|source| AttachError::Vsock {
                path: vsock_config.path.display().to_string(),
                source,
            })?;
            self.attach(parts, "virtio-vsock", vsock)?;
        }
        for (index, fs_config) in config.fs.iter().enumerate() {
            let fs = Fs::new(fs_config, parts.stop.clone()).map_err(|source| AttachError::Fs {
                index,
                tag: fs_config.tag.clone(),
                source,
            })?;
            self.attach(parts, &format!("virtio-fs{index}"), fs)?;
        }
        if config.rng {
            let rng = Rng::new().map_err(AttachError::Rng)?;
            self.attach(parts, "virtio-rng", rng)?;
        }
        Ok(())
    }

    /// Places one device in the VM; see the module comment.
    pub fn attach<D>(
        &mut self,
        parts: &mut VmParts<'_>,
        name: &str,
        device: D,
    ) -> Result<MmioSlot, AttachError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let device = Arc::new(Mutex::new(device));
        let transport =
            MmioTransport::new(parts.memory.clone(), device.clone()).map_err(|source| {
                AttachError::Transport {
                    device: name.to_string(),
                    source,
                }
            })?;
        let transport = Arc::new(Mutex::new(transport));
        let slot = parts
            .mmio
            .place(transport.clone())
            .map_err(|source| AttachError::Slot {
                device: name.to_string(),
                source,
            })?;
        let kvm_err = |source| AttachError::Kvm {
            device: name.to_string(),
            source,
        };
        {
            let t = transport.lock().unwrap_or_else(|e| e.into_inner());
            parts
                .vm
                .register_irqfd(t.interrupt().irq_evt(), slot.irq)
                .map_err(kvm_err)?;
            for (index, evt) in t.queue_evts().iter().enumerate() {
                parts
                    .vm
                    .register_mmio_ioevent_datamatch(
                        evt,
                        slot.addr + QUEUE_NOTIFY_OFFSET,
                        index as u32,
                    )
                    .map_err(kvm_err)?;
            }
        }
        self.event_loop.add(device);
        info!(
            "{name} at {:#x} irq {} ({})",
            slot.addr,
            slot.irq,
            slot.cmdline_param()
        );
        self.attached.push(AttachedDevice {
            name: name.to_string(),
            slot,
        });
        Ok(slot)
    }

    /// Starts the device event-loop thread. `setup` runs on it first (its seccomp filter);
    /// if the loop fails later, the VM is stopped with the reason.
    pub fn start<F>(self, setup: F, stop: StopHandle) -> Result<EventLoopHandle, AttachError>
    where
        F: FnOnce() -> Result<(), String> + Send + 'static,
    {
        Ok(self.event_loop.spawn(setup, move |error| {
            stop.request(VmExit::DeviceFailed {
                device: "device event loop".into(),
                message: error.to_string(),
            })
        })?)
    }
}
