#!/usr/bin/env bash
# Runs the tests whose names match the extended regex PATTERN, of each test executable, one at a time, timing each, and
# ends with the plain "N passed, N failed" line. Used inside the nested machine and directly
# on hosts with hardware-assisted KVM.
#
#   tests/nested/each-test.sh PATTERN EXE...
#
# SANDBOX_TEST_TIMEOUT bounds each test (1200 s).
set -uo pipefail

pattern=$1
shift
per_test=${SANDBOX_TEST_TIMEOUT:-1200}
passed=0
failed=0
failures=()
for exe in "$@"; do
    tests=$("$exe" --list --format terse 2>/dev/null | sed -n 's/: test$//p' | grep -E -- "$pattern")
    for t in $tests; do
        echo "=== $t ($(basename "$exe"))"
        start=$(date +%s)
        timeout -k 10 "$per_test" "$exe" --exact "$t" --nocapture --test-threads=1
        rc=$?
        secs=$(($(date +%s) - start))
        if [ $rc -eq 0 ]; then
            passed=$((passed + 1))
            echo "=== $t: ok (${secs}s)"
        else
            failed=$((failed + 1))
            failures+=("$t")
            [ $rc -eq 124 ] && echo "=== $t: timed out after ${per_test}s"
            echo "=== $t: FAILED, exit $rc (${secs}s)"
        fi
    done
done
for t in "${failures[@]}"; do
    echo "failed: $t"
done
echo "vm: $passed passed, $failed failed"
[ $failed -eq 0 ] && [ $passed -gt 0 ]
