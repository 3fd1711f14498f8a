//! virtio-vsock stream throughput, driven device-side: a simulated guest driver (queues in
//! guest memory through the driver-side queue helper) on one end, a real unix socket served
//! by another thread on the other, and the device in between exactly as on the event loop
//! (packet parsing, credit accounting, socket I/O, used rings).
//!
//! - guest -> host: the guest sends 64 KiB RW packets (Linux's largest) within the credit
//!   the device grants; a host thread reads the unix socket `<path>_<port>` to the end.
//! - host -> guest: a host client connects with `CONNECT <port>`, then writes as fast as it
//!   can; the guest posts receive buffers (4 KiB like Linux, or 64 KiB), consumes at once
//!   and returns credit every 128 KiB of its 256 KiB buffer.
//!
//! Run: `cargo bench -p vmm --bench virtio_vsock` (options: `-- --mib N`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::test_utils::{test_memory, Buf, DriverQueue, MockInterrupt};
use vmm::devices::virtio::vsock::packet::*;
use vmm::devices::virtio::vsock::{Vsock, VsockConfig};
use vmm::devices::virtio::VirtioDevice;
use vmm_sys_util::eventfd::EventFd;

const GUEST_CID: u64 = 3;
const QUEUE_SIZE: u16 = 256;
const GUEST_BUF_ALLOC: u32 = 256 * 1024;
const TX_PKT: usize = 64 * 1024;

const TX_HDRS: u64 = 0x10_0000;
const TX_DATA: u64 = 0x20_0000;
const RX_BUFS: u64 = 0x100_0000;
const MEM_SIZE: usize = 0x300_0000;

struct Guest {
    mem: GuestMemoryMmap,
    rxq: DriverQueue,
    txq: DriverQueue,
    dev: Vsock,
    rx_seen: u16,
    rx_buf_len: u32,
    rx_posted: u64,
    tx_slot: u64,
}

impl Guest {
    fn new(path: &Path, rx_buf_len: u32) -> Self {
        let mem = test_memory(MEM_SIZE);
        let rxq = DriverQueue::new(&mem, GuestAddress(0x1_0000), QUEUE_SIZE);
        let txq = DriverQueue::new(&mem, GuestAddress(0x2_0000), QUEUE_SIZE);
        let evq = DriverQueue::new(&mem, GuestAddress(0x3_0000), QUEUE_SIZE);
        let mut dev = Vsock::new(&VsockConfig {
            cid: GUEST_CID,
            path: path.to_path_buf(),
        })
        .expect("vsock device");
        let evts = (0..3).map(|_| EventFd::new(0).unwrap()).collect();
        dev.activate(
            mem.clone(),
            Arc::new(MockInterrupt::default()),
            vec![rxq.device_queue(), txq.device_queue(), evq.device_queue()],
            evts,
            0,
        )
        .expect("activate");
        mem.write_slice(&vec![0x5a; TX_PKT], GuestAddress(TX_DATA))
            .unwrap();
        let mut g = Guest {
            mem,
            rxq,
            txq,
            dev,
            rx_seen: 0,
            rx_buf_len: rx_buf_len + HDR_LEN as u32,
            rx_posted: 0,
            tx_slot: 0,
        };
        for _ in 0..QUEUE_SIZE {
            g.post_rx_buffer();
        }
        g
    }

    /// Buffers are one descriptor each and used in order, so descriptor i is buffer i.
    fn buf_addr(&self, head: u32) -> u64 {
        RX_BUFS + u64::from(head) * u64::from(self.rx_buf_len)
    }

    fn post_rx_buffer(&mut self) {
        let next = (self.rx_posted % u64::from(QUEUE_SIZE)) as u32;
        self.rx_posted += 1;
        let head = self
            .rxq
            .add_chain(&[Buf::write(self.buf_addr(next), self.rx_buf_len)]);
        debug_assert_eq!(u32::from(head), next);
    }

    /// Queues a guest packet on TX (not yet processed).
    fn queue_tx(&mut self, hdr: Header, data_len: usize) {
        let at = TX_HDRS + (self.tx_slot % 128) * 64;
        self.tx_slot += 1;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(at))
            .unwrap();
        if data_len == 0 {
            self.txq.add_chain(&[Buf::read(at, HDR_LEN as u32)]);
        } else {
            self.txq.add_chain(&[
                Buf::read(at, HDR_LEN as u32),
                Buf::read(TX_DATA, data_len as u32),
            ]);
        }
    }

    /// Headers (and RW payload lengths) the device delivered; buffers are re-posted.
    fn drain_rx(&mut self, mut each: impl FnMut(&Header)) {
        while self.rx_seen != self.rxq.used_idx() {
            let (head, _) = self.rxq.used_elem(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let mut h = [0u8; HDR_LEN];
            self.mem
                .read_slice(&mut h, GuestAddress(self.buf_addr(head)))
                .unwrap();
            each(&Header::from_bytes(&h));
            self.post_rx_buffer();
        }
    }

    fn hdr(&self, src_port: u32, dst_port: u32, op: u16) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: 0,
        }
    }

    /// Waits (up to 50 ms) for host socket activity, then lets the device handle it.
    fn wait_host(&mut self) {
        let mut pfd = libc::pollfd {
            fd: self.dev.host_events_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 50) };
        self.dev.handle_host_events();
    }
}

/// What the guest knows of the host side of its connection.
#[derive(Default)]
struct PeerView {
    buf_alloc: u32,
    fwd_cnt: u32,
    established: bool,
    reset: bool,
}

impl PeerView {
    fn update(&mut self, h: &Header) {
        match h.op {
            OP_RESPONSE => self.established = true,
            OP_RST => self.reset = true,
            _ => {}
        }
        self.buf_alloc = h.buf_alloc;
        self.fwd_cnt = h.fwd_cnt;
    }
}

fn guest_to_host(dir: &Path, total: u64) -> f64 {
    let path = dir.join("g2h.sock");
    let listener = UnixListener::bind(format!("{}_5000", path.display())).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) => panic!("host reader: {e}"),
            }
        }
        (got, Instant::now())
    });
    let mut g = Guest::new(&path, 4096);
    g.queue_tx(g.hdr(7000, 5000, OP_REQUEST), 0);
    g.dev.process_tx();
    let mut peer = PeerView::default();
    g.drain_rx(|h| peer.update(h));
    assert!(peer.established, "no RESPONSE from the device");

    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let mut queued = 0;
        while sent < total && queued < 128 {
            let in_flight = (sent as u32).wrapping_sub(peer.fwd_cnt);
            if in_flight as usize + TX_PKT > peer.buf_alloc as usize {
                break;
            }
            let mut h = g.hdr(7000, 5000, OP_RW);
            h.len = TX_PKT as u32;
            g.queue_tx(h, TX_PKT);
            sent += TX_PKT as u64;
            queued += 1;
        }
        if queued > 0 {
            g.dev.process_tx();
        } else {
            // Out of credit: wait for the host to drain the socket.
            g.wait_host();
        }
        g.drain_rx(|h| peer.update(h));
        assert!(!peer.reset, "device reset the connection");
    }
    let mut shut = g.hdr(7000, 5000, OP_SHUTDOWN);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    while g.dev.connection_count() > 0 {
        g.queue_tx(shut, 0);
        g.dev.process_tx();
        g.wait_host();
        g.drain_rx(|_| {});
    }
    let (got, end) = reader.join().unwrap();
    assert_eq!(got, sent);
    got as f64 / end.duration_since(start).as_secs_f64()
}

fn host_to_guest(dir: &Path, total: u64, rx_buf: u32) -> f64 {
    let path = dir.join(format!("h2g-{rx_buf}.sock"));
    let mut g = Guest::new(&path, rx_buf);
    let client_path = path.clone();
    let writer = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&client_path).unwrap();
        s.write_all(b"CONNECT 6000\n").unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("OK "), "{line:?}");
        let chunk = vec![0xa5u8; 256 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
    });
    let mut local_port = None;
    while local_port.is_none() {
        g.wait_host();
        g.drain_rx(|h| {
            if h.op == OP_REQUEST {
                local_port = Some(h.src_port);
            }
        });
    }
    let local_port = local_port.unwrap();
    g.queue_tx(g.hdr(6000, local_port, OP_RESPONSE), 0);
    g.dev.process_tx();

    let start = Instant::now();
    let mut received = 0u64;
    let mut reported = 0u64;
    while received < total {
        g.wait_host();
        let mut got = 0u64;
        g.drain_rx(|h| {
            if h.op == OP_RW {
                got += u64::from(h.len);
            }
        });
        received += got;
        if received - reported >= u64::from(GUEST_BUF_ALLOC / 2) || received >= total {
            let mut h = g.hdr(6000, local_port, OP_CREDIT_UPDATE);
            h.fwd_cnt = received as u32;
            g.queue_tx(h, 0);
            g.dev.process_tx();
            reported = received;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    writer.join().unwrap();
    received as f64 / secs
}

fn main() {
    let mut mib = 1024u64;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--mib" {
            mib = it
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--mib needs a number");
        }
    }
    let dir = std::env::temp_dir().join(format!("vsock-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let total = mib << 20;
    let gib = |bps: f64| bps / (1u64 << 30) as f64;

    let bps = guest_to_host(&dir, total);
    println!(
        "virtio-vsock guest->host 64 KiB packets:            {:.2} GiB/s ({mib} MiB)",
        gib(bps)
    );
    for rx_buf in [4096u32, 65536] {
        let bps = host_to_guest(&dir, total, rx_buf);
        println!(
            "virtio-vsock host->guest {:>2} KiB receive buffers:  {:.2} GiB/s ({mib} MiB)",
            rx_buf / 1024,
            gib(bps)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
