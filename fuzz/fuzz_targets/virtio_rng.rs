//! virtio-rng: the request queue over guest memory the input lays out (descriptor table,
//! available ring and buffers), with whatever features the input acks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox_fuzz::{activate, guest_memory, DeviceInput};
use vmm::devices::virtio::rng::Rng;

fuzz_target!(|data: &[u8]| {
    let input = DeviceInput::parse(data);
    let mem = guest_memory(input.image);
    let mut rng = Rng::new().unwrap();
    activate(&mut rng, &mem, 1, input.features);
    // A second round finds the queue where the first left it.
    for _ in 0..=(input.ctl & 1) {
        let _ = rng.process_queue();
    }
});
