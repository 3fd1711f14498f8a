//! The virtio-vsock packet header (struct virtio_vsock_hdr) and moving packets between
//! descriptor chains and the host.

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Size of struct virtio_vsock_hdr on the wire.
pub const HDR_LEN: usize = 44;
/// Largest payload we put in, or accept from, one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// No chain may be longer than the queue (virtio 1.2, 2.7.5.3.1), indirect tables included.
pub const MAX_CHAIN_DESCRIPTORS: usize = 256;

pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// virtio_vsock_event id for "transport reset": the driver must drop every connection.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// A decoded header. Field names follow the specification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("chain has no readable descriptor (bad head index or descriptor table)")]
    Empty,
    #[error("chain ends with the next flag still set (a loop or a bad next index)")]
    Unterminated,
    #[error("chain has more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("descriptor has the wrong direction for this queue")]
    WrongDirection,
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress { addr: u64, len: u32 },
    #[error("chain of {0} bytes cannot hold a {HDR_LEN}-byte header")]
    TooShort(usize),
    #[error("header says {len} payload bytes; the chain carries {available}, the limit is {MAX_PAYLOAD}")]
    BadLength { len: u32, available: usize },
}

pub type Descriptor = virtio_queue::desc::split::Descriptor;

/// The descriptors of a chain into `descs` (reused across packets), checked for direction
/// and guest-memory bounds.
fn segments<M, I>(
    mem: &M,
    chain: I,
    writable: bool,
    descs: &mut Vec<Descriptor>,
) -> Result<(), PacketError>
where
    M: GuestMemory,
    I: Iterator<Item = Descriptor>,
{
    // The iterator stops silently after queue-size steps, at a bad `next` index or at an
    // unreadable table; a last descriptor that still says "next" shows it did.
    descs.clear();
    descs.extend(chain.take(MAX_CHAIN_DESCRIPTORS + 1));
    if descs.len() > MAX_CHAIN_DESCRIPTORS {
        return Err(PacketError::TooManyDescriptors);
    }
    match descs.last() {
        None => return Err(PacketError::Empty),
        Some(last) if last.has_next() => return Err(PacketError::Unterminated),
        Some(_) => {}
    }
    let access = if writable {
        Permissions::Write
    } else {
        Permissions::Read
    };
    for d in descs.iter() {
        if d.is_write_only() != writable {
            return Err(PacketError::WrongDirection);
        }
        if !mem.check_range(d.addr(), d.len() as usize, access) {
            return Err(PacketError::BadAddress {
                addr: d.addr().0,
                len: d.len(),
            });
        }
    }
    Ok(())
}

/// Reads a guest (TX) packet: its header, and its payload into `payload`. Returns the header
/// and the payload length, which is checked against what the chain really carries.
pub fn read_packet<M, I>(
    mem: &M,
    chain: I,
    descs: &mut Vec<Descriptor>,
    payload: &mut [u8],
) -> Result<(Header, usize), PacketError>
where
    M: GuestMemory,
    I: Iterator<Item = Descriptor>,
{
    segments(mem, chain, false, descs)?;
    let total: usize = descs.iter().map(|d| d.len() as usize).sum();
    if total < HDR_LEN {
        return Err(PacketError::TooShort(total));
    }
    let mut hdr_bytes = [0u8; HDR_LEN];
    let mut hdr_filled = 0;
    let mut data_len = 0;
    let limit = payload.len().min(MAX_PAYLOAD);
    for d in descs.iter() {
        let mut addr = d.addr();
        let mut left = d.len() as usize;
        if hdr_filled < HDR_LEN {
            let n = left.min(HDR_LEN - hdr_filled);
            mem.read_slice(&mut hdr_bytes[hdr_filled..hdr_filled + n], addr)
                .map_err(|_| bad_address(d))?;
            hdr_filled += n;
            left -= n;
            addr = GuestAddress(addr.0 + n as u64);
        }
        if left > 0 {
            let n = left.min(limit.saturating_sub(data_len));
            if n < left {
                // More payload than any valid packet carries.
                return Err(PacketError::BadLength {
                    len: Header::from_bytes(&hdr_bytes).len,
                    available: data_len + left,
                });
            }
            mem.read_slice(&mut payload[data_len..data_len + n], addr)
                .map_err(|_| bad_address(d))?;
            data_len += n;
        }
    }
    let hdr = Header::from_bytes(&hdr_bytes);
    if hdr.len as usize > data_len {
        return Err(PacketError::BadLength {
            len: hdr.len,
            available: data_len,
        });
    }
    // Trailing bytes beyond `len` (a driver may post a larger buffer) are ignored.
    Ok((hdr, hdr.len as usize))
}

fn bad_address(d: &Descriptor) -> PacketError {
    PacketError::BadAddress {
        addr: d.addr().0,
        len: d.len(),
    }
}

/// A checked device-writable (RX) chain, ready to receive one packet.
pub struct RxBuffer<'a> {
    descs: &'a [Descriptor],
    capacity: usize,
}

impl<'a> RxBuffer<'a> {
    /// Checks `chain`, keeping its descriptors in `descs` (reused across packets).
    pub fn new<M, I>(mem: &M, chain: I, descs: &'a mut Vec<Descriptor>) -> Result<Self, PacketError>
    where
        M: GuestMemory,
        I: Iterator<Item = Descriptor>,
    {
        segments(mem, chain, true, descs)?;
        let capacity = descs
            .iter()
            .fold(0usize, |acc, d| acc.saturating_add(d.len() as usize));
        if capacity < HDR_LEN {
            return Err(PacketError::TooShort(capacity));
        }
        Ok(RxBuffer { descs, capacity })
    }

    /// Room for payload after the header.
    pub fn payload_room(&self) -> usize {
        (self.capacity - HDR_LEN).min(MAX_PAYLOAD)
    }

    /// Writes header and payload; returns the bytes written (the used length).
    pub fn write<M: GuestMemory>(
        &self,
        mem: &M,
        hdr: &Header,
        payload: &[u8],
    ) -> Result<usize, PacketError> {
        debug_assert!(payload.len() <= self.payload_room());
        let hdr_bytes = hdr.to_bytes();
        let mut sources: [&[u8]; 2] = [&hdr_bytes, payload];
        let mut written = 0;
        for d in self.descs {
            let mut addr = d.addr();
            let mut room = d.len() as usize;
            for src in sources.iter_mut() {
                if room == 0 {
                    break;
                }
                let n = room.min(src.len());
                if n == 0 {
                    continue;
                }
                mem.write_slice(&src[..n], addr)
                    .map_err(|_| bad_address(d))?;
                *src = &src[n..];
                room -= n;
                written += n;
                addr = GuestAddress(addr.0 + n as u64);
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_wire_order() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: 0x1234_5678,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[20..24], &0x1234_5678u32.to_le_bytes());
        assert_eq!(&b[30..32], &OP_RW.to_le_bytes());
        assert_eq!(Header::from_bytes(&b), h);
    }
}
