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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::net::datapath::{NetEngine, VNET_HDR_LEN};
    use crate::devices::virtio::net::testing::{
        arp_reply_sender, arp_request, in_private_netns, ip,
    };
    use crate::devices::virtio::test_utils::{test_memory, Buf, DriverQueue};

    #[test]
    fn invalid_and_non_tap_names_fail_with_the_name() {
        assert!(matches!(
            Tap::open("bad/name", VNET_HDR_LEN),
            Err(TapError::InvalidName(_))
        ));
        in_private_netns(|| {
            // `lo` exists in every namespace and is not a TAP.
            let err = Tap::open("lo", VNET_HDR_LEN).unwrap_err();
            assert!(matches!(err, TapError::SetIff { .. }), "{err}");
            assert!(err.to_string().contains("`lo`"));
        });
    }

    /// Whatever subset of the receive offloads a driver acks, the kernel accepts the
    /// TUNSETOFFLOAD the device derives from it.
    #[test]
    fn every_acked_offload_set_is_accepted_by_the_kernel() {
        use crate::devices::virtio::net::datapath::tun_offload_flags;
        use virtio_bindings::virtio_net::*;
        in_private_netns(|| {
            let tap = Tap::open("sbxoff0", VNET_HDR_LEN).unwrap();
            let bits = [
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_GUEST_ECN,
            ];
            for subset in 0u32..16 {
                let acked = bits
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| subset & (1 << i) != 0)
                    .fold(0u64, |a, (_, bit)| a | (1 << bit));
                let flags = tun_offload_flags(acked);
                tap.set_offload_flags(flags)
                    .unwrap_or_else(|e| panic!("acked {acked:#x} -> {flags:#x}: {e}"));
            }
        });
    }

    #[test]
    fn frames_cross_a_real_tap_both_ways() {
        in_private_netns(|| {
            let tap = Tap::open("sbxtest0", VNET_HDR_LEN).unwrap();
            tap.set_offload_flags(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
                .unwrap();
            ip(&["addr", "add", "10.0.9.1/24", "dev", "sbxtest0"]);
            ip(&["link", "set", "sbxtest0", "up"]);

            let mem = test_memory(0x40_0000);
            let mut txq = DriverQueue::new(&mem, GuestAddress(0x1000), 16);
            let mut rxq = DriverQueue::new(&mem, GuestAddress(0x8000), 16);
            let (mut tx, mut rx) = (txq.device_queue(), rxq.device_queue());
            let mut net = NetEngine::new(tap, None);

            // The guest asks who has 10.0.9.1; the host kernel behind the TAP answers.
            let guest_mac = [0x02, 0, 0, 0, 0, 0x02];
            let req = arp_request(guest_mac, [10, 0, 9, 2], [10, 0, 9, 1]);
            mem.write_slice(&req, GuestAddress(0x10_0000)).unwrap();
            txq.add_chain(&[Buf::read(0x10_0000, req.len() as u32)]);
            assert!(net.process_tx(&mem, &mut tx));
            assert_eq!(net.stats.tx_frames, 1, "{:?}", net.stats);

            let deadline = Instant::now() + Duration::from_secs(10);
            let mut seen = 0u16;
            let mut posted = 0u16;
            loop {
                // Keep one receive buffer posted (IPv6 chatter may use some up), in order,
                // so buffer n sits at a known address.
                if posted == seen && posted < 200 {
                    rxq.add_chain(&[Buf::write(0x20_0000 + u64::from(posted) * 0x1000, 2048)]);
                    posted += 1;
                }
                net.process_rx(&mem, &mut rx);
                while seen != rxq.used_idx() {
                    let (_, len) = rxq.used_elem(seen);
                    let addr = 0x20_0000 + u64::from(seen) * 0x1000;
                    seen += 1;
                    let mut frame = vec![0u8; len as usize];
                    mem.read_slice(&mut frame, GuestAddress(addr)).unwrap();
                    if arp_reply_sender(&frame) == Some([10, 0, 9, 1]) {
                        let eth = &frame[VNET_HDR_LEN..];
                        assert_eq!(&eth[0..6], &guest_mac, "reply goes to the guest MAC");
                        return;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "no ARP reply came back through the TAP: {:?}",
                    net.stats
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
}
