#!/usr/bin/env bash
# `sandbox run --isolation native` of /bin/true against `runc run`, on the same bundle (a
# busybox rootfs, runc's default spec with args ["/bin/true"]). Runs are interleaved, after a
# warm-up of each; prints per-runtime mean and median wall time and the ratio of the means.
#
#   benches/run-vs-runc.sh            # N=20 runs each, release binaries from target/release
#   N=50 SANDBOX=/usr/local/bin/sandbox benches/run-vs-runc.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
SANDBOX=${SANDBOX:-$target/release/sandbox}
export SANDBOX_AGENT=${SANDBOX_AGENT:-$(dirname "$SANDBOX")/sandbox-agent}
N=${N:-20}

for bin in "$SANDBOX" "$SANDBOX_AGENT"; do
  [ -x "$bin" ] || { echo "missing $bin: cargo build --release -p runtime-shim -p agent" >&2; exit 1; }
done
command -v runc >/dev/null || { echo "runc not installed" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }

work=$(mktemp -d /tmp/run-vs-runc.XXXXXX)
export SANDBOX_ROOT=$work/sandbox-root SANDBOX_IMAGE_STORE=$work/images
cleanup() {
  for id in $("$SANDBOX" list -q 2>/dev/null); do "$SANDBOX" delete --force "$id" >/dev/null 2>&1 || true; done
  for id in $(runc --root "$work/runc-root" list -q 2>/dev/null); do runc --root "$work/runc-root" delete --force "$id" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$SANDBOX" image build-default >/dev/null
bundle=$work/bundle
mkdir -p "$bundle"
cp -a "$SANDBOX_IMAGE_STORE/images/busybox/rootfs" "$bundle/rootfs"
runc spec --bundle "$bundle"
sed -i -e 's/"terminal": true/"terminal": false/' -e 's/"sh"/"\/bin\/true"/' "$bundle/config.json"
grep -q '"/bin/true"' "$bundle/config.json"

now_ns() { date +%s%N; }
declare -a t_sandbox t_runc
run_sandbox() { "$SANDBOX" --isolation native run --bundle "$bundle" "s$1" </dev/null >/dev/null; }
run_runc() { runc --root "$work/runc-root" run --bundle "$bundle" "r$1" </dev/null >/dev/null; }

run_sandbox warm; run_runc warm
for i in $(seq 1 "$N"); do
  t0=$(now_ns); run_sandbox "$i"; t1=$(now_ns)
  run_runc "$i"; t2=$(now_ns)
  t_sandbox+=($(( (t1 - t0) / 1000 ))); t_runc+=($(( (t2 - t1) / 1000 )))
done

stats() { # prints "mean_ms median_ms" of microsecond samples
  printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1; s+=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f %.2f\n", s/NR/1000, m/1000}'
}
read -r s_mean s_med < <(stats "${t_sandbox[@]}")
read -r r_mean r_med < <(stats "${t_runc[@]}")
ratio=$(awk -v a="$s_mean" -v b="$r_mean" 'BEGIN {printf "%.2f", a/b}')
echo "runs each: $N (interleaved, after one warm-up each)"
echo "sandbox run --isolation native: mean $s_mean ms, median $s_med ms"
echo "runc run:                       mean $r_mean ms, median $r_med ms"
echo "ratio sandbox/runc (means): $ratio"
