//! Drives each virtio-mmio device of `sandbox-vmm` from the test guest (vmm/test-guest) on
//! /dev/kvm, through real KVM exits: the guest finds the devices on its command line, drives
//! them by polling their used rings and reports on its serial port; these tests check the
//! report and what reached the host side (the disk image, the TAP's peer, the vsock socket).
//!
//! Network tests run only inside a network namespace the test creates and deletes.

mod test_guest_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use test_guest_support::{
    fnv1a32, hex_field_or_panic, kvm_available, GuestArgs, GuestReport, TempDir,
};

const SECTOR: usize = 512;
/// Where the guest writes its pattern, and how much (see BLK_TEST_* in virtio.S).
const BLK_TEST_SECTOR: usize = 8;
const BLK_TEST_BYTES: usize = 4096;

/// The virtio devices the guest found, as (device id, address).
fn virtio_devices(report: &GuestReport) -> Vec<(u64, u64)> {
    report
        .records("VIRTIO")
        .into_iter()
        .filter(|l| l.starts_with("VIRTIO addr="))
        .map(|l| {
            (
                hex_field_or_panic(l, "device_id"),
                hex_field_or_panic(l, "addr"),
            )
        })
        .collect()
}

fn image_pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// What the guest writes at BLK_TEST_SECTOR.
fn guest_blk_pattern() -> Vec<u8> {
    (0..BLK_TEST_BYTES).map(|i| (i * 13 + 0x5b) as u8).collect()
}

#[test]
fn blk_writes_and_reads_back_through_the_image() {
    if !kvm_available("blk_writes_and_reads_back_through_the_image") {
        return;
    }
    // Two disks in one VM: a writable one and a read-only one with different contents.
    let dir = TempDir::new("test-guest-blk");
    let rw_path = dir.file("rw.img");
    let ro_path = dir.file("ro.img");
    let rw_image = image_pattern(1 << 20);
    let ro_image: Vec<u8> = image_pattern(3 << 19).iter().map(|b| !b).collect();
    std::fs::write(&rw_path, &rw_image).unwrap();
    std::fs::write(&ro_path, &ro_image).unwrap();

    let args = GuestArgs::new(64, 1)
        .with("--disk", format!("path={}", rw_path.display()))
        .with("--disk", format!("path={},ro=on", ro_path.display()));
    let (_run, report) = args.boot();
    let text = report.text();
    assert_eq!(
        virtio_devices(&report).iter().filter(|d| d.0 == 2).count(),
        2,
        "{text}"
    );

    // Each disk, in the order given, shows its own size and first sectors.
    let blk_lines = report.records("BLK");
    assert_eq!(blk_lines.len(), 2, "{text}");
    for (line, image) in blk_lines.iter().zip([&rw_image, &ro_image]) {
        assert_eq!(
            hex_field_or_panic(line, "capacity"),
            (image.len() / SECTOR) as u64,
            "{text}"
        );
        assert_eq!(
            hex_field_or_panic(line, "read0_fnv1a"),
            u64::from(fnv1a32(&image[..BLK_TEST_BYTES])),
            "the guest did not read the image's first sectors:\n{text}"
        );
    }
    let check = report.check("blk");
    assert_eq!(
        hex_field_or_panic(check, "capacity"),
        (rw_image.len() / SECTOR) as u64,
        "the write test ran on the wrong disk:\n{text}"
    );
    assert_eq!(
        hex_field_or_panic(check, "written_sector"),
        BLK_TEST_SECTOR as u64
    );
    assert_eq!(hex_field_or_panic(check, "flushed"), 1, "{text}");
    report.check("blk_bounds");
    let readonly = report.check("blk_readonly");
    assert_eq!(
        hex_field_or_panic(readonly, "capacity"),
        (ro_image.len() / SECTOR) as u64,
        "{text}"
    );

    // The write landed in the file exactly where the guest asked, and nowhere else.
    let after = std::fs::read(&rw_path).unwrap();
    assert_eq!(after.len(), rw_image.len(), "the image changed size");
    let at = BLK_TEST_SECTOR * SECTOR;
    assert!(
        after[at..at + BLK_TEST_BYTES] == guest_blk_pattern()[..],
        "the guest's pattern is not in the image at sector {BLK_TEST_SECTOR}"
    );
    assert!(
        after[..at] == rw_image[..at],
        "the image changed before the write"
    );
    assert!(
        after[at + BLK_TEST_BYTES..] == rw_image[at + BLK_TEST_BYTES..],
        "the image changed after the write"
    );
    assert!(
        std::fs::read(&ro_path).unwrap() == ro_image,
        "the read-only image changed"
    );
}

#[test]
fn rng_gives_the_guest_random_bytes() {
    if !kvm_available("rng_gives_the_guest_random_bytes") {
        return;
    }
    let (_run, report) = GuestArgs::new(64, 1).with("--rng", "on").boot();
    let text = report.text();
    assert_eq!(
        virtio_devices(&report).iter().filter(|d| d.0 == 4).count(),
        1,
        "{text}"
    );
    let check = report.check("rng");
    let bytes = hex_field_or_panic(check, "bytes");
    assert!((1..=64).contains(&bytes), "{text}");
}

/// A network namespace with a TAP whose address is the guest's ARP peer (10.0.2.1/24);
/// deleted, with the TAP, when dropped.
struct NetNamespace {
    name: String,
}

const TAP_NAME: &str = "tgtap0";
const GUEST_MAC: &str = "52:54:00:12:34:56";

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNamespace {
    fn create() -> Result<Self, String> {
        let name = format!("sbx-tg-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = NetNamespace { name };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "tuntap", "add", "dev", TAP_NAME, "mode", "tap"])?;
        ip(&["-n", n, "addr", "add", "10.0.2.1/24", "dev", TAP_NAME])?;
        ip(&["-n", n, "link", "set", TAP_NAME, "up"])?;
        Ok(ns)
    }

    fn tap_mac(&self) -> u64 {
        let show = ip(&["-n", &self.name, "link", "show", TAP_NAME]).unwrap();
        let mac = show
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {show}"));
        mac_number(mac)
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn mac_number(mac: &str) -> u64 {
    u64::from_str_radix(&mac.replace(':', ""), 16).expect("a MAC address")
}

#[test]
fn net_exchanges_frames_with_a_peer_behind_the_tap() {
    if !kvm_available("net_exchanges_frames_with_a_peer_behind_the_tap") {
        return;
    }
    let ns = match NetNamespace::create() {
        Ok(ns) => ns,
        Err(e) => panic!("cannot set up the test's network namespace (needs root): {e}"),
    };
    let mut args = GuestArgs::new(64, 1).with("--net", format!("tap={TAP_NAME},mac={GUEST_MAC}"));
    args.prefix = vec!["ip".into(), "netns".into(), "exec".into(), ns.name.clone()];
    let (_run, report) = args.boot();
    let text = report.text();
    let check = report.check("net");
    assert_eq!(
        hex_field_or_panic(check, "mac"),
        mac_number(GUEST_MAC),
        "{text}"
    );
    assert_eq!(
        hex_field_or_panic(check, "peer_mac"),
        ns.tap_mac(),
        "the ARP reply did not come from the TAP's side:\n{text}"
    );
}

/// The host side of the vsock echo: connects through the VMM's unix socket to the guest's
/// port, sends `payload`, and returns what came back before the guest's side closed.
fn vsock_echo_client(socket: PathBuf, port: u32, payload: Vec<u8>) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        match try_vsock_echo(&socket, port, &payload) {
            Ok(echo) => return Ok(echo),
            Err(e) if Instant::now() < deadline => {
                // The VMM or the guest's driver may not be up yet.
                let _ = e;
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

fn try_vsock_echo(socket: &Path, port: u32, payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("CONNECT: {e}"))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .map_err(|e| format!("reading the answer to CONNECT: {e}"))?;
    if !answer.starts_with("OK ") {
        return Err(format!("CONNECT answered {answer:?}"));
    }
    stream
        .write_all(payload)
        .map_err(|e| format!("writing: {e}"))?;
    let mut echo = vec![0; payload.len()];
    reader
        .read_exact(&mut echo)
        .map_err(|e| format!("reading the echo: {e}"))?;
    stream
        .shutdown(std::net::Shutdown::Both)
        .map_err(|e| e.to_string())?;
    Ok(echo)
}

/// The host side of a guest-initiated connection: accepts on `listener` (the VMM connects
/// to `<socket>_<port>` for the guest), sends `payload` and returns the echo.
fn vsock_listen_client(listener: UnixListener, payload: Vec<u8>) -> Result<Vec<u8>, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&payload)
        .map_err(|e| format!("writing: {e}"))?;
    let mut echo = vec![0; payload.len()];
    stream
        .read_exact(&mut echo)
        .map_err(|e| format!("reading the echo: {e}"))?;
    stream
        .shutdown(std::net::Shutdown::Both)
        .map_err(|e| e.to_string())?;
    Ok(echo)
}

#[test]
fn vsock_echoes_through_the_host_unix_socket() {
    if !kvm_available("vsock_echoes_through_the_host_unix_socket") {
        return;
    }
    let dir = TempDir::new("tg-vsock");
    let socket = dir.file("v.sock");
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 31 + 1) as u8).collect();
    let client = {
        let socket = socket.clone();
        let payload = payload.clone();
        thread::spawn(move || vsock_echo_client(socket, 1234, payload))
    };
    // The guest's own connection to host port 5000 reaches this listener.
    let listener = UnixListener::bind(format!("{}_5000", socket.display())).unwrap();
    let reverse_payload: Vec<u8> = (0..5000u32).map(|i| (i * 17 + 3) as u8).collect();
    let server = {
        let payload = reverse_payload.clone();
        thread::spawn(move || vsock_listen_client(listener, payload))
    };

    let mut args =
        GuestArgs::new(64, 1).with("--vsock", format!("cid=3,path={}", socket.display()));
    args.cmdline = "console=ttyS0 testguest.vsock_connect".into();
    let (_run, report) = args.boot();
    let text = report.text();
    let echo = client
        .join()
        .expect("the client thread")
        .unwrap_or_else(|e| panic!("the host side of the echo failed: {e}\n{text}"));
    assert!(echo == payload, "the echo differs from what was sent");
    let check = report.check("vsock");
    assert_eq!(hex_field_or_panic(check, "cid"), 3, "{text}");
    assert_eq!(
        hex_field_or_panic(check, "echoed_bytes"),
        payload.len() as u64,
        "{text}"
    );

    let reverse_echo = server
        .join()
        .expect("the listener thread")
        .unwrap_or_else(|e| panic!("the guest-initiated connection failed: {e}\n{text}"));
    assert!(
        reverse_echo == reverse_payload,
        "the echo on the guest's connection differs from what was sent"
    );
    let check = report.check("vsock_connect");
    assert_eq!(hex_field_or_panic(check, "port"), 5000, "{text}");
    assert_eq!(
        hex_field_or_panic(check, "echoed_bytes"),
        reverse_payload.len() as u64,
        "{text}"
    );
}
