#!/usr/bin/env bash
# Runs a command inside the nested test machine (L1): a Linux under QEMU's TCG with
# `-cpu max`, whose emulated AMD SVM gives it a real /dev/kvm, so that the VM tests run on
# hosts whose own KVM cannot run ordinary guest kernels. L1 sees the host's root read-only
# (virtio-9p under a tmpfs overlay): the same binaries, test executables, guest kernel and
# image store, at the same paths.
#
#   tests/nested/run.sh [--timeout SECONDS] -- COMMAND [ARG...]
#
# COMMAND runs as root in L1, in the current directory, with the caller's PATH and every
# SANDBOX_*, RUST_* and CI variable. Its output is printed as it comes; the exit status is
# COMMAND's, or 125 when L1 itself failed (did not boot, kvm_amd did not load, timed out).
#
# Environment: SANDBOX_NESTED_DIR (what prepare.sh made, /var/cache/sandbox/nested),
# SANDBOX_NESTED_MEM_MIB (8192), SANDBOX_NESTED_CPUS (2), SANDBOX_NESTED_BOOT_TIMEOUT (300 s),
# SANDBOX_NESTED_STALL_TIMEOUT (90 s without a heartbeat from L1 ends the run),
# SANDBOX_NESTED_TCG_THREAD (multi: one host thread per vCPU; single: one for all),
# SANDBOX_NESTED_QEMU (the emulator; prepare.sh's QEMU from bookworm-backports).
set -euo pipefail

dir=${SANDBOX_NESTED_DIR:-/var/cache/sandbox/nested}
mem=${SANDBOX_NESTED_MEM_MIB:-8192}
cpus=${SANDBOX_NESTED_CPUS:-2}
boot_timeout=${SANDBOX_NESTED_BOOT_TIMEOUT:-300}
timeout=3600

die() { echo "nested/run.sh: $*" >&2; exit 125; }

while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout=$2; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || die "usage: run.sh [--timeout SECONDS] -- COMMAND [ARG...]"
for f in vmlinuz initramfs.cpio.gz; do
    [ -f "$dir/$f" ] || die "$dir/$f missing: run tests/nested/prepare.sh (scripts/setup.sh does)"
done
# QEMU from bookworm-backports, which prepare.sh unpacked (Debian 12's 7.2 emulates nested
# SVM too badly to hold a VM run, docs/testing.md); SANDBOX_NESTED_QEMU=qemu-system-x86_64
# tries the machine's own.
qemu=${SANDBOX_NESTED_QEMU:-$dir/qemu/root/usr/bin/qemu-system-x86_64}
qemu_args=()
if [ -z "${SANDBOX_NESTED_QEMU:-}" ]; then
    [ -x "$qemu" ] || die "$qemu missing: run tests/nested/prepare.sh (scripts/setup.sh does)"
    # -audio none: no probe of audio back ends, which would try the machine's own QEMU
    # modules (of another build) and print why each cannot load.
    qemu_args=(-L "$dir/qemu/data" -audio none)
fi
command -v "$qemu" >/dev/null || die "$qemu missing: apt-get install qemu-system-x86"

results=$(mktemp -d /tmp/sandbox-nested.XXXXXX)
qemu_pid=
cleanup() {
    local rc=$?
    if [ -n "$qemu_pid" ]; then
        kill -9 "$qemu_pid" 2>/dev/null || true
    fi
    rm -rf "$results"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{
    echo "# written by tests/nested/run.sh"
    export -p | grep -E '^declare -x (SANDBOX_[A-Z0-9_]*|RUST_[A-Z0-9_]*|CI|PATH|TERM)='
    printf 'cd %q || exit 125\n' "$PWD"
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} >"$results/job.sh"
: >"$results/output"

start=$(date +%s)
"$qemu" "${qemu_args[@]}" \
    -accel "tcg,thread=${SANDBOX_NESTED_TCG_THREAD:-multi}" -cpu max -smp "$cpus" -m "$mem" \
    -display none -monitor none -serial "file:$results/console" -no-reboot \
    -kernel "$dir/vmlinuz" -initrd "$dir/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off sandbox_results=$results sandbox_kvm_amd=${SANDBOX_NESTED_KVM_AMD:-}" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$results,mount_tag=results,security_model=none,multidevs=remap" \
    </dev/null &
qemu_pid=$!

console_tail() {
    echo "--- L1 console (last 40 lines):" >&2
    tail -n 40 "$results/console" >&2 2>/dev/null || true
}

while [ ! -f "$results/booted" ]; do
    if ! kill -0 "$qemu_pid" 2>/dev/null; then
        console_tail
        die "L1 stopped before it booted${results:+: $(cat "$results/l1-error" 2>/dev/null)}"
    fi
    if [ $(($(date +%s) - start)) -ge "$boot_timeout" ]; then
        console_tail
        die "L1 did not boot within ${boot_timeout}s"
    fi
    sleep 1
done
echo "nested/run.sh: L1 booted in $(($(date +%s) - start))s ($cpus vCPUs, ${mem} MiB)" >&2

tail -n +1 -f --pid="$qemu_pid" "$results/output" &
tail_pid=$!
deadline=$((start + timeout))
# L1 writes a heartbeat every 10 s; none for this long means L1 itself stopped.
stall=${SANDBOX_NESTED_STALL_TIMEOUT:-90}
last_beat=$(date +%s)
beat=
while kill -0 "$qemu_pid" 2>/dev/null; do
    now=$(date +%s)
    current=$(stat -c %Y "$results/heartbeat" 2>/dev/null || true)
    if [ -n "$current" ] && [ "$current" != "$beat" ]; then
        beat=$current
        last_beat=$now
    fi
    if [ "$now" -ge "$deadline" ] || [ $((now - last_beat)) -ge "$stall" ]; then
        kill -9 "$qemu_pid" 2>/dev/null
        wait "$tail_pid" 2>/dev/null || true
        echo "--- L1's last heartbeat (uptime, load, processes):" >&2
        cat "$results/heartbeat" >&2 2>/dev/null || true
        console_tail
        [ "$now" -ge "$deadline" ] && die "the command did not finish within ${timeout}s in L1"
        die "L1 stopped: no heartbeat for ${stall}s"
    fi
    sleep 1
done
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=
wait "$tail_pid" 2>/dev/null || true

if [ -f "$results/l1-error" ]; then
    console_tail
    die "$(cat "$results/l1-error")"
fi
[ -f "$results/status" ] || { console_tail; die "L1 ended without the command's exit status"; }
status=$(cat "$results/status")
echo "nested/run.sh: exit status $status after $(($(date +%s) - start))s in L1" >&2
exit "$status"
