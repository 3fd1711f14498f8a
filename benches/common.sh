# Shell pieces the benchmark scripts share; sourced, never run.

# The median of the numbers on stdin, one per line; "-" when there are none.
median() {
    sort -n | awk '{a[NR] = $1}
        END {if (NR == 0) print "-"; else print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}

# Milliseconds since the $EPOCHREALTIME value $1, with one decimal.
ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", (b - a) * 1000}'; }

# Runs "$@" and, when it succeeds, prints how long it took in ms.
ms_of() {
    local t0=$EPOCHREALTIME
    "$@" || return
    ms_since "$t0"
}

# Runs "$@" with its stderr in the file $1. A guest of the nested machine now and then
# triple-faults (a flaw of its emulated SVM, docs/testing.md; tests/nested/each-test.sh reruns
# such tests too): a run that failed that way is taken again, up to three tries in all, and
# each retry calls `taken_again_after_triple_fault WHAT` ($2), which a script may redefine to
# count them. Any other failure, or a third triple fault, prints the stderr and returns 1.
retry_triple_fault() {
    local err=$1 what=$2 try
    shift 2
    for try in 1 2 3; do
        "$@" 2>"$err" && return 0
        grep -q "triple fault" "$err" 2>/dev/null && [[ $try -lt 3 ]] || break
        taken_again_after_triple_fault "$what"
    done
    cat "$err" >&2
    return 1
}
taken_again_after_triple_fault() { echo "$1: guest triple fault, taken again" >&2; }

# Writes the initramfs $1/init.cpio, whose /init runs the x86-64 assembly on stdin (it may be
# empty), then reboot(LINUX_REBOOT_CMD_RESTART), the guest's shortest way out: the kernel
# then resets the way its command line says. With $2 = console, the initramfs has the
# /dev/console the kernel opens as init's stdout.
reboot_init_cpio() {
    local dir=$1 console=${2:-}
    {
        printf '.globl _start\n_start:\n'
        cat
        cat <<'ASM'
    mov $169, %eax          /* reboot */
    mov $0xfee1dead, %edi
    mov $0x28121969, %esi
    mov $0x01234567, %edx   /* LINUX_REBOOT_CMD_RESTART */
    syscall
1:  jmp 1b
ASM
    } >"$dir/init.S"
    as "$dir/init.S" -o "$dir/init.o"
    mkdir -p "$dir/initramfs"
    ld -static -nostdlib -e _start "$dir/init.o" -o "$dir/initramfs/init"
    local files=init
    if [[ $console == console ]]; then
        mkdir -p "$dir/initramfs/dev"
        mknod "$dir/initramfs/dev/console" c 5 1
        files="dev dev/console init"
    fi
    (cd "$dir/initramfs" && printf '%s\n' $files | cpio -o -H newc --quiet >"$dir/init.cpio")
}
