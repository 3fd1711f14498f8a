//! virtio-blk (device type 2) as a [`VirtioDevice`]: one request queue served on the device
//! event loop against a [`DiskImage`].
//!
//! Every request is validated before the image is touched: the chain must be well formed
//! (see [`parse_chain`]), carry a 16-byte header in its readable part and a status byte as
//! its last writable byte, move whole sectors inside the disk, and point its data in the
//! direction the request type needs. A request that fails any check completes with
//! VIRTIO_BLK_S_IOERR (or UNSUPP for unknown types); the queue keeps running.

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{error, warn};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::config::{BlockConfig, BLOCK_ID_LEN};
use super::disk::{DiskError, DiskImage, SECTOR_SIZE};
use crate::devices::virtio::chain::{
    parse_chain, read_from_segments, sub_segments, write_to_segments, ChainError, ChainLimits,
    ParsedChain, Segment,
};
use crate::devices::virtio::device::ActiveQueue;
use crate::devices::virtio::{
    ActivateError, ActivationEvent, DeviceError, EventRegistry, InterruptKind, VirtioDevice,
    VirtioInterrupt, VIRTIO_F_VERSION_1,
};

pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request we tell the driver it may use (VIRTIO_BLK_F_SEG_MAX); the header
/// and status take two more descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Requests larger than this are refused; Linux's default limit is far below it.
pub const MAX_REQUEST_BYTES: u64 = 32 << 20;

const LIMITS: ChainLimits = ChainLimits {
    // An indirect table may hold more descriptors than the ring; the header and the status
    // byte may each be split off, hence the slack.
    max_descriptors: SEG_MAX as usize + 4,
    max_bytes: MAX_REQUEST_BYTES + 512,
};

const HEADER_LEN: u64 = 16;
/// capacity (u64) + size_max (u32) + seg_max (u32); the rest of virtio_blk_config reads as 0.
const CONFIG_LEN: usize = 16;

const TOKEN_ACTIVATION: u32 = 0;
const TOKEN_QUEUE: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("cannot create the activation eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// What happened to one request, for tests and statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Status written (OK, IOERR or UNSUPP); `len` bytes of writable buffers used.
    Status { status: u8, len: u32 },
    /// The chain was too broken to carry a status; returned with length 0.
    Dropped,
}

/// Counters of the block device (requests done by type and how many failed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub errors: u64,
}

pub struct Block {
    disk: DiskImage,
    id: [u8; BLOCK_ID_LEN],
    avail_features: u64,
    config_space: [u8; CONFIG_LEN],
    queue_max_sizes: [u16; 1],
    activation: ActivationEvent,
    active: Option<ActiveQueue>,
    registry: EventRegistry,
    /// Scratch space reused by every request.
    chain: ParsedChain,
    data: Vec<Segment>,
    stats: BlockStats,
}

impl Block {
    pub fn from_config(config: &BlockConfig) -> Result<Self, BlockError> {
        let disk = DiskImage::open(&config.path, config.read_only)?;
        Self::new(disk, config.id_bytes())
    }

    pub fn new(disk: DiskImage, id: [u8; BLOCK_ID_LEN]) -> Result<Self, BlockError> {
        let mut avail_features = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX;
        if disk.read_only() {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config_space = [0u8; CONFIG_LEN];
        config_space[0..8].copy_from_slice(&disk.sectors().to_le_bytes());
        config_space[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Self {
            disk,
            id,
            avail_features,
            config_space,
            queue_max_sizes: [QUEUE_SIZE],
            activation: ActivationEvent::new().map_err(BlockError::EventFd)?,
            active: None,
            registry: EventRegistry::default(),
            chain: ParsedChain::default(),
            data: Vec::new(),
            stats: BlockStats::default(),
        })
    }

    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    pub fn disk(&self) -> &DiskImage {
        &self.disk
    }

    /// Serves every request the driver made available, then interrupts the guest once if any
    /// completed. Returns the number of requests completed.
    pub fn process_queue(&mut self) -> Result<usize, DeviceError> {
        let Some(mut active) = self.active.take() else {
            return Ok(0);
        };
        let mut done = 0usize;
        let mut result = Ok(());
        loop {
            let mut round = 0usize;
            while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
                round += 1;
                let head = chain.head_index();
                let completion = self.handle_chain(&active.mem, chain);
                let len = match completion {
                    Completion::Status { len, .. } => len,
                    Completion::Dropped => 0,
                };
                if let Err(e) = active.queue.add_used(&active.mem, head, len) {
                    // Only a head index beyond the ring gets here; nothing to hand back.
                    warn!("virtio-blk: cannot return descriptor {head}: {e}");
                    continue;
                }
                done += 1;
            }
            if !active.queue.event_idx_enabled() || round == 0 {
                break;
            }
            // With EVENT_IDX the driver notifies again only once it passes avail_event, which
            // this moves to where we stopped; requests that arrived meanwhile are served now.
            // A round that found nothing ends the loop even if the available index claims
            // more (a driver that corrupted it must not keep us spinning).
            match active.queue.enable_notification(&active.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    warn!("virtio-blk: cannot re-enable notifications: {e}");
                    break;
                }
            }
        }
        let notify = match active.queue.needs_notification(&active.mem) {
            Ok(n) => n,
            Err(e) => {
                warn!("virtio-blk: cannot read used_event: {e}");
                true
            }
        };
        if done > 0 && notify {
            if let Err(e) = active.interrupt.trigger(InterruptKind::Queue) {
                result = Err(DeviceError::Interrupt(e));
            }
        }
        self.active = Some(active);
        result.map(|_| done)
    }

    fn handle_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> Completion {
        let mut parsed = std::mem::take(&mut self.chain);
        let completion = match parse_chain(chain, mem, LIMITS, &mut parsed) {
            Ok(()) => self.execute(mem, &parsed),
            Err(
                e @ (ChainError::Empty | ChainError::Unterminated | ChainError::BadAddress { .. }),
            ) => {
                // Where the status byte is cannot be trusted.
                warn!("virtio-blk: request dropped: {e}");
                self.stats.errors += 1;
                Completion::Dropped
            }
            Err(e) => {
                warn!("virtio-blk: request refused: {e}");
                self.finish(mem, &parsed, VIRTIO_BLK_S_IOERR as u8, 0)
            }
        };
        self.chain = parsed;
        completion
    }

    /// Writes `status` into the last writable byte and reports the used length.
    fn finish(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &ParsedChain,
        status: u8,
        data_len: u32,
    ) -> Completion {
        if status != VIRTIO_BLK_S_OK as u8 {
            self.stats.errors += 1;
        }
        match chain.last_writable_byte() {
            Some(addr) => match mem.write_obj(status, addr) {
                Ok(()) => Completion::Status {
                    status,
                    len: data_len + 1,
                },
                Err(e) => {
                    warn!("virtio-blk: cannot write the status byte: {e}");
                    Completion::Dropped
                }
            },
            None => {
                warn!("virtio-blk: request without a writable status byte");
                Completion::Dropped
            }
        }
    }

    fn execute(&mut self, mem: &GuestMemoryMmap, chain: &ParsedChain) -> Completion {
        const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
        if chain.writable_len == 0 {
            warn!("virtio-blk: request without a writable status byte");
            self.stats.errors += 1;
            return Completion::Dropped;
        }
        let mut header = [0u8; HEADER_LEN as usize];
        if chain.readable_len < HEADER_LEN
            || !matches!(read_from_segments(mem, &chain.readable, 0, &mut header), Ok(n) if n == header.len())
        {
            warn!(
                "virtio-blk: request header missing or short ({} readable bytes)",
                chain.readable_len
            );
            return self.finish(mem, chain, IOERR, 0);
        }
        let req_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
        // Data the driver sends follows the header; data the device returns precedes the
        // status byte.
        let out_len = chain.readable_len - HEADER_LEN;
        let in_len = chain.writable_len - 1;

        match req_type {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let write = req_type == VIRTIO_BLK_T_OUT;
                let (len, wrong_dir_len) = if write {
                    (out_len, in_len)
                } else {
                    (in_len, out_len)
                };
                if wrong_dir_len != 0 {
                    warn!("virtio-blk: {} request carries {wrong_dir_len} bytes in the wrong direction",
                        if write { "write" } else { "read" });
                    return self.finish(mem, chain, IOERR, 0);
                }
                if write && self.disk.read_only() {
                    warn!("virtio-blk: write to read-only disk refused");
                    return self.finish(mem, chain, IOERR, 0);
                }
                if len == 0 || len % SECTOR_SIZE != 0 {
                    warn!("virtio-blk: data length {len} is not a positive multiple of 512");
                    return self.finish(mem, chain, IOERR, 0);
                }
                let in_bounds = sector
                    .checked_add(len / SECTOR_SIZE)
                    .is_some_and(|end| end <= self.disk.sectors());
                if !in_bounds {
                    warn!(
                        "virtio-blk: sectors {sector}+{} beyond the disk ({} sectors)",
                        len / SECTOR_SIZE,
                        self.disk.sectors()
                    );
                    return self.finish(mem, chain, IOERR, 0);
                }
                let offset = sector * SECTOR_SIZE;
                let mut data = std::mem::take(&mut self.data);
                let result = if write {
                    sub_segments(&chain.readable, HEADER_LEN, len, &mut data);
                    self.disk.write_from_guest(mem, &data, offset, len)
                } else {
                    sub_segments(&chain.writable, 0, len, &mut data);
                    self.disk.read_to_guest(mem, &data, offset, len)
                };
                self.data = data;
                match result {
                    Ok(()) if write => {
                        self.stats.writes += 1;
                        self.stats.bytes_written += len;
                        self.finish(mem, chain, VIRTIO_BLK_S_OK as u8, 0)
                    }
                    Ok(()) => {
                        self.stats.reads += 1;
                        self.stats.bytes_read += len;
                        self.finish(mem, chain, VIRTIO_BLK_S_OK as u8, len as u32)
                    }
                    Err(e) => {
                        error!(
                            "virtio-blk: {} at sector {sector}: {e}",
                            self.disk.path().display()
                        );
                        self.finish(mem, chain, IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                self.stats.flushes += 1;
                let status = if self.disk.read_only() {
                    VIRTIO_BLK_S_OK
                } else {
                    match self.disk.flush() {
                        Ok(()) => VIRTIO_BLK_S_OK,
                        Err(e) => {
                            error!("virtio-blk: flush of {}: {e}", self.disk.path().display());
                            VIRTIO_BLK_S_IOERR
                        }
                    }
                };
                self.finish(mem, chain, status as u8, 0)
            }
            VIRTIO_BLK_T_GET_ID => {
                if in_len == 0 {
                    warn!("virtio-blk: GET_ID without a buffer for the id");
                    return self.finish(mem, chain, IOERR, 0);
                }
                let n = (in_len as usize).min(BLOCK_ID_LEN);
                let id = self.id;
                match write_to_segments(mem, &chain.writable, 0, &id[..n]) {
                    Ok(written) if written == n => {
                        self.finish(mem, chain, VIRTIO_BLK_S_OK as u8, n as u32)
                    }
                    _ => self.finish(mem, chain, IOERR, 0),
                }
            }
            other => {
                warn!("virtio-blk: unsupported request type {other}");
                self.finish(mem, chain, VIRTIO_BLK_S_UNSUPP as u8, 0)
            }
        }
    }

    /// Brings the event-loop registrations in line with the activation state.
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        match self
            .registry
            .sync_queue(ops, self.active.as_ref(), TOKEN_QUEUE)
        {
            // Requests made available before the notification was registered.
            Ok(true) => self.run_queue(),
            Ok(false) => {}
            Err(e) => error!("virtio-blk: {e}"),
        }
    }

    fn run_queue(&mut self) {
        if let Err(e) = self.process_queue() {
            error!("virtio-blk: {e}");
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| self.config_space.get(o as usize))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // Only the writeback field (VIRTIO_BLK_F_CONFIG_WCE) is writable, and it is not offered.
        warn!("virtio-blk: write to read-only config space at {offset:#x} ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let mut active =
            ActiveQueue::new(&self.queue_max_sizes, mem, interrupt, queues, queue_evts)?;
        active
            .queue
            .set_event_idx(acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        self.active = Some(active);
        self.activation.notify().map_err(ActivateError::Signal)
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) -> bool {
        if let Some(active) = self.active.take() {
            self.registry.retire([active.queue_evt]);
            if let Err(e) = self.activation.notify() {
                error!("virtio-blk: cannot signal reset to the event loop: {e}");
            }
        }
        true
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.activation.register(ops, TOKEN_ACTIVATION) {
            error!("virtio-blk: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATION => {
                self.activation.consume();
                self.sync_registrations(ops);
            }
            TOKEN_QUEUE => {
                let Some(active) = &self.active else {
                    // A notification from before a reset; the registration goes with the
                    // activation event that is already pending.
                    return;
                };
                let _ = active.queue_evt.read();
                self.run_queue();
            }
            other => warn!(
                "virtio-blk: unexpected event token {other} on fd {}",
                events.fd()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{test_memory, Buf, DriverQueue, MockInterrupt};
    use event_manager::{EventManager, SubscriberOps};
    use std::path::PathBuf;
    use std::sync::Mutex;
    use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
    use vm_memory::GuestAddress;

    // Mapped lazily: only the pages a test touches are allocated.
    const MEM_SIZE: usize = 0x300_0000;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x11_0000;
    const STATUS: u64 = 0x30_0000;
    const DISK_SECTORS: u64 = 64;

    struct Fixture {
        mem: GuestMemoryMmap,
        dq: DriverQueue,
        blk: Block,
        irq: Arc<MockInterrupt>,
        path: PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn image(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-blk-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let img: Vec<u8> = (0..DISK_SECTORS * 512).map(|i| (i / 512) as u8).collect();
        std::fs::write(&path, img).unwrap();
        path
    }

    fn fixture(name: &str, read_only: bool) -> Fixture {
        let path = image(name);
        let config = BlockConfig {
            path: path.clone(),
            read_only,
            id: Some("disk-serial-01".into()),
        };
        let mut blk = Block::from_config(&config).unwrap();
        let mem = test_memory(MEM_SIZE);
        let dq = DriverQueue::new(&mem, GuestAddress(0x1000), 16);
        let irq = Arc::new(MockInterrupt::default());
        let features = blk.avail_features();
        dq.activate_device(&mut blk, irq.clone(), EventFd::new(0).unwrap(), features)
            .unwrap();
        Fixture {
            mem,
            dq,
            blk,
            irq,
            path,
        }
    }

    fn header(f: &Fixture, req_type: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&req_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        f.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        f.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn status(f: &Fixture) -> u8 {
        f.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Runs the queue and returns (status byte, used length) of the single new request.
    fn run_one(f: &mut Fixture) -> (u8, u32) {
        let before = f.dq.used_idx();
        assert_eq!(f.blk.process_queue().unwrap(), 1);
        assert_eq!(f.dq.used_idx(), before.wrapping_add(1));
        let (_, len) = f.dq.used_elem(before);
        (status(f), len)
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

    #[test]
    fn config_space_and_features() {
        let f = fixture("cfg.img", true);
        let mut cap = [0u8; 8];
        f.blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
        let mut seg = [0u8; 4];
        f.blk.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
        let mut beyond = [0xffu8; 4];
        f.blk.read_config(0x1000, &mut beyond);
        assert_eq!(beyond, [0; 4]);
        f.blk.read_config(u64::MAX, &mut beyond);
        assert_eq!(beyond, [0; 4]);
        assert_ne!(f.blk.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(f.blk.avail_features() & VIRTIO_F_VERSION_1, 0);
        let rw = fixture("cfg-rw.img", false);
        assert_eq!(rw.blk.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn write_then_read_back_a_pattern() {
        let mut f = fixture("rw.img", false);
        let pattern: Vec<u8> = (0..2048u32).map(|i| (i * 7 % 256) as u8).collect();
        f.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        header(&f, VIRTIO_BLK_T_OUT, 10);
        // Data split over two descriptors, header and status separate.
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::read(DATA, 1000),
            Buf::read(DATA + 1000, 1048),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (OK, 1));
        assert_eq!(f.irq.queue_count(), 1);

        f.mem.write_slice(&[0u8; 2048], GuestAddress(DATA)).unwrap();
        header(&f, VIRTIO_BLK_T_IN, 10);
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::write(DATA, 512),
            Buf::write(DATA + 512, 1536),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (OK, 2049));
        let mut back = vec![0u8; 2048];
        f.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back, pattern);

        let file = std::fs::read(&f.path).unwrap();
        assert_eq!(&file[10 * 512..14 * 512], &pattern[..]);
        assert_eq!(file[9 * 512], 9, "neighbouring sector untouched");
        assert_eq!(file[14 * 512], 14);
        let s = f.blk.stats();
        assert_eq!((s.reads, s.writes, s.bytes_read, s.errors), (1, 1, 2048, 0));
    }

    #[test]
    fn header_and_status_may_share_buffers_with_data() {
        // ANY_LAYOUT: header and data in one readable buffer, data and status in one
        // writable buffer.
        let mut f = fixture("layout.img", false);
        header(&f, VIRTIO_BLK_T_IN, 3);
        f.dq.add_chain(&[Buf::read(HDR, 16), Buf::write(DATA, 513)]);
        let before = f.dq.used_idx();
        f.blk.process_queue().unwrap();
        assert_eq!(f.dq.used_elem(before).1, 513);
        let st: u8 = f.mem.read_obj(GuestAddress(DATA + 512)).unwrap();
        assert_eq!(st, OK);
        let first: u8 = f.mem.read_obj(GuestAddress(DATA)).unwrap();
        assert_eq!(first, 3);

        let mut h = [0u8; 16 + 512];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        h[8..16].copy_from_slice(&5u64.to_le_bytes());
        h[16..].fill(0xee);
        f.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        f.dq.add_chain(&[
            Buf::read(HDR, 8),
            Buf::read(HDR + 8, 520),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (OK, 1));
        assert_eq!(std::fs::read(&f.path).unwrap()[5 * 512], 0xee);
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let mut f = fixture("ro.img", true);
        f.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
        header(&f, VIRTIO_BLK_T_OUT, 0);
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::read(DATA, 512),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (IOERR, 1));
        assert_eq!(std::fs::read(&f.path).unwrap()[0], 0);
        // Reads and flushes still work.
        header(&f, VIRTIO_BLK_T_IN, 1);
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::write(DATA, 512),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (OK, 513));
        header(&f, VIRTIO_BLK_T_FLUSH, 0);
        f.dq.add_chain(&[Buf::read(HDR, 16), Buf::write(STATUS, 1)]);
        assert_eq!(run_one(&mut f), (OK, 1));
    }

    #[test]
    fn flush_and_get_id() {
        let mut f = fixture("id.img", false);
        header(&f, VIRTIO_BLK_T_FLUSH, 0);
        f.dq.add_chain(&[Buf::read(HDR, 16), Buf::write(STATUS, 1)]);
        assert_eq!(run_one(&mut f), (OK, 1));
        assert_eq!(f.blk.stats().flushes, 1);

        header(&f, VIRTIO_BLK_T_GET_ID, 0);
        f.mem.write_slice(&[0xaa; 20], GuestAddress(DATA)).unwrap();
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::write(DATA, 20),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (OK, 21));
        let mut id = [0u8; 20];
        f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..14], b"disk-serial-01");
        assert_eq!(&id[14..], &[0u8; 6]);

        // A short id buffer gets what fits.
        header(&f, VIRTIO_BLK_T_GET_ID, 0);
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::write(DATA + 100, 4),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (OK, 5));
        // No id buffer at all.
        header(&f, VIRTIO_BLK_T_GET_ID, 0);
        f.dq.add_chain(&[Buf::read(HDR, 16), Buf::write(STATUS, 1)]);
        assert_eq!(run_one(&mut f), (IOERR, 1));
    }

    #[test]
    fn unknown_request_type_is_unsupported() {
        let mut f = fixture("unsupp.img", false);
        header(&f, VIRTIO_BLK_T_DISCARD, 0);
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::read(DATA, 16),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (VIRTIO_BLK_S_UNSUPP as u8, 1));
    }

    #[test]
    fn sectors_are_bounds_checked() {
        let mut f = fixture("bounds.img", false);
        let cases = [
            (DISK_SECTORS, 512u32),    // first sector past the end
            (DISK_SECTORS - 1, 1024),  // runs over the end
            (u64::MAX, 512),           // sector number overflows
            (u64::MAX / 512 + 1, 512), // byte offset would overflow
        ];
        for (sector, len) in cases {
            header(&f, VIRTIO_BLK_T_IN, sector);
            f.dq.add_chain(&[
                Buf::read(HDR, 16),
                Buf::write(DATA, len),
                Buf::write(STATUS, 1),
            ]);
            assert_eq!(run_one(&mut f), (IOERR, 1), "sector {sector} len {len}");
            header(&f, VIRTIO_BLK_T_OUT, sector);
            f.dq.add_chain(&[
                Buf::read(HDR, 16),
                Buf::read(DATA, len),
                Buf::write(STATUS, 1),
            ]);
            assert_eq!(run_one(&mut f), (IOERR, 1), "sector {sector} len {len}");
        }
        // The last sector itself is fine.
        header(&f, VIRTIO_BLK_T_IN, DISK_SECTORS - 1);
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::write(DATA, 512),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (OK, 513));
        // Not a whole number of sectors, and no data at all.
        header(&f, VIRTIO_BLK_T_IN, 0);
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::write(DATA, 100),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (IOERR, 1));
        header(&f, VIRTIO_BLK_T_IN, 0);
        f.dq.add_chain(&[Buf::read(HDR, 16), Buf::write(STATUS, 1)]);
        assert_eq!(run_one(&mut f), (IOERR, 1));
    }

    #[test]
    fn wrong_directions_are_refused() {
        let mut f = fixture("dir.img", false);
        // Read request whose data buffer is device-readable.
        header(&f, VIRTIO_BLK_T_IN, 0);
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::read(DATA, 512),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (IOERR, 1));
        // Write request whose data buffer is device-writable: nothing may be written to disk.
        f.mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
        header(&f, VIRTIO_BLK_T_OUT, 2);
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::write(DATA, 512),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (IOERR, 1));
        assert_eq!(std::fs::read(&f.path).unwrap()[2 * 512], 2);
        // Header in a device-writable buffer.
        header(&f, VIRTIO_BLK_T_IN, 0);
        f.dq.add_chain(&[
            Buf::write(HDR, 16),
            Buf::write(DATA, 512),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (IOERR, 1));
        // Readable buffer after a writable one.
        header(&f, VIRTIO_BLK_T_IN, 0);
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::write(DATA, 512),
            Buf::read(DATA + 512, 16),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (IOERR, 1));
        // Header too short.
        header(&f, VIRTIO_BLK_T_IN, 0);
        f.dq.add_chain(&[
            Buf::read(HDR, 8),
            Buf::write(DATA, 512),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (IOERR, 1));
        // No writable status byte: returned with nothing written.
        header(&f, VIRTIO_BLK_T_FLUSH, 0);
        f.dq.add_chain(&[Buf::read(HDR, 16), Buf::read(STATUS, 1)]);
        assert_eq!(run_one(&mut f), (0xff, 0));
        assert_eq!(f.blk.stats().errors, 6);
    }

    #[test]
    fn bad_addresses_never_reach_the_disk() {
        let mut f = fixture("addr.img", false);
        let cases = [
            [
                Buf::read(HDR, 16),
                Buf::write(MEM_SIZE as u64 + 0x1000, 512),
                Buf::write(STATUS, 1),
            ],
            [
                Buf::read(HDR, 16),
                Buf::write(MEM_SIZE as u64 - 256, 512),
                Buf::write(STATUS, 1),
            ],
            [
                Buf::read(u64::MAX - 8, 16),
                Buf::write(DATA, 512),
                Buf::write(STATUS, 1),
            ],
            [
                Buf::read(HDR, 16),
                Buf::write(DATA, 512),
                Buf::write(1 << 40, 1),
            ],
        ];
        for bufs in cases {
            header(&f, VIRTIO_BLK_T_IN, 0);
            f.dq.add_chain(&bufs);
            assert_eq!(run_one(&mut f), (0xff, 0), "{bufs:?}");
        }
        // The queue still serves well-formed requests afterwards.
        header(&f, VIRTIO_BLK_T_IN, 7);
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::write(DATA, 512),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (OK, 513));
    }

    #[test]
    fn loops_and_oversize_chains_do_not_hang() {
        let mut f = fixture("loop.img", false);
        header(&f, VIRTIO_BLK_T_IN, 0);
        let next = VRING_DESC_F_NEXT as u16;
        f.dq.set_desc(10, HDR, 16, next, 11);
        f.dq.set_desc(11, DATA, 512, next | VRING_DESC_F_WRITE_U16, 10);
        f.dq.publish(10);
        assert_eq!(run_one(&mut f), (0xff, 0));

        // A chain of 300 descriptors through an indirect table: longer than SEG_MAX allows.
        let table = GuestAddress(0x20_0000);
        let mut bufs = vec![Buf::read(HDR, 16)];
        bufs.extend((0..298).map(|i| Buf::write(DATA + 512 * i, 512)));
        bufs.push(Buf::write(STATUS, 1));
        header(&f, VIRTIO_BLK_T_IN, 0);
        f.dq.add_indirect_chain(table, &bufs);
        assert_eq!(run_one(&mut f), (IOERR, 1));

        // More bytes than a request may carry.
        header(&f, VIRTIO_BLK_T_IN, 0);
        f.dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::write(0x40_0000, (MAX_REQUEST_BYTES + 4096) as u32),
            Buf::write(STATUS, 1),
        ]);
        assert_eq!(run_one(&mut f), (IOERR, 1));

        // An available index far ahead of what was published: the device serves at most a
        // ring's worth and returns.
        let used = f.dq.used_idx();
        f.dq.set_avail_idx(used.wrapping_add(1000));
        let _ = f.blk.process_queue();
        assert!(f.dq.used_idx().wrapping_sub(used) <= f.dq.size());
    }

    const VRING_DESC_F_WRITE_U16: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    #[test]
    fn event_idx_suppresses_interrupts_and_moves_avail_event() {
        let mut f = fixture("eventidx.img", false);
        // The driver wants an interrupt only once the used index passes 2.
        f.dq.set_used_event(2);
        for expected_irqs in [0, 0, 1, 1] {
            header(&f, VIRTIO_BLK_T_FLUSH, 0);
            f.dq.add_chain(&[Buf::read(HDR, 16), Buf::write(STATUS, 1)]);
            assert_eq!(run_one(&mut f), (OK, 1));
            assert_eq!(f.irq.queue_count(), expected_irqs);
            // The device asks to be notified of the next request it has not seen.
            assert_eq!(f.dq.avail_event(), f.dq.used_idx());
        }
    }

    #[test]
    fn without_event_idx_every_batch_interrupts() {
        let mut f = fixture("noeventidx.img", false);
        // Re-activate with only VERSION_1 acked.
        assert!(f.blk.reset());
        f.dq = DriverQueue::new(&f.mem, GuestAddress(0x1000), 16);
        f.dq.activate_device(
            &mut f.blk,
            f.irq.clone(),
            EventFd::new(0).unwrap(),
            VIRTIO_F_VERSION_1,
        )
        .unwrap();
        f.dq.set_used_event(100);
        for i in 1..=3 {
            header(&f, VIRTIO_BLK_T_FLUSH, 0);
            f.dq.add_chain(&[Buf::read(HDR, 16), Buf::write(STATUS, 1)]);
            assert_eq!(run_one(&mut f), (OK, 1));
            assert_eq!(f.irq.queue_count(), i);
        }
        assert_eq!(
            f.dq.avail_event(),
            0,
            "avail_event untouched without EVENT_IDX"
        );
    }

    #[test]
    fn indirect_requests_are_served() {
        let mut f = fixture("indirect.img", false);
        header(&f, VIRTIO_BLK_T_IN, 4);
        let bufs: Vec<_> = std::iter::once(Buf::read(HDR, 16))
            .chain((0..8).map(|i| Buf::write(DATA + 512 * i, 512)))
            .chain(std::iter::once(Buf::write(STATUS, 1)))
            .collect();
        f.dq.add_indirect_chain(GuestAddress(0x20_0000), &bufs);
        assert_eq!(run_one(&mut f), (OK, 8 * 512 + 1));
        let b: u8 = f.mem.read_obj(GuestAddress(DATA + 7 * 512)).unwrap();
        assert_eq!(b, 11);
    }

    #[test]
    fn event_loop_activation_and_reset() {
        let path = image("evl.img");
        let blk = Block::from_config(&BlockConfig {
            path: path.clone(),
            read_only: false,
            id: None,
        })
        .unwrap();
        let blk = Arc::new(Mutex::new(blk));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        em.add_subscriber(blk.clone());

        let mem = test_memory(MEM_SIZE);
        let mut dq = DriverQueue::new(&mem, GuestAddress(0x1000), 16);
        let irq = Arc::new(MockInterrupt::default());
        let notify = EventFd::new(0).unwrap();
        dq.activate_device(
            &mut *blk.lock().unwrap(),
            irq.clone(),
            notify.try_clone().unwrap(),
            VIRTIO_F_VERSION_1,
        )
        .unwrap();
        // Activation event: the queue eventfd gets registered.
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);

        let mut h = [0u8; 16];
        h[8..16].copy_from_slice(&6u64.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::write(DATA, 512),
            Buf::write(STATUS, 1),
        ]);
        notify.write(1).unwrap();
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(dq.used_idx(), 1);
        assert_eq!(irq.queue_count(), 1);
        let b: u8 = mem.read_obj(GuestAddress(DATA)).unwrap();
        assert_eq!(b, 6);

        // Reset: the queue eventfd is removed, later notifications are not served.
        assert!(blk.lock().unwrap().reset());
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        dq.add_chain(&[
            Buf::read(HDR, 16),
            Buf::write(DATA, 512),
            Buf::write(STATUS, 1),
        ]);
        notify.write(1).unwrap();
        assert_eq!(em.run_with_timeout(100).unwrap(), 0);
        assert_eq!(dq.used_idx(), 1);
        let _ = std::fs::remove_file(path);
    }
}
