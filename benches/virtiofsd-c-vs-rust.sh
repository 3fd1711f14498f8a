#!/usr/bin/env bash
# QEMU's C virtiofsd (Debian 12's /usr/lib/qemu/virtiofsd) against the Rust virtiofsd, side
# by side in one run, each serving the same VM container:
#   - start-to-exit of `true` with the bundle's rootfs shared (`--vm-rootfs shared`): the
#     daemon's start, the guest's mount and the lookups of an exec;
#   - a cold sequential read of SIZE MiB and a write of SIZE MiB with fsync through a volume.
# The two alternate within each round; the table gives medians over the rounds.
#
# Usage: RUST_VIRTIOFSD=PATH benches/virtiofsd-c-vs-rust.sh [ROUNDS] [SIZE_MIB]   (3, 64)
# The Rust one builds from crates.io (Debian 12 does not package it):
#   apt-get install libseccomp-dev libcap-ng-dev
#   cargo install virtiofsd --locked --root /var/tmp/rust-virtiofsd
# Needs vm isolation: hardware KVM, or the nested machine:
#   RUST_VIRTIOFSD=/var/tmp/rust-virtiofsd/bin/virtiofsd tests/nested/run.sh -- \
#       benches/virtiofsd-c-vs-rust.sh
set -euo pipefail

ROUNDS=${1:-3}
SIZE=${2:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/common.sh"
SANDBOX=${SANDBOX:-$ROOT/target/release/sandbox}
C_VIRTIOFSD=${C_VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
RUST_VIRTIOFSD=${RUST_VIRTIOFSD:-/usr/libexec/virtiofsd}
[[ -x "$SANDBOX" ]] || { echo "no $SANDBOX: cargo build --release --workspace" >&2; exit 1; }
for v in "$C_VIRTIOFSD" "$RUST_VIRTIOFSD"; do
    [[ -x "$v" ]] || { echo "no virtiofsd at $v (see the usage above)" >&2; exit 1; }
done

WORK=$(mktemp -d /var/tmp/virtiofsd-cmp.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export SANDBOX_ROOT=$WORK/state SANDBOX_IMAGE_STORE=$WORK/images
"$SANDBOX" image build-default >/dev/null
dir=$WORK/bundle
mkdir -p "$dir" "$WORK/vol"
cp -a "$WORK/images/images/busybox/rootfs" "$dir/rootfs"
(cd "$dir" && "$SANDBOX" spec >/dev/null)
sed -i 's/"sh"/"true"/; s/"terminal": true/"terminal": false/' "$dir/config.json"

now() { date +%s.%N; }
# busybox dd prints no rate: each copy is timed with the guest's /proc/uptime.
script="t() { cut -d' ' -f1 /proc/uptime; }
timed() { n=\$1; shift; a=\$(t); \"\$@\" 2>/dev/null; echo \"\$n \$a \$(t)\"; }
timed read dd if=/data/big of=/dev/null bs=1M
timed write dd if=/dev/zero of=/data/w bs=1M count=$SIZE conv=fsync
rm -f /data/w"

results=$WORK/results
n=0
for round in $(seq "$ROUNDS"); do
    for flavor in c rust; do
        n=$((n + 1))
        bin=$C_VIRTIOFSD
        [[ $flavor == rust ]] && bin=$RUST_VIRTIOFSD
        t0=$(now)
        SANDBOX_VIRTIOFSD=$bin "$SANDBOX" --vm-rootfs shared run --bundle "$dir" "c$n" >/dev/null
        t1=$(now)
        echo "$flavor start $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')" | tee -a "$results"
        # A fresh file each time: the guest must not have it cached.
        head -c "$((SIZE << 20))" /dev/urandom >"$WORK/vol/big"
        SANDBOX_VIRTIOFSD=$bin "$SANDBOX" run --isolation vm --vm-rootfs image \
            -v "$WORK/vol:/data" -- sh -c "$script" |
            awk -v f="$flavor" -v size="$SIZE" '{d = $3 - $2; if (d < 0.01) d = 0.01; printf "%s %s %.1f\n", f, $1, size / d}' |
            tee -a "$results"
    done
    echo "round $round done" >&2
done

get() { grep "^$1 $2 " "$results" | cut -d' ' -f3 | median; }
printf '%-26s %10s %10s %10s\n' "" "C" "Rust" "Rust/C"
for what in "start:start-to-exit (s)" "read:read (MB/s)" "write:write+fsync (MB/s)"; do
    key=${what%%:*}
    c=$(get c "$key"); r=$(get rust "$key")
    printf '%-26s %10s %10s %10.2f\n' "${what#*:}" "$c" "$r" "$(awk -v a="$r" -v b="$c" 'BEGIN {print (b > 0) ? a / b : 0}')"
done
echo "($ROUNDS rounds, $SIZE MiB; C: $("$C_VIRTIOFSD" --version 2>/dev/null | head -n1); Rust: $("$RUST_VIRTIOFSD" --version 2>/dev/null | head -n1); $(uname -r))"
