//! COM1: a 16550A UART (vm-superio) whose output goes to stdout or a file and whose
//! interrupt is an eventfd wired to IRQ 4 with KVM_IRQFD.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
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

/// The UART's registers and unread input, for a snapshot (vm-superio's `SerialState` has no
/// serde support of its own).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SerialDeviceState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl SerialDevice {
    pub fn new(out: SerialOut) -> io::Result<Self> {
        Ok(Self {
            uart: Serial::new(EventFdTrigger::new()?, out),
        })
    }

    /// A UART that carries on from `state`: a restored guest's driver finds the divisor,
    /// line settings and enabled interrupts it programmed.
    pub fn from_state(out: SerialOut, state: &SerialDeviceState) -> io::Result<Self> {
        let state = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let uart = Serial::from_state(&state, EventFdTrigger::new()?, NoEvents, out).map_err(
            |e| match e {
                vm_superio::serial::Error::Trigger(e) => e,
                other => io::Error::new(io::ErrorKind::InvalidData, format!("{other}")),
            },
        )?;
        Ok(Self { uart })
    }

    pub fn save_state(&self) -> SerialDeviceState {
        let s = self.uart.state();
        SerialDeviceState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
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
    fn a_restored_uart_keeps_its_registers_and_input() {
        let mut dev = SerialDevice::new(Box::new(io::sink())).unwrap();
        dev.write(COM1_PORT, 3, &[0x83]); // DLAB on
        dev.write(COM1_PORT, 0, &[0x0c]); // divisor 12: 9600 baud
        dev.write(COM1_PORT, 3, &[0x03]); // 8N1, DLAB off
        dev.write(COM1_PORT, 7, &[0x5a]); // scratch
        dev.enqueue_input(b"ab");
        let state = dev.save_state();
        let json = serde_json::to_string(&state).unwrap();
        let back: SerialDeviceState = serde_json::from_str(&json).unwrap();
        let mut restored = SerialDevice::from_state(Box::new(io::sink()), &back).unwrap();
        assert_eq!(restored.save_state(), state);
        let mut b = [0u8];
        restored.read(COM1_PORT, 3, &mut b);
        assert_eq!(b[0], 0x03);
        restored.read(COM1_PORT, 7, &mut b);
        assert_eq!(b[0], 0x5a);
        restored.read(COM1_PORT, 0, &mut b);
        assert_eq!(b[0], b'a');
        assert_eq!(state.baud_divisor_low, 0x0c);
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
