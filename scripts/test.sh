#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit tests, the test guest and Linux boot on
# /dev/kvm, and the end-to-end tests of the runtime. Expects scripts/setup.sh to have run.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
# The Linux boot test skips without a guest kernel on a developer's machine; here setup.sh has
# built one, so a missing kernel is a failure.
export SANDBOX_REQUIRE_GUEST_KERNEL=1
cargo test --workspace --no-fail-fast -- --test-threads=1
