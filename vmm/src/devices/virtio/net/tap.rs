//! A TAP interface opened through /dev/net/tun, with a virtio-net header on every frame.
//!
//! The kernel and the guest share the header layout (struct virtio_net_hdr_v1, 12 bytes), so
//! frames pass between the TAP and the virtqueues without translation, offload metadata
//! included.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::backend::NetBackend;
use super::config::{validate_tap_name, NetConfigError};

const TUN_DEVICE: &str = "/dev/net/tun";

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    InvalidName(#[from] NetConfigError),
    #[error("cannot open {TUN_DEVICE}: {0}")]
    OpenTun(#[source] io::Error),
    #[error(
        "TUNSETIFF for TAP `{name}` failed (does it exist, is it a TAP, may we use it?): {source}"
    )]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TUNSETVNETHDRSZ({size}) on TAP `{name}` failed: {source}")]
    SetVnetHdrSize {
        name: String,
        size: usize,
        #[source]
        source: io::Error,
    },
    #[error("TUNSETOFFLOAD({flags:#x}) on TAP `{name}` failed: {source}")]
    SetOffload {
        name: String,
        flags: u32,
        #[source]
        source: io::Error,
    },
}

/// An open TAP queue. Non-blocking: reads and writes return `WouldBlock` instead of waiting,
/// which is what lets the device loop apply flow control.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

impl Tap {
    /// Opens (creating if needed) the TAP `name` with `vnet_hdr_len`-byte virtio-net headers.
    pub fn open(name: &str, vnet_hdr_len: usize) -> Result<Tap, TapError> {
        validate_tap_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(TapError::OpenTun)?;

        let mut req = ifreq_for(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }

        let size = vnet_hdr_len as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which outlives the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(TapError::SetVnetHdrSize {
                name: name.to_string(),
                size: vnet_hdr_len,
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads it may leave to the reader of this TAP (TUN_F_* bits).
    pub fn set_offload_flags(&self, flags: u32) -> Result<(), TapError> {
        // TUNSETOFFLOAD takes the flags by value, not through a pointer.
        // SAFETY: the ioctl reads no memory of ours.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        };
        if ret < 0 {
            return Err(TapError::SetOffload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }

    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()> {
        self.set_offload_flags(tun_flags)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}
