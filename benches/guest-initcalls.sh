#!/usr/bin/env bash
# Where the guest kernel's own boot goes: boots our guest kernel (vmlinux) under sandbox-vmm
# with `initcall_debug` to an /init that only restarts, ROUNDS times, and prints
#
#   - the kernel's clock at the milestones of its boot (the first initcall, the last one,
#     "Run /init"), median over the rounds;
#   - the initcalls that took longest, median per initcall, and what all initcalls add up to.
#
# The kernel measures itself (printk timestamps, initcall_debug's "after N usecs"), so this
# holds on any KVM; in the nested test machine every figure is some 50x a hardware one, but
# the shares hold. It is how guest-kernel-config's cuts are chosen (docs/performance.md).
#
# Usage: benches/guest-initcalls.sh [ROUNDS] [TOP]     (default 5 rounds, the top 25)
# Needs root (for the initramfs's /dev/console), /dev/kvm that runs guest kernels, release binaries (`cargo build --release
# --workspace`) and the guest kernel (/var/lib/sandbox/guest, or SANDBOX_KERNEL_DIR).
set -euo pipefail

ROUNDS=${1:-5}
TOP=${2:-25}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VMM=${SANDBOX_BIN_DIR:-$ROOT/target/release}/sandbox-vmm
KERNEL=${SANDBOX_KERNEL_DIR:-/var/lib/sandbox/guest}/vmlinux

. "$ROOT/benches/common.sh"
die() { echo "guest-initcalls.sh: $*" >&2; exit 1; }
[[ -x $VMM ]] || die "$VMM missing: cargo build --release --workspace"
[[ -f $KERNEL ]] || die "$KERNEL missing: guest-kernel-config/build.sh"
[[ -c /dev/kvm ]] || die "/dev/kvm missing"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# /init: copies the kernel's log buffer (syslog(2) READ_ALL) to the console, then
# reboot(LINUX_REBOOT_CMD_RESTART). The boot itself runs `quiet`: printing each initcall line
# through the emulated UART as it happens would cost more than most initcalls and land in
# the figures; the timestamps are taken as the lines are logged, not as they are printed.
reboot_init_cpio "$WORK" console <<'ASM'
    mov $103, %eax          /* syslog */
    mov $3, %edi            /* SYSLOG_ACTION_READ_ALL */
    lea buf(%rip), %rsi
    mov $4194304, %edx
    syscall
    test %rax, %rax
    jle 2f
    mov %rax, %rdx
    mov $1, %eax            /* write(1, buf, n) */
    mov $1, %edi
    lea buf(%rip), %rsi
    syscall
2:
.pushsection .bss
buf: .space 4194304
.popsection
ASM

CMDLINE="console=ttyS0 panic=-1 quiet rdinit=/init reboot=k pci=off initcall_debug log_buf_len=4M"
: >"$WORK/all"
for round in $(seq "$ROUNDS"); do
    console=$WORK/console-$round
    retry_triple_fault "$WORK/vmm.err" "round $round" \
        "$VMM" --kernel "$KERNEL" --initrd "$WORK/init.cpio" --cmdline "$CMDLINE" \
        --mem-mib 256 --serial "file:$console" || die "boot $round failed"
    # syslog(2) lines carry the level first: "<7>[    0.123456] initcall foo+0x0/0x12
    # returned 0 after 42 usecs"; the level goes.
    sed -i 's/^<[0-9]*>//' "$console"
    sed -n 's/^\[ *\([0-9.]*\)\] initcall \([^ +]*\)[^ ]* returned .* after \([0-9]*\) usecs.*/call \2 \3 \1/p' \
        "$console" >>"$WORK/all"
    awk '
        /^\[/ { t = substr($0, 2, index($0, "]") - 2) + 0 }
        / calling / && !calls { calls = 1; print "mark first-initcall " t }
        / initcall .* returned / { last = t }
        /Run \/init as init process/ { print "mark last-initcall " last; print "mark run-init " t }
    ' "$console" >>"$WORK/all"
    echo "round $round: $(grep -c '^\[.*initcall .* returned' "$console") initcalls" >&2
done

echo
echo "$ROUNDS boots of $(cat "$(dirname "$KERNEL")/kernel.release" 2>/dev/null || echo "$KERNEL"), kernel clock (printk time), median"
echo
echo "| milestone | kernel clock, ms |"
echo "|---|---|"
for m in first-initcall last-initcall run-init; do
    v=$(awk -v m="$m" '$1 == "mark" && $2 == m {print $3 * 1000}' "$WORK/all" | median)
    echo "| $m | $v |"
done
total=$(awk '$1 == "call" {s += $3} END {print s / 1000}' "$WORK/all")
echo
echo "all initcalls together, per boot: $(awk -v t="$total" -v r="$ROUNDS" 'BEGIN {printf "%.1f", t / r}') ms"
echo
echo "| initcall | median ms | share of all initcalls |"
echo "|---|---|---|"
awk '$1 == "call" {print $2, $3}' "$WORK/all" | sort -k1,1 |
    awk '{v[$1] = v[$1] " " $2} END {for (k in v) print k v[k]}' |
    while read -r name values; do
        printf '%s %s\n' "$(printf '%s\n' $values | median)" "$name"
    done | sort -rn | head -n "$TOP" |
    awk -v t="$total" -v r="$ROUNDS" '{printf "| %s | %.2f | %.1f%% |\n", $2, $1 / 1000, 100 * $1 * r / (t * 1000)}'

# Where the time before the first initcall goes (start_kernel's own steps): the longest
# gaps between one log line and the next, in the last boot.
echo
echo "| gap before the first initcall, ms (last boot) | the line logged after it |"
echo "|---|---|"
awk '/^\[/ { t = substr($0, 2, index($0, "]") - 2) + 0
        if (/ calling /) exit
        if (seen) printf "%.2f\t%s\n", (t - prev) * 1000, substr($0, index($0, "]") + 2)
        prev = t; seen = 1 }' "$WORK/console-$ROUNDS" | sort -t$'\t' -k1,1 -rn | head -n 10 |
    awk -F'\t' '{gsub(/\|/, "/", $2); printf "| %s | %s |\n", $1, substr($2, 1, 90)}'
