//! The virtio-net data path: guest queues on one side, a [`NetBackend`] on the other.
//!
//! Receive buffers are not merged (VIRTIO_NET_F_MRG_RXBUF is not offered): each frame goes
//! into one descriptor chain. A guest that accepts the receive TSO offloads therefore posts
//! 64 KiB chains, which Linux does by itself ("big packets" mode). This keeps every frame a
//! single used-ring entry and lets a frame that found no buffer wait without partial state.
//!
//! Flow control: when the guest has no receive buffer, the frame already read from the
//! backend waits in `rx_frame` and the backend is not read again until the guest adds
//! buffers (an RX queue notification). When the backend refuses a transmit frame, that frame
//! and its descriptor wait in `tx_pending` until the backend is writable again; the guest
//! sees the TX ring stall rather than lose frames.

use std::io;

use log::{debug, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory, Permissions};

use super::backend::NetBackend;
use super::config::MacAddr;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const NUM_QUEUES: usize = 2;
pub const QUEUE_SIZE: u16 = 256;

/// struct virtio_net_hdr_v1: with VIRTIO_F_VERSION_1 the header always carries num_buffers.
pub const VNET_HDR_LEN: usize = 12;
const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest frame a GSO-capable peer produces (64 KiB IP packet plus Ethernet/VLAN header),
/// plus its virtio-net header.
pub const MAX_BUFFER_LEN: usize = 65550 + VNET_HDR_LEN;
/// No chain may be longer than the queue (virtio 1.2, 2.7.5.3.1), indirect tables included.
pub const MAX_CHAIN_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// Size of the device config space we expose: mac[6] and status (the status field is only
/// meaningful with VIRTIO_NET_F_STATUS, which is not offered, but reads stay in range).
pub const CONFIG_SPACE_LEN: usize = 8;

/// Receive offloads (what the guest lets the TAP hand it unfinished) and the TUN_F_* flag
/// each maps to. UFO/USO are left out: the host kernel here cannot produce them for us to
/// test, and a guest never needs them to be correct.
const GUEST_OFFLOADS: [(u32, u32); 4] = [
    (VIRTIO_NET_F_GUEST_CSUM, libc::TUN_F_CSUM),
    (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
    (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
    (VIRTIO_NET_F_GUEST_ECN, libc::TUN_F_TSO_ECN),
];

/// Transmit offloads: a TAP with a vnet header accepts partial checksums and GSO frames
/// from us without any setting, so offering them needs nothing but passing the header on.
const HOST_OFFLOADS: [u32; 4] = [
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_ECN,
];

/// Counters a test or a benchmark can read; the guest cannot make them lie about drops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames read from the backend that no guest buffer could hold (too small or malformed).
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Chains that were not a valid frame: returned to the guest unsent.
    pub tx_malformed: u64,
    /// Frames the backend refused with an error other than "full".
    pub tx_errors: u64,
    /// Chains whose head index was out of range, so could not even be returned.
    pub bad_heads: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("chain has no readable descriptor (bad head index or descriptor table)")]
    Empty,
    #[error("chain ends after {0} descriptors with the next flag still set (a loop or a bad next index)")]
    Truncated(usize),
    #[error("chain has more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("descriptor has the wrong direction for this queue")]
    WrongDirection,
    #[error("descriptor points outside guest memory")]
    BadAddress,
    #[error("chain holds {0} bytes, more than the {MAX_BUFFER_LEN}-byte limit")]
    TooLong(usize),
    #[error("chain of {0} bytes is shorter than the virtio-net header")]
    TooShort(usize),
    #[error("chain has room for {room} bytes, the frame needs {needed}")]
    NoRoom { room: usize, needed: usize },
}

/// Feature bits on offer.
pub fn avail_features(has_mac: bool) -> u64 {
    let mut features = 1u64 << VIRTIO_F_VERSION_1;
    for (bit, _) in GUEST_OFFLOADS {
        features |= 1 << bit;
    }
    for bit in HOST_OFFLOADS {
        features |= 1 << bit;
    }
    if has_mac {
        features |= 1 << VIRTIO_NET_F_MAC;
    }
    features
}

/// The TUN_F_* flags for the receive offloads in `acked`.
///
/// The specification makes GUEST_TSO4/6 depend on GUEST_CSUM and GUEST_ECN on a TSO bit,
/// and the kernel refuses TUNSETOFFLOAD (EINVAL) for a set that breaks those rules; a
/// driver that acked such a set gets only the offloads whose prerequisites it also acked.
pub fn tun_offload_flags(acked: u64) -> u32 {
    let mut flags = GUEST_OFFLOADS
        .iter()
        .filter(|(bit, _)| acked & (1 << bit) != 0)
        .fold(0, |flags, (_, tun)| flags | tun);
    if flags & libc::TUN_F_CSUM == 0 {
        flags &= !(libc::TUN_F_TSO4 | libc::TUN_F_TSO6);
    }
    if flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) == 0 {
        flags &= !libc::TUN_F_TSO_ECN;
    }
    flags
}

pub struct NetEngine<B: NetBackend> {
    pub backend: B,
    mac: Option<MacAddr>,
    rx_frame: Vec<u8>,
    /// Length of the frame in `rx_frame` that still waits for a guest buffer.
    rx_pending: Option<usize>,
    rx_descs: Vec<Descriptor>,
    tx_frame: Vec<u8>,
    /// A frame the backend refused as full: (descriptor head, length).
    tx_pending: Option<(u16, usize)>,
    pub stats: NetStats,
}

impl<B: NetBackend> NetEngine<B> {
    pub fn new(backend: B, mac: Option<MacAddr>) -> Self {
        NetEngine {
            backend,
            mac,
            rx_frame: vec![0; MAX_BUFFER_LEN],
            rx_pending: None,
            rx_descs: Vec::with_capacity(QUEUE_SIZE as usize),
            tx_frame: vec![0; MAX_BUFFER_LEN],
            tx_pending: None,
            stats: NetStats::default(),
        }
    }

    pub fn avail_features(&self) -> u64 {
        avail_features(self.mac.is_some())
    }

    pub fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut space = [0u8; CONFIG_SPACE_LEN];
        if let Some(mac) = self.mac {
            space[..6].copy_from_slice(&mac.bytes());
        }
        space
    }

    /// Called when the driver sets DRIVER_OK: programs the TAP for the negotiated offloads.
    pub fn activate(&mut self, acked_features: u64) -> io::Result<()> {
        self.backend.set_offload(tun_offload_flags(acked_features))
    }

    /// Forgets in-flight frames (device reset): the rings they belonged to are gone.
    pub fn reset(&mut self) {
        self.rx_pending = None;
        self.tx_pending = None;
    }

    /// True while a received frame waits for the guest to post a buffer.
    pub fn rx_waiting_for_buffers(&self) -> bool {
        self.rx_pending.is_some()
    }

    /// True while a transmit frame waits for the backend to become writable.
    pub fn tx_waiting_for_backend(&self) -> bool {
        self.tx_pending.is_some()
    }

    fn return_chain<M: GuestMemory>(&mut self, mem: &M, queue: &mut Queue, head: u16, len: u32) {
        if let Err(e) = queue.add_used(mem, head, len) {
            // Only a bad head index or a used ring outside memory gets here; the guest
            // broke its own queue, and we move on rather than stop the device loop.
            debug!("net: cannot return descriptor {head}: {e}");
            self.stats.bad_heads += 1;
        }
    }

    /// Moves frames from the backend into guest receive buffers until the backend is empty
    /// or the guest has no buffer left. Returns whether the used ring changed.
    pub fn process_rx<M: GuestMemory>(&mut self, mem: &M, queue: &mut Queue) -> bool {
        let mut used = false;
        loop {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.rx_frame) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        warn!("net: reading from the backend failed: {e}");
                        break;
                    }
                },
            };
            if len < VNET_HDR_LEN {
                // The TAP always prepends a header; anything shorter is not a frame.
                self.stats.rx_dropped += 1;
                self.rx_pending = None;
                continue;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                self.rx_pending = Some(len);
                break;
            };
            self.rx_pending = None;
            let head = chain.head_index();
            // Without merged buffers, each frame is exactly one buffer.
            self.rx_frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            match write_to_chain(mem, chain, &mut self.rx_descs, &self.rx_frame[..len]) {
                Ok(()) => {
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
                    self.return_chain(mem, queue, head, len as u32);
                }
                Err(e) => {
                    debug!("net: receive chain {head} unusable: {e}");
                    self.stats.rx_dropped += 1;
                    self.return_chain(mem, queue, head, 0);
                }
            }
            used = true;
        }
        used
    }

    /// Sends the guest's transmit chains to the backend until the ring is empty or the
    /// backend is full. Returns whether the used ring changed.
    pub fn process_tx<M: GuestMemory>(&mut self, mem: &M, queue: &mut Queue) -> bool {
        let mut used = false;
        if let Some((head, len)) = self.tx_pending {
            if !self.send_tx_frame(mem, queue, head, len) {
                return false;
            }
            used = true;
        }
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            used = true;
            match read_from_chain(mem, chain, &mut self.tx_frame) {
                Ok(len) => {
                    if !self.send_tx_frame(mem, queue, head, len) {
                        break;
                    }
                }
                Err(e) => {
                    debug!("net: dropping transmit chain {head}: {e}");
                    self.stats.tx_malformed += 1;
                    self.return_chain(mem, queue, head, 0);
                }
            }
        }
        used
    }

    /// Returns false when the backend is full and the frame now waits in `tx_pending`.
    fn send_tx_frame<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
        head: u16,
        len: usize,
    ) -> bool {
        loop {
            match self.backend.write_frame(&self.tx_frame[..len]) {
                Ok(_) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += (len - VNET_HDR_LEN) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tx_pending = Some((head, len));
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. EINVAL for a header the kernel rejects, EIO while the TAP is
                    // down: the guest made or met a bad frame, drop it.
                    debug!("net: backend refused a frame: {e}");
                    self.stats.tx_errors += 1;
                }
            }
            break;
        }
        self.tx_pending = None;
        self.return_chain(mem, queue, head, 0);
        true
    }
}

/// The descriptors of a chain, or why it is not a chain, into `out` (reused to spare an
/// allocation per frame). The iterator of virtio-queue stops silently at a loop (after
/// queue-size steps), at a `next` index out of range and at an unreadable table; a chain
/// whose last descriptor still says "next" was cut short by one of those and is refused
/// rather than half used.
pub fn collect_chain<I>(chain: I, out: &mut Vec<Descriptor>) -> Result<(), ChainError>
where
    I: Iterator<Item = Descriptor>,
{
    out.clear();
    out.extend(chain.take(MAX_CHAIN_DESCRIPTORS + 1));
    if out.len() > MAX_CHAIN_DESCRIPTORS {
        return Err(ChainError::TooManyDescriptors);
    }
    match out.last() {
        None => Err(ChainError::Empty),
        Some(last) if last.has_next() => Err(ChainError::Truncated(out.len())),
        Some(_) => Ok(()),
    }
}

/// Copies a device-readable chain into `buf`, refusing anything that is not a frame.
fn read_from_chain<M, I>(mem: &M, chain: I, buf: &mut [u8]) -> Result<usize, ChainError>
where
    M: GuestMemory,
    I: Iterator<Item = Descriptor>,
{
    let mut len = 0usize;
    let mut count = 0usize;
    let mut last_has_next = false;
    for desc in chain {
        count += 1;
        if count > MAX_CHAIN_DESCRIPTORS {
            return Err(ChainError::TooManyDescriptors);
        }
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            return Err(ChainError::WrongDirection);
        }
        let desc_len = desc.len() as usize;
        let end = len
            .checked_add(desc_len)
            .filter(|end| *end <= buf.len())
            .ok_or(ChainError::TooLong(len.saturating_add(desc_len)))?;
        mem.read_slice(&mut buf[len..end], desc.addr())
            .map_err(|_| ChainError::BadAddress)?;
        len = end;
    }
    if count == 0 {
        return Err(ChainError::Empty);
    }
    if last_has_next {
        return Err(ChainError::Truncated(count));
    }
    if len < VNET_HDR_LEN {
        return Err(ChainError::TooShort(len));
    }
    Ok(len)
}

/// Copies `frame` into a device-writable chain; checks the whole chain before writing.
fn write_to_chain<M, I>(
    mem: &M,
    chain: I,
    descs: &mut Vec<Descriptor>,
    frame: &[u8],
) -> Result<(), ChainError>
where
    M: GuestMemory,
    I: Iterator<Item = Descriptor>,
{
    collect_chain(chain, descs)?;
    let mut room = 0usize;
    for desc in descs.iter() {
        if !desc.is_write_only() {
            return Err(ChainError::WrongDirection);
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Write) {
            return Err(ChainError::BadAddress);
        }
        room = room.saturating_add(desc.len() as usize);
    }
    if room < frame.len() {
        return Err(ChainError::NoRoom {
            room,
            needed: frame.len(),
        });
    }
    let mut off = 0;
    for desc in descs.iter() {
        if off == frame.len() {
            break;
        }
        let n = (desc.len() as usize).min(frame.len() - off);
        mem.write_slice(&frame[off..off + n], desc.addr())
            .map_err(|_| ChainError::BadAddress)?;
        off += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::net::backend::MemoryBackend;
    use crate::devices::virtio::test_utils::{test_memory, Buf, DriverQueue};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const MEM_SIZE: usize = 0x40_0000;
    const DATA: u64 = 0x10_0000;

    fn setup() -> (
        GuestMemoryMmap,
        DriverQueue,
        Queue,
        NetEngine<MemoryBackend>,
    ) {
        let mem = test_memory(MEM_SIZE);
        let dq = DriverQueue::new(&mem, GuestAddress(0x1000), 16);
        let q = dq.device_queue();
        let engine = NetEngine::new(MemoryBackend::default(), None);
        (mem, dq, q, engine)
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn tx_gathers_a_chain_into_one_frame() {
        let (mem, mut dq, mut q, mut net) = setup();
        let f = frame(&[0xaa; 60]);
        mem.write_slice(&f[..VNET_HDR_LEN], GuestAddress(DATA))
            .unwrap();
        mem.write_slice(&f[VNET_HDR_LEN..], GuestAddress(DATA + 0x1000))
            .unwrap();
        let head = dq.add_chain(&[
            Buf::read(DATA, VNET_HDR_LEN as u32),
            Buf::read(DATA + 0x1000, 60),
        ]);
        assert!(net.process_tx(&mem, &mut q));
        assert_eq!(net.backend.outbound, vec![f]);
        assert_eq!(dq.used_idx(), 1);
        assert_eq!(dq.used_elem(0), (head as u32, 0));
        assert_eq!(net.stats.tx_frames, 1);
        assert_eq!(net.stats.tx_bytes, 60);
    }

    #[test]
    fn tx_malformed_chains_are_returned_unsent_and_the_queue_keeps_working() {
        let (mem, mut dq, mut q, mut net) = setup();
        // Device-writable descriptor in a transmit chain.
        dq.add_chain(&[Buf::write(DATA, 64)]);
        // Shorter than the virtio-net header.
        dq.add_chain(&[Buf::read(DATA, 4)]);
        // Outside guest memory.
        dq.add_chain(&[Buf::read(MEM_SIZE as u64 - 8, 64)]);
        // Over the largest frame.
        dq.add_chain(&[Buf::read(DATA, MAX_BUFFER_LEN as u32), Buf::read(DATA, 1)]);
        // A descriptor that links to itself.
        let looped = dq.add_chain(&[Buf::read(DATA, 64)]);
        dq.set_desc(looped, DATA, 64, 1, looped);
        // A `next` index past the end of the table.
        let bad_next = dq.add_chain(&[Buf::read(DATA, 64)]);
        dq.set_desc(bad_next, DATA, 64, 1, 999);
        // More descriptors than the queue holds, through an indirect table.
        let many: Vec<Buf> = (0..MAX_CHAIN_DESCRIPTORS as u64 + 1)
            .map(|i| Buf::read(DATA + i, 1))
            .collect();
        dq.add_indirect_chain(GuestAddress(0x30_0000), &many);
        // A head index past the end of the table: cannot even be returned.
        dq.publish(1000);
        // And a good frame after all that.
        dq.add_chain(&[Buf::read(DATA, 64)]);

        assert!(net.process_tx(&mem, &mut q));
        assert_eq!(net.stats.tx_malformed, 8);
        assert_eq!(net.stats.bad_heads, 1);
        assert_eq!(net.stats.tx_frames, 1);
        assert_eq!(net.backend.outbound.len(), 1);
        // Everything but the out-of-range head went back to the guest, with nothing written.
        assert_eq!(dq.used_idx(), 8);
        for pos in 0..8 {
            assert_eq!(dq.used_elem(pos).1, 0);
        }
    }

    #[test]
    fn tx_waits_for_a_full_backend_and_resumes_in_order() {
        let (mem, mut dq, mut q, mut net) = setup();
        net.backend.outbound_capacity = Some(1);
        for i in 0..3u8 {
            mem.write_slice(&frame(&[i; 20]), GuestAddress(DATA + i as u64 * 0x100))
                .unwrap();
            dq.add_chain(&[Buf::read(DATA + i as u64 * 0x100, 32)]);
        }
        assert!(net.process_tx(&mem, &mut q));
        assert_eq!(net.backend.outbound.len(), 1);
        assert!(net.tx_waiting_for_backend());
        // The refused frame keeps its descriptor: the guest sees one completion only.
        assert_eq!(dq.used_idx(), 1);
        // Still full: a retry changes nothing.
        assert!(!net.process_tx(&mem, &mut q));
        assert_eq!(dq.used_idx(), 1);

        let first = net.backend.outbound.pop().unwrap();
        assert_eq!(first[VNET_HDR_LEN], 0);
        net.backend.outbound_capacity = None;
        assert!(net.process_tx(&mem, &mut q));
        assert!(!net.tx_waiting_for_backend());
        assert_eq!(dq.used_idx(), 3);
        let order: Vec<u8> = net
            .backend
            .outbound
            .iter()
            .map(|f| f[VNET_HDR_LEN])
            .collect();
        assert_eq!(order, vec![1, 2]);
    }

    #[test]
    fn rx_fills_one_chain_per_frame_with_num_buffers_one() {
        let (mem, mut dq, mut q, mut net) = setup();
        let f = frame(&[0x55; 100]);
        net.backend.inbound.push_back(f.clone());
        let head = dq.add_chain(&[Buf::write(DATA, 50), Buf::write(DATA + 0x1000, 2000)]);
        assert!(net.process_rx(&mem, &mut q));
        assert_eq!(dq.used_elem(0), (head as u32, f.len() as u32));
        let mut got = vec![0u8; f.len()];
        mem.read_slice(&mut got[..50], GuestAddress(DATA)).unwrap();
        mem.read_slice(&mut got[50..], GuestAddress(DATA + 0x1000))
            .unwrap();
        assert_eq!(&got[NUM_BUFFERS_OFFSET..VNET_HDR_LEN], &1u16.to_le_bytes());
        assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
        assert_eq!(net.stats.rx_frames, 1);
    }

    #[test]
    fn rx_stops_reading_the_backend_until_the_guest_adds_buffers() {
        let (mem, mut dq, mut q, mut net) = setup();
        for i in 0..3u8 {
            net.backend.inbound.push_back(frame(&[i; 30]));
        }
        // No buffers: one frame is taken and held, the other two stay in the backend.
        assert!(!net.process_rx(&mem, &mut q));
        assert!(net.rx_waiting_for_buffers());
        assert_eq!(net.backend.inbound.len(), 2);

        dq.add_chain(&[Buf::write(DATA, 2048)]);
        assert!(net.process_rx(&mem, &mut q));
        assert_eq!(dq.used_idx(), 1);
        assert!(net.rx_waiting_for_buffers());
        assert_eq!(net.backend.inbound.len(), 1);

        dq.add_chain(&[Buf::write(DATA + 0x1000, 2048)]);
        dq.add_chain(&[Buf::write(DATA + 0x2000, 2048)]);
        dq.add_chain(&[Buf::write(DATA + 0x3000, 2048)]);
        assert!(net.process_rx(&mem, &mut q));
        assert_eq!(dq.used_idx(), 3);
        assert!(!net.rx_waiting_for_buffers());
        // Frames arrive in order, none lost.
        for (pos, addr) in [(0u16, DATA), (1, DATA + 0x1000), (2, DATA + 0x2000)] {
            let mut b = [0u8; 1];
            mem.read_slice(&mut b, GuestAddress(addr + VNET_HDR_LEN as u64))
                .unwrap();
            assert_eq!(b[0], pos as u8);
        }
        assert_eq!(net.stats.rx_dropped, 0);
    }

    #[test]
    fn rx_bad_chains_are_returned_empty_and_the_frame_dropped() {
        let (mem, mut dq, mut q, mut net) = setup();
        for i in 0..4u8 {
            net.backend.inbound.push_back(frame(&[i; 100]));
        }
        dq.add_chain(&[Buf::read(DATA, 2048)]); // wrong direction
        dq.add_chain(&[Buf::write(DATA, 16)]); // too small for the frame
        dq.add_chain(&[Buf::write(MEM_SIZE as u64 - 16, 2048)]); // outside memory
        dq.add_chain(&[Buf::write(DATA, 2048)]); // good
        assert!(net.process_rx(&mem, &mut q));
        assert_eq!(dq.used_idx(), 4);
        for pos in 0..3 {
            assert_eq!(dq.used_elem(pos).1, 0);
        }
        assert_eq!(dq.used_elem(3).1, 112);
        assert_eq!(net.stats.rx_dropped, 3);
        let mut b = [0u8; 1];
        mem.read_slice(&mut b, GuestAddress(DATA + VNET_HDR_LEN as u64))
            .unwrap();
        assert_eq!(b[0], 3);
    }

    #[test]
    fn rx_drops_backend_reads_shorter_than_a_header() {
        let (mem, mut dq, mut q, mut net) = setup();
        net.backend.inbound.push_back(vec![1, 2, 3]);
        net.backend.inbound.push_back(frame(&[9; 10]));
        dq.add_chain(&[Buf::write(DATA, 2048)]);
        assert!(net.process_rx(&mem, &mut q));
        assert_eq!(net.stats.rx_dropped, 1);
        assert_eq!(dq.used_elem(0).1, 22);
    }

    #[test]
    fn reset_forgets_in_flight_frames() {
        let (mem, _dq, mut q, mut net) = setup();
        net.backend.inbound.push_back(frame(&[1; 10]));
        net.process_rx(&mem, &mut q);
        assert!(net.rx_waiting_for_buffers());
        net.reset();
        assert!(!net.rx_waiting_for_buffers());
        assert!(!net.tx_waiting_for_backend());
    }

    #[test]
    fn offered_features_and_offload_mapping() {
        let f = avail_features(true);
        for bit in [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
        ] {
            assert_ne!(f & (1 << bit), 0, "bit {bit}");
        }
        assert_eq!(f & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
        assert_eq!(f & (1 << VIRTIO_NET_F_GUEST_UFO), 0);
        assert_eq!(avail_features(false) & (1 << VIRTIO_NET_F_MAC), 0);

        assert_eq!(tun_offload_flags(0), 0);
        // Transmit offloads need no TAP setting.
        assert_eq!(tun_offload_flags(1 << VIRTIO_NET_F_HOST_TSO4), 0);
        let acked = (1 << VIRTIO_NET_F_GUEST_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_TSO4)
            | (1 << VIRTIO_NET_F_GUEST_TSO6);
        assert_eq!(
            tun_offload_flags(acked),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        // Prerequisites missing: the dependent offloads are left out.
        assert_eq!(tun_offload_flags(1 << VIRTIO_NET_F_GUEST_TSO4), 0);
        assert_eq!(
            tun_offload_flags((1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_ECN)),
            libc::TUN_F_CSUM
        );
        let mut net = NetEngine::new(MemoryBackend::default(), None);
        net.activate(acked).unwrap();
        assert_eq!(net.backend.offload_flags, Some(tun_offload_flags(acked)));
    }

    /// A hostile driver writing random descriptors (addresses, lengths, flags, next
    /// indices, indirect tables) and random heads: no panic, no used length beyond what the
    /// chain could hold, and the device keeps working on a sane queue afterwards.
    #[test]
    fn random_descriptor_tables_do_not_break_the_datapath() {
        let mem = test_memory(MEM_SIZE);
        let mut txq = DriverQueue::new(&mem, GuestAddress(0x1000), 16);
        let mut rxq = DriverQueue::new(&mem, GuestAddress(0x4000), 16);
        let (mut tx, mut rx) = (txq.device_queue(), rxq.device_queue());
        let mut net = NetEngine::new(MemoryBackend::default(), None);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            let r = rand();
            let q = if r & 1 == 0 { &mut txq } else { &mut rxq };
            for _ in 0..(r >> 1) % 4 {
                let d = rand();
                let addr = match d % 4 {
                    0 => d >> 8,
                    1 => MEM_SIZE as u64 - (d >> 8) % 4096,
                    _ => DATA + (d >> 8) % 0x10_0000,
                };
                let len = match (d >> 2) % 4 {
                    0 => (d >> 32) as u32,
                    _ => ((d >> 32) % 4096) as u32,
                };
                // NEXT, WRITE and INDIRECT in any combination.
                let flags = ((d >> 40) % 8) as u16;
                let next = ((d >> 48) % 20) as u16;
                q.set_desc(((d >> 56) % 16) as u16, addr, len, flags, next);
            }
            q.publish(((r >> 8) % 18) as u16);
            if r % 3 == 0 {
                net.backend
                    .inbound
                    .push_back(frame(&vec![7u8; ((r >> 16) % 1600) as usize]));
            }
            net.process_tx(&mem, &mut tx);
            net.process_rx(&mem, &mut rx);
        }
        assert!(net.stats.tx_malformed > 0);
        assert!(net.stats.rx_dropped > 0);
        for sent in &net.backend.outbound {
            assert!(sent.len() >= VNET_HDR_LEN && sent.len() <= MAX_BUFFER_LEN);
        }
        for pos in 0..rxq.used_idx().min(16) {
            assert!(rxq.used_elem(pos).1 as usize <= MAX_BUFFER_LEN);
        }

        // Fresh, well-formed queues on the same engine still carry frames.
        let mut txq = DriverQueue::new(&mem, GuestAddress(0x8000), 16);
        let mut tx = txq.device_queue();
        net.backend.outbound.clear();
        mem.write_slice(&frame(&[1; 50]), GuestAddress(DATA))
            .unwrap();
        txq.add_chain(&[Buf::read(DATA, 62)]);
        assert!(net.process_tx(&mem, &mut tx));
        assert_eq!(net.backend.outbound.len(), 1);
    }

    #[test]
    fn config_space_holds_the_mac() {
        let mac = MacAddr([2, 0, 0, 0, 0, 9]);
        let net = NetEngine::new(MemoryBackend::default(), Some(mac));
        assert_eq!(&net.config_space()[..6], &mac.bytes());
    }
}
