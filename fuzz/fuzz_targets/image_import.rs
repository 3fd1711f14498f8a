//! Image import: the outer archive (`docker save` or an OCI image layout, plain or gzip) as
//! `sandbox image import` reads it: archive names and aliases, index.json, nested indexes,
//! manifests, manifest.json, configs, descriptors (sizes, digests, media types), diff_ids,
//! layer compression, and the layers applied, into a store in a private directory with a
//! canary beside it that must not change. The input is the archive file.
#![no_main]

use std::fs;

use libfuzzer_sys::fuzz_target;
use runtime_shim::image::import::import;
use runtime_shim::image::ImageStore;
use sandbox_fuzz::{canary, temp_dir};

fuzz_target!(|data: &[u8]| {
    canary::check();
    let archive = temp_dir().join("image.tar");
    fs::write(&archive, data).unwrap();
    let store = ImageStore::new(temp_dir().join("store"));
    if import(&store, &archive, Some("fuzz")).is_ok() {
        store.remove("fuzz").unwrap();
    }
    canary::check();
    // A failed import leaves no image, staging or work directory behind.
    let images = temp_dir().join("store/images");
    if let Ok(dir) = fs::read_dir(&images) {
        let left: Vec<_> = dir.map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "the import left {left:?} in the store");
    }
    for entry in fs::read_dir(temp_dir().join("store")).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(name == "images", "the import left {name:?} in the store");
    }
    for entry in fs::read_dir(temp_dir()).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            name == "store" || name == "canary" || name == "image.tar",
            "the import made {name:?} beside the store"
        );
    }
});
