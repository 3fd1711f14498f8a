//! Helpers for tests that need a real TAP: a private network namespace and raw frames.

use std::io;
use std::process::Command;

use super::datapath::VNET_HDR_LEN;

/// Runs `f` on a thread inside a network namespace of its own, so the TAP it creates is
/// invisible to the host and disappears with the thread's last fd.
pub fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespaces.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            ret,
            0,
            "unshare(CLONE_NEWNET) failed (the TAP tests need root): {}",
            io::Error::last_os_error()
        );
        f()
    })
    .join()
    .expect("netns test thread")
}

/// Runs `ip` in the calling thread's network namespace.
pub fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// A virtio-net header followed by an ARP request (broadcast).
pub fn arp_request(src_mac: [u8; 6], src_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&src_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip);
    f
}

/// Whether `frame` (after its virtio-net header) is an ARP reply, and if so its sender IP.
pub fn arp_reply_sender(frame: &[u8]) -> Option<[u8; 4]> {
    let eth = frame.get(VNET_HDR_LEN..)?;
    if eth.len() >= 42 && eth[12..14] == [0x08, 0x06] && eth[20..22] == [0, 2] {
        Some(eth[28..32].try_into().unwrap())
    } else {
        None
    }
}
