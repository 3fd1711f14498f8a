#!/usr/bin/env bash
# How well an L1 holds microVMs: loops of `sandbox run` of three kinds, counting the guests
# that triple-faulted and the runs that failed otherwise. Run it inside L1, where the emulator
# under test is the one run.sh booted L1 with:
#
#   tests/nested/run.sh -- tests/nested/l1-stress.sh [RUNS_PER_KIND]        (20)
#   SANDBOX_NESTED_QEMU=qemu-system-x86_64 tests/nested/run.sh -- tests/nested/l1-stress.sh
#
# The kinds: a virtio-fs volume read (guest RAM in a shared memfd), the memory hog of
# `sandbox compare` under a 64 MiB limit (a 128 MiB guest filled until its OOM killer acts),
# and a plain `echo` (private guest RAM). An L1 that panics or stops ends the run; run.sh
# says so, and the lines printed so far count.
set -euo pipefail

runs=${1:-20}
repo=$(cd "$(dirname "$0")/../.." && pwd)
[[ -c /dev/kvm ]] || { echo "l1-stress.sh: no /dev/kvm: run it inside L1 (tests/nested/run.sh)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/vol"
echo hi >"$work/vol/x"
# The probe script itself, out of the runtime's source, so that the VM is the one compare runs.
hog=$(sed -n '/^pub const MEMORY_HOG: &str = r#"/,/^"#;/p' "$repo/runtime-shim/src/compare/scripts.rs" |
    sed '1s/.*r#"//; $d')
[[ -n $hog ]] || { echo "l1-stress.sh: MEMORY_HOG not found in compare/scripts.rs" >&2; exit 1; }

# label, what a good run prints, then the command
kind() {
    local label=$1 want=$2 ok=0 triple=0 other=0 t0=$SECONDS out i
    shift 2
    for i in $(seq "$runs"); do
        out=$(timeout 300 "$@" 2>&1) || true
        if [[ $out == *"triple fault"* ]]; then
            triple=$((triple + 1))
        elif [[ $out == *"$want"* ]]; then
            ok=$((ok + 1))
        else
            other=$((other + 1))
            echo "--- $label, run $i:" && tail -n 8 <<<"$out"
        fi
    done
    echo "=== $label: $runs runs, ok $ok, guest triple faults $triple, other failures $other, $((SECONDS - t0)) s"
}

kind "virtio-fs volume" hi sandbox run -v "$work/vol:/data" -- cat /data/x
kind "memory hog under 64 MiB" hog_status=137 sandbox run --memory 64M -- sh -c "$hog"
kind "plain echo" hi sandbox run -- echo hi
