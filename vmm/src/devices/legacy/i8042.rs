//! Enough of the i8042 keyboard controller for the guest to reset the machine: command 0xFE
//! on port 0x64 pulses the CPU reset line, which ends the VM with exit status 0.
//!
//! A few commands Linux's i8042 driver issues while probing are answered so that it gives up
//! cleanly instead of timing out; there is no keyboard behind it.

use std::collections::VecDeque;

use crate::devices::bus::BusDevice;

pub const DATA_PORT: u64 = 0x60;
pub const COMMAND_PORT: u64 = 0x64;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_PULSE_RESET: u8 = 0xfe;

const SELF_TEST_PASSED: u8 = 0x55;
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// Controller configuration: system flag set, keyboard interrupt and clock disabled.
const DEFAULT_CTR: u8 = 0x14;
/// Output port: A20 enabled, no reset asserted.
const DEFAULT_OUTPUT_PORT: u8 = 0x03;
/// Replies queued for the guest to read; a guest that never reads them cannot grow the
/// queue past this.
const OUTPUT_QUEUE_MAX: usize = 16;

pub struct I8042 {
    on_reset: Box<dyn FnMut() + Send>,
    output: VecDeque<u8>,
    ctr: u8,
    output_port: u8,
    last_was_command: bool,
    /// Command waiting for its data byte on port 0x60.
    pending: Option<u8>,
}

impl I8042 {
    pub fn new(on_reset: Box<dyn FnMut() + Send>) -> Self {
        Self {
            on_reset,
            output: VecDeque::new(),
            ctr: DEFAULT_CTR,
            output_port: DEFAULT_OUTPUT_PORT,
            last_was_command: false,
            pending: None,
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM_FLAG;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn reply(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_QUEUE_MAX {
            self.output.push_back(byte);
        }
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        match cmd {
            CMD_READ_CTR => self.reply(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT => self.pending = Some(cmd),
            CMD_SELF_TEST => self.reply(SELF_TEST_PASSED),
            CMD_READ_OUTPUT_PORT => self.reply(self.output_port),
            CMD_PULSE_RESET => (self.on_reset)(),
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            // Bit 0 clear asserts the CPU reset line.
            Some(CMD_WRITE_OUTPUT_PORT) => {
                self.output_port = value;
                if value & 1 == 0 {
                    (self.on_reset)();
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, _offset: u64, data: &mut [u8]) {
        let value = match base {
            COMMAND_PORT => self.status(),
            _ => self.output.pop_front().unwrap_or(0),
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }

    fn write(&mut self, base: u64, _offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match base {
            COMMAND_PORT => self.command(value),
            _ => self.data(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn device() -> (I8042, Arc<AtomicUsize>) {
        let resets = Arc::new(AtomicUsize::new(0));
        let r = resets.clone();
        let dev = I8042::new(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        (dev, resets)
    }

    #[test]
    fn reset_command_fires_once() {
        let (mut dev, resets) = device();
        dev.write(COMMAND_PORT, 0, &[0xfe]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        dev.write(COMMAND_PORT, 0, &[0xad]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn output_port_reset_bit_also_resets() {
        let (mut dev, resets) = device();
        dev.write(COMMAND_PORT, 0, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA_PORT, 0, &[0x02]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn probe_commands_are_answered() {
        let (mut dev, resets) = device();
        let mut b = [0u8];
        dev.read(COMMAND_PORT, 0, &mut b);
        assert_eq!(b[0] & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND_PORT, 0, &[CMD_SELF_TEST]);
        dev.read(COMMAND_PORT, 0, &mut b);
        assert_ne!(b[0] & STATUS_OUTPUT_FULL, 0);
        dev.read(DATA_PORT, 0, &mut b);
        assert_eq!(b[0], SELF_TEST_PASSED);
        dev.write(COMMAND_PORT, 0, &[CMD_WRITE_CTR]);
        dev.write(DATA_PORT, 0, &[0x47]);
        dev.write(COMMAND_PORT, 0, &[CMD_READ_CTR]);
        dev.read(DATA_PORT, 0, &mut b);
        assert_eq!(b[0], 0x47);
        assert_eq!(resets.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn unread_replies_are_bounded() {
        let (mut dev, _) = device();
        for _ in 0..10_000 {
            dev.write(COMMAND_PORT, 0, &[CMD_SELF_TEST]);
        }
        assert_eq!(dev.output.len(), OUTPUT_QUEUE_MAX);
    }
}
