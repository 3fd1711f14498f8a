//! virtio-vsock as a [`VirtioDevice`]: three queues (rx, tx, event), the guest CID in config
//! space, and the event-loop glue between the queues and the [`Muxer`].

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::config::VsockConfig;
use super::muxer::{Muxer, MuxerError, MuxerStats};
use super::packet::{read_packet, Descriptor, RxBuffer, EVENT_TRANSPORT_RESET, MAX_PAYLOAD};
use crate::devices::virtio::device::ActiveQueues;
use crate::devices::virtio::{
    ActivateError, ActivationEvent, EventRegistry, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};

/// virtio device ID of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
pub const NUM_QUEUES: usize = 3;
pub const QUEUE_SIZE: u16 = 256;
const _: () = assert!(super::packet::MAX_CHAIN_DESCRIPTORS == QUEUE_SIZE as usize);

const TOKEN_ACTIVATION: u32 = 0;
const TOKEN_RX_QUEUE: u32 = 1;
const TOKEN_TX_QUEUE: u32 = 2;
const TOKEN_EVENT_QUEUE: u32 = 3;
const TOKEN_MUXER: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error(transparent)]
    Config(#[from] super::config::VsockConfigError),
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    #[error("cannot create the activation eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// Counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// TX chains that were not a packet (bad descriptors, lengths); returned, not acted on.
    pub malformed_tx: u64,
    /// RX chains that could not hold a packet; returned empty.
    pub malformed_rx: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub muxer: MuxerStats,
}

pub struct Vsock {
    muxer: Muxer,
    config_space: [u8; 8],
    queue_max_sizes: [u16; NUM_QUEUES],
    activation: ActivationEvent,
    active: Option<ActiveQueues>,
    registry: EventRegistry,
    /// Set by `reset` (vCPU thread), done by `finish_reset` (event loop).
    drop_pending: bool,
    payload: Vec<u8>,
    /// Scratch for the descriptors of the chain being handled.
    descs: Vec<Descriptor>,
    stats: VsockStats,
}

impl Vsock {
    /// Binds the host-side unix socket now, so a bad path fails VM start-up.
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        config.validate()?;
        Ok(Vsock {
            muxer: Muxer::new(config)?,
            config_space: config.cid.to_le_bytes(),
            queue_max_sizes: [QUEUE_SIZE; NUM_QUEUES],
            activation: ActivationEvent::new().map_err(VsockError::EventFd)?,
            active: None,
            registry: EventRegistry::default(),
            drop_pending: false,
            payload: vec![0; MAX_PAYLOAD],
            descs: Vec::with_capacity(QUEUE_SIZE as usize),
            stats: VsockStats::default(),
        })
    }

    pub fn stats(&self) -> VsockStats {
        VsockStats {
            muxer: self.muxer.stats,
            ..self.stats
        }
    }

    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// The fd that becomes readable when a host socket needs attention (what the event
    /// loop watches; benchmarks poll it directly).
    pub fn host_events_fd(&self) -> std::os::fd::RawFd {
        self.muxer.as_raw_fd()
    }

    /// Guest -> host: every TX chain is one packet; each is returned at once (the data was
    /// copied out), valid or not.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = active.queues[TX_QUEUE].pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            match read_packet(&active.mem, chain, &mut self.descs, &mut self.payload) {
                Ok((hdr, len)) => {
                    self.stats.tx_packets += 1;
                    self.muxer.handle_guest_packet(&hdr, &self.payload[..len]);
                }
                Err(e) => {
                    debug!("vsock: dropping TX chain {head}: {e}");
                    self.stats.malformed_tx += 1;
                }
            }
            if let Err(e) = active.queues[TX_QUEUE].add_used(&active.mem, head, 0) {
                debug!("vsock: cannot return TX descriptor {head}: {e}");
            }
            used = true;
        }
        if used {
            active.signal_used("vsock");
        }
        // Replies (RESPONSE, RST, credit) and unblocked data may now go out.
        self.process_rx();
    }

    /// Host -> guest: fills receive buffers while the muxer has packets.
    pub fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let queue = &mut active.queues[RX_QUEUE];
        let mut used = false;
        while self.muxer.has_rx() {
            let Some(chain) = queue.pop_descriptor_chain(&active.mem) else {
                break;
            };
            let head = chain.head_index();
            let buffer = match RxBuffer::new(&active.mem, chain, &mut self.descs) {
                Ok(b) => b,
                Err(e) => {
                    debug!("vsock: RX chain {head} unusable: {e}");
                    self.stats.malformed_rx += 1;
                    let _ = queue.add_used(&active.mem, head, 0);
                    used = true;
                    continue;
                }
            };
            let room = buffer.payload_room();
            let Some((hdr, len)) = self.muxer.next_rx_packet(&mut self.payload[..room]) else {
                // Nothing after all (e.g. the socket had no data): keep the buffer.
                queue.go_to_previous_position();
                break;
            };
            let written = match buffer.write(&active.mem, &hdr, &self.payload[..len]) {
                Ok(n) => n,
                Err(e) => {
                    // Checked when the buffer was taken; guest memory does not shrink.
                    error!("vsock: writing an RX packet failed: {e}");
                    0
                }
            };
            self.stats.rx_packets += 1;
            let _ = queue.add_used(&active.mem, head, written as u32);
            used = true;
        }
        if used {
            active.signal_used("vsock");
        }
    }

    /// Tells the driver to drop every connection (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET) and
    /// closes the host side of all of them. Returns whether the event reached the guest
    /// (it needs a buffer on the event queue).
    pub fn transport_reset(&mut self) -> bool {
        self.muxer.drop_all();
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let queue = &mut active.queues[EVENT_QUEUE];
        let Some(chain) = queue.pop_descriptor_chain(&active.mem) else {
            warn!("vsock: no event buffer for a transport reset");
            return false;
        };
        let head = chain.head_index();
        let delivered = match RxBufferEvent::write(&active.mem, chain) {
            Ok(()) => true,
            Err(e) => {
                debug!("vsock: event chain {head} unusable: {e}");
                false
            }
        };
        let len = if delivered { 4 } else { 0 };
        let _ = queue.add_used(&active.mem, head, len);
        active.signal_used("vsock");
        delivered
    }

    /// Host sockets became readable/writable, connected or closed.
    pub fn handle_host_events(&mut self) {
        self.muxer.process_host_events();
        self.process_rx();
    }

    /// Work `reset` leaves to the event loop: closing the connections of the old driver.
    pub fn finish_reset(&mut self) {
        if std::mem::take(&mut self.drop_pending) {
            self.muxer.drop_all();
        }
    }

    fn register(&mut self, ops: &mut EventOps) {
        self.finish_reset();
        self.registry.remove_all(ops);
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let tokens = [TOKEN_RX_QUEUE, TOKEN_TX_QUEUE, TOKEN_EVENT_QUEUE];
        for (evt, token) in active.queue_evts.iter().zip(tokens) {
            if let Err(e) = self.registry.add(ops, evt, token, EventSet::IN) {
                error!("vsock: cannot register queue event: {e}");
            }
        }
        self.process_tx();
        self.process_rx();
    }
}

/// The event queue's only event: a 4-byte virtio_vsock_event.
struct RxBufferEvent;

impl RxBufferEvent {
    fn write<M, I>(mem: &M, chain: I) -> Result<(), &'static str>
    where
        M: vm_memory::GuestMemory,
        I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
    {
        let desc = chain.into_iter().next().ok_or("empty event chain")?;
        if !desc.is_write_only() || desc.len() < 4 {
            return Err("event buffer is not a writable 4-byte buffer");
        }
        mem.write_slice(&EVENT_TRANSPORT_RESET.to_le_bytes(), desc.addr())
            .map_err(|_| "event buffer outside guest memory")
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn avail_features(&self) -> u64 {
        // Stream sockets only: no SEQPACKET, no DGRAM.
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| self.config_space.get(at as usize).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            "vsock: ignoring a {}-byte write to read-only config space at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        self.active = Some(ActiveQueues::new(
            &self.queue_max_sizes,
            mem,
            interrupt,
            queues,
            queue_evts,
        )?);
        self.muxer.set_accepting(true);
        self.activation.notify().map_err(ActivateError::Signal)
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) -> bool {
        if let Some(active) = self.active.take() {
            self.registry.retire(active.queue_evts);
        }
        // Every connection dies with the driver's state; host clients see their socket
        // close. This runs on a vCPU thread, whose seccomp filter allows no socket or epoll
        // calls: new clients are turned away from now on, and the event loop closes the
        // existing connections when it handles the activation event.
        self.muxer.set_accepting(false);
        self.drop_pending = true;
        if let Err(e) = self.activation.notify() {
            error!("vsock: cannot wake the event loop after reset: {e}");
        }
        true
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.activation.register(ops, TOKEN_ACTIVATION) {
            error!("vsock: cannot register the activation event: {e}");
        }
        // The host sockets are watched for the device's whole life, active or not: host
        // clients that connect before the driver is ready are turned away, not left hanging.
        if let Err(e) = ops.add(Events::with_data_raw(
            self.host_events_fd(),
            TOKEN_MUXER,
            EventSet::IN,
        )) {
            error!("vsock: cannot register the host socket set: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATION => {
                self.activation.consume();
                self.register(ops);
            }
            TOKEN_RX_QUEUE => {
                if let Some(active) = &self.active {
                    let _ = active.queue_evts[RX_QUEUE].read();
                }
                self.process_rx();
            }
            TOKEN_TX_QUEUE => {
                if let Some(active) = &self.active {
                    let _ = active.queue_evts[TX_QUEUE].read();
                }
                self.process_tx();
            }
            TOKEN_EVENT_QUEUE => {
                // Event buffers are kept until there is an event to report.
                if let Some(active) = &self.active {
                    let _ = active.queue_evts[EVENT_QUEUE].read();
                }
            }
            TOKEN_MUXER => self.handle_host_events(),
            other => warn!("vsock: event with unknown token {other}"),
        }
    }
}
