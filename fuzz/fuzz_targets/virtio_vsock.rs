//! virtio-vsock: TX chains parsed into packets (header, payload over any number of
//! descriptors) and handed to the muxer, RX chains filled with its replies, and the event
//! queue, over guest memory the input lays out. Guest connection requests to ports 1024
//! and 5000 reach unix listeners in a private directory. `ctl` bit 0: the host ends of new
//! connections send the bytes at guest address 0x8000 (bits 4-7 say how many, times 64) and
//! the device handles host events; bit 1: a transport reset; bit 2: the host ends close.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use sandbox_fuzz::{activate, guest_memory, vsock_host, DeviceInput};
use vmm::devices::virtio::vsock::{Vsock, VsockConfig};

fuzz_target!(|data: &[u8]| {
    let input = DeviceInput::parse(data);
    let mem = guest_memory(input.image);
    let mut dev = Vsock::new(&VsockConfig {
        cid: vsock_host::GUEST_CID,
        path: vsock_host::path(),
    })
    .unwrap();
    activate(&mut dev, &mem, 3, input.features);
    dev.process_tx();
    let mut peers = Vec::new();
    vsock_host::accept_all(&mut peers);
    if input.ctl & 1 != 0 {
        let n = (input.ctl >> 4) as usize * 64;
        let bytes = input.image.get(0x8000..).unwrap_or(&[]);
        for p in &mut peers {
            let _ = p.write_all(&bytes[..n.min(bytes.len())]);
        }
        dev.handle_host_events();
    }
    if input.ctl & 4 != 0 {
        peers.clear();
        dev.handle_host_events();
    }
    if input.ctl & 2 != 0 {
        dev.transport_reset();
    }
    dev.process_tx();
    dev.process_rx();
});
