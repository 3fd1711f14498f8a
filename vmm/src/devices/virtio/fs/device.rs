//! virtio-fs (device type 26) with a vhost-user backend: the device's own work is the
//! configuration space, the hand-over of the rings to the backend at DRIVER_OK, the
//! forwarding of the backend's completions as interrupts, and noticing the backend's death.
//!
//! The rings change hands on the event loop, not in `activate` (a vCPU thread inside an
//! MMIO exit), so the vCPU threads never talk to another process. A backend that refuses the
//! rings or goes away ends the VM with the reason: the guest's filesystem requests would
//! otherwise wait for ever, and what went wrong would be lost in a hung container.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, info, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::config::{FsConfig, CONFIG_SPACE_LEN};
use super::vhost_user::{Backend, BackendError};
use crate::devices::virtio::device::check_activation;
use crate::devices::virtio::{
    ActivateError, ActivationEvent, EventRegistry, InterruptKind, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};
use crate::vstate::stop::{StopHandle, VmExit};

/// The high-priority queue (FUSE_INTERRUPT, FORGET) and one request queue.
pub const NUM_QUEUES: usize = 2;
/// As large as vhost-user backends accept (VIRTQUEUE_MAX_SIZE), so that a 1 MiB read fits
/// one chain even without indirect descriptors.
pub const QUEUE_SIZE: u16 = 1024;

/// Ring features the backend implements itself; the device passes them through.
const BACKEND_RING_FEATURES: u64 =
    (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

const TOKEN_ACTIVATION: u32 = 0;
const TOKEN_BACKEND: u32 = 1;
const TOKEN_CALL: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the vhost-user backend does not implement virtio 1.0 (VIRTIO_F_VERSION_1)")]
    NotVersion1,
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// What the driver handed over at DRIVER_OK, waiting for the event loop.
struct Rings {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    acked_features: u64,
}

enum State {
    /// Before DRIVER_OK, or after a reset the backend has carried out.
    Idle,
    /// `activate` ran; the event loop gives the rings to the backend.
    Starting(Rings),
    /// The backend serves the rings. The kick eventfds stay open as long as it may use them.
    Running {
        interrupt: Arc<dyn VirtioInterrupt>,
        _kicks: Vec<EventFd>,
    },
    /// `reset` ran; the event loop tells the backend to stop.
    Stopping,
    /// The backend failed; the VM is being stopped.
    Failed,
}

pub struct Fs {
    config: FsConfig,
    config_space: [u8; CONFIG_SPACE_LEN],
    queue_max_sizes: [u16; NUM_QUEUES],
    avail_features: u64,
    backend: Backend,
    calls: Vec<EventFd>,
    activation: ActivationEvent,
    registry: EventRegistry,
    state: State,
    stop: StopHandle,
}

impl Fs {
    /// Connects to the backend listening on `config.socket`.
    pub fn new(config: &FsConfig, stop: StopHandle) -> Result<Self, FsError> {
        let backend = Backend::connect(&config.socket, NUM_QUEUES)?;
        let offered = backend.device_features();
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::NotVersion1);
        }
        let calls = (0..NUM_QUEUES)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(FsError::EventFd)?;
        Ok(Self {
            config_space: config.config_space(),
            config: config.clone(),
            queue_max_sizes: [QUEUE_SIZE; NUM_QUEUES],
            avail_features: VIRTIO_F_VERSION_1 | (offered & BACKEND_RING_FEATURES),
            backend,
            calls,
            activation: ActivationEvent::new().map_err(FsError::EventFd)?,
            registry: EventRegistry::default(),
            state: State::Idle,
            stop,
        })
    }

    pub fn tag(&self) -> &str {
        &self.config.tag
    }

    /// Ends the VM: without its backend the guest's filesystem cannot answer.
    fn fail(&mut self, message: String) {
        error!("virtio-fs {}: {message}", self.config.tag);
        self.state = State::Failed;
        self.stop.request(VmExit::DeviceFailed {
            device: format!("virtio-fs {}", self.config.tag),
            message,
        });
    }

    /// On the event loop: carries out what `activate` or `reset` recorded.
    fn sync_backend(&mut self) {
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Starting(rings) => {
                match self.backend.start(
                    &rings.mem,
                    &rings.queues,
                    &rings.kicks,
                    &self.calls,
                    rings.acked_features,
                ) {
                    Ok(()) => {
                        info!("virtio-fs {}: backend serves the rings", self.config.tag);
                        self.state = State::Running {
                            interrupt: rings.interrupt,
                            _kicks: rings.kicks,
                        };
                    }
                    Err(e) => self.fail(format!("the backend did not take the rings: {e}")),
                }
            }
            State::Stopping => match self.backend.stop() {
                Ok(()) => self.state = State::Idle,
                Err(e) => self.fail(format!("the backend did not stop on reset: {e}")),
            },
            other => self.state = other,
        }
    }

    fn forward_completion(&mut self, queue: usize) {
        let Some(call) = self.calls.get(queue) else {
            return;
        };
        let _ = call.read();
        if let State::Running { interrupt, .. } = &self.state {
            if let Err(e) = interrupt.trigger(InterruptKind::Queue) {
                error!(
                    "virtio-fs {}: cannot raise the queue interrupt: {e}",
                    self.config.tag
                );
            }
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.config_space.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn!(
            "virtio-fs {}: config write at {offset:#x} ignored (the configuration is read-only)",
            self.config.tag
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        if !matches!(self.state, State::Idle) {
            return Err(ActivateError::AlreadyActive);
        }
        check_activation(&self.queue_max_sizes, &mem, &queues, &queue_evts)?;
        self.state = State::Starting(Rings {
            mem,
            interrupt,
            queues,
            kicks: queue_evts,
            acked_features,
        });
        self.activation.notify().map_err(ActivateError::Signal)
    }

    fn is_activated(&self) -> bool {
        matches!(self.state, State::Starting(_) | State::Running { .. })
    }

    fn reset(&mut self) -> bool {
        match self.state {
            // The rings never reached the backend.
            State::Starting(_) => self.state = State::Idle,
            State::Running { .. } => {
                self.state = State::Stopping;
                if let Err(e) = self.activation.notify() {
                    error!(
                        "virtio-fs {}: cannot signal reset to the event loop: {e}",
                        self.config.tag
                    );
                }
            }
            State::Idle | State::Stopping | State::Failed => {}
        }
        true
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        // Registered for the device's lifetime: the backend may die, and complete, at any time.
        let mut result = self.activation.register(ops, TOKEN_ACTIVATION);
        let hang_up = EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP;
        result = result.and_then(|()| {
            self.registry
                .add(ops, &self.backend, TOKEN_BACKEND, hang_up)
        });
        for (index, call) in self.calls.iter().enumerate() {
            let token = TOKEN_CALL + index as u32;
            result = result.and_then(|()| self.registry.add(ops, call, token, EventSet::IN));
        }
        if let Err(e) = result {
            self.fail(format!("cannot join the device event loop: {e}"));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATION => {
                self.activation.consume();
                self.sync_backend();
            }
            TOKEN_BACKEND => {
                // Level-triggered: left registered, a dead socket would wake the loop for ever.
                self.registry.remove(ops, self.backend.as_raw_fd());
                self.fail(
                    "the vhost-user backend closed its socket (virtiofsd exited or was killed)"
                        .into(),
                );
            }
            token if (TOKEN_CALL..TOKEN_CALL + NUM_QUEUES as u32).contains(&token) => {
                self.forward_completion((token - TOKEN_CALL) as usize);
            }
            other => warn!(
                "virtio-fs {}: unexpected event token {other}",
                self.config.tag
            ),
        }
    }
}
