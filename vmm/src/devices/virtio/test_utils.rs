//! The driver's side of a split virtqueue, laid out in a `GuestMemoryMmap`, so that device
//! code can be exercised without a guest: tests (and the block benchmark) write descriptor
//! tables and available rings the way a driver would, including malformed ones, and read
//! back what the device put into the used ring.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use vmm_sys_util::eventfd::EventFd;

use super::device::{ActivateError, InterruptKind, VirtioDevice, VirtioInterrupt};

/// Guest memory starting at address 0.
pub fn test_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("mmap guest memory for tests")
}

/// Counts the interrupts a device raised.
#[derive(Debug, Default)]
pub struct MockInterrupt {
    queue: AtomicUsize,
    config: AtomicUsize,
}

impl MockInterrupt {
    pub fn queue_count(&self) -> usize {
        self.queue.load(Ordering::SeqCst)
    }
    pub fn config_count(&self) -> usize {
        self.config.load(Ordering::SeqCst)
    }
}

impl VirtioInterrupt for MockInterrupt {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        match kind {
            InterruptKind::Queue => self.queue.fetch_add(1, Ordering::SeqCst),
            InterruptKind::Config => self.config.fetch_add(1, Ordering::SeqCst),
        };
        Ok(())
    }
}

/// One buffer of a chain, as the driver describes it.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (VRING_DESC_F_WRITE).
    pub write: bool,
}

impl Buf {
    pub fn read(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: false,
        }
    }
    pub fn write(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: true,
        }
    }
}

const DESC_SIZE: u64 = 16;

/// A split virtqueue as the driver sees it.
pub struct DriverQueue {
    mem: GuestMemoryMmap,
    size: u16,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
}

impl DriverQueue {
    /// Lays out the descriptor table at `base` (16-byte aligned), then the available and used
    /// rings, and zeroes them.
    pub fn new(mem: &GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        assert!(size.is_power_of_two() && base.0.is_multiple_of(16));
        let desc_table = base;
        let avail_ring = desc_table.unchecked_add(DESC_SIZE * size as u64);
        let avail_len = 6 + 2 * size as u64;
        let used_ring = GuestAddress((avail_ring.0 + avail_len + 3) & !3);
        let q = Self {
            mem: mem.clone(),
            size,
            desc_table,
            avail_ring,
            used_ring,
            next_desc: 0,
            avail_idx: 0,
        };
        let total = q.end().0 - base.0;
        mem.write_slice(&vec![0u8; total as usize], base)
            .expect("virtqueue rings fit in test memory");
        q
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// The first address after the used ring: free for data buffers.
    pub fn end(&self) -> GuestAddress {
        self.used_ring
            .unchecked_add(6 + 8 * self.size as u64)
            .unchecked_align_up(16)
    }

    pub fn desc_table(&self) -> GuestAddress {
        self.desc_table
    }
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail_ring
    }
    pub fn used_ring(&self) -> GuestAddress {
        self.used_ring
    }

    /// Writes descriptor `index` verbatim; `index` may be anything the test wants to corrupt.
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc_table.unchecked_add(DESC_SIZE * index as u64);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    /// Writes `bufs` as a linked chain into free descriptors (wrapping around the table) and
    /// publishes its head. Returns the head index.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        assert!(!bufs.is_empty() && bufs.len() <= self.size as usize);
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let idx = (head as usize + i) as u16 % self.size;
            let next = (idx + 1) % self.size;
            let mut flags = if b.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.set_desc(idx, b.addr, b.len, flags, next);
        }
        self.next_desc = ((head as usize + bufs.len()) % self.size as usize) as u16;
        self.publish(head);
        head
    }

    /// Writes an indirect table of `bufs` at `table` and publishes a one-descriptor chain
    /// pointing at it. Returns the head index.
    pub fn add_indirect_chain(&mut self, table: GuestAddress, bufs: &[Buf]) -> u16 {
        for (i, b) in bufs.iter().enumerate() {
            let mut flags = if b.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&b.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&b.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
            self.mem
                .write_slice(&raw, table.unchecked_add(DESC_SIZE * i as u64))
                .unwrap();
        }
        let head = self.next_desc;
        self.set_desc(
            head,
            table.0,
            (DESC_SIZE as usize * bufs.len()) as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        );
        self.next_desc = (head + 1) % self.size;
        self.publish(head);
        head
    }

    /// Puts `head` (any value, valid or not) into the next available ring slot and bumps the
    /// available index.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail_idx % self.size;
        self.mem
            .write_obj(head, self.avail_ring.unchecked_add(4 + 2 * slot as u64))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Overwrites the available index as a (possibly misbehaving) driver would.
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, self.avail_ring.unchecked_add(2))
            .unwrap();
    }

    /// EVENT_IDX: the driver asks for an interrupt once the used index passes `idx`.
    pub fn set_used_event(&self, idx: u16) {
        self.mem
            .write_obj(idx, self.avail_ring.unchecked_add(4 + 2 * self.size as u64))
            .unwrap();
    }

    /// EVENT_IDX: where the device asked to be notified next (avail_event).
    pub fn avail_event(&self) -> u16 {
        self.mem
            .read_obj(self.used_ring.unchecked_add(4 + 8 * self.size as u64))
            .unwrap()
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(self.used_ring.unchecked_add(2)).unwrap()
    }

    /// The used element at ring position `pos`: (descriptor head id, bytes written).
    pub fn used_elem(&self, pos: u16) -> (u32, u32) {
        let at = self
            .used_ring
            .unchecked_add(4 + 8 * (pos % self.size) as u64);
        let id: u32 = self.mem.read_obj(at).unwrap();
        let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
        (id, len)
    }

    /// The device's view of this queue, configured and ready as a transport would leave it
    /// after the driver set it up.
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_desc_table_address(self.desc_table).unwrap();
        q.try_set_avail_ring_address(self.avail_ring).unwrap();
        q.try_set_used_ring_address(self.used_ring).unwrap();
        q.set_ready(true);
        q
    }

    /// Activates a device whose only queue is this one, as the transport does on DRIVER_OK;
    /// `notify` stands in for the queue's ioeventfd.
    pub fn activate_device(
        &self,
        dev: &mut dyn VirtioDevice,
        interrupt: Arc<dyn VirtioInterrupt>,
        notify: EventFd,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        dev.activate(
            self.mem.clone(),
            interrupt,
            vec![self.device_queue()],
            vec![notify],
            acked_features,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_sees_published_chains() {
        let mem = test_memory(0x10000);
        let mut dq = DriverQueue::new(&mem, GuestAddress(0x1000), 8);
        let data = dq.end().0;
        let head = dq.add_chain(&[Buf::read(data, 16), Buf::write(data + 16, 1)]);
        let mut q = dq.device_queue();
        assert!(q.is_valid(&mem));
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        assert_eq!(chain.head_index(), head);
        let descs: Vec<_> = chain.collect();
        assert_eq!(descs.len(), 2);
        assert!(!descs[0].is_write_only() && descs[1].is_write_only());
        assert_eq!(descs[1].addr().0, data + 16);
        q.add_used(&mem, head, 1).unwrap();
        assert_eq!(dq.used_idx(), 1);
        assert_eq!(dq.used_elem(0), (head as u32, 1));
    }
}
