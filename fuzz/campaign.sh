#!/usr/bin/env bash
# A long run of fuzz targets: each runs until libFuzzer has executed RUNS inputs (or
# MAX_SECONDS have passed, whichever comes first), then the inputs it found that reach new
# coverage are merged into the committed corpus (fuzz/corpus/<target>), so the next smoke
# run and the next campaign start from them. One line per target gives executions, time,
# executions per second and the corpus growth: the figures docs/security.md quotes.
#
# Usage: fuzz/campaign.sh RUNS MAX_SECONDS [TARGET...]    (default: every target)
# Environment: FUZZ_NICE (10): the niceness the runs get, so a shared machine stays usable.
# Exits non-zero on the first crash, timeout or leak; the input is in fuzz/artifacts/<target>/
# and belongs in a unit test next to the code it broke.
set -euo pipefail

cd "$(dirname "$0")"
. ./common.sh
[ $# -ge 2 ] || { echo "usage: fuzz/campaign.sh RUNS MAX_SECONDS [TARGET...]" >&2; exit 2; }
runs=$1
max_secs=$2
shift 2
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
nice_level=${FUZZ_NICE:-10}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    build_target "$t" || exit 1
    mkdir -p "$scratch/$t"
    before=$(find "corpus/$t" -type f | wc -l)
    log=$scratch/$t.log
    start=$SECONDS
    # shellcheck disable=SC2046 # the options are words
    if ! nice -n "$nice_level" cargo +nightly fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- \
        -runs="$runs" -max_total_time="$max_secs" $(libfuzzer_options "$t") >"$log" 2>&1; then
        echo "campaign: $t FAILED; the end of its log:"
        tail -n 60 "$log"
        exit 1
    fi
    secs=$((SECONDS - start))
    done_runs=$(executions_in "$log")
    # Only the inputs that add coverage join the committed corpus.
    cargo +nightly fuzz run -O "$t" "corpus/$t" "$scratch/$t" -- -merge=1 >"$scratch/merge.log" 2>&1 ||
        { tail -n 20 "$scratch/merge.log"; echo "campaign: merging $t's corpus failed" >&2; exit 1; }
    after=$(find "corpus/$t" -type f | wc -l)
    remove_target_scratch "$t"
    echo "campaign: $t ok: $done_runs executions in ${secs}s ($((done_runs / (secs > 0 ? secs : 1)))/s), no crash, timeout or leak; corpus $before -> $after inputs"
done
