//! OCI config.json: decoding into the runtime-spec types the way a bundle is loaded, then the
//! engine's whole validation (root, process, user, capabilities, rlimits, mounts, hooks,
//! namespaces, resources, sysctls, devices, seccomp, ...) against a bundle directory with a
//! rootfs, and the mount option parser on every mount's options.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use agent::engine::{parse_mount_options, syscall_surface, validate_spec};
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::Spec;
use sandbox_fuzz::temp_dir;

fn bundle() -> &'static PathBuf {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let dir = temp_dir().join("bundle");
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<Spec>(data) else {
        return;
    };
    let _ = validate_spec(&spec, bundle());
    for m in spec.mounts().iter().flatten() {
        if let Some(opts) = m.options() {
            let _ = parse_mount_options(opts);
        }
    }
    let _ = syscall_surface(spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()));
});
