# Sourced by fuzz/smoke.sh and fuzz/campaign.sh: how a target is built and run, defined once.
# Both run from fuzz/.

# The libFuzzer options of every run: a 10 s input is a hang, 2 GiB a leak-sized blow-up,
# leaks are failures, the final stats give the executions, and a failing input goes to
# artifacts/<target>/.
libfuzzer_options() {
    echo -timeout=10 -rss_limit_mb=2048 -detect_leaks=1 -print_final_stats=1 \
        "-artifact_prefix=artifacts/$1/"
}

# Builds target $1, showing the end of the build log if it fails.
build_target() {
    local log
    log=$(mktemp)
    if ! cargo +nightly fuzz build -O "$1" >"$log" 2>&1; then
        tail -n 40 "$log"
        rm -f "$log"
        echo "fuzz: building $1 failed" >&2
        return 1
    fi
    rm -f "$log"
    mkdir -p "artifacts/$1"
}

# The executions a run's log reports.
executions_in() {
    grep -m1 '^stat::number_of_executed_units' "$1" | awk '{print $2}'
}

# The private directory target $1 works in (docs/security.md, Fuzzing).
remove_target_scratch() {
    rm -rf "/tmp/sandbox-fuzz-$1" "${TMPDIR:-/tmp}/sandbox-fuzz-$1"
}
