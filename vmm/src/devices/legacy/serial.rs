//! COM1: a 16550A UART (vm-superio) whose output goes to stdout or a file and whose
//! interrupt is an eventfd wired to IRQ 4 with KVM_IRQFD.

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM_PORT_LEN: u64 = 8;

/// Raises an interrupt by writing to an eventfd registered as an irqfd.
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new() -> io::Result<Self> {
        Ok(Self(EventFd::new(libc::EFD_NONBLOCK)?))
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

pub type SerialOut = Box<dyn Write + Send>;

pub struct SerialDevice {
    uart: Serial<EventFdTrigger, NoEvents, SerialOut>,
}

impl SerialDevice {
    pub fn new(out: SerialOut) -> io::Result<Self> {
        Ok(Self {
            uart: Serial::new(EventFdTrigger::new()?, out),
        })
    }

    /// The eventfd to register as the irqfd for the UART's interrupt line.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.uart.interrupt_evt().eventfd()
    }

    /// Queues bytes for the guest to read (console input).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if let ([byte], Ok(offset)) = (&mut *data, u8::try_from(offset)) {
            *byte = self.uart.read(offset);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            // A failed write to the output loses that byte; the guest must not notice.
            if let Err(e) = self.uart.write(offset, *byte) {
                log::debug!("serial output error: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_output_and_raise_the_interrupt() {
        let out = Capture::default();
        let mut dev = SerialDevice::new(Box::new(out.clone())).unwrap();
        // Enable the "transmitter empty" interrupt; acknowledge the one that raises (reading
        // IIR) and drain the eventfd, then send "hi".
        dev.write(COM1_PORT, 1, &[0x02]);
        let mut iir = [0u8];
        dev.read(COM1_PORT, 2, &mut iir);
        assert_eq!(iir[0] & 0x0f, 0x02, "THR empty pending");
        assert!(dev.interrupt_evt().read().unwrap() >= 1);
        dev.write(COM1_PORT, 0, b"h");
        dev.write(COM1_PORT, 0, b"i");
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        assert!(dev.interrupt_evt().read().unwrap() >= 1);
        // Line status: transmitter empty.
        let mut lsr = [0u8];
        dev.read(COM1_PORT, 5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Wider accesses are not UART registers.
        let mut wide = [0u8; 2];
        dev.read(COM1_PORT, 0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }

    #[test]
    fn input_is_readable_by_the_guest() {
        let mut dev = SerialDevice::new(Box::new(io::sink())).unwrap();
        assert_eq!(dev.enqueue_input(b"x"), 1);
        let mut b = [0u8];
        dev.read(COM1_PORT, 0, &mut b);
        assert_eq!(b[0], b'x');
    }
}
