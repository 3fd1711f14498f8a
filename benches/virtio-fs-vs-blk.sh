#!/usr/bin/env bash
# Sequential throughput in one VM container through a virtio-fs volume against the
# container's own disks (virtio-blk): the same container, the same run, so the ratio holds
# on a slow (nested, emulated) host as on hardware KVM.
#
# Each round runs one `sandbox run --isolation vm` whose container
#   - reads a file of SIZE MiB that the guest has never seen, once from the rootfs (the
#     read-only ext4 image on virtio-blk) and once from the volume (virtio-fs);
#   - writes SIZE MiB with fsync to its rootfs (the writable ext4 disk on virtio-blk) and to
#     the volume.
# The table gives the median rate per path over the rounds.
#
# Usage: benches/virtio-fs-vs-blk.sh [ROUNDS] [SIZE_MIB]   (defaults 3 and 64)
# Needs vm isolation: hardware KVM, or run it in the nested machine:
#   tests/nested/run.sh -- benches/virtio-fs-vs-blk.sh
# SANDBOX (path of the sandbox binary, default target/release/sandbox).
set -euo pipefail

ROUNDS=${1:-3}
SIZE=${2:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/common.sh"
SANDBOX=${SANDBOX:-$ROOT/target/release/sandbox}
[[ -x "$SANDBOX" ]] || { echo "no $SANDBOX: cargo build --release --workspace" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/fs-vs-blk.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export SANDBOX_ROOT=$WORK/state SANDBOX_IMAGE_STORE=$WORK/images

# The default image's rootfs with a large file in it, and a volume with another.
"$SANDBOX" run --isolation vm -- true >/dev/null
base=$(find "$WORK/images" -maxdepth 3 -type d -name rootfs | head -n1)
[[ -d "$base" ]] || { echo "the default image's rootfs was not found under $WORK/images" >&2; exit 1; }
cp -a "$base" "$WORK/rootfs"
head -c "$((SIZE << 20))" /dev/urandom >"$WORK/rootfs/big"
mkdir "$WORK/vol"
head -c "$((SIZE << 20))" /dev/urandom >"$WORK/vol/big"

# busybox dd prints no rate and busybox date no sub-second time: each copy is timed with
# the guest's /proc/uptime (10 ms steps) and printed as "PATH START END".
script="t() { cut -d' ' -f1 /proc/uptime; }
timed() { n=\$1; shift; a=\$(t); \"\$@\" 2>/dev/null; echo \"\$n \$a \$(t)\"; }
timed blk-read dd if=/big of=/dev/null bs=1M
timed fs-read dd if=/data/big of=/dev/null bs=1M
timed blk-write dd if=/dev/zero of=/w bs=1M count=$SIZE conv=fsync
timed fs-write dd if=/dev/zero of=/data/w bs=1M count=$SIZE conv=fsync
rm -f /w /data/w"

results=$WORK/results
for round in $(seq "$ROUNDS"); do
    # A fresh copy of the volume's file each round: the guest must not have it cached.
    cp "$WORK/vol/big" "$WORK/vol/big.new" && mv "$WORK/vol/big.new" "$WORK/vol/big"
    "$SANDBOX" run --isolation vm --vm-rootfs image --allow-slow-kvm --rootfs "$WORK/rootfs" \
        -v "$WORK/vol:/data" -- sh -c "$script" | tee -a "$results"
    echo "round $round done" >&2
done

rate() { grep "^$1 " "$results" | awk -v size="$SIZE" '{d = $3 - $2; if (d < 0.01) d = 0.01; print size / d}' | median; }
printf '%-10s %12s %12s %8s\n' "" "virtio-blk" "virtio-fs" "fs/blk"
for op in read write; do
    blk=$(rate "blk-$op"); fs=$(rate "fs-$op")
    printf '%-10s %9.1f MB/s %9.1f MB/s %8.2f\n' "$op" "$blk" "$fs" "$(awk -v a="$fs" -v b="$blk" 'BEGIN {print (b > 0) ? a / b : 0}')"
done
echo "($ROUNDS rounds of $SIZE MiB, medians; $(uname -r), kvm: $(ls /sys/module | grep -E '^kvm_(amd|intel|pvm)$' | tr '\n' ' '))"
