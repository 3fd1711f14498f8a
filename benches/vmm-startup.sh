#!/usr/bin/env bash
# microVM core startup benchmarks for sandbox-vmm.
#
# 1. Time from process start to the guest's first instruction: the guest's first instruction
#    writes to the boot-complete port (0x510); sandbox-vmm logs the time since it entered
#    main() ("sandbox-vmm: boot-complete 1 after N us"). The guest's next instructions reset
#    it through the i8042, so the whole run (exec to exit) is measured as well.
# 2. Resident memory of the VMM itself with a 128 MiB guest: VmRSS of the process minus the
#    resident pages of the guest-memory mapping, sampled once the guest has started.
#
# Usage: benches/vmm-startup.sh [RUNS]   (default 50; SANDBOX_VMM=path to use a given binary)
# BENCH_RT=1 runs sandbox-vmm with real-time priority (chrt -f 50), which keeps other work on
# a busy machine from being scheduled in between.
set -euo pipefail

RUNS=${1:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z "${SANDBOX_VMM:-}" ]]; then
    echo "building sandbox-vmm (release)..." >&2
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p vmm --bin sandbox-vmm)
    SANDBOX_VMM=$TARGET_DIR/release/sandbox-vmm
fi

PREFIX=()
if [[ "${BENCH_RT:-0}" == 1 ]]; then PREFIX=(chrt -f 50); fi

WORK=$(mktemp -d)
VMM_PID=
cleanup() {
    if [[ -n "$VMM_PID" ]]; then kill "$VMM_PID" 2>/dev/null || true; wait "$VMM_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Two minimal ELF "kernels": both announce their first instruction on the boot-complete
# port; `reset` then resets through the i8042, `idle` halts with interrupts off.
build_guest() {
    local name=$1 tail=$2
    cat >"$WORK/$name.S" <<ASM
.code64
.globl _start
_start:
    mov \$0x510, %dx
    mov \$1, %al
    out %al, %dx
$tail
ASM
    as "$WORK/$name.S" -o "$WORK/$name.o"
    ld -nostdlib -static -N -Ttext=0x1000000 -e _start "$WORK/$name.o" -o "$WORK/$name.elf" 2>/dev/null
}
build_guest reset '    mov $0x64, %dx
    mov $0xfe, %al
    out %al, %dx
1:  hlt
    jmp 1b'
build_guest idle '    cli
1:  hlt
    jmp 1b'

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; print m}'; }

first_insn=()
whole_run=()
for _ in $(seq "$RUNS"); do
    t0=$EPOCHREALTIME
    "${PREFIX[@]}" "$SANDBOX_VMM" --kernel "$WORK/reset.elf" --mem-mib 128 --serial none 2>"$WORK/err" \
        || { echo "sandbox-vmm failed:" >&2; cat "$WORK/err" >&2; exit 1; }
    t1=$EPOCHREALTIME
    us=$(awk '/^sandbox-vmm: boot-complete 1 after/ {print $5}' "$WORK/err")
    [[ -n "$us" ]] || { echo "no boot-complete line:" >&2; cat "$WORK/err" >&2; exit 1; }
    first_insn+=("$us")
    whole_run+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%d", (b-a)*1e6}')")
done
fi_median=$(printf '%s\n' "${first_insn[@]}" | median)
fi_min=$(printf '%s\n' "${first_insn[@]}" | sort -n | head -1)
fi_max=$(printf '%s\n' "${first_insn[@]}" | sort -n | tail -1)
wr_median=$(printf '%s\n' "${whole_run[@]}" | median)

# RSS with a 128 MiB guest, once the guest runs.
"$SANDBOX_VMM" --kernel "$WORK/idle.elf" --mem-mib 128 --serial none 2>"$WORK/idle.err" &
VMM_PID=$!
for _ in $(seq 500); do
    grep -q "boot-complete" "$WORK/idle.err" 2>/dev/null && break
    sleep 0.01
done
grep -q "boot-complete" "$WORK/idle.err" || { echo "idle guest did not start" >&2; cat "$WORK/idle.err" >&2; exit 1; }
rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$VMM_PID/status")
# The guest memory is the one 128 MiB (131072 kB) mapping.
guest_kb=$(awk '/^[0-9a-f]+-[0-9a-f]+ / {m=0} /^Size: +131072 kB/ {m=1} m && /^Rss:/ {print $2; exit}' "/proc/$VMM_PID/smaps")
kill "$VMM_PID"; wait "$VMM_PID" 2>/dev/null || true; VMM_PID=
own_kb=$((rss_kb - guest_kb))

cat <<REPORT
runs: $RUNS, binary: $SANDBOX_VMM${PREFIX[*]:+, run with: ${PREFIX[*]}}, load average: $(cut -d' ' -f1-3 /proc/loadavg)
process start (main) to guest first instruction: median ${fi_median} us (min ${fi_min}, max ${fi_max})
exec to exit, whole run (start, first instruction, i8042 reset, teardown): median ${wr_median} us
RSS with a 128 MiB guest: total ${rss_kb} KiB, guest pages touched ${guest_kb} KiB, VMM itself ${own_kb} KiB
REPORT
