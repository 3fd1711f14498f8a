//! The shared harness of the end-to-end suites in `e2e/`: the binaries under test, a private
//! runtime root and image store per test ([`Env`]), whether vm isolation can run here, a
//! private containerd, and busybox images in the archive formats the clients import.
//!
//! # The binaries under test
//!
//! [`bin`] finds `sandbox`, `sandbox-vmm`, `sandbox-agent` and `containerd-shim-sandbox-v2`
//! in `$SANDBOX_TEST_BIN_DIR` when it is set, else in the cargo profile directory of the
//! running test executable (`target/<profile>/`, the parent of the test's `deps/`).
//! [`guest_agent`] finds the statically linked guest agent at `$SANDBOX_GUEST_AGENT`, else at
//! `target/x86_64-unknown-linux-gnu/<profile>/sandbox-agent` beside that directory. Nothing
//! is built here: a missing binary fails the test, naming the path and the command that
//! builds it (`scripts/test.sh` builds them all before it tests). Every `sandbox`, containerd
//! and dockerd the harness starts gets `SANDBOX_VMM`, `SANDBOX_AGENT` and
//! `SANDBOX_GUEST_AGENT` naming these files, so what runs is what was found here and not
//! another copy installed on the machine.
//!
//! # VM tests
//!
//! The full path of every test that needs vm isolation ends in `::vm`
//! (`run_echo_hello::vm`, `containerd_single_container::vm`), and no other test's path
//! contains `::vm`: `cargo test -- --skip ::vm` runs everything else, `cargo test -- ::vm`
//! only the vm set. Each vm test first calls [`vm_or_skip`], which asks `sandbox check --json`
//! (once per test binary) whether vm isolation is ready. Where it is not, the test prints
//! `SKIP <test>: <reason>` to stderr and passes without running, unless
//! `SANDBOX_REQUIRE_VM=1` is set: then it fails with the reason, since a run meant to
//! exercise the microVM must not pass by skipping it.
//!
//! Most suites need root; the containerd and docker suites also need Debian's containerd,
//! docker.io and busybox-static, and skip (saying why) without them.

pub mod bins;
pub mod containerd;
pub mod env;
pub mod host;
pub mod image;
pub mod net;

pub use bins::{bin, guest_agent, sandbox};
pub use env::{processes_mentioning, Env};
pub use host::{kvm_hardware_speed, kvm_kind, vm_or_skip, vm_unavailable};
pub use net::TestNet;

/// Reports a skipped test (or part of one) where it stays visible: straight to stderr, past
/// the test harness's capture of the print macros.
pub fn skip(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {msg}");
}

/// A test's wait bound scaled for the host: `$SANDBOX_TEST_SLOWDOWN` (a whole number, 1 when
/// unset) multiplies it. The nested test machine sets it, since everything there runs under
/// emulation many times slower than on hardware.
pub fn patience(bound: std::time::Duration) -> std::time::Duration {
    let factor = std::env::var("SANDBOX_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    bound * factor
}
