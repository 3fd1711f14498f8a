#!/bin/sh
# Native container create+start+wait of /bin/true from a busybox bundle: the engine
# (agent/examples/engine-run.rs, release build) side by side with Debian's `runc run` on
# the same bundle and the same config.json (as written by `runc spec`, args /bin/true).
# Each run is one command invocation, timed together over N runs. Run as root.
#
#   benches/engine-vs-runc.sh [N]      (default N=50)
set -eu
N=${1:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CARGO_TARGET_DIR=$TARGET cargo build --release -q -p agent --example engine-run --manifest-path "$ROOT/Cargo.toml"
ENGINE=$TARGET/release/examples/engine-run

BUNDLE=$(mktemp -d /tmp/engine-bench.XXXXXX)
trap 'rm -rf "$BUNDLE"' EXIT
mkdir -p "$BUNDLE/rootfs/bin" "$BUNDLE/rootfs/proc" "$BUNDLE/rootfs/sys" "$BUNDLE/rootfs/dev" "$BUNDLE/rootfs/etc"
cp /bin/busybox "$BUNDLE/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$BUNDLE/rootfs/bin/$a"; done
(cd "$BUNDLE" && runc spec)
jq '.process.args = ["/bin/true"] | .process.terminal = false' "$BUNDLE/config.json" > "$BUNDLE/c.json"
mv "$BUNDLE/c.json" "$BUNDLE/config.json"

now() { date +%s%N; }

# One warm-up run each (page cache, binaries).
"$ENGINE" "$BUNDLE" bench-warm
runc run -b "$BUNDLE" bench-warm

t0=$(now)
i=0; while [ $i -lt "$N" ]; do "$ENGINE" "$BUNDLE" "bench-engine-$i"; i=$((i+1)); done
t1=$(now)
i=0; while [ $i -lt "$N" ]; do runc run -b "$BUNDLE" "bench-runc-$i"; i=$((i+1)); done
t2=$(now)

engine_ms=$(echo "scale=2; ($t1-$t0)/1000000/$N" | bc)
runc_ms=$(echo "scale=2; ($t2-$t1)/1000000/$N" | bc)
ratio=$(echo "scale=2; ($t1-$t0)/($t2-$t1)" | bc)
echo "runs:   $N each, /bin/true, busybox bundle, config.json from runc spec"
echo "engine: $engine_ms ms per create+start+wait (engine-run, release)"
echo "runc:   $runc_ms ms per create+start+wait (runc run $(runc --version | head -1 | cut -d' ' -f3))"
echo "ratio:  engine/runc = $ratio (below 1: engine faster)"
"$ENGINE" "$BUNDLE" bench-loop --count "$N"
