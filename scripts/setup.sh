#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for sandbox: packages, the guest kernel, the binaries and
# the default image. Idempotent: every step is skipped when its result is already there.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs packages and writes /usr/local/bin)" >&2
  exit 1
fi

packages=(
  build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils linux-source-6.1
  busybox-static e2fsprogs iproute2 util-linux runc containerd docker.io
  libjs-chart.js chromium chromium-driver
  qemu-system-x86 kmod
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup.sh: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi

# The fuzz smoke in test.sh builds the targets in fuzz/ with cargo-fuzz (libFuzzer needs a
# nightly compiler); both are kept if already there.
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  step "installing the nightly toolchain (fuzz targets)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  step "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

step "building the guest kernel (cached)"
guest-kernel-config/build.sh

step "building sandbox binaries (release)"
cargo build --release --workspace
# The agent runs as PID 1 in a guest with no libc of its own: link it statically.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release -p agent --target x86_64-unknown-linux-gnu

step "installing binaries into /usr/local/bin"
install -m 0755 target/release/sandbox-vmm target/release/sandbox \
  target/release/containerd-shim-sandbox-v2 /usr/local/bin/
install -m 0755 target/x86_64-unknown-linux-gnu/release/sandbox-agent /usr/local/bin/sandbox-agent

step "building the default image (busybox)"
sandbox image build-default

# The VM tests run inside this machine wherever the host's own KVM cannot run ordinary guest
# kernels (tests/nested/vm-tests.sh decides); it is Debian's kernel and an initramfs of ours.
step "preparing the nested test machine (cached)"
tests/nested/prepare.sh

step "done"
