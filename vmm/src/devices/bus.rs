//! Routes port I/O and MMIO accesses from vCPU exits to the device that owns the address.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reached through a bus. `base` is where its range starts, `offset` is the access
/// address minus `base`.
pub trait BusDevice: Send {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

/// An address space (port I/O or MMIO) shared by all vCPU threads.
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<Range, Arc<Mutex<dyn BusDevice>>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        if let Some((range, _)) = self.find(base).or_else(|| self.find(base + len - 1)) {
            return Err(BusError::Overlap {
                base,
                len,
                other: range.base,
            });
        }
        // A new range can also swallow an existing one whole.
        if let Some((range, _)) = self
            .devices
            .range(Range { base, len: 0 }..)
            .next()
            .filter(|(r, _)| r.base < base + len)
        {
            return Err(BusError::Overlap {
                base,
                len,
                other: range.base,
            });
        }
        self.devices.insert(Range { base, len }, device);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(Range, &Arc<Mutex<dyn BusDevice>>)> {
        let (range, dev) = self
            .devices
            .range(
                ..=Range {
                    base: addr,
                    len: u64::MAX,
                },
            )
            .next_back()?;
        (addr - range.base < range.len).then_some((*range, dev))
    }

    /// Returns false when no device owns `addr`; the caller decides what an unclaimed access
    /// means (reads of unclaimed ports return all ones on real hardware).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((range, dev)) => {
                dev.lock().unwrap_or_else(|e| e.into_inner()).read(
                    range.base,
                    addr - range.base,
                    data,
                );
                true
            }
            None => false,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((range, dev)) => {
                dev.lock().unwrap_or_else(|e| e.into_inner()).write(
                    range.base,
                    addr - range.base,
                    data,
                );
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Vec<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last_write.push((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_to_owner_with_offset() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(dev.lock().unwrap().last_write, vec![(0x3f8, 0, vec![0x41])]);
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev.clone(), 0x108, 0x10),
            Err(BusError::Overlap { other: 0x100, .. })
        ));
        assert!(matches!(
            bus.insert(dev.clone(), 0xf0, 0x11),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev.clone(), 0x80, 0x100),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(dev.clone(), 0x200, 0).is_err());
        assert!(bus.insert(dev.clone(), u64::MAX, 2).is_err());
        bus.insert(dev, 0x110, 0x10).unwrap();
    }
}
