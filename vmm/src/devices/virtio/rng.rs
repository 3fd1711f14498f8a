//! virtio-rng (device type 4): entropy for the guest from the host's getrandom(2).
//!
//! One request queue whose buffers are all device-writable; the device fills them, up to
//! [`MAX_BYTES_PER_REQUEST`] per request so that one request cannot keep the event loop busy.

use std::io;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::chain::{parse_chain, write_to_segments, ChainLimits, ParsedChain};
use super::device::ActiveQueue;
use super::{
    ActivateError, ActivationEvent, DeviceError, EventRegistry, InterruptKind, VirtioDevice,
    VirtioInterrupt, VIRTIO_F_VERSION_1,
};

pub const QUEUE_SIZE: u16 = 64;
pub const MAX_BYTES_PER_REQUEST: u64 = 64 * 1024;

const LIMITS: ChainLimits = ChainLimits {
    max_descriptors: QUEUE_SIZE as usize,
    // Larger buffers are accepted and filled only in part.
    max_bytes: u32::MAX as u64,
};

const TOKEN_ACTIVATION: u32 = 0;
const TOKEN_QUEUE: u32 = 1;

/// Fills `buf` from getrandom(2), retrying on interruption and short reads.
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the kernel writes at most `buf.len() - done` bytes into the live slice.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

pub struct Rng {
    queue_max_sizes: [u16; 1],
    activation: ActivationEvent,
    active: Option<ActiveQueue>,
    registry: EventRegistry,
    chain: ParsedChain,
    buf: Vec<u8>,
    bytes_served: u64,
}

impl Rng {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            queue_max_sizes: [QUEUE_SIZE],
            activation: ActivationEvent::new()?,
            active: None,
            registry: EventRegistry::default(),
            chain: ParsedChain::default(),
            buf: vec![0; MAX_BYTES_PER_REQUEST as usize],
            bytes_served: 0,
        })
    }

    pub fn bytes_served(&self) -> u64 {
        self.bytes_served
    }

    /// Serves every request available. Returns the number completed.
    pub fn process_queue(&mut self) -> Result<usize, DeviceError> {
        let Some(mut active) = self.active.take() else {
            return Ok(0);
        };
        let mut done = 0;
        while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let len = match parse_chain(chain, &active.mem, LIMITS, &mut self.chain) {
                Ok(()) if self.chain.readable_len > 0 => {
                    warn!("virtio-rng: request with device-readable buffers refused");
                    0
                }
                Ok(()) => self.fill(&active.mem),
                Err(e) => {
                    warn!("virtio-rng: request refused: {e}");
                    0
                }
            };
            if let Err(e) = active.queue.add_used(&active.mem, head, len) {
                warn!("virtio-rng: cannot return descriptor {head}: {e}");
                continue;
            }
            done += 1;
        }
        let mut result = Ok(done);
        if done > 0 {
            if let Err(e) = active.interrupt.trigger(InterruptKind::Queue) {
                result = Err(DeviceError::Interrupt(e));
            }
        }
        self.active = Some(active);
        result
    }

    fn fill(&mut self, mem: &GuestMemoryMmap) -> u32 {
        let want = self.chain.writable_len.min(MAX_BYTES_PER_REQUEST) as usize;
        let buf = &mut self.buf[..want];
        if let Err(e) = fill_random(buf) {
            error!("virtio-rng: getrandom failed: {e}");
            return 0;
        }
        match write_to_segments(mem, &self.chain.writable, 0, buf) {
            Ok(n) => {
                self.bytes_served += n as u64;
                n as u32
            }
            Err(e) => {
                warn!("virtio-rng: {e}");
                0
            }
        }
    }

    fn run_queue(&mut self) {
        if let Err(e) = self.process_queue() {
            error!("virtio-rng: {e}");
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn!("virtio-rng: config write at {offset:#x} ignored (no config space)");
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
        self.active = Some(ActiveQueue::new(
            &self.queue_max_sizes,
            mem,
            interrupt,
            queues,
            queue_evts,
        )?);
        self.activation.notify().map_err(ActivateError::Signal)
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) -> bool {
        if let Some(active) = self.active.take() {
            self.registry.retire([active.queue_evt]);
            if let Err(e) = self.activation.notify() {
                error!("virtio-rng: cannot signal reset to the event loop: {e}");
            }
        }
        true
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.activation.register(ops, TOKEN_ACTIVATION) {
            error!("virtio-rng: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATION => {
                self.activation.consume();
                match self
                    .registry
                    .sync_queue(ops, self.active.as_ref(), TOKEN_QUEUE)
                {
                    Ok(true) => self.run_queue(),
                    Ok(false) => {}
                    Err(e) => error!("virtio-rng: {e}"),
                }
            }
            TOKEN_QUEUE => {
                if let Some(active) = &self.active {
                    let _ = active.queue_evt.read();
                    self.run_queue();
                }
            }
            other => warn!("virtio-rng: unexpected event token {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{test_memory, Buf, DriverQueue, MockInterrupt};
    use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
    use vm_memory::{Bytes, GuestAddress};

    fn setup() -> (GuestMemoryMmap, DriverQueue, Rng, Arc<MockInterrupt>) {
        let mem = test_memory(0x40_0000);
        let dq = DriverQueue::new(&mem, GuestAddress(0x1000), QUEUE_SIZE);
        let mut rng = Rng::new().unwrap();
        let irq = Arc::new(MockInterrupt::default());
        dq.activate_device(
            &mut rng,
            irq.clone(),
            EventFd::new(0).unwrap(),
            VIRTIO_F_VERSION_1,
        )
        .unwrap();
        (mem, dq, rng, irq)
    }

    #[test]
    fn fills_writable_buffers_with_random_bytes() {
        let (mem, mut dq, mut rng, irq) = setup();
        dq.add_chain(&[Buf::write(0x10000, 64), Buf::write(0x20000, 64)]);
        assert_eq!(rng.process_queue().unwrap(), 1);
        assert_eq!(dq.used_elem(0).1, 128);
        assert_eq!(irq.queue_count(), 1);
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        mem.read_slice(&mut a, GuestAddress(0x10000)).unwrap();
        mem.read_slice(&mut b, GuestAddress(0x20000)).unwrap();
        // 128 random bytes being all zero, or both halves equal, has probability ~2^-512.
        assert_ne!(a, [0u8; 64]);
        assert_ne!(a, b);
        assert_eq!(rng.bytes_served(), 128);
    }

    #[test]
    fn large_requests_are_capped() {
        let (_mem, mut dq, mut rng, _) = setup();
        dq.add_chain(&[Buf::write(0x10000, 0x20_0000)]);
        rng.process_queue().unwrap();
        assert_eq!(dq.used_elem(0).1 as u64, MAX_BYTES_PER_REQUEST);
    }

    #[test]
    fn oversize_chains_return_nothing() {
        let (mem, mut dq, mut rng, _) = setup();
        // 100 one-byte buffers through an indirect table: more descriptors than the ring.
        let bufs: Vec<_> = (0..100).map(|i| Buf::write(0x10000 + i, 1)).collect();
        dq.add_indirect_chain(GuestAddress(0x30000), &bufs);
        mem.write_slice(&[0u8; 100], GuestAddress(0x10000)).unwrap();
        assert_eq!(rng.process_queue().unwrap(), 1);
        assert_eq!(dq.used_elem(0).1, 0);
        let mut a = [0u8; 100];
        mem.read_slice(&mut a, GuestAddress(0x10000)).unwrap();
        assert_eq!(a, [0u8; 100]);
    }

    #[test]
    fn malformed_requests_return_nothing() {
        let (mem, mut dq, mut rng, _) = setup();
        // Device-readable buffer.
        dq.add_chain(&[Buf::read(0x10000, 64)]);
        // Outside guest memory.
        dq.add_chain(&[Buf::write(0x1_0000_0000, 64)]);
        // A loop.
        let next = VRING_DESC_F_NEXT as u16;
        let write = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        dq.set_desc(40, 0x10000, 8, next | write, 41);
        dq.set_desc(41, 0x10008, 8, next | write, 40);
        dq.publish(40);
        mem.write_slice(&[0u8; 64], GuestAddress(0x10000)).unwrap();
        assert_eq!(rng.process_queue().unwrap(), 3);
        for i in 0..3 {
            assert_eq!(dq.used_elem(i).1, 0, "request {i}");
        }
        let mut a = [0u8; 16];
        mem.read_slice(&mut a, GuestAddress(0x10000)).unwrap();
        assert_eq!(a, [0u8; 16]);
        assert_eq!(rng.bytes_served(), 0);
    }
}
