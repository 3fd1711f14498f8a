//! Image layers: the tar entry parser and how each entry is applied to a rootfs (names,
//! `..`, absolute names, symlinks and what goes through them, hard links, whiteouts and
//! opaque directories, devices, modes and owners, file data and holes), one or two layers
//! on top of each other, with a canary directory beside the rootfs that must not change.
//!
//! Input: a control byte (bit 0: two layers, the first's length in the next 2 bytes), then
//! the layer tar streams.
#![no_main]

use std::fs;

use agent::confined::ConfinedRoot;
use libfuzzer_sys::fuzz_target;
use runtime_shim::image::layer::apply;
use sandbox_fuzz::{canary, temp_dir, Reader};

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let ctl = r.u8();
    let mut layers = Vec::new();
    if ctl & 1 != 0 {
        let n = r.u16() as usize;
        layers.push(r.bytes(n));
    }
    layers.push(r.rest());
    canary::check();
    let root = temp_dir().join("rootfs");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir(&root).unwrap();
    let confined = ConfinedRoot::open(&root).unwrap();
    for layer in layers {
        if apply(layer, &confined).is_err() {
            break;
        }
    }
    drop(confined);
    canary::check();
    // Nothing but the rootfs and the canary may appear in the private directory.
    for entry in fs::read_dir(temp_dir()).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            name == "rootfs" || name == "canary",
            "the layer made {name:?} beside the rootfs"
        );
    }
});
