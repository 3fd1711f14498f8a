//! The contract between a virtio transport and a virtio device.
//!
//! The transport (virtio-mmio here) owns everything the driver configures through registers:
//! feature negotiation, queue addresses, the device status. When the driver sets DRIVER_OK
//! the transport hands the device its queues through [`VirtioDevice::activate`].
//!
//! Devices do their work on the single device event-loop thread. Each device is also an
//! `event_manager::MutEventSubscriber`; it owns an [`ActivationEvent`] that it registers in
//! `init`. `activate` and `reset` run on a vCPU thread (inside an MMIO exit), so they only
//! record the new state and signal the activation event; the event loop then wakes the
//! device, which registers (or, after a reset, removes) its queue eventfds and backend fds
//! through `EventOps`. [`EventRegistry`] keeps the book of what a device has registered.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

/// Why the guest is being interrupted; maps onto the interrupt status register bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// A used ring was updated.
    Queue,
    /// The device configuration space changed.
    Config,
}

impl InterruptKind {
    pub fn status_bit(self) -> u32 {
        match self {
            InterruptKind::Queue => VIRTIO_MMIO_INT_VRING,
            InterruptKind::Config => VIRTIO_MMIO_INT_CONFIG,
        }
    }
}

/// Raises an interrupt in the guest on behalf of a device. Mocked in tests.
pub trait VirtioInterrupt: Send + Sync {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()>;
}

/// The real interrupt path: sets the bit in the interrupt status register that the transport
/// exposes, then writes the irqfd that KVM routes to the device's GSI.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    irq_evt: EventFd,
}

impl IrqTrigger {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            irq_evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The eventfd to register with KVM as the irqfd for the device's GSI.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq_evt
    }

    /// Value of the InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK register write: clears the given bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset: no interrupt stays pending.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for IrqTrigger {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        self.status.fetch_or(kind.status_bit(), Ordering::SeqCst);
        self.irq_evt.write(1)
    }
}

/// Why a device refused to activate. The transport then sets DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device expects {expected} queues, the transport gave {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("device expects one eventfd per queue ({expected}), the transport gave {got}")]
    EventCount { expected: usize, got: usize },
    #[error("queue {0} is not ready or does not fit in guest memory")]
    InvalidQueue(usize),
    #[error("device is already active")]
    AlreadyActive,
    #[error("cannot signal the device event loop: {0}")]
    Signal(#[source] io::Error),
    #[error("device backend failed to start: {0}")]
    Backend(String),
}

/// Errors a device hits while processing its queues on the event loop. None of them may stop
/// the loop: the device logs them and, where the guest broke the protocol, stops using the
/// queue until the driver resets it.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("guest memory access at {addr:#x}+{len:#x} failed: {source}")]
    GuestMemory {
        addr: u64,
        len: usize,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("virtio queue: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error("cannot raise the guest interrupt: {0}")]
    Interrupt(#[source] io::Error),
    #[error("backend I/O failed: {0}")]
    Backend(#[source] io::Error),
    #[error("event loop registration failed: {0}")]
    EventLoop(String),
}

/// A virtio device as seen by its transport.
///
/// Implementations must also be `event_manager::MutEventSubscriber` so that the event loop
/// can drive them; see the module comment for the activation protocol.
pub trait VirtioDevice: Send {
    /// Virtio device ID (`virtio_bindings::virtio_ids::VIRTIO_ID_*`).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits offered to the driver, including transport bits such as VERSION_1.
    fn avail_features(&self) -> u64;

    /// Reads from the device configuration space. Reads beyond it return zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes to the device configuration space. Writes to read-only fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device with the queues the driver set up. `queue_evts[i]` is signalled when
    /// the driver notifies queue `i` (an ioeventfd; the device gets its own dup of it).
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
        acked_features: u64,
    ) -> Result<(), ActivateError>;

    /// Whether `activate` succeeded and no reset happened since.
    fn is_activated(&self) -> bool;

    /// Driver reset: the device drops its queues and guest memory and stops raising
    /// interrupts. Returns false if the device cannot be reset, in which case the transport
    /// reports DEVICE_NEEDS_RESET rather than pretending the reset happened.
    fn reset(&mut self) -> bool;
}

/// The eventfd through which `activate`/`reset` (vCPU thread) wake the device on the event
/// loop so it can change its registrations there.
#[derive(Debug)]
pub struct ActivationEvent(EventFd);

impl ActivationEvent {
    pub fn new() -> io::Result<Self> {
        Ok(Self(EventFd::new(EFD_NONBLOCK)?))
    }

    pub fn notify(&self) -> io::Result<()> {
        self.0.write(1)
    }

    /// Drains the counter; a spurious wake-up (nothing pending) is harmless.
    pub fn consume(&self) {
        let _ = self.0.read();
    }

    /// Registers the activation event in the device's `init`.
    pub fn register(&self, ops: &mut EventOps, token: u32) -> Result<(), DeviceError> {
        ops.add(Events::with_data(&self.0, token, EventSet::IN))
            .map_err(|e| DeviceError::EventLoop(e.to_string()))
    }
}

impl AsRawFd for ActivationEvent {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The fds a device has added to the event loop since its last activation.
///
/// An fd must be removed from epoll before it is closed: epoll keys registrations by open
/// file description, and a queue eventfd is a dup of the transport's ioeventfd, so closing
/// only the dup would leave a registration that can no longer be deleted. `reset` (vCPU
/// thread) therefore hands the queue eventfds of the old activation to
/// [`EventRegistry::retire`], which keeps them open until [`EventRegistry::remove_all`] ran
/// on the event loop.
#[derive(Debug, Default)]
pub struct EventRegistry {
    fds: Vec<RawFd>,
    retired: Vec<EventFd>,
}

impl EventRegistry {
    pub fn add(
        &mut self,
        ops: &mut EventOps,
        fd: &impl AsRawFd,
        token: u32,
        set: EventSet,
    ) -> Result<(), DeviceError> {
        ops.add(Events::with_data(fd, token, set))
            .map_err(|e| DeviceError::EventLoop(e.to_string()))?;
        self.fds.push(fd.as_raw_fd());
        Ok(())
    }

    /// Changes the event set of an fd registered earlier (for flow control).
    pub fn modify(
        &self,
        ops: &mut EventOps,
        fd: &impl AsRawFd,
        token: u32,
        set: EventSet,
    ) -> Result<(), DeviceError> {
        ops.modify(Events::with_data(fd, token, set))
            .map_err(|e| DeviceError::EventLoop(e.to_string()))
    }

    /// Removes one fd registered earlier.
    pub fn remove(&mut self, ops: &mut EventOps, fd: RawFd) {
        if let Some(pos) = self.fds.iter().position(|&f| f == fd) {
            self.fds.swap_remove(pos);
            let _ = ops.remove(Events::empty_raw(fd));
        }
    }

    /// Keeps eventfds of a previous activation open until the next `remove_all`.
    pub fn retire(&mut self, evts: impl IntoIterator<Item = EventFd>) {
        self.retired.extend(evts);
    }

    /// Removes every registered fd, then closes the retired eventfds.
    pub fn remove_all(&mut self, ops: &mut EventOps) {
        for fd in self.fds.drain(..) {
            // The fd may already be gone from epoll if the backend hung up; nothing to do.
            let _ = ops.remove(Events::empty_raw(fd));
        }
        self.retired.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// On a single-queue device's activation event: drops the registrations (and retired
    /// eventfds) of the previous activation, then registers the queue eventfd of `active` for
    /// `token`. Returns whether a queue is now registered, in which case the device should
    /// serve the requests made available before the registration.
    pub fn sync_queue(
        &mut self,
        ops: &mut EventOps,
        active: Option<&ActiveQueue>,
        token: u32,
    ) -> Result<bool, DeviceError> {
        self.remove_all(ops);
        let Some(active) = active else {
            return Ok(false);
        };
        self.add(ops, &active.queue_evt, token, EventSet::IN)?;
        Ok(true)
    }
}

/// Checks the queues a transport passes to `activate` against what the device declared.
pub fn check_activation(
    max_sizes: &[u16],
    mem: &GuestMemoryMmap,
    queues: &[Queue],
    queue_evts: &[EventFd],
) -> Result<(), ActivateError> {
    use virtio_queue::QueueT;
    if queues.len() != max_sizes.len() {
        return Err(ActivateError::QueueCount {
            expected: max_sizes.len(),
            got: queues.len(),
        });
    }
    if queue_evts.len() != queues.len() {
        return Err(ActivateError::EventCount {
            expected: queues.len(),
            got: queue_evts.len(),
        });
    }
    for (i, q) in queues.iter().enumerate() {
        if !q.is_valid(mem) {
            return Err(ActivateError::InvalidQueue(i));
        }
    }
    Ok(())
}

/// What a device with a single queue (virtio-blk, virtio-rng) holds between `activate` and
/// `reset`.
pub struct ActiveQueue {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queue: Queue,
    pub queue_evt: EventFd,
}

impl ActiveQueue {
    /// Takes the one queue from what the transport passed to `activate`, after
    /// [`check_activation`] against `max_sizes`.
    pub fn new(
        max_sizes: &[u16],
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        mut queue_evts: Vec<EventFd>,
    ) -> Result<Self, ActivateError> {
        check_activation(max_sizes, &mem, &queues, &queue_evts)?;
        let queue = queues.into_iter().next().ok_or(ActivateError::QueueCount {
            expected: 1,
            got: 0,
        })?;
        let queue_evt = queue_evts.pop().ok_or(ActivateError::EventCount {
            expected: 1,
            got: 0,
        })?;
        Ok(Self {
            mem,
            interrupt,
            queue,
            queue_evt,
        })
    }
}

/// What a device with several queues (virtio-net, virtio-vsock) holds between `activate` and
/// `reset`; `queue_evts[i]` belongs to `queues[i]`.
pub struct ActiveQueues {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queues: Vec<Queue>,
    pub queue_evts: Vec<EventFd>,
}

impl ActiveQueues {
    /// Keeps what the transport passed to `activate`, after [`check_activation`] against
    /// `max_sizes`.
    pub fn new(
        max_sizes: &[u16],
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
    ) -> Result<Self, ActivateError> {
        check_activation(max_sizes, &mem, &queues, &queue_evts)?;
        Ok(Self {
            mem,
            interrupt,
            queues,
            queue_evts,
        })
    }

    /// Raises the used-buffer interrupt. A failure is only logged (with the `device` prefix):
    /// the used ring is already updated, and the driver finds it on its next interrupt.
    pub fn signal_used(&self, device: &str) {
        if let Err(e) = self.interrupt.trigger(InterruptKind::Queue) {
            log::error!("{device}: cannot raise the queue interrupt: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irq_trigger_sets_status_and_signals() {
        let irq = IrqTrigger::new().unwrap();
        assert_eq!(irq.status(), 0);
        irq.trigger(InterruptKind::Queue).unwrap();
        irq.trigger(InterruptKind::Config).unwrap();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.irq_evt().read().unwrap(), 2);
        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }
}
