//! One vsock stream between a guest port and a host unix socket, with its state machine and
//! credit accounting.
//!
//! Credit (virtio-vsock 5.10.6.3): each side announces `buf_alloc` (its receive buffer) and
//! `fwd_cnt` (bytes it has consumed). A sender may have at most
//! `buf_alloc - (bytes_sent - fwd_cnt)` bytes in flight.
//! - guest -> host: data is written to the unix socket at once; what the socket does not take
//!   waits in `tx_buf`, which the guest's credit bounds to [`BUF_ALLOC`]. A guest that sends
//!   beyond its credit gets the connection reset. `fwd_cnt` counts bytes the socket took.
//! - host -> guest: the unix socket is read only while the guest has credit and has posted
//!   receive buffers; otherwise the bytes stay in the socket and the host writer blocks.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use log::debug;

use super::packet::*;

/// Receive buffer we announce for each connection (guest -> host direction).
pub const BUF_ALLOC: u32 = 256 * 1024;

/// Host-socket read size when the guest's receive buffers are smaller than this.
const RX_STAGE_LEN: usize = 64 * 1024;

/// Send an unsolicited credit update once the guest's view of our free space lags the
/// truth by this much; a guest that ran out of credit always gets one.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// A host client asked for a guest port; waiting for the guest's RESPONSE.
    HostConnecting,
    Established,
}

/// What the muxer must do with a connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Keep,
    /// Drop now: nothing more goes to the guest (the guest reset it).
    Remove,
}

#[derive(Debug, Default)]
struct Owed {
    request: bool,
    response: bool,
    credit_update: bool,
    credit_request: bool,
    shutdown: u32,
    rst: bool,
}

pub struct Connection {
    stream: UnixStream,
    /// Port on the host side (CID 2).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
    pub state: ConnState,
    owed: Owed,

    // guest -> host
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    guest_shut_send: bool,
    host_write_shut: bool,

    // host -> guest
    /// Bytes read from the host socket but not yet sent to the guest: the text after the
    /// `CONNECT` line, and reads made ahead for guests with small receive buffers.
    rx_staged: Vec<u8>,
    rx_staged_off: usize,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    stream_readable: bool,
    stream_eof: bool,
    stream_hup: bool,
    guest_shut_rcv: bool,
    /// After the RST goes out, the connection is gone.
    dead: bool,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            state,
            owed: Owed::default(),
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            guest_shut_send: false,
            host_write_shut: false,
            rx_staged: Vec::new(),
            rx_staged_off: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            stream_readable: false,
            stream_eof: false,
            stream_hup: false,
            guest_shut_rcv: false,
            dead: false,
        }
    }

    /// A host client's `CONNECT <peer_port>`: the REQUEST to the guest is owed.
    pub fn host_initiated(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        early_data: Vec<u8>,
    ) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, ConnState::HostConnecting);
        c.owed.request = true;
        c.rx_staged = early_data;
        // The CONNECT line was read without reaching EAGAIN: look at the socket again.
        c.stream_readable = true;
        c
    }

    /// A guest REQUEST that reached a host listener: the RESPONSE is owed.
    pub fn guest_initiated(stream: UnixStream, hdr: &Header) -> Self {
        let mut c = Self::new(stream, hdr.dst_port, hdr.src_port, ConnState::Established);
        c.owed.response = true;
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        c.stream_readable = true;
        c
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Bytes the guest can still take from us.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Bytes of guest data waiting for the host socket.
    pub fn tx_buffered(&self) -> usize {
        self.tx_buf.len()
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Resets the connection towards the guest: the next packet it gets is the RST.
    pub fn reset(&mut self) {
        self.owed = Owed {
            rst: true,
            ..Owed::default()
        };
        self.tx_buf.clear();
    }

    /// Whether `next_rx_packet` may produce something now.
    pub fn has_rx(&self) -> bool {
        if self.dead {
            return false;
        }
        let o = &self.owed;
        if o.rst || o.request || o.response || o.credit_update || o.shutdown != 0 {
            return true;
        }
        self.state == ConnState::Established
            && self.can_send_data()
            && (self.peer_credit() > 0 || !self.owed.credit_request)
    }

    fn can_send_data(&self) -> bool {
        !self.guest_shut_rcv && !self.stream_eof && (self.stream_readable || self.staged() > 0)
    }

    /// A packet from the guest for this connection.
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) -> Disposition {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.owed.credit_request = false;
        }
        if hdr.op == OP_RST {
            return Disposition::Remove;
        }
        match (self.state, hdr.op) {
            (ConnState::HostConnecting, OP_RESPONSE) => {
                self.state = ConnState::Established;
                let ok = format!("OK {}\n", self.local_port);
                // The socket was just accepted and nothing was written to it yet, so the
                // line fits; anything else means the client is gone.
                match self.stream.write(ok.as_bytes()) {
                    Ok(n) if n == ok.len() => {}
                    _ => self.reset(),
                }
            }
            (ConnState::Established, OP_RW) => self.on_guest_data(payload),
            (ConnState::Established, OP_CREDIT_UPDATE) => {}
            (ConnState::Established, OP_CREDIT_REQUEST) => self.owed.credit_update = true,
            (ConnState::Established, OP_SHUTDOWN) => {
                if hdr.flags & SHUTDOWN_RCV != 0 {
                    self.guest_shut_rcv = true;
                }
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    self.guest_shut_send = true;
                }
                self.flush_tx();
            }
            (state, op) => {
                debug!(
                    "vsock: op {op} in state {state:?} on {}:{}, resetting",
                    self.local_port, self.peer_port
                );
                self.reset();
            }
        }
        Disposition::Keep
    }

    fn on_guest_data(&mut self, payload: &[u8]) {
        if self.guest_shut_send || self.owed.rst {
            return;
        }
        if self.tx_buf.len() + payload.len() > BUF_ALLOC as usize {
            debug!(
                "vsock: guest port {} sent beyond its credit, resetting",
                self.peer_port
            );
            self.reset();
            return;
        }
        self.tx_buf.extend(payload);
        self.flush_tx();
    }

    /// Writes buffered guest data to the host socket.
    pub fn flush_tx(&mut self) {
        while !self.tx_buf.is_empty() && !self.owed.rst {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += n as u32;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // EPIPE: the host side stopped reading or went away.
                    debug!("vsock: host socket of port {} failed: {e}", self.local_port);
                    self.reset();
                    return;
                }
            }
        }
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.owed.credit_update = true;
        }
        if self.tx_buf.is_empty() && self.guest_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        let host_done = self.stream_eof || self.guest_shut_rcv;
        if self.host_write_shut && host_done && !self.owed.rst {
            // Both directions are finished; the RST completes the close for the guest.
            self.reset();
        }
    }

    /// Readiness of the host socket, from the muxer's epoll.
    pub fn on_stream_event(&mut self, readable: bool, writable: bool, hup: bool) {
        if readable {
            self.stream_readable = true;
        }
        if writable {
            self.flush_tx();
        }
        if hup {
            self.stream_hup = true;
            // The host side is gone: once what it wrote has reached the guest, reset. If
            // nothing can reach the guest any more, reset now.
            if self.state == ConnState::HostConnecting || self.stream_eof || self.guest_shut_rcv {
                self.reset();
            }
        }
    }

    fn header(&mut self, guest_cid: u64, op: u16) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest, with its payload in `buf` (whose length is the room in
    /// the guest's buffer). None when there is nothing to send now.
    pub fn next_rx_packet(&mut self, guest_cid: u64, buf: &mut [u8]) -> Option<(Header, usize)> {
        if self.dead {
            return None;
        }
        if self.owed.rst {
            self.owed = Owed::default();
            self.dead = true;
            return Some((self.header(guest_cid, OP_RST), 0));
        }
        if std::mem::take(&mut self.owed.request) {
            return Some((self.header(guest_cid, OP_REQUEST), 0));
        }
        if self.state != ConnState::Established {
            return None;
        }
        if std::mem::take(&mut self.owed.response) {
            return Some((self.header(guest_cid, OP_RESPONSE), 0));
        }
        if std::mem::take(&mut self.owed.credit_update) {
            return Some((self.header(guest_cid, OP_CREDIT_UPDATE), 0));
        }
        if let Some(packet) = self.next_data_packet(guest_cid, buf) {
            return Some(packet);
        }
        if self.owed.shutdown != 0 {
            let mut hdr = self.header(guest_cid, OP_SHUTDOWN);
            hdr.flags = std::mem::take(&mut self.owed.shutdown);
            return Some((hdr, 0));
        }
        None
    }

    fn staged(&self) -> usize {
        self.rx_staged.len() - self.rx_staged_off
    }

    fn take_staged(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.staged());
        out[..n].copy_from_slice(&self.rx_staged[self.rx_staged_off..self.rx_staged_off + n]);
        self.rx_staged_off += n;
        if self.staged() == 0 {
            self.rx_staged.clear();
            self.rx_staged_off = 0;
        }
        n
    }

    /// Reads up to `want` bytes from the host socket into `stage` (or `direct`). Err when
    /// nothing came: would block, end of stream or a failure, each noted in the state for
    /// [`Self::after_read_end`].
    fn read_stream(
        &mut self,
        want: usize,
        stage: Option<&mut Vec<u8>>,
        direct: &mut [u8],
    ) -> Result<usize, ()> {
        let target: &mut [u8] = match stage {
            Some(v) => &mut v[..want],
            None => &mut direct[..want],
        };
        loop {
            match self.stream.read(target) {
                Ok(0) => {
                    self.stream_readable = false;
                    self.stream_eof = true;
                    if self.stream_hup || self.host_write_shut {
                        // Gone entirely, or the guest already finished sending: the
                        // connection is over.
                        self.reset();
                    } else {
                        // Half-close: the host will send no more, the guest may still.
                        self.owed.shutdown |= SHUTDOWN_SEND;
                    }
                    return Err(());
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stream_readable = false;
                    return Err(());
                }
                Err(e) => {
                    debug!("vsock: reading host socket {} failed: {e}", self.local_port);
                    self.reset();
                    return Err(());
                }
            }
        }
    }

    /// After a read that produced nothing: an RST or SHUTDOWN may now be owed.
    fn after_read_end(&mut self, guest_cid: u64, buf: &mut [u8]) -> Option<(Header, usize)> {
        if self.owed.rst || self.owed.shutdown != 0 {
            return self.next_rx_packet(guest_cid, buf);
        }
        None
    }

    fn next_data_packet(&mut self, guest_cid: u64, buf: &mut [u8]) -> Option<(Header, usize)> {
        if !self.can_send_data() {
            return None;
        }
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            if self.owed.credit_request {
                return None;
            }
            // Linux sends credit updates as its reader drains; asking once costs nothing
            // and covers a driver that waits to be asked.
            self.owed.credit_request = true;
            return Some((self.header(guest_cid, OP_CREDIT_REQUEST), 0));
        }
        let room = buf.len().min(credit);
        if room == 0 {
            return None;
        }
        let n = if self.staged() > 0 {
            self.take_staged(&mut buf[..room])
        } else if room >= RX_STAGE_LEN {
            // A big guest buffer: read straight into it.
            match self.read_stream(room, None, buf) {
                Ok(n) => n,
                Err(()) => return self.after_read_end(guest_cid, buf),
            }
        } else {
            // Small guest buffers (Linux posts 4 KiB ones): one read fills several packets.
            let want = credit.min(RX_STAGE_LEN);
            let mut stage = std::mem::take(&mut self.rx_staged);
            stage.resize(want, 0);
            let got = self.read_stream(want, Some(&mut stage), buf);
            stage.truncate(*got.as_ref().unwrap_or(&0));
            self.rx_staged = stage;
            self.rx_staged_off = 0;
            if got.is_err() {
                return self.after_read_end(guest_cid, buf);
            }
            self.take_staged(&mut buf[..room])
        };
        self.tx_cnt += n as u32;
        let mut hdr = self.header(guest_cid, OP_RW);
        hdr.len = n as u32;
        Some((hdr, n))
    }
}
