//! The host side of the vsock device: unix sockets in, vsock connections out.
//!
//! - Host-initiated: a client connects to the unix listener at `path` and writes
//!   `CONNECT <port>\n`; the guest gets a REQUEST for `port` from a fresh host port; on the
//!   guest's RESPONSE the client reads `OK <hostport>\n` and the socket carries the stream.
//!   If the guest refuses, the client's socket is closed without the `OK` line.
//! - Guest-initiated: a REQUEST for host port P connects to the unix socket `<path>_<P>`;
//!   a refusal there becomes an RST to the guest.
//!
//! All host sockets live in one epoll set of our own (edge-triggered, so a socket we stop
//! reading for lack of guest credit or buffers does not keep waking the loop); the device
//! registers only that epoll fd with the device event loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use log::{debug, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::config::VsockConfig;
use super::connection::{Connection, Disposition};
use super::packet::*;

/// Connections (both directions) one VM may hold; beyond this, new ones are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// Accepted host clients that have not yet sent their `CONNECT` line.
const MAX_PENDING_HOST: usize = 64;
/// Longest acceptable `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// Replies (RSTs) to packets that matched no connection, waiting for receive buffers.
const MAX_CONTROL_BACKLOG: usize = 256;
/// Host ports for host-initiated connections are taken from here up.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;

const LISTENER_TOKEN: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("vsock socket path {0} exists and is not a socket")]
    PathNotSocket(PathBuf),
    #[error("vsock socket path {0} is in use by a running listener")]
    PathInUse(PathBuf),
    #[error("cannot bind the vsock unix socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the vsock epoll set: {0}")]
    Epoll(#[source] io::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MuxerStats {
    /// Packets from the guest that were not valid (wrong CID, type, op for the state).
    pub bad_packets: u64,
    pub resets_sent: u64,
    pub connections_opened: u64,
}

pub struct Muxer {
    guest_cid: u64,
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<ConnKey, Connection>,
    fd_keys: HashMap<RawFd, ConnKey>,
    pending_host: HashMap<RawFd, PendingHost>,
    rx_queue: VecDeque<ConnKey>,
    rx_queued: HashSet<ConnKey>,
    control: VecDeque<Header>,
    /// Sockets to close once the event batch being handled is done.
    closing: Vec<UnixStream>,
    next_local_port: u32,
    /// Whether a guest driver is there to talk to; host clients are turned away before.
    active: bool,
    pub stats: MuxerStats,
}

/// Binds `path`, replacing a socket file nobody listens on any more (a VMM that died).
fn bind_listener(path: &Path) -> Result<UnixListener, MuxerError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(MuxerError::PathNotSocket(path.to_path_buf()));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(MuxerError::PathInUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(path);
            }
            Err(_) => {}
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| MuxerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| MuxerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(listener)
}

/// Connects to a guest-chosen host port without blocking: a listener whose backlog is full
/// refuses (EAGAIN) instead of stalling the device loop.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un of at least `len` bytes.
    let ret = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

impl Muxer {
    pub fn new(config: &VsockConfig) -> Result<Self, MuxerError> {
        let listener = bind_listener(&config.path)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(Muxer {
            guest_cid: config.cid,
            path: config.path.clone(),
            listener,
            epoll,
            conns: HashMap::new(),
            fd_keys: HashMap::new(),
            pending_host: HashMap::new(),
            rx_queue: VecDeque::new(),
            rx_queued: HashSet::new(),
            control: VecDeque::new(),
            closing: Vec::new(),
            next_local_port: FIRST_LOCAL_PORT,
            active: false,
            stats: MuxerStats::default(),
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether a driver is there to serve new host clients. Only a flag: callable from a
    /// vCPU thread (see `Vsock::reset`).
    pub fn set_accepting(&mut self, accepting: bool) {
        self.active = accepting;
    }

    /// Closes every connection and pending client (device or transport reset).
    pub fn drop_all(&mut self) {
        for (_, conn) in self.conns.drain() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream().as_raw_fd(),
                EpollEvent::default(),
            );
        }
        for (fd, _) in self.pending_host.drain() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        self.fd_keys.clear();
        self.rx_queue.clear();
        self.rx_queued.clear();
        self.control.clear();
    }

    /// Whether there are packets waiting for guest receive buffers.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.rx_queue.is_empty()
    }

    fn enqueue_rx(&mut self, key: ConnKey) {
        if self.rx_queued.insert(key) {
            self.rx_queue.push_back(key);
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream().as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.fd_keys.remove(&fd);
        }
    }

    fn reply_rst(&mut self, to: &Header) {
        if to.op == OP_RST {
            return;
        }
        if self.control.len() >= MAX_CONTROL_BACKLOG {
            // A guest flooding us with bad packets loses some replies, not our memory.
            return;
        }
        self.control.push_back(Header {
            src_cid: to.dst_cid,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    /// A packet the guest put on the TX queue.
    pub fn handle_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid {
            // Not from this guest's address: drop rather than answer a forged source.
            debug!("vsock: dropping packet with source CID {}", hdr.src_cid);
            self.stats.bad_packets += 1;
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            debug!(
                "vsock: refusing packet for CID {} type {}",
                hdr.dst_cid, hdr.type_
            );
            self.stats.bad_packets += 1;
            self.reply_rst(hdr);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        log::trace!(
            "vsock: guest op {} {}->{} len {}",
            hdr.op,
            hdr.src_port,
            hdr.dst_port,
            hdr.len
        );
        if let Some(conn) = self.conns.get_mut(&key) {
            match conn.on_guest_packet(hdr, payload) {
                Disposition::Remove => self.remove_conn(key),
                Disposition::Keep => {
                    if conn.has_rx() {
                        self.enqueue_rx(key);
                    }
                }
            }
            return;
        }
        match hdr.op {
            OP_REQUEST => self.open_guest_connection(hdr, key),
            OP_RST => {}
            op => {
                if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&op) {
                    self.stats.bad_packets += 1;
                }
                self.reply_rst(hdr);
            }
        }
    }

    fn open_guest_connection(&mut self, hdr: &Header, key: ConnKey) {
        if self.conns.len() >= MAX_CONNECTIONS {
            warn!(
                "vsock: connection limit reached, refusing guest port {}",
                hdr.src_port
            );
            self.reply_rst(hdr);
            return;
        }
        let target = PathBuf::from(format!("{}_{}", self.path.display(), hdr.dst_port));
        let stream = match connect_nonblocking(&target) {
            Ok(s) => s,
            Err(e) => {
                debug!("vsock: guest connect to {} failed: {e}", target.display());
                self.reply_rst(hdr);
                return;
            }
        };
        let conn = Connection::guest_initiated(stream, hdr);
        if self.register_conn(key, conn) {
            self.enqueue_rx(key);
        } else {
            self.reply_rst(hdr);
        }
    }

    fn register_conn(&mut self, key: ConnKey, conn: Connection) -> bool {
        let fd = conn.stream().as_raw_fd();
        let set = EventSet::IN
            | EventSet::OUT
            | EventSet::READ_HANG_UP
            | EventSet::HANG_UP
            | EventSet::EDGE_TRIGGERED;
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(set, fd as u64))
        {
            warn!("vsock: cannot watch a host socket: {e}");
            return false;
        }
        self.fd_keys.insert(fd, key);
        self.conns.insert(key, conn);
        self.stats.connections_opened += 1;
        true
    }

    /// The next packet for the guest; its payload goes into `buf` (sized to the room in the
    /// guest buffer). Round-robin over connections so one busy stream does not starve others.
    pub fn next_rx_packet(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(hdr) = self.control.pop_front() {
            self.stats.resets_sent += 1;
            return Some((hdr, 0));
        }
        while let Some(key) = self.rx_queue.pop_front() {
            self.rx_queued.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let Some(packet) = conn.next_rx_packet(self.guest_cid, buf) else {
                continue;
            };
            if packet.0.op == OP_RST {
                self.stats.resets_sent += 1;
            }
            log::trace!(
                "vsock: host op {} {}->{} len {}",
                packet.0.op,
                packet.0.src_port,
                packet.0.dst_port,
                packet.1
            );
            if conn.is_dead() {
                self.remove_conn(key);
            } else if conn.has_rx() {
                self.enqueue_rx(key);
            }
            return Some(packet);
        }
        None
    }

    /// The epoll fd the device event loop watches for host-socket activity.
    pub fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Handles whatever happened on host sockets since the last call.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("vsock: epoll_wait failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                self.handle_host_event(ev.data(), ev.event_set());
            }
            self.closing.clear();
            if n < events.len() {
                return;
            }
        }
    }

    fn handle_host_event(&mut self, token: u64, set: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept_clients();
            return;
        }
        let fd = token as RawFd;
        if self.pending_host.contains_key(&fd) {
            self.read_connect_line(fd);
            return;
        }
        let Some(&key) = self.fd_keys.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.on_stream_event(
            set.intersects(EventSet::IN | EventSet::READ_HANG_UP),
            set.contains(EventSet::OUT),
            set.intersects(EventSet::HANG_UP | EventSet::ERROR),
        );
        if conn.has_rx() {
            self.enqueue_rx(key);
        }
    }

    fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and the like: leave the client in the backlog for later.
                    warn!("vsock: accept failed: {e}");
                    return;
                }
            };
            if !self.active || self.pending_host.len() >= MAX_PENDING_HOST {
                // No driver yet (or too many idle clients): closing tells the client to retry.
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            let set = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
            if self
                .epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(set, fd as u64))
                .is_err()
            {
                continue;
            }
            self.pending_host.insert(
                fd,
                PendingHost {
                    stream,
                    line: Vec::new(),
                },
            );
            // The line may already be there; edge-triggered epoll would not say so again.
            self.read_connect_line(fd);
        }
    }

    fn drop_pending(&mut self, fd: RawFd) {
        if let Some(pending) = self.pending_host.remove(&fd) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            // Closed after the current batch of events: if the number were reused by an
            // accept in this batch, a later event of the batch would reach the wrong socket.
            self.closing.push(pending.stream);
        }
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(pending) = self.pending_host.get_mut(&fd) else {
            return;
        };
        let mut chunk = [0u8; MAX_CONNECT_LINE];
        let newline = loop {
            if let Some(pos) = pending.line.iter().position(|&b| b == b'\n') {
                break pos;
            }
            if pending.line.len() >= MAX_CONNECT_LINE {
                debug!("vsock: host client sent no CONNECT line, closing");
                self.drop_pending(fd);
                return;
            }
            let want = MAX_CONNECT_LINE - pending.line.len();
            match pending.stream.read(&mut chunk[..want]) {
                Ok(0) => {
                    self.drop_pending(fd);
                    return;
                }
                Ok(n) => pending.line.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.drop_pending(fd);
                    return;
                }
            }
        };
        let Some(port) = parse_connect_line(&pending.line[..newline]) else {
            debug!("vsock: malformed CONNECT line from host client, closing");
            self.drop_pending(fd);
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            warn!("vsock: connection limit reached, refusing host client");
            self.drop_pending(fd);
            return;
        }
        let early = pending.line[newline + 1..].to_vec();
        // Out of the pending set and its epoll entry; register_conn adds it back as a
        // connection under the same fd.
        let Some(pending) = self.pending_host.remove(&fd) else {
            return;
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let local_port = self.allocate_local_port(port);
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let conn = Connection::host_initiated(pending.stream, local_port, port, early);
        if self.register_conn(key, conn) {
            self.enqueue_rx(key);
        }
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            // At most MAX_CONNECTIONS ports are taken, so this ends quickly.
            if !self.conns.contains_key(&key) {
                return port;
            }
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // Leave no socket file behind for the next VM to trip over.
        let _ = std::fs::remove_file(&self.path);
    }
}
