//! virtio-blk: request parsing and execution (header, data segments, status byte; IN, OUT,
//! FLUSH, GET_ID and unknown types) over guest memory the input lays out, against a 64-sector
//! disk image in a private directory. `ctl` bit 0 makes the disk read-only, bit 1 runs the
//! queue twice.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandbox_fuzz::{activate, guest_memory, temp_dir, DeviceInput};
use vmm::devices::virtio::block::device::Block;
use vmm::devices::virtio::block::disk::DiskImage;

const DISK_SECTORS: usize = 64;

fn disk_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = temp_dir().join("disk.img");
        std::fs::write(&path, vec![0x5au8; DISK_SECTORS * 512]).unwrap();
        path
    })
}

fuzz_target!(|data: &[u8]| {
    let input = DeviceInput::parse(data);
    let mem = guest_memory(input.image);
    let disk = DiskImage::open(disk_path(), input.ctl & 1 != 0).unwrap();
    let mut blk = Block::new(disk, *b"fuzz-disk-serial-id!").unwrap();
    activate(&mut blk, &mem, 1, input.features);
    for _ in 0..=(input.ctl >> 1 & 1) {
        let _ = blk.process_queue();
    }
});
