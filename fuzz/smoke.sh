#!/usr/bin/env bash
# Builds every fuzz target and runs each for a few seconds over its committed seed corpus
# (fuzz/corpus/<target>), so that a change that makes a target crash, hang or leak on its
# seeds or on what libFuzzer finds near them fails the test suite.
#
# Needs: the nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz --locked`); Linux, x86_64. Runs as any user; as root the image
# targets also exercise owners and setuid bits. Writes only under fuzz/target and
# $TMPDIR/sandbox-fuzz-* (each target's private directory) and a scratch corpus in a
# temporary directory: the committed corpora are read, never changed.
#
# Usage: fuzz/smoke.sh [SECONDS_PER_TARGET (default 5)] [TARGET...]
# Exits non-zero if a target fails to build or any run finds a crash, timeout or leak; the
# crashing input is left in fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")"
. ./common.sh
secs=${1:-5}
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "fuzz smoke: building ${#targets[@]} targets"
for t in "${targets[@]}"; do
    build_target "$t" || exit 1
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
start=$SECONDS
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    log="$scratch/$t.log"
    # The first corpus directory receives new inputs; the committed one is only read.
    # shellcheck disable=SC2046 # the options are words
    if cargo +nightly fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" $(libfuzzer_options "$t") >"$log" 2>&1; then
        runs=$(executions_in "$log")
        echo "fuzz smoke: $t ok (${runs:-?} executions in ${secs}s)"
    else
        echo "fuzz smoke: $t FAILED; the end of its log:"
        tail -n 40 "$log"
        failed+=("$t")
    fi
    remove_target_scratch "$t"
done
echo "fuzz smoke: ${#targets[@]} targets in $((SECONDS - start))s, ${#failed[@]} failed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
