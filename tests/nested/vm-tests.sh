#!/usr/bin/env bash
# Runs every VM-isolation test of the workspace (each test whose path ends in `::vm`):
# directly where this host's KVM is hardware-assisted (kvm_intel or kvm_amd), otherwise inside
# the nested test machine (tests/nested/run.sh). A VM test never skips here:
# SANDBOX_REQUIRE_VM=1 makes a test that finds vm isolation unusable fail.
#
#   tests/nested/vm-tests.sh [PATTERN]     (an extended regex over test names, '::vm$')
#
# The tests drive release builds of the binaries (SANDBOX_TEST_BIN_DIR): in the nested
# machine everything is emulated, and a debug VMM and guest agent would multiply that.
# SANDBOX_VM_TESTS=direct|nested overrides the choice.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
pattern=${1:-::vm\$}

cargo build --release --workspace
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p agent --target x86_64-unknown-linux-gnu
export SANDBOX_TEST_BIN_DIR=$repo/target/release

# The end-to-end suites' executables (cargo builds nothing new when test.sh built them).
mapfile -t all < <(cargo test -p sandbox-tests --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*"' | sed 's/"executable":"\(.*\)"/\1/' | sort -u)
exes=()
for exe in "${all[@]}"; do
    if "$exe" --list --format terse 2>/dev/null | sed -n 's/: test$//p' | grep -q -E -- "$pattern"; then
        exes+=("$exe")
    fi
done
[ ${#exes[@]} -gt 0 ] || { echo "vm-tests.sh: no test matches '$pattern'" >&2; exit 1; }

mode=${SANDBOX_VM_TESTS:-}
if [ -z "$mode" ]; then
    if [ -e /sys/module/kvm_pvm ] || ! [ -e /dev/kvm ]; then
        mode=nested
    elif [ -e /sys/module/kvm_intel ] || [ -e /sys/module/kvm_amd ]; then
        mode=direct
    else
        mode=nested
    fi
fi

export SANDBOX_REQUIRE_VM=1 RUST_BACKTRACE=1
echo "vm-tests.sh: $(printf '%s\n' "${exes[@]}" | xargs -n1 basename | tr '\n' ' ')($mode)"
case "$mode" in
    direct) exec "$repo/tests/nested/each-test.sh" "$pattern" "${exes[@]}" ;;
    nested) ;;
    *) echo "vm-tests.sh: SANDBOX_VM_TESTS must be direct or nested, not '$mode'" >&2; exit 2 ;;
esac

# The nested machine as this checkout describes it (cached; redone when its files change).
"$repo/tests/nested/prepare.sh"
# Everything in L1 is emulated: the tests' own wait bounds stretch to match.
export SANDBOX_TEST_SLOWDOWN=${SANDBOX_TEST_SLOWDOWN:-20}
# A test that fails in L1 runs once more, counted and named below (see each-test.sh).
export SANDBOX_RERUN_IN_L1=1
triple_faults=0
run_again=()
# L1 itself can stop under TCG (its vCPUs spin and its heartbeat ends; run.sh says so and
# exits 125). Each such stop is reported and counted, and a fresh L1 runs the tests that had
# not finished, the one that was running among them from its start, for as long as each L1
# finishes at least one test before it stops.
log=$(mktemp /tmp/sandbox-vm-tests.XXXXXX)
trap 'rm -f "$log"' EXIT
# Tests not run in L1 (a regex, none by default), named as such in the summary and never
# counted as passed; they run where KVM is hardware-assisted.
not_in_l1=${SANDBOX_NESTED_NOT_RUN-}
mapfile -t remaining < <(for exe in "${exes[@]}"; do
    "$exe" --list --format terse 2>/dev/null | sed -n 's/: test$//p' | grep -E -- "$pattern"
done)
not_run=()
if [ -n "$not_in_l1" ]; then
    mapfile -t not_run < <(printf '%s\n' "${remaining[@]}" | grep -E -- "$not_in_l1")
    mapfile -t remaining < <(printf '%s\n' "${remaining[@]}" | grep -v -E -- "$not_in_l1")
fi
total=${#remaining[@]}
passed=0
failed=0
stops=0
failures=()
while :; do
    only="^($(IFS='|'; echo "${remaining[*]}"))\$"
    set +e
    "$repo/tests/nested/run.sh" --timeout "${SANDBOX_NESTED_TIMEOUT:-3600}" -- \
        "$repo/tests/nested/each-test.sh" "$only" "${exes[@]}" | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    triple_faults=$((triple_faults + $(grep -c ': guest triple fault; running it once more$' "$log" || true)))
    mapfile -t -O "${#run_again[@]}" run_again < <(sed -n 's/^=== \(.*\): .*; running it once more$/\1/p' "$log")
    left=()
    for t in "${remaining[@]}"; do
        if grep -qxF "=== $t: ok" <(sed 's/ ([0-9]*s)$//' "$log"); then
            passed=$((passed + 1))
        elif grep -q "^=== $t: FAILED" "$log"; then
            failed=$((failed + 1))
            failures+=("$t")
        else
            left+=("$t")
        fi
    done
    progress=$((${#remaining[@]} - ${#left[@]}))
    remaining=("${left[@]}")
    [ $rc -eq 125 ] || break
    [ ${#remaining[@]} -gt 0 ] || break
    if [ $progress -eq 0 ] && [ $stops -gt 0 ]; then
        # The test the last L1 stopped in ran first in this one and stopped it again: it fails.
        echo "vm-tests.sh: L1 stopped twice while ${remaining[0]} ran: it counts as failed"
        failed=$((failed + 1))
        failures+=("${remaining[0]}")
        remaining=("${remaining[@]:1}")
        [ ${#remaining[@]} -gt 0 ] || break
    fi
    if [ $stops -ge 8 ]; then
        echo "vm-tests.sh: L1 stopped $stops times; giving up"
        break
    fi
    stops=$((stops + 1))
    echo "vm-tests.sh: L1 stopped (stop $stops); a fresh L1 runs the ${#remaining[@]} unfinished tests"
done
for t in "${failures[@]}" "${remaining[@]}"; do
    echo "failed: $t"
done
failed=$((failed + ${#remaining[@]}))
for t in "${not_run[@]}"; do
    echo "NOT RUN in L1: $t (see tests/nested/vm-tests.sh and docs/testing.md)"
done
for t in "${run_again[@]}"; do
    echo "run again after a failure in L1: $t"
done
echo "vm-tests.sh: $total VM tests run, $stops L1 stops, ${#run_again[@]} run again after a failure ($triple_faults of them guest triple faults), ${#not_run[@]} not run in L1"
echo "vm: $passed passed, $failed failed"
[ $failed -eq 0 ] && [ $passed -eq "$total" ]
