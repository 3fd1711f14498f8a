#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit tests, the test guest and Linux boot on
# /dev/kvm, the end-to-end tests of the runtime, and a short run of every fuzz target.
# Expects scripts/setup.sh to have run.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build (the binaries under test, debug like the tests)"
# The end-to-end tests run these and build nothing themselves (tests/src/bins.rs).
cargo build --workspace
# The guest agent is PID 1 in a guest with no libc: linked statically.
RUSTFLAGS="-C target-feature=+crt-static" cargo build -p agent --target x86_64-unknown-linux-gnu

step "cargo test"
# The Linux boot test skips without a guest kernel on a developer's machine; here setup.sh has
# built one, so a missing kernel is a failure.
export SANDBOX_REQUIRE_GUEST_KERNEL=1
# The end-to-end tests that need vm isolation (paths ending in ::vm) run in the next step,
# where a KVM that can run them is found or made.
status=0
cargo test --workspace --exclude sandbox-tests --no-fail-fast -- --test-threads=1 || status=1
cargo test -p sandbox-tests --no-fail-fast -- --test-threads=1 --skip ::vm || status=1

step "fuzz smoke (every cargo-fuzz target for 5 s over its committed corpus)"
# A target that crashes, hangs or leaks on what libFuzzer finds near its seeds fails the run;
# the input is left in fuzz/artifacts/<target>/.
fuzz/smoke.sh 5 || status=1

step "VM tests (directly on hardware-assisted KVM, else in the nested test machine)"
tests/nested/vm-tests.sh || status=1
exit $status
