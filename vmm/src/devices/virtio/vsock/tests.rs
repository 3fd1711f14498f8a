//! The vsock device driven the way a guest driver would drive it (descriptor chains in
//! guest memory), against real unix sockets on the host side.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::config::VsockConfig;
use super::connection::BUF_ALLOC;
use super::device::*;
use super::muxer::{Muxer, MuxerError, FIRST_LOCAL_PORT};
use super::packet::*;
use crate::devices::virtio::test_utils::{test_memory, Buf, DriverQueue, MockInterrupt};
use crate::devices::virtio::VirtioDevice;

const GUEST_CID: u64 = 3;
const MEM_SIZE: usize = 0x200_0000;
const RX_BUF_LEN: u32 = 4096;

/// A unique directory for this test's sockets, removed at the end.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vsock-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The guest driver's side: three queues, buffers, and what came back.
struct Guest {
    mem: GuestMemoryMmap,
    rxq: DriverQueue,
    txq: DriverQueue,
    evq: DriverQueue,
    irq: Arc<MockInterrupt>,
    rx_seen: u16,
    rx_bufs: HashMap<u16, u64>,
    next_data: u64,
    dev: Vsock,
    _dir: TempDir,
    path: PathBuf,
}

impl Guest {
    fn new() -> Self {
        let dir = TempDir::new();
        let path = dir.0.join("v.sock");
        let dev = Vsock::new(&VsockConfig {
            cid: GUEST_CID,
            path: path.clone(),
        })
        .unwrap();
        let mem = test_memory(MEM_SIZE);
        let rxq = DriverQueue::new(&mem, GuestAddress(0x1_0000), 256);
        let txq = DriverQueue::new(&mem, GuestAddress(0x2_0000), 256);
        let evq = DriverQueue::new(&mem, GuestAddress(0x3_0000), 256);
        Guest {
            mem,
            rxq,
            txq,
            evq,
            irq: Arc::new(MockInterrupt::default()),
            rx_seen: 0,
            rx_bufs: HashMap::new(),
            next_data: 0x10_0000,
            dev,
            _dir: dir,
            path,
        }
    }

    fn activate(&mut self) {
        let queues = vec![
            self.rxq.device_queue(),
            self.txq.device_queue(),
            self.evq.device_queue(),
        ];
        let evts = (0..3).map(|_| EventFd::new(0).unwrap()).collect();
        self.dev
            .activate(self.mem.clone(), self.irq.clone(), queues, evts, 0)
            .unwrap();
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next_data;
        self.next_data += (len + 15) & !15;
        assert!(
            self.next_data < MEM_SIZE as u64,
            "test ran out of guest memory"
        );
        at
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let at = self.alloc(HDR_LEN as u64 + RX_BUF_LEN as u64);
            let head = self.rxq.add_chain(&[
                Buf::write(at, HDR_LEN as u32),
                Buf::write(at + HDR_LEN as u64, RX_BUF_LEN),
            ]);
            self.rx_bufs.insert(head, at);
        }
        self.dev.process_rx();
    }

    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let at = self.alloc(HDR_LEN as u64 + payload.len() as u64);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(at))
            .unwrap();
        let mut bufs = vec![Buf::read(at, HDR_LEN as u32)];
        if !payload.is_empty() {
            let data = at + HDR_LEN as u64;
            self.mem.write_slice(payload, GuestAddress(data)).unwrap();
            bufs.push(Buf::read(data, payload.len() as u32));
        }
        self.txq.add_chain(&bufs);
        self.dev.process_tx();
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
            buf_alloc: 64 * 1024,
            fwd_cnt: 0,
        }
    }

    /// Packets the device put into receive buffers since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen != self.rxq.used_idx() {
            let (head, len) = self.rxq.used_elem(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let at = self.rx_bufs.remove(&(head as u16)).expect("known buffer");
            assert!(len as usize >= HDR_LEN, "used length {len} below a header");
            let mut h = [0u8; HDR_LEN];
            self.mem.read_slice(&mut h, GuestAddress(at)).unwrap();
            let hdr = Header::from_bytes(&h);
            assert_eq!(hdr.len as usize, len as usize - HDR_LEN);
            let mut data = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(at + HDR_LEN as u64))
                .unwrap();
            out.push((hdr, data));
        }
        out
    }

    fn recv_ops(&mut self) -> Vec<u16> {
        self.recv().iter().map(|(h, _)| h.op).collect()
    }
}

fn read_exact_timeout(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// Reads until EOF (with a guard so a bug fails the test instead of hanging it).
fn read_to_eof(s: &mut UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

/// The device closed this client: EOF, or a reset when the device closed it with the
/// client's bytes still unread.
fn assert_closed(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => assert!(out.is_empty(), "unexpected bytes {out:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

/// Guest connects to host port `port`; returns the host side of the stream.
fn guest_connect(g: &mut Guest, listener: &UnixListener, guest_port: u32, port: u32) -> UnixStream {
    g.send(g.hdr(guest_port, port, OP_REQUEST), &[]);
    let (host, _) = listener.accept().unwrap();
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    let (h, _) = pkts[0];
    assert_eq!(
        (h.op, h.src_port, h.dst_port),
        (OP_RESPONSE, port, guest_port)
    );
    assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    host
}

#[test]
fn config_space_holds_the_guest_cid() {
    let g = Guest::new();
    let mut cid = [0u8; 8];
    g.dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let mut past = [0xffu8; 4];
    g.dev.read_config(8, &mut past);
    assert_eq!(past, [0; 4]);
    assert_eq!(g.dev.device_type(), 19);
    assert_eq!(g.dev.queue_max_sizes().len(), 3);
}

#[test]
fn guest_initiated_stream_both_ways_then_host_close_resets() {
    let mut g = Guest::new();
    g.activate();
    g.post_rx(8);
    let listener = UnixListener::bind(format!("{}_1234", g.path.display())).unwrap();
    let mut host = guest_connect(&mut g, &listener, 5000, 1234);
    assert_eq!(g.dev.connection_count(), 1);

    let mut rw = g.hdr(5000, 1234, OP_RW);
    rw.len = 5;
    g.send(rw, b"hello");
    assert_eq!(read_exact_timeout(&mut host, 5), b"hello");

    host.write_all(b"world").unwrap();
    g.dev.handle_host_events();
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_RW);
    assert_eq!(pkts[0].1, b"world");
    // Our fwd_cnt tells the guest its 5 bytes were consumed.
    assert_eq!(pkts[0].0.fwd_cnt, 5);

    // The host writes a last word and goes away: the guest gets the data, then a reset.
    host.write_all(b"bye").unwrap();
    drop(host);
    g.dev.handle_host_events();
    let pkts = g.recv();
    let ops: Vec<u16> = pkts.iter().map(|p| p.0.op).collect();
    assert_eq!(ops, vec![OP_RW, OP_RST]);
    assert_eq!(pkts[0].1, b"bye");
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn guest_connect_to_a_port_nobody_listens_on_is_reset() {
    let mut g = Guest::new();
    g.activate();
    g.post_rx(2);
    g.send(g.hdr(5000, 4321, OP_REQUEST), &[]);
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    let h = pkts[0].0;
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 4321, 5000));
    assert_eq!(g.dev.connection_count(), 0);
}

fn host_connect(g: &mut Guest, port: u32) -> (UnixStream, Header) {
    let mut client = UnixStream::connect(&g.path).unwrap();
    client
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    g.dev.handle_host_events();
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    let req = pkts[0].0;
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!(req.dst_port, port);
    assert!(req.src_port >= FIRST_LOCAL_PORT);
    (client, req)
}

#[test]
fn host_initiated_connect_ok_line_data_and_guest_close() {
    let mut g = Guest::new();
    g.activate();
    g.post_rx(8);
    let (mut client, req) = host_connect(&mut g, 52);
    let mut resp = g.hdr(52, req.src_port, OP_RESPONSE);
    resp.buf_alloc = 4096;
    g.send(resp, &[]);
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(read_exact_timeout(&mut client, ok.len()), ok.as_bytes());

    client.write_all(b"ping").unwrap();
    g.dev.handle_host_events();
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].1.as_slice()), (OP_RW, &b"ping"[..]));

    let mut rw = g.hdr(52, req.src_port, OP_RW);
    rw.len = 4;
    g.send(rw, b"pong");
    assert_eq!(read_exact_timeout(&mut client, 4), b"pong");

    // The guest closes both directions: the host reads EOF, the guest gets its RST.
    let mut shut = g.hdr(52, req.src_port, OP_SHUTDOWN);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(shut, &[]);
    assert_eq!(read_to_eof(&mut client), b"");
    assert_eq!(g.recv_ops(), vec![OP_RST]);
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn host_client_data_sent_before_ok_is_not_lost() {
    let mut g = Guest::new();
    g.activate();
    g.post_rx(4);
    let mut client = UnixStream::connect(&g.path).unwrap();
    client.write_all(b"CONNECT 7\nearly").unwrap();
    g.dev.handle_host_events();
    let req = g.recv()[0].0;
    g.send(g.hdr(7, req.src_port, OP_RESPONSE), &[]);
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].1, b"early");
}

#[test]
fn host_connect_refused_by_the_guest_closes_the_client() {
    let mut g = Guest::new();
    g.activate();
    g.post_rx(2);
    let (mut client, req) = host_connect(&mut g, 99);
    g.send(g.hdr(99, req.src_port, OP_RST), &[]);
    // No OK line: EOF straight away.
    assert_eq!(read_to_eof(&mut client), b"");
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn bad_connect_lines_and_clients_before_activation_are_closed() {
    let mut g = Guest::new();
    // Not active yet: the client is turned away.
    let mut early = UnixStream::connect(&g.path).unwrap();
    early.write_all(b"CONNECT 5\n").unwrap();
    g.dev.handle_host_events();
    assert_closed(&mut early);

    g.activate();
    g.post_rx(4);
    for line in [
        &b"CONNECT\n"[..],
        b"CONNECT x1\n",
        b"CONNECT 99999999999\n",
        b"LISTEN 5\n",
        &[b'A'; 64],
    ] {
        let mut c = UnixStream::connect(&g.path).unwrap();
        c.write_all(line).unwrap();
        g.dev.handle_host_events();
        assert_closed(&mut c);
    }
    assert_eq!(g.recv().len(), 0);
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn host_to_guest_data_respects_guest_credit_and_buffers() {
    let mut g = Guest::new();
    g.activate();
    g.post_rx(1);
    let listener = UnixListener::bind(format!("{}_80", g.path.display())).unwrap();
    let mut req = g.hdr(6000, 80, OP_REQUEST);
    req.buf_alloc = 6000;
    g.send(req, &[]);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(g.recv_ops(), vec![OP_RESPONSE]);

    host.write_all(&[7u8; 20_000]).unwrap();
    // No receive buffers: nothing moves, nothing is lost.
    g.dev.handle_host_events();
    assert!(g.recv().is_empty());

    g.post_rx(8);
    let pkts = g.recv();
    let data: usize = pkts
        .iter()
        .filter(|p| p.0.op == OP_RW)
        .map(|p| p.1.len())
        .sum();
    assert_eq!(data, 6000, "exactly the guest's credit");
    assert_eq!(pkts.last().unwrap().0.op, OP_CREDIT_REQUEST);
    // Out of credit: more buffers change nothing.
    g.post_rx(4);
    assert!(g.recv().is_empty());

    // The guest read 6000 bytes and says so.
    let mut update = g.hdr(6000, 80, OP_CREDIT_UPDATE);
    update.buf_alloc = 6000;
    update.fwd_cnt = 6000;
    g.send(update, &[]);
    let pkts = g.recv();
    let data: usize = pkts
        .iter()
        .filter(|p| p.0.op == OP_RW)
        .map(|p| p.1.len())
        .sum();
    assert_eq!(data, 6000);
}

#[test]
fn guest_to_host_credit_updates_and_overrun_reset() {
    let mut g = Guest::new();
    g.activate();
    g.post_rx(16);
    let listener = UnixListener::bind(format!("{}_81", g.path.display())).unwrap();
    let mut host = guest_connect(&mut g, &listener, 6001, 81);
    host.set_nonblocking(true).unwrap();

    // Send in 32 KiB packets while the host drains: once half our buffer was consumed
    // the guest is told (CREDIT_UPDATE with the new fwd_cnt).
    let chunk = vec![1u8; 32 * 1024];
    let mut sink = vec![0u8; 1 << 20];
    for _ in 0..6 {
        let mut rw = g.hdr(6001, 81, OP_RW);
        rw.len = chunk.len() as u32;
        g.send(rw, &chunk);
        while host.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
    }
    let updates: Vec<Header> = g
        .recv()
        .into_iter()
        .map(|p| p.0)
        .filter(|h| h.op == OP_CREDIT_UPDATE)
        .collect();
    assert!(!updates.is_empty());
    assert!(updates[0].fwd_cnt >= BUF_ALLOC / 2);

    // Now the host stops reading and the guest ignores its credit: reset, not unbounded
    // buffering.
    for _ in 0..64 {
        let mut rw = g.hdr(6001, 81, OP_RW);
        rw.len = chunk.len() as u32;
        g.send(rw, &chunk);
        if g.dev.connection_count() == 0 {
            break;
        }
    }
    let ops = g.recv_ops();
    assert_eq!(ops.last(), Some(&OP_RST), "{ops:?}");
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn guest_half_close_then_host_close() {
    let mut g = Guest::new();
    g.activate();
    g.post_rx(8);
    let listener = UnixListener::bind(format!("{}_82", g.path.display())).unwrap();
    let mut host = guest_connect(&mut g, &listener, 6002, 82);

    // Guest: no more sending. The host sees EOF but can still write.
    let mut shut = g.hdr(6002, 82, OP_SHUTDOWN);
    shut.flags = SHUTDOWN_SEND;
    g.send(shut, &[]);
    assert_eq!(read_to_eof(&mut host), b"");
    host.write_all(b"still here").unwrap();
    g.dev.handle_host_events();
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].1, b"still here");
    assert_eq!(g.dev.connection_count(), 1);

    // Host finishes too: both directions are done, the guest gets the closing RST.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    g.dev.handle_host_events();
    assert_eq!(g.recv_ops(), vec![OP_RST]);
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn host_half_close_then_guest_close() {
    let mut g = Guest::new();
    g.activate();
    g.post_rx(8);
    let listener = UnixListener::bind(format!("{}_85", g.path.display())).unwrap();
    let mut host = guest_connect(&mut g, &listener, 6006, 85);

    // Host: no more sending -> SHUTDOWN(SEND) to the guest, connection kept.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    g.dev.handle_host_events();
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.flags),
        (OP_SHUTDOWN, SHUTDOWN_SEND)
    );
    assert_eq!(g.dev.connection_count(), 1);

    // The guest can still send.
    let mut rw = g.hdr(6006, 85, OP_RW);
    rw.len = 4;
    g.send(rw, b"last");
    assert_eq!(read_exact_timeout(&mut host, 4), b"last");

    // Guest resets: gone, the host sees EOF, and no RST is answered to an RST.
    g.send(g.hdr(6006, 85, OP_RST), &[]);
    assert_eq!(g.dev.connection_count(), 0);
    assert!(g.recv().is_empty());
    assert_eq!(read_to_eof(&mut host), b"");
}

#[test]
fn malformed_packets_are_answered_with_rst_or_dropped() {
    let mut g = Guest::new();
    g.activate();
    g.post_rx(32);

    // Wrong source CID: dropped, no reply to a forged address.
    let mut h = g.hdr(1, 1, OP_REQUEST);
    h.src_cid = 77;
    g.send(h, &[]);
    assert!(g.recv().is_empty());

    // Another destination CID, a non-stream type, an unknown op, data on no connection:
    // each gets an RST.
    let mut h = g.hdr(1, 2, OP_REQUEST);
    h.dst_cid = 5;
    g.send(h, &[]);
    let mut h = g.hdr(1, 3, OP_REQUEST);
    h.type_ = 2;
    g.send(h, &[]);
    g.send(g.hdr(1, 4, 99), &[]);
    let mut h = g.hdr(1, 5, OP_RW);
    h.len = 3;
    g.send(h, b"abc");
    let pkts = g.recv();
    assert_eq!(pkts.len(), 4);
    for (p, port) in pkts.iter().zip([2, 3, 4, 5]) {
        assert_eq!((p.0.op, p.0.src_port, p.0.dst_port), (OP_RST, port, 1));
        assert_eq!(p.0.dst_cid, GUEST_CID);
    }
    assert_eq!(pkts[0].0.src_cid, 5);
    // An RST for nothing is not answered.
    g.send(g.hdr(1, 6, OP_RST), &[]);
    assert!(g.recv().is_empty());

    let before = g.dev.stats().malformed_tx;
    // Header claims more payload than the chain carries.
    let mut h = g.hdr(1, 7, OP_RW);
    h.len = 100;
    g.send(h, b"abc");
    // Chain shorter than a header.
    let at = g.alloc(64);
    g.txq.add_chain(&[Buf::read(at, 20)]);
    // Device-writable descriptor on the TX queue.
    g.txq.add_chain(&[Buf::write(at, 64)]);
    // Outside guest memory.
    g.txq.add_chain(&[Buf::read(MEM_SIZE as u64 - 10, 44)]);
    // A descriptor that loops to itself.
    let looped = g.txq.add_chain(&[Buf::read(at, 44)]);
    g.txq
        .set_desc(looped, at, 44, VRING_DESC_F_NEXT as u16, looped);
    // More descriptors than the queue holds, through an indirect table.
    let many: Vec<Buf> = (0..MAX_CHAIN_DESCRIPTORS as u64 + 1)
        .map(|i| Buf::read(at + i % 44, 1))
        .collect();
    let table = g.alloc(16 * many.len() as u64);
    g.txq.add_indirect_chain(GuestAddress(table), &many);
    // A head index past the table.
    g.txq.publish(4000);
    // Payload beyond the largest packet.
    let big = g.alloc(MAX_PAYLOAD as u64 + 64);
    g.txq.add_chain(&[
        Buf::read(big, 44),
        Buf::read(big + 44, MAX_PAYLOAD as u32 + 1),
    ]);
    g.dev.process_tx();
    assert_eq!(g.dev.stats().malformed_tx - before, 8);
    assert!(g.recv().is_empty());
    // Every chain but the one with no valid head came back.
    assert_eq!(g.txq.used_idx(), 6 + 7);

    // The device still works after all that.
    let listener = UnixListener::bind(format!("{}_83", g.path.display())).unwrap();
    guest_connect(&mut g, &listener, 6003, 83);
}

#[test]
fn unusable_receive_buffers_are_returned_and_the_packet_waits() {
    let mut g = Guest::new();
    g.activate();
    let at = g.alloc(4096);
    // Read-only, too small for a header, outside memory.
    let h1 = g.rxq.add_chain(&[Buf::read(at, 4096)]);
    let h2 = g.rxq.add_chain(&[Buf::write(at, 10)]);
    let h3 = g.rxq.add_chain(&[Buf::write(MEM_SIZE as u64 - 8, 4096)]);
    g.send(g.hdr(9, 9, OP_REQUEST), &[]);
    assert_eq!(g.dev.stats().malformed_rx, 3);
    assert_eq!(g.rxq.used_idx(), 3);
    for (pos, head) in [h1, h2, h3].into_iter().enumerate() {
        assert_eq!(g.rxq.used_elem(pos as u16), (head as u32, 0));
    }
    g.rx_seen = 3;
    // The RST (nobody listens on port 9) goes into the next good buffer.
    g.post_rx(1);
    assert_eq!(g.recv_ops(), vec![OP_RST]);
}

#[test]
fn device_reset_closes_host_sockets_and_transport_reset_event() {
    let mut g = Guest::new();
    g.activate();
    g.post_rx(4);
    let listener = UnixListener::bind(format!("{}_84", g.path.display())).unwrap();
    let mut host = guest_connect(&mut g, &listener, 6004, 84);

    // Transport reset: event delivered, connection dropped.
    let ev = g.alloc(8);
    let head = g.evq.add_chain(&[Buf::write(ev, 8)]);
    assert!(g.dev.transport_reset());
    assert_eq!(g.evq.used_elem(0), (head as u32, 4));
    let id: u32 = g.mem.read_obj(GuestAddress(ev)).unwrap();
    assert_eq!(id, EVENT_TRANSPORT_RESET);
    assert_eq!(read_to_eof(&mut host), b"");
    assert_eq!(g.dev.connection_count(), 0);

    // Driver reset: same for connections made since, once the event loop ran.
    let mut host = guest_connect(&mut g, &listener, 6005, 84);
    assert!(g.dev.reset());
    assert!(!g.dev.is_activated());
    assert_eq!(g.dev.connection_count(), 1);
    g.dev.finish_reset();
    assert_eq!(read_to_eof(&mut host), b"");
    assert_eq!(g.dev.connection_count(), 0);
    assert!(g.irq.queue_count() > 0);
}

#[test]
fn listener_path_rules() {
    let dir = TempDir::new();
    let cfg = |p: PathBuf| VsockConfig { cid: 3, path: p };

    // A regular file is not ours to replace.
    let file = dir.0.join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        Muxer::new(&cfg(file.clone())),
        Err(MuxerError::PathNotSocket(_))
    ));
    assert!(file.exists());

    // A live listener is not stolen; a stale socket file is replaced.
    let sock = dir.0.join("s");
    let live = UnixListener::bind(&sock).unwrap();
    assert!(matches!(
        Muxer::new(&cfg(sock.clone())),
        Err(MuxerError::PathInUse(_))
    ));
    drop(live);
    let m = Muxer::new(&cfg(sock.clone())).unwrap();
    assert!(sock.exists());
    // Dropping the device removes its socket file.
    drop(m);
    assert!(!sock.exists());
}

/// The device on the real event loop: host sockets are watched through the muxer's epoll
/// fd, queue notifications through their eventfds.
#[test]
fn event_loop_serves_a_host_initiated_connection() {
    use crate::devices::virtio::event_loop::DeviceEventLoop;
    use std::sync::Mutex;
    use std::time::Instant;

    let mut g = Guest::new();
    let dir = TempDir::new();
    let path = dir.0.join("loop.sock");
    let dev = Arc::new(Mutex::new(
        Vsock::new(&VsockConfig {
            cid: GUEST_CID,
            path: path.clone(),
        })
        .unwrap(),
    ));
    let mut el = DeviceEventLoop::new().unwrap();
    el.add(dev.clone());
    let evts: Vec<EventFd> = (0..3).map(|_| EventFd::new(0).unwrap()).collect();
    let queues = vec![
        g.rxq.device_queue(),
        g.txq.device_queue(),
        g.evq.device_queue(),
    ];
    dev.lock()
        .unwrap()
        .activate(
            g.mem.clone(),
            g.irq.clone(),
            queues,
            evts.iter().map(|e| e.try_clone().unwrap()).collect(),
            0,
        )
        .unwrap();
    let mut run_until = |what: &str, done: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            el.run_once(50).unwrap();
        }
    };
    run_until("activation", &mut || true);

    // Receive buffers first, announced through the RX notification.
    for i in 0..4u64 {
        let at = 0x40_0000 + i * 0x2000;
        let head = g
            .rxq
            .add_chain(&[Buf::write(at, HDR_LEN as u32 + RX_BUF_LEN)]);
        g.rx_bufs.insert(head, at);
    }
    evts[RX_QUEUE].write(1).unwrap();

    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();
    run_until("the REQUEST", &mut || g.rxq.used_idx() == 1);
    let req = g.recv()[0].0;
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid),
        (OP_REQUEST, 1024, GUEST_CID)
    );

    // The guest accepts through the TX queue.
    let resp = g.hdr(1024, req.src_port, OP_RESPONSE);
    let at = 0x50_0000;
    g.mem
        .write_slice(&resp.to_bytes(), GuestAddress(at))
        .unwrap();
    g.txq.add_chain(&[Buf::read(at, HDR_LEN as u32)]);
    evts[TX_QUEUE].write(1).unwrap();
    run_until("the TX completion", &mut || g.txq.used_idx() == 1);
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(read_exact_timeout(&mut client, ok.len()), ok.as_bytes());

    // Host data reaches the guest with no explicit call: the loop saw the socket.
    client.write_all(b"over the loop").unwrap();
    run_until("the data packet", &mut || g.rxq.used_idx() == 2);
    let pkts = g.recv();
    assert_eq!(pkts[0].1, b"over the loop");
    assert!(g.irq.queue_count() >= 2);

    // A driver reset (on a vCPU thread in the VMM) closes the host side once the loop ran.
    assert!(dev.lock().unwrap().reset());
    run_until("the reset", &mut || {
        dev.lock().unwrap().connection_count() == 0
    });
    assert_closed(&mut client);
}

/// A hostile guest: thousands of packets with random ops, ports, flags, credit fields and
/// lengths (valid CID mostly), some to ports with a host listener, interleaved with host
/// activity. The device must neither panic nor break the packet invariants the driver
/// relies on (checked by `recv`), and must still serve a well-behaved connection after.
#[test]
fn random_packets_do_not_break_the_device() {
    let mut g = Guest::new();
    g.activate();
    let listener = UnixListener::bind(format!("{}_7", g.path.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut accepted = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Receive buffers cycle through 16 slots with at most 8 outstanding: the device uses
    // them in order, so a slot is free again when it comes round.
    const RX_REGION: u64 = 0x1c0_0000;
    let mut rx_posted = 0u64;
    let mut keep_rx_posted = |g: &mut Guest| {
        g.recv();
        while g.rx_bufs.len() < 8 {
            let at = RX_REGION + (rx_posted % 16) * 0x2000;
            rx_posted += 1;
            let head = g.rxq.add_chain(&[
                Buf::write(at, HDR_LEN as u32),
                Buf::write(at + HDR_LEN as u64, RX_BUF_LEN),
            ]);
            g.rx_bufs.insert(head, at);
        }
        g.dev.process_rx();
    };
    for _ in 0..3000u32 {
        keep_rx_posted(&mut g);
        // TX packets are consumed at once, so their memory can be reused every round.
        g.next_data = 0x10_0000;
        let r = rand();
        let ports = [7, 8, 1234];
        let mut h = g.hdr(
            (r % 5) as u32,
            ports[(r >> 8) as usize % 3],
            (r >> 16) as u16 % 9,
        );
        if r % 50 == 0 {
            h.src_cid = r >> 20;
        }
        if r % 40 == 1 {
            h.type_ = 2;
        }
        h.flags = (r >> 24) as u32 % 4;
        h.buf_alloc = (r >> 28) as u32;
        h.fwd_cnt = (r >> 36) as u32;
        let data_len = (r >> 44) as usize % 300;
        h.len = if r % 7 == 0 {
            (r >> 50) as u32
        } else {
            data_len as u32
        };
        g.send(h, &vec![0xab; data_len]);
        while let Ok((s, _)) = listener.accept() {
            s.set_nonblocking(true).unwrap();
            accepted.push(s);
        }
        if r % 5 == 0 {
            for s in &mut accepted {
                let _ = s.write(b"noise");
                let mut sink = [0u8; 512];
                let _ = s.read(&mut sink);
            }
            if r % 35 == 0 {
                accepted.clear();
            }
            g.dev.handle_host_events();
        }
    }
    assert!(g.dev.stats().muxer.bad_packets > 0);
    assert!(g.dev.stats().malformed_tx > 0);
    assert!(g.dev.stats().muxer.connections_opened > 0);

    // Let every random connection end, then check the device still works.
    accepted.clear();
    g.dev.handle_host_events();
    for _ in 0..64 {
        keep_rx_posted(&mut g);
    }
    g.recv();
    let listener2 = UnixListener::bind(format!("{}_4242", g.path.display())).unwrap();
    g.send(g.hdr(9999, 4242, OP_REQUEST), &[]);
    let (mut host, _) = listener2.accept().unwrap();
    keep_rx_posted(&mut g);
    let mut rw = g.hdr(9999, 4242, OP_RW);
    rw.len = 2;
    g.send(rw, b"ok");
    assert_eq!(read_exact_timeout(&mut host, 2), b"ok");
    host.write_all(b"hi").unwrap();
    g.dev.handle_host_events();
    let pkts = g.recv();
    assert!(
        pkts.iter()
            .any(|(h, d)| h.op == OP_RW && h.src_port == 4242 && d == b"hi"),
        "{pkts:?}"
    );
}
