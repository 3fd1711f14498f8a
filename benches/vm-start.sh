#!/usr/bin/env bash
# The VM start path, side by side, in one run:
#
#   bare boot (sandbox-vmm)   our guest kernel (vmlinux) with an initramfs whose /init only
#                             reboots: exec of sandbox-vmm to its exit after the guest's reset
#   bare boot (sandbox-vmm, bzImage)   the same with the bzImage of the same build
#   bare boot (QEMU microvm)  the same bzImage and initramfs under qemu-system-x86_64
#                             -M microvm (Debian's QEMU), exec to exit
#   sandbox run -- true       a container in VM isolation (the embedded busybox image),
#                             exec of `sandbox` to its exit, with its phase time line
#                             (`sandbox run --timings`)
#   memory per sandbox        a detached `sandbox run -d -- sleep` (a VM ends with its
#                             container, so the guest is measured while `sleep` runs, at
#                             the point where `true` would have exited): the VMM's VmRSS,
#                             the resident part of its guest-memory mapping (what the guest
#                             touched), and the difference (the VMM's own)
#
# Each round runs the four once, in that order, so that a slow stretch of the machine costs
# every column alike; the first round warms the caches (page cache, the image's ext4 disk,
# the initramfs) and is not counted. It prints median, min and max per column, the ratios,
# and the median of each phase of `sandbox run`.
#
# Needs a KVM that runs guest kernels (hardware, or the nested test machine:
# `tests/nested/run.sh -- benches/vm-start.sh 10`), the guest kernel of guest-kernel-config
# (vmlinux and bzImage in /var/lib/sandbox/guest, or SANDBOX_KERNEL_DIR), release binaries
# (`cargo build --release --workspace` and the static agent, see README; this script does
# not build, so that it can run where the tree is read-only), and qemu-system-x86.
#
# Usage: benches/vm-start.sh [ROUNDS]          (default 10, at least 2)
#        benches/vm-start.sh --summary LOG...   the tables again from the `raw` lines of one
#                                               or more earlier runs' output
# Every measurement is also printed as a `raw <what> <value>` line as it is taken, so that
# runs the nested machine cut short (it can stop under TCG after some minutes) still count.
set -euo pipefail

summary() {
    local raw=$1
    stats() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) {print "- - - 0"; exit}
        m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f %.1f %.1f %d\n", m, a[1], a[NR], NR}'; }
    col() { awk -v k="$1" '$1 == "raw" && $2 == k {print $3}' "$raw" | stats; }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b + 0 == 0) print "-"; else printf "%.2f", a/b}'; }
    read -r m1 lo1 hi1 n1 <<<"$(col boot-vmlinux)"
    read -r m2 lo2 hi2 n2 <<<"$(col boot-bzimage)"
    read -r m3 lo3 hi3 n3 <<<"$(col boot-qemu-microvm)"
    read -r m4 lo4 hi4 n4 <<<"$(col run-true)"
    echo
    echo "| exec to exit | median ms | min | max | runs |"
    echo "|---|---|---|---|---|"
    echo "| bare boot, sandbox-vmm (vmlinux) | $m1 | $lo1 | $hi1 | $n1 |"
    echo "| bare boot, sandbox-vmm (bzImage) | $m2 | $lo2 | $hi2 | $n2 |"
    echo "| bare boot, QEMU -M microvm (bzImage) | $m3 | $lo3 | $hi3 | $n3 |"
    echo "| \`sandbox run -- true\` (vm) | $m4 | $lo4 | $hi4 | $n4 |"
    echo
    echo "QEMU microvm / sandbox-vmm, same bzImage: $(ratio "$m3" "$m2")"
    echo "QEMU microvm (bzImage) / sandbox-vmm (vmlinux, what the runtime boots): $(ratio "$m3" "$m1")"
    echo "sandbox run -- true / bare boot (sandbox-vmm, vmlinux): $(ratio "$m4" "$m1")"
    echo
    echo "| phase of \`sandbox run -- true\` | median ms since \`sandbox\` started | median ms since the phase before |"
    echo "|---|---|---|"
    # Each run's phases start with "run started"; a step is the time from the phase before
    # in the same run.
    awk '$1 == "raw-phase" {v = $NF; $1 = ""; $NF = ""; sub(/^ +/, ""); sub(/ +$/, "")
            if ($0 == "run started") prev = v
            print $0 "\t" v "\t" v - prev; prev = v}' "$raw" |
        awk -F'\t' '{at[$1] = at[$1] " " $2; step[$1] = step[$1] " " $3}
            END {for (p in at) print p "\t" at[p] "\t" step[p]}' |
        while IFS=$'\t' read -r phase ats steps; do
            printf '%s\t%s\t%s\n' "$(printf '%s\n' $ats | stats | cut -d' ' -f1)" "$phase" \
                "$(printf '%s\n' $steps | stats | cut -d' ' -f1)"
        done | sort -n | awk -F'\t' '{printf "| %s | %s | %s |\n", $2, $1, $3}'
    echo
    echo "runs taken again after a guest triple fault: $(grep -c '^raw triple-fault' "$raw" || true)"
    if grep -q '^raw memory' "$raw"; then
        echo
        echo "| memory of one sandbox (KiB) | VmRSS of sandbox-vmm | guest memory touched | VMM itself |"
        echo "|---|---|---|---|"
        awk '$1 == "raw" && $2 == "memory" {printf "| sandbox %d | %s | %s | %d |\n", ++n, $3, $4, $3 - $4}' "$raw"
    fi
}

if [[ ${1:-} == --summary ]]; then
    shift
    [[ $# -gt 0 ]] || { echo "vm-start.sh: --summary needs the output of earlier runs" >&2; exit 2; }
    all=$(mktemp)
    trap 'rm -f "$all"' EXIT
    cat "$@" >"$all"
    summary "$all"
    exit 0
fi

ROUNDS=${1:-10}
[[ $ROUNDS -ge 2 ]] || { echo "vm-start.sh: at least 2 rounds (the first warms up)" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SANDBOX_BIN_DIR:-$ROOT/target/release}
KERNEL_DIR=${SANDBOX_KERNEL_DIR:-/var/lib/sandbox/guest}
VMM=$BIN/sandbox-vmm
SANDBOX=$BIN/sandbox
QEMU=${QEMU:-qemu-system-x86_64}
MEM_MIB=256

. "$(dirname "$0")/common.sh"
die() { echo "vm-start.sh: $*" >&2; exit 1; }
for f in "$VMM" "$SANDBOX"; do [[ -x $f ]] || die "$f missing: cargo build --release --workspace"; done
for f in vmlinux bzImage; do [[ -f $KERNEL_DIR/$f ]] || die "$KERNEL_DIR/$f missing: guest-kernel-config/build.sh"; done
command -v "$QEMU" >/dev/null || die "$QEMU missing: apt-get install qemu-system-x86"
[[ -c /dev/kvm ]] || die "/dev/kvm missing"

WORK=$(mktemp -d)
STATE=$WORK/state
trap 'rm -rf "$WORK"' EXIT
RAW=$WORK/raw
: >"$RAW"
raw() { echo "raw $*" | tee -a "$RAW"; }

# /init only reboots. The kernel then resets the way its command line says: through the i8042
# under sandbox-vmm (reboot=k), by a triple fault under QEMU (reboot=t, which -no-reboot turns
# into QEMU's exit).
reboot_init_cpio "$WORK" </dev/null

CMDLINE="console=ttyS0 panic=-1 quiet rdinit=/init"
# Runs "$@" with its stderr in ERR and prints how long it took in ms; a guest triple fault
# takes it again (retry_triple_fault, counted in the raw lines), anything else ends the
# benchmark naming WHAT.
taken_again_after_triple_fault() { echo "raw triple-fault $1" | tee -a "$RAW" >&2; }
timed() {
    local err=$1 what=$2
    shift 2
    retry_triple_fault "$err" "$what" ms_of "$@" || die "$what failed"
}

boot_sandbox_vmm() {
    timed "$WORK/vmm.err" "sandbox-vmm boot of $1" \
        "$VMM" --kernel "$1" --initrd "$WORK/init.cpio" --cmdline "$CMDLINE reboot=k pci=off" \
        --mem-mib $MEM_MIB --serial none
}

boot_qemu() {
    timed "$WORK/qemu.err" "QEMU microvm boot" \
        "$QEMU" -M microvm -enable-kvm -cpu host -m $MEM_MIB -smp 1 -nodefaults -no-user-config \
        -display none -serial null -no-reboot \
        -kernel "$KERNEL_DIR/bzImage" -initrd "$WORK/init.cpio" -append "$CMDLINE reboot=t"
}

run_true() {
    timed "$WORK/run.err" "sandbox run -- true" \
        "$SANDBOX" --root "$STATE" --isolation vm run --timings -- true
}

# The phase table of the last `sandbox run --timings`: "<phase words>  <at ms>  <step ms>".
phases_of_last_run() {
    awk 'NF >= 3 && $NF ~ /^[0-9.]+$/ && $(NF-1) ~ /^[0-9.]+$/ {
            at = $(NF-1); $NF = ""; $(NF-1) = ""; sub(/ +$/, ""); print "raw-phase " $0 " " at }' \
        "$WORK/run.err"
}

# Memory of one running sandbox, three times, first: the rounds below take long enough for
# the nested machine to stop now and then.
for _ in 1 2 3; do
    # To a file: the container keeps the stdout it was given, a pipe would stay open.
    timed "$WORK/mem.err" "sandbox run -d" \
        "$SANDBOX" --root "$STATE" --isolation vm run -d -- sleep 600 >"$WORK/id" </dev/null
    # The id, then the time `timed` printed.
    id=$(head -n 1 "$WORK/id")
    # The sandbox's own config path names its VMM process.
    pid=$(pgrep -f "sandbox-vmm --config $STATE/$id/vmm.json" | head -1)
    [[ -n $pid ]] || die "no sandbox-vmm for $id"
    sleep 2
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    # The guest's memory is the VMM's largest mapping; its Rss is what the guest touched.
    guest=$(awk '/^Size:/ {size=$2} /^Rss:/ {if (size > max) {max=size; rss=$2}} END {print rss}' \
        "/proc/$pid/smaps")
    raw memory "$rss" "$guest"
    "$SANDBOX" --root "$STATE" delete --force "$id" >/dev/null 2>&1 || true
done

for round in $(seq "$ROUNDS"); do
    a=$(boot_sandbox_vmm "$KERNEL_DIR/vmlinux")
    b=$(boot_sandbox_vmm "$KERNEL_DIR/bzImage")
    c=$(boot_qemu)
    d=$(run_true)
    if [[ $round -eq 1 ]]; then
        echo "round 1 (warm-up, not counted): $a / $b / $c / $d ms" >&2
        continue
    fi
    raw boot-vmlinux "$a"
    raw boot-bzimage "$b"
    raw boot-qemu-microvm "$c"
    raw run-true "$d"
    phases_of_last_run | tee -a "$RAW"
done

echo
echo "$((ROUNDS - 1)) rounds, guest ${MEM_MIB} MiB, 1 vCPU, kernel $(cat "$KERNEL_DIR/kernel.release" 2>/dev/null || echo '?')"
summary "$RAW"
