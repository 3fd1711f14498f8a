//! Validation of a descriptor chain the guest handed over, before any device acts on it.
//!
//! `virtio_queue::DescriptorChain` stops iterating silently when the chain is malformed (a
//! loop exhausts its descriptor budget, a `next` index is out of range, an indirect table is
//! invalid, the lengths overflow). [`parse_chain`] turns that into an explicit error: a chain
//! whose last descriptor still says "next" did not end where the driver said it would.
//! It also checks the rules every device relies on: device-readable buffers come before
//! device-writable ones, every buffer lies in guest memory, and the chain is not longer than
//! the device allows.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

/// A contiguous guest buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain is empty or its head descriptor is unreadable")]
    Empty,
    #[error("descriptor chain does not terminate (loop, bad next index, bad indirect table or length overflow)")]
    Unterminated,
    #[error("descriptor chain has more than {max} descriptors")]
    TooManyDescriptors { max: usize },
    #[error("descriptor chain carries more than {max} bytes")]
    TooLarge { max: u64 },
    #[error("device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("descriptor buffer {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress { addr: u64, len: u32 },
}

/// Limits a device puts on the chains it accepts.
#[derive(Clone, Copy, Debug)]
pub struct ChainLimits {
    pub max_descriptors: usize,
    pub max_bytes: u64,
}

/// The buffers of one request, split by direction. Reused across requests to avoid
/// allocating on the data path.
#[derive(Debug, Default)]
pub struct ParsedChain {
    pub head: u16,
    pub readable: Vec<Segment>,
    pub writable: Vec<Segment>,
    pub readable_len: u64,
    pub writable_len: u64,
    /// The chain's final descriptor, if it is device-writable and inside guest memory.
    tail: Option<Segment>,
}

impl ParsedChain {
    fn clear(&mut self, head: u16) {
        self.head = head;
        self.readable.clear();
        self.writable.clear();
        self.readable_len = 0;
        self.writable_len = 0;
        self.tail = None;
    }

    /// The last byte of the chain if the driver made it device-writable: where devices like
    /// block put their status. Known even when the chain was refused for its shape.
    pub fn last_writable_byte(&self) -> Option<GuestAddress> {
        let last = self.tail?;
        (last.len > 0).then(|| GuestAddress(last.addr.0 + last.len as u64 - 1))
    }
}

/// Walks `chain` into `out`. On `ReadableAfterWritable`, `TooManyDescriptors` and
/// `TooLarge` the chain itself was well formed and the device may still report an error
/// status through [`ParsedChain::last_writable_byte`].
pub fn parse_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    limits: ChainLimits,
    out: &mut ParsedChain,
) -> Result<(), ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    out.clear(chain.head_index());
    let mut count = 0usize;
    let mut ended = false;
    let mut error = None;
    for desc in chain {
        count += 1;
        ended = !desc.has_next();
        let seg = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        let in_memory =
            seg.len == 0 || GuestMemoryBackend::check_range(mem, seg.addr, seg.len as usize);
        out.tail = (desc.is_write_only() && in_memory).then_some(seg);
        if error.is_some() {
            // Keep walking to learn whether the chain terminates at all.
            continue;
        }
        if count > limits.max_descriptors {
            error = Some(ChainError::TooManyDescriptors {
                max: limits.max_descriptors,
            });
            continue;
        }
        if !in_memory {
            error = Some(ChainError::BadAddress {
                addr: seg.addr.0,
                len: seg.len,
            });
            continue;
        }
        if desc.is_write_only() {
            out.writable.push(seg);
            out.writable_len += seg.len as u64;
        } else if !out.writable.is_empty() {
            error = Some(ChainError::ReadableAfterWritable);
            continue;
        } else {
            out.readable.push(seg);
            out.readable_len += seg.len as u64;
        }
        if out.readable_len + out.writable_len > limits.max_bytes {
            error = Some(ChainError::TooLarge {
                max: limits.max_bytes,
            });
        }
    }
    if count == 0 {
        return Err(ChainError::Empty);
    }
    if !ended {
        return Err(ChainError::Unterminated);
    }
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copies up to `buf.len()` bytes out of `segs`, starting `skip` bytes into them. Returns how
/// many bytes were copied.
pub fn read_from_segments(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    mut skip: u64,
    buf: &mut [u8],
) -> Result<usize, vm_memory::GuestMemoryError> {
    use vm_memory::Bytes;
    let mut done = 0;
    for seg in segs {
        if done == buf.len() {
            break;
        }
        let len = seg.len as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + n], GuestAddress(seg.addr.0 + skip))?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

/// Copies `data` into `segs`, starting `skip` bytes into them. Returns how many bytes fit.
pub fn write_to_segments(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    mut skip: u64,
    data: &[u8],
) -> Result<usize, vm_memory::GuestMemoryError> {
    use vm_memory::Bytes;
    let mut done = 0;
    for seg in segs {
        if done == data.len() {
            break;
        }
        let len = seg.len as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], GuestAddress(seg.addr.0 + skip))?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

/// The sub-range `[skip, skip + len)` of the byte stream `segs` describe, as segments.
pub fn sub_segments(segs: &[Segment], mut skip: u64, mut len: u64, out: &mut Vec<Segment>) {
    out.clear();
    for seg in segs {
        if len == 0 {
            break;
        }
        let seg_len = seg.len as u64;
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let n = (seg_len - skip).min(len);
        out.push(Segment {
            addr: GuestAddress(seg.addr.0 + skip),
            len: n as u32,
        });
        len -= n;
        skip = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{test_memory, Buf, DriverQueue};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::QueueT;

    const LIMITS: ChainLimits = ChainLimits {
        max_descriptors: 4,
        max_bytes: 0x4000,
    };

    fn parse_next(
        dq: &DriverQueue,
        mem: &GuestMemoryMmap,
    ) -> (ParsedChain, Result<(), ChainError>) {
        let mut q = dq.device_queue();
        let chain = q.pop_descriptor_chain(mem).expect("a published chain");
        let mut out = ParsedChain::default();
        let r = parse_chain(chain, mem, LIMITS, &mut out);
        (out, r)
    }

    fn setup() -> (GuestMemoryMmap, DriverQueue, u64) {
        let mem = test_memory(0x20000);
        let dq = DriverQueue::new(&mem, GuestAddress(0x1000), 8);
        let data = dq.end().0;
        (mem, dq, data)
    }

    #[test]
    fn well_formed_chain_is_split_by_direction() {
        let (mem, mut dq, d) = setup();
        dq.add_chain(&[
            Buf::read(d, 16),
            Buf::read(d + 16, 32),
            Buf::write(d + 64, 1),
        ]);
        let (p, r) = parse_next(&dq, &mem);
        r.unwrap();
        assert_eq!(p.readable.len(), 2);
        assert_eq!(p.readable_len, 48);
        assert_eq!(p.writable_len, 1);
        assert_eq!(p.last_writable_byte(), Some(GuestAddress(d + 64)));
    }

    #[test]
    fn loop_is_unterminated() {
        let (mem, mut dq, d) = setup();
        dq.set_desc(0, d, 16, VRING_DESC_F_NEXT as u16, 1);
        dq.set_desc(1, d + 16, 16, VRING_DESC_F_NEXT as u16, 0);
        dq.publish(0);
        assert_eq!(parse_next(&dq, &mem).1, Err(ChainError::Unterminated));
    }

    #[test]
    fn next_index_out_of_range_is_unterminated() {
        let (mem, mut dq, d) = setup();
        dq.set_desc(0, d, 16, VRING_DESC_F_NEXT as u16, 200);
        dq.publish(0);
        assert_eq!(parse_next(&dq, &mem).1, Err(ChainError::Unterminated));
    }

    #[test]
    fn head_out_of_range_is_empty() {
        let (mem, mut dq, _) = setup();
        dq.publish(9);
        assert_eq!(parse_next(&dq, &mem).1, Err(ChainError::Empty));
    }

    #[test]
    fn buffer_outside_memory_is_refused() {
        let (mem, mut dq, d) = setup();
        dq.add_chain(&[Buf::read(0x1f_fff0, 16), Buf::write(d, 1)]);
        assert_eq!(
            parse_next(&dq, &mem).1,
            Err(ChainError::BadAddress {
                addr: 0x1f_fff0,
                len: 16
            })
        );
        // Straddling the end of memory.
        let (mem, mut dq, d) = setup();
        dq.add_chain(&[Buf::read(d, 16), Buf::write(0x20000 - 4, 8)]);
        assert!(matches!(
            parse_next(&dq, &mem).1,
            Err(ChainError::BadAddress { .. })
        ));
        // Address arithmetic wrapping around.
        let (mem, mut dq, _) = setup();
        dq.add_chain(&[Buf::write(u64::MAX - 2, 16)]);
        assert!(matches!(
            parse_next(&dq, &mem).1,
            Err(ChainError::BadAddress { .. })
        ));
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let (mem, mut dq, d) = setup();
        dq.add_chain(&[
            Buf::write(d, 16),
            Buf::read(d + 16, 16),
            Buf::write(d + 32, 1),
        ]);
        let (p, r) = parse_next(&dq, &mem);
        assert_eq!(r, Err(ChainError::ReadableAfterWritable));
        assert_eq!(
            p.last_writable_byte(),
            Some(GuestAddress(d + 32)),
            "status byte still known"
        );
    }

    #[test]
    fn oversize_chains_are_refused() {
        let (mem, mut dq, d) = setup();
        let bufs: Vec<_> = (0..5).map(|i| Buf::read(d + 16 * i, 16)).collect();
        dq.add_chain(&bufs);
        assert_eq!(
            parse_next(&dq, &mem).1,
            Err(ChainError::TooManyDescriptors { max: 4 })
        );
        let (mem, mut dq, d) = setup();
        dq.add_chain(&[Buf::read(d, 0x3000), Buf::write(d + 0x3000, 0x2000)]);
        assert_eq!(
            parse_next(&dq, &mem).1,
            Err(ChainError::TooLarge { max: 0x4000 })
        );
    }

    #[test]
    fn length_overflow_is_unterminated() {
        let (mem, mut dq, d) = setup();
        dq.set_desc(0, d, u32::MAX, VRING_DESC_F_NEXT as u16, 1);
        dq.set_desc(1, d, 2, VRING_DESC_F_WRITE as u16, 0);
        dq.publish(0);
        assert_eq!(parse_next(&dq, &mem).1, Err(ChainError::Unterminated));
    }

    #[test]
    fn indirect_chains_are_followed_and_nested_indirect_refused() {
        let (mem, mut dq, d) = setup();
        let table = GuestAddress(d + 0x1000);
        dq.add_indirect_chain(table, &[Buf::read(d, 16), Buf::write(d + 16, 1)]);
        let (p, r) = parse_next(&dq, &mem);
        r.unwrap();
        assert_eq!((p.readable_len, p.writable_len), (16, 1));

        // An indirect descriptor inside an indirect table.
        let (mem, mut dq, d) = setup();
        let table = GuestAddress(d + 0x1000);
        dq.add_indirect_chain(table, &[Buf::read(d, 16), Buf::write(d + 16, 1)]);
        let flags = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&(d + 0x2000).to_le_bytes());
        raw[8..12].copy_from_slice(&16u32.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        vm_memory::Bytes::write_slice(&mem, &raw, GuestAddress(table.0 + 16)).unwrap();
        assert_eq!(parse_next(&dq, &mem).1, Err(ChainError::Unterminated));
    }

    #[test]
    fn segment_helpers_cross_buffer_boundaries() {
        let mem = test_memory(0x10000);
        let segs = [
            Segment {
                addr: GuestAddress(0x100),
                len: 4,
            },
            Segment {
                addr: GuestAddress(0x200),
                len: 8,
            },
        ];
        assert_eq!(
            write_to_segments(&mem, &segs, 2, &[1, 2, 3, 4, 5]).unwrap(),
            5
        );
        let mut buf = [0u8; 12];
        assert_eq!(read_from_segments(&mem, &segs, 0, &mut buf).unwrap(), 12);
        assert_eq!(buf, [0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0]);
        let mut sub = Vec::new();
        sub_segments(&segs, 3, 4, &mut sub);
        assert_eq!(
            sub,
            vec![
                Segment {
                    addr: GuestAddress(0x103),
                    len: 1
                },
                Segment {
                    addr: GuestAddress(0x200),
                    len: 3
                }
            ]
        );
    }
}
