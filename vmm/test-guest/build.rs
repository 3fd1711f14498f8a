// Builds the test guest (an ELF kernel booted like Linux, see guest.S) with the system's C
// compiler driver and linker, and tells the vmm crate's tests where it is through the
// TEST_GUEST_ELF environment variable. Included by vmm/build.rs.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    match cmd.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("building the test guest failed: {shown} exited with {status}"),
        Err(e) => panic!("building the test guest failed: cannot run {shown}: {e}"),
    }
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let guest_dir = manifest_dir.join("test-guest");
    let source = guest_dir.join("guest.S");
    let script = guest_dir.join("guest.ld");
    for input in [
        &source,
        &guest_dir.join("virtio.S"),
        &script,
        &guest_dir.join("build.rs"),
    ] {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-env-changed=CC");

    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let object = out_dir.join("test-guest.o");
    let elf = out_dir.join("test-guest.elf");
    run(Command::new(&cc)
        .args(["-c", "-nostdinc", "-fno-pic", "-Wa,--fatal-warnings", "-o"])
        .arg(&object)
        .arg(&source));
    run(Command::new(&cc)
        .args([
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
            "-Wl,-T",
        ])
        .arg(&script)
        .arg("-o")
        .arg(&elf)
        .arg(&object));
    export(&elf);
}

fn export(elf: &Path) {
    println!("cargo:rustc-env=TEST_GUEST_ELF={}", elf.display());
}
