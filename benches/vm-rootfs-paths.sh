#!/usr/bin/env bash
# Start-to-exit of `true` in vm isolation with the two rootfs paths, side by side in one run:
# `--vm-rootfs image` (the content-cached ext4 image plus a writable disk) and
# `--vm-rootfs shared` (the bundle's directory through virtio-fs), for the busybox bundle and
# for a large one (busybox plus LARGE_MIB MiB of files, made here).
#
# The image path's first start builds the ext4 image; later starts hash the whole tree to
# find it again. Both are reported: "first" is the first start of a fresh bundle, "again" the
# median of the starts after it. The paths alternate within each round.
#
# Usage: benches/vm-rootfs-paths.sh [ROUNDS] [LARGE_MIB]   (defaults 5 and 320)
# Needs vm isolation: hardware KVM, or the nested machine:
#   tests/nested/run.sh -- benches/vm-rootfs-paths.sh
set -euo pipefail

ROUNDS=${1:-5}
LARGE=${2:-320}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/common.sh"
SANDBOX=${SANDBOX:-$ROOT/target/release/sandbox}
[[ -x "$SANDBOX" ]] || { echo "no $SANDBOX: cargo build --release --workspace" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/rootfs-paths.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export SANDBOX_ROOT=$WORK/state SANDBOX_IMAGE_STORE=$WORK/images
"$SANDBOX" image build-default >/dev/null
base=$WORK/images/images/busybox/rootfs

bundle() {
    local dir=$WORK/$1
    mkdir -p "$dir"
    cp -a "$base" "$dir/rootfs"
    (cd "$dir" && "$SANDBOX" spec >/dev/null)
    sed -i 's/"sh"/"true"/; s/"terminal": true/"terminal": false/' "$dir/config.json"
    echo "$dir"
}
small=$(bundle small)
large=$(bundle large)
mkdir "$large/rootfs/data"
for i in $(seq "$LARGE"); do head -c 1M /dev/urandom >"$large/rootfs/data/f$i"; done

now() { date +%s.%N; }
start_to_exit() {
    local path=$1 dir=$2 id=$3 t0 t1
    t0=$(now)
    "$SANDBOX" --vm-rootfs "$path" run --bundle "$dir" "$id" >/dev/null
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'
}

results=$WORK/results
n=0
for round in $(seq "$ROUNDS"); do
    for name in small large; do
        dir=$WORK/$name
        for path in image shared; do
            n=$((n + 1))
            kind=again
            [[ $round == 1 ]] && kind=first
            echo "$name $path $kind $(start_to_exit "$path" "$dir" "c$n")" | tee -a "$results"
        done
    done
done

get() { grep "^$1 $2 $3 " "$results" | cut -d' ' -f4 | median; }
printf '%-28s %10s %10s %8s\n' "" "image (s)" "shared (s)" "ratio"
for name in small large; do
    for kind in first again; do
        i=$(get "$name" image "$kind"); s=$(get "$name" shared "$kind")
        printf '%-28s %10s %10s %8.2f\n' "$name ($kind)" "$i" "$s" "$(awk -v a="$s" -v b="$i" 'BEGIN {print (b > 0) ? a / b : 0}')"
    done
done
echo "(rounds: $ROUNDS; large = busybox + $LARGE MiB; ratio = shared / image; $(uname -r))"
