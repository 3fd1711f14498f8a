//! Where the frames of a NIC go: a TAP in production, an in-memory queue in tests and benches.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

/// A frame sink/source that carries a virtio-net header in front of each frame.
///
/// Both calls are non-blocking: `WouldBlock` means "nothing to read" or "no room to write",
/// and the device waits for the backend's fd to become readable/writable again.
pub trait NetBackend: Send {
    /// Reads one header+frame into `buf`, returning its length.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one header+frame; the whole frame is consumed or none of it.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// Applies the receive offloads the guest accepted (TUN_F_* bits).
    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()>;
    /// The fd to watch for readiness, if the backend has one.
    fn raw_fd(&self) -> Option<RawFd>;
}

/// An in-memory backend: frames to deliver to the guest are queued in `inbound`, frames the
/// guest sent land in `outbound`. `outbound_capacity` models a full TAP.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    pub inbound: VecDeque<Vec<u8>>,
    pub outbound: Vec<Vec<u8>>,
    pub outbound_capacity: Option<usize>,
    pub offload_flags: Option<u32>,
    /// Keep only a count of written frames (benchmarks), not their bytes.
    pub count_only: bool,
    pub written: u64,
    /// After `inbound` runs dry, deliver this frame `repeat_left` more times (benchmarks).
    pub repeat: Option<Vec<u8>>,
    pub repeat_left: u64,
}

impl NetBackend for MemoryBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inbound.is_empty() && self.repeat_left > 0 {
            if let Some(frame) = &self.repeat {
                self.repeat_left -= 1;
                let n = frame.len().min(buf.len());
                buf[..n].copy_from_slice(&frame[..n]);
                return Ok(n);
            }
        }
        let frame = self
            .inbound
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        // A TAP truncates a frame that does not fit the read buffer; do the same.
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        if let Some(cap) = self.outbound_capacity {
            if self.outbound.len() >= cap {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        self.written += 1;
        if !self.count_only {
            self.outbound.push(frame.to_vec());
        }
        Ok(frame.len())
    }

    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()> {
        self.offload_flags = Some(tun_flags);
        Ok(())
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}
