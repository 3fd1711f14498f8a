//! virtio-net: the transmit path (chains the guest fills, virtio-net header and frame, a
//! backend that may be full) and the receive path (frames, short or over-long, put into
//! receive chains) over guest memory the input lays out, with an in-memory backend.
//! `ctl` bits 0-2: frames waiting in the backend (their bytes come from guest memory at
//! 0x8000, lengths growing, the last one over 64 KiB when bit 5 is set); bit 3: the backend
//! takes one frame only; bit 4: the device has a MAC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox_fuzz::{activate, guest_memory, DeviceInput};
use vmm::devices::virtio::net::{MacAddr, MemoryBackend, Net};

fuzz_target!(|data: &[u8]| {
    let input = DeviceInput::parse(data);
    let mem = guest_memory(input.image);
    let mut backend = MemoryBackend::default();
    let frames = input.ctl & 7;
    let source = input.image.get(0x8000..).unwrap_or(&[]);
    for i in 0..frames as usize {
        let mut len = i * 97;
        if input.ctl & 0x20 != 0 && i + 1 == frames as usize {
            len = 70_000;
        }
        let mut frame = vec![0u8; len];
        let n = source.len().min(len);
        frame[..n].copy_from_slice(&source[..n]);
        backend.inbound.push_back(frame);
    }
    if input.ctl & 8 != 0 {
        backend.outbound_capacity = Some(1);
    }
    let mac = (input.ctl & 0x10 != 0).then_some(MacAddr([2, 0, 0, 0, 0, 1]));
    let mut net = Net::with_backend(backend, mac).unwrap();
    activate(&mut net, &mem, 2, input.features);
    net.handle_tx();
    net.handle_rx();
    // The backend drained (room again) and the guest may have more buffers by now.
    net.backend_mut().outbound.clear();
    net.handle_tx();
    net.handle_rx();
});
