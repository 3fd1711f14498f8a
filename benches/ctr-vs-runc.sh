#!/usr/bin/env bash
# `ctr run --rm IMAGE /bin/true` through containerd-shim-sandbox-v2 (native isolation) against
# containerd's default runc shim (io.containerd.runc.v2), on a private containerd (Debian's
# package) with its own config, root, state and socket under a temporary directory.
# Prints the mean wall time per run of each and their ratio (ours / runc), from one run.
#
# Usage (root): benches/ctr-vs-runc.sh [RUNS]    PROFILE=release|debug (default release)
set -euo pipefail

runs=${1:-20}
profile=${PROFILE:-release}
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}

if [ "$(id -u)" -ne 0 ]; then echo "ctr-vs-runc: run as root" >&2; exit 1; fi
for t in containerd ctr runc busybox; do
  command -v "$t" >/dev/null || { echo "ctr-vs-runc: $t not installed" >&2; exit 1; }
done

flag=(); [ "$profile" = release ] && flag=(--release)
(cd "$repo" && cargo build -q "${flag[@]}" -p runtime-shim --bin containerd-shim-sandbox-v2 \
  && cargo build -q "${flag[@]}" -p agent --bin sandbox-agent)
bin=$target/$profile

work=$(mktemp -d /tmp/sbx-bench-XXXXXX)
cpid=
cleanup() {
  if [ -n "$cpid" ]; then
    for id in $(command ctr -a "$work/c.sock" -n bench containers ls -q 2>/dev/null); do
      command ctr -a "$work/c.sock" -n bench task delete -f "$id" >/dev/null 2>&1 || true
      command ctr -a "$work/c.sock" -n bench containers delete "$id" >/dev/null 2>&1 || true
    done
    kill "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
  fi
  grep " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A busybox image as an OCI image layout archive.
mkdir -p "$work/layer/bin" "$work/oci/blobs/sha256"
cp /bin/busybox "$work/layer/bin/busybox"
ln -s busybox "$work/layer/bin/true"
tar -C "$work/layer" -cf "$work/layer.tar" .
blob() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$work/oci/blobs/sha256/$d"; echo "$d"; }
size() { stat -c %s "$1"; }
ld=$(blob "$work/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$ld" > "$work/config.json"
cd_=$(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$cd_" "$(size "$work/config.json")" "$ld" "$(size "$work/layer.tar")" > "$work/manifest.json"
md=$(blob "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"docker.io/library/busybox:bench","org.opencontainers.image.ref.name":"bench"}}]}' \
  "$md" "$(size "$work/manifest.json")" > "$work/oci/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
tar -C "$work/oci" -cf "$work/image.tar" .

mkdir -p "$work/bin"
ln -s "$bin/containerd-shim-sandbox-v2" "$work/bin/"
cat > "$work/config.toml" <<TOML
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/c.sock"
TOML
PATH="$work/bin:$PATH" SANDBOX_AGENT="$bin/sandbox-agent" SANDBOX_SHIM_ROOT="$work/shim" \
  containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
cpid=$!
for _ in $(seq 200); do ctr -a "$work/c.sock" version >/dev/null 2>&1 && break; sleep 0.05; done
ctr() { command ctr -a "$work/c.sock" -n bench "$@"; }
ctr images import "$work/image.tar" >/dev/null
echo 'isolation = "native"' > "$work/native.toml"

now() { date +%s%N; }
bench() { # runtime label [extra ctr args]
  local rt=$1 label=$2; shift 2
  for i in 1 2; do ctr run --rm --runtime "$rt" "$@" docker.io/library/busybox:bench "warm-$label-$i" /bin/true; done
  local t0 t1
  t0=$(now)
  for i in $(seq "$runs"); do
    ctr run --rm --runtime "$rt" "$@" docker.io/library/busybox:bench "$label-$i" /bin/true
  done
  t1=$(now)
  echo $(( (t1 - t0) / runs / 1000 ))
}

runc_us=$(bench io.containerd.runc.v2 runc)
ours_us=$(bench io.containerd.sandbox.v2 sandbox --runtime-config-path "$work/native.toml")
echo "ctr run --rm /bin/true, mean of $runs runs (after 2 warm-up runs each), $profile build:"
printf '  io.containerd.runc.v2 (runc)             %8.1f ms\n' "$(echo "$runc_us / 1000" | bc -l)"
printf '  io.containerd.sandbox.v2 (native)        %8.1f ms\n' "$(echo "$ours_us / 1000" | bc -l)"
printf '  ratio sandbox / runc                     %8.2f\n' "$(echo "$ours_us / $runc_us" | bc -l)"
