#!/usr/bin/env bash
# Runs the tests whose names match the extended regex PATTERN, of each test executable, one
# at a time, timing each, and ends with the plain "N passed, N failed" line. Used inside the
# nested machine and directly on hosts with hardware-assisted KVM.
#
#   tests/nested/each-test.sh PATTERN EXE...
#
# SANDBOX_TEST_TIMEOUT bounds each test (600 s); a test that runs past it is killed after
# the processes and the logs of the sandboxes it left are printed, so the hang can be read.
#
# SANDBOX_RERUN_IN_L1=1 (vm-tests.sh sets it in the nested machine only): a test that fails
# is run once more, and a line says so: "=== NAME: guest triple fault; running it once more"
# where a guest triple-faulted (KVM_EXIT_SHUTDOWN), "=== NAME: failed in L1 (exit N); running
# it once more" otherwise. The nested machine's emulation of SVM corrupts memory now and then
# (docs/testing.md): a guest triple-faults or stops answering. A second failure fails the
# test; on hardware KVM every failure is one.
set -uo pipefail

pattern=$1
shift
per_test=${SANDBOX_TEST_TIMEOUT:-600}
passed=0
failed=0
failures=()

report_hang() {
    echo "=== $1 ran past ${per_test}s; processes:"
    ps -eo pid,ppid,stat,etimes,args --forest | grep -v -E '\[.*\]$' | tail -n 60
    for log in /tmp/sandbox-e2e-*/root/*/vmm.log /tmp/sandbox-e2e-*/root/*/console.log \
        /tmp/sandbox-e2e-*/root/*/*.log; do
        [ -f "$log" ] || continue
        echo "--- $log (last 15 lines)"
        tail -n 15 "$log"
    done
}

out=$(mktemp /tmp/each-test.XXXXXX)
trap 'rm -f "$out"' EXIT

# Runs test $2 of executable $1, its output streamed and kept in $out; sets rc.
run_one() {
    local exe=$1 t=$2 start pid follower
    : >"$out"
    start=$(date +%s)
    setsid "$exe" --exact "$t" --nocapture --test-threads=1 >"$out" 2>&1 &
    pid=$!
    tail -n +1 -f "$out" &
    follower=$!
    while kill -0 "$pid" 2>/dev/null && [ $(($(date +%s) - start)) -lt "$per_test" ]; do
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        report_hang "$t"
        kill -9 -- "-$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        rc=124
    else
        wait "$pid"
        rc=$?
    fi
    sleep 0.2
    kill "$follower" 2>/dev/null
    wait "$follower" 2>/dev/null
    return 0
}

for exe in "$@"; do
    tests=$("$exe" --list --format terse 2>/dev/null | sed -n 's/: test$//p' | grep -E -- "$pattern")
    for t in $tests; do
        echo "=== $t ($(basename "$exe"))"
        start=$(date +%s)
        run_one "$exe" "$t"
        if [ $rc -ne 0 ] && [ "${SANDBOX_RERUN_IN_L1:-}" = 1 ]; then
            if grep -q 'KVM_EXIT_SHUTDOWN (triple fault)' "$out"; then
                echo "=== $t: guest triple fault; running it once more"
            else
                echo "=== $t: failed in L1 (exit $rc); running it once more"
            fi
            run_one "$exe" "$t"
        fi
        secs=$(($(date +%s) - start))
        if [ $rc -eq 0 ]; then
            passed=$((passed + 1))
            echo "=== $t: ok (${secs}s)"
        else
            failed=$((failed + 1))
            failures+=("$t")
            echo "=== $t: FAILED, exit $rc (${secs}s)"
        fi
    done
done
for t in "${failures[@]}"; do
    echo "failed: $t"
done
echo "vm: $passed passed, $failed failed"
[ $failed -eq 0 ] && [ $passed -gt 0 ]
