//! The vsock muxer and connection state machine: a sequence of guest packets (any op,
//! addresses, ports, credit fields, payload), host clients connecting with `CONNECT` lines
//! (or garbage), host ends of connections writing, shutting down and closing, host events,
//! and the guest draining replies into buffers of any size. Host sockets are unix sockets in
//! a private directory.
#![no_main]

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use sandbox_fuzz::{vsock_host, Reader};
use vmm::devices::virtio::vsock::muxer::{Muxer, FIRST_LOCAL_PORT};
use vmm::devices::virtio::vsock::packet::{Header, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};
use vmm::devices::virtio::vsock::VsockConfig;

const MAX_STEPS: usize = 64;

fn guest_packet(r: &mut Reader, muxer: &mut Muxer) {
    let f = r.u8();
    let src_cid = if f & 1 == 0 {
        vsock_host::GUEST_CID
    } else {
        r.u64()
    };
    let dst_cid = if f & 2 == 0 { HOST_CID } else { r.u64() };
    let type_ = if f & 4 == 0 { TYPE_STREAM } else { r.u16() };
    let src_port = if f & 8 == 0 { r.u8() as u32 } else { r.u32() };
    let dst_port = match f >> 4 & 3 {
        0 => vsock_host::HOST_PORTS[0],
        1 => vsock_host::HOST_PORTS[1],
        2 => FIRST_LOCAL_PORT + (r.u8() & 7) as u32,
        _ => r.u32(),
    };
    let op = r.u8();
    let op = if op < 0xf0 {
        (op % 8) as u16
    } else {
        op as u16
    };
    let flags = r.u32();
    let buf_alloc = r.u32();
    let fwd_cnt = r.u32();
    let len = (r.u16() as usize) % 8192;
    let payload = r.bytes(len);
    let hdr = Header {
        src_cid,
        dst_cid,
        src_port,
        dst_port,
        len: payload.len() as u32,
        type_,
        op,
        flags,
        buf_alloc,
        fwd_cnt,
    };
    muxer.handle_guest_packet(&hdr, payload);
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let path = vsock_host::path();
    let mut muxer = Muxer::new(&VsockConfig {
        cid: vsock_host::GUEST_CID,
        path: path.clone(),
    })
    .unwrap();
    muxer.set_accepting(r.u8() & 1 == 0);
    let mut peers: Vec<UnixStream> = Vec::new();
    let mut clients: Vec<UnixStream> = Vec::new();
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let mut steps = 0;
    while !r.is_empty() && steps < MAX_STEPS {
        steps += 1;
        match r.u8() % 8 {
            0 | 1 => guest_packet(&mut r, &mut muxer),
            2 => vsock_host::accept_all(&mut peers),
            3 => {
                let i = r.u8() as usize;
                let n = r.u8() as usize * 16;
                let bytes = r.bytes(n);
                let all = peers.len() + clients.len();
                if all > 0 {
                    let s = if i % all < peers.len() {
                        &mut peers[i % all]
                    } else {
                        &mut clients[i % all - peers.len()]
                    };
                    let _ = s.write_all(bytes);
                }
            }
            4 => {
                let i = r.u8() as usize;
                let how = r.u8();
                if !peers.is_empty() {
                    let i = i % peers.len();
                    match how % 3 {
                        0 => drop(peers.swap_remove(i)),
                        1 => drop(peers[i].shutdown(Shutdown::Write)),
                        _ => drop(peers[i].shutdown(Shutdown::Read)),
                    }
                }
            }
            5 => {
                let Ok(mut c) = UnixStream::connect(&path) else {
                    continue;
                };
                c.set_nonblocking(true).unwrap();
                let kind = r.u8();
                let _ = if kind & 1 == 0 {
                    let port = match kind >> 1 & 3 {
                        0 => 1234,
                        1 => 22,
                        _ => r.u32(),
                    };
                    c.write_all(format!("CONNECT {port}\n").as_bytes())
                } else {
                    let n = r.u8() as usize;
                    c.write_all(r.bytes(n))
                };
                clients.push(c);
            }
            6 => muxer.process_host_events(),
            _ => {
                let room = (r.u16() as usize).min(MAX_PAYLOAD);
                for _ in 0..64 {
                    let Some((hdr, len)) = muxer.next_rx_packet(&mut buf[..room]) else {
                        break;
                    };
                    assert!(
                        len <= room,
                        "packet of {len} bytes for {room} bytes of room"
                    );
                    assert_eq!(hdr.len as usize, len);
                }
            }
        }
    }
    drop(muxer);
});
