//! Legacy ports Linux touches on a PC but that a microVM has nothing behind: writes are
//! dropped and reads return a fixed value, without logging each access.
//!
//! - 0x70-0x71 CMOS/RTC: reads return 0, so "update in progress" is never set and the
//!   kernel does not wait for a clock that does not tick.
//! - 0x80 POST code / I/O delay, 0x87 DMA page register, 0xed alternate delay port.
//!
//! The PIC (0x20, 0xa0, 0x4d0), PIT (0x40-0x43) and speaker (0x61) are handled inside KVM.
//! Other unclaimed ports read as all ones, as on an empty ISA bus.

use crate::devices::bus::BusDevice;

/// (base, length) of the ports absorbed by `PortSink`.
pub const SINK_RANGES: &[(u64, u64)] = &[(0x70, 2), (0x80, 1), (0x87, 1), (0xed, 1)];

#[derive(Default)]
pub struct PortSink;

impl BusDevice for PortSink {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::Bus;
    use std::sync::{Arc, Mutex};

    #[test]
    fn ranges_can_all_live_on_one_bus() {
        let mut bus = Bus::new();
        let sink = Arc::new(Mutex::new(PortSink));
        for &(base, len) in SINK_RANGES {
            bus.insert(sink.clone(), base, len).unwrap();
        }
        let mut b = [0xffu8];
        assert!(bus.read(0x71, &mut b));
        assert_eq!(b[0], 0);
        assert!(bus.write(0x80, &[0x12]));
    }
}
