//! The boot-complete port (0x0510, see `arch::x86_64::layout::BOOT_COMPLETE_PORT`).
//!
//! A guest writes a value (byte, word or dword) to this port when it reaches a milestone,
//! e.g. first instruction, kernel up, init started. Each write is logged to stderr as
//! `sandbox-vmm: boot-complete <value> after <N> us`, where N counts microseconds since the
//! VMM process entered `main`. The line is meant for scripts; its format is stable. Only the
//! first `MAX_REPORTS` writes are logged, so a guest cannot flood the VMM's stderr.
//!
//! Two more lines of the same family place those offsets on the host's time line: `started
//! at <N> us monotonic` (CLOCK_MONOTONIC when `main` was entered) and `vcpus started after
//! <N> us` (the vCPUs released into the guest).

use std::io::Write;
use std::time::Instant;

use crate::devices::bus::BusDevice;

/// Writes after this many are ignored.
pub const MAX_REPORTS: usize = 64;

pub struct BootComplete {
    start: Instant,
    sink: Box<dyn Write + Send>,
    reports: usize,
}

impl BootComplete {
    pub fn new(start: Instant, sink: Box<dyn Write + Send>) -> Self {
        Self {
            start,
            sink,
            reports: 0,
        }
    }

    pub fn line(value: u32, micros: u128) -> String {
        format!("sandbox-vmm: boot-complete {value} after {micros} us\n")
    }

    pub fn started_line(monotonic_micros: u64) -> String {
        format!("sandbox-vmm: started at {monotonic_micros} us monotonic\n")
    }

    pub fn vcpus_started_line(micros: u128) -> String {
        format!("sandbox-vmm: vcpus started after {micros} us\n")
    }
}

impl BusDevice for BootComplete {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        let micros = self.start.elapsed().as_micros();
        if self.reports == MAX_REPORTS {
            return;
        }
        self.reports += 1;
        let mut raw = [0u8; 4];
        let n = data.len().min(4);
        raw[..n].copy_from_slice(&data[..n]);
        let line = Self::line(u32::from_le_bytes(raw), micros);
        let _ = self.sink.write_all(line.as_bytes());
        let _ = self.sink.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_write_logs_value_and_elapsed_time() {
        let out = Capture::default();
        let mut dev = BootComplete::new(Instant::now(), Box::new(out.clone()));
        dev.write(0x510, 0, &[7]);
        dev.write(0x510, 0, &0x1234u16.to_le_bytes());
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for (line, value) in lines.iter().zip(["7", "4660"]) {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields[..3], ["sandbox-vmm:", "boot-complete", value]);
            assert_eq!(fields[3], "after");
            assert!(fields[4].parse::<u128>().is_ok());
            assert_eq!(fields[5], "us");
        }
        for _ in 0..1000 {
            dev.write(0x510, 0, &[1]);
        }
        let lines = out
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        assert_eq!(lines, MAX_REPORTS);
    }
}
