//! The allow-lists, per thread kind.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_regs, kvm_vcpu_events};
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// What any Rust thread needs once running: memory management by the allocator, locks,
/// eventfd/pipe I/O, logging to stderr, fd drops (debug builds check an fd with F_GETFD
/// before closing it), signal return for the vCPU kick, thread exit, and getrandom (std
/// seeds a thread's HashMap keys with it the first time one is created there).
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_sched_yield,
    libc::SYS_gettid,
    libc::SYS_restart_syscall,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Refused with EACCES rather than fatal, on every thread: opening a file. glibc's malloc
/// reads /proc/sys/vm/overcommit_memory the first time it shrinks a thread's heap (freeing
/// a burst of vsock buffers on the device loop does it) and copes with a refusal, so killing
/// the VMM there would end a healthy sandbox. Nothing is opened either way.
pub const REFUSED: &[i64] = &[libc::SYS_open, libc::SYS_openat];

/// A vCPU thread: KVM_RUN and the exit handlers. Devices' MMIO handlers run here too, and
/// device activation with them (a NIC sets its TAP offloads at DRIVER_OK).
const VCPU: &[i64] = &[libc::SYS_ioctl];

/// The device event loop: epoll, disk I/O straight into guest memory, entropy, TAP frames,
/// and the vsock host side on unix sockets (accept, connect to `<socket>_<port>`, and on
/// shutdown the removal of the listening socket). std's set_nonblocking uses FIONBIO.
const DEVICE_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_ioctl,
    libc::SYS_unlink,
];

/// The main thread after start-up: wait for the VM to stop, kick the vCPUs out of KVM_RUN
/// (a signal), poll them for up to two seconds, join the threads, unmap guest memory, close
/// KVM and device fds (the vsock socket file is removed when its device is dropped).
const MAIN: &[i64] = &[
    // pthread_kill is tgkill(getpid(), tid, sig).
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_unlink,
];

/// _IOC as Linux defines it for x86_64.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVMIO: u64 = 0xae;

pub const KVM_RUN: u64 = ioc(IOC_NONE, KVMIO, 0x80, 0);
pub const KVM_GET_REGS: u64 = ioc(IOC_READ, KVMIO, 0x81, std::mem::size_of::<kvm_regs>());
pub const KVM_SET_REGS: u64 = ioc(IOC_WRITE, KVMIO, 0x82, std::mem::size_of::<kvm_regs>());
pub const KVM_GET_VCPU_EVENTS: u64 = ioc(
    IOC_READ,
    KVMIO,
    0x9f,
    std::mem::size_of::<kvm_vcpu_events>(),
);
pub const KVM_SET_VCPU_EVENTS: u64 = ioc(
    IOC_WRITE,
    KVMIO,
    0xa0,
    std::mem::size_of::<kvm_vcpu_events>(),
);

/// ioctls a vCPU thread issues: running the vCPU, reading RIP for error reports, delivering
/// #BP for an int3 the host could not emulate, and a NIC's TUNSETOFFLOAD on activation.
const VCPU_IOCTLS: &[u64] = &[
    KVM_RUN,
    KVM_GET_REGS,
    KVM_SET_REGS,
    KVM_GET_VCPU_EVENTS,
    KVM_SET_VCPU_EVENTS,
    libc::TUNSETOFFLOAD,
];

const DEVICE_LOOP_IOCTLS: &[u64] = &[libc::FIONBIO];

/// Every syscall `kind` may make, conditions aside (for documentation and tests).
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<i64> {
    let extra = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::DeviceLoop => DEVICE_LOOP,
        ThreadKind::Main => MAIN,
    };
    let mut all: Vec<i64> = COMMON.iter().chain(extra).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The ioctl requests `kind` may issue (empty when ioctl is not on its list at all).
pub fn allowed_ioctls(kind: ThreadKind) -> &'static [u64] {
    match kind {
        ThreadKind::Vcpu => VCPU_IOCTLS,
        ThreadKind::DeviceLoop => DEVICE_LOOP_IOCTLS,
        ThreadKind::Main => &[],
    }
}

fn arg_eq(index: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    // ioctl request numbers and socket domains are 32-bit ints in the kernel ABI.
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

fn one_of(index: u8, values: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .iter()
        .map(|&v| SeccompRule::new(vec![arg_eq(index, v)?]))
        .collect()
}

/// The refusal filter's rules: each REFUSED syscall, unconditionally.
pub(super) fn refusal_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    REFUSED.iter().map(|&nr| (nr, Vec::new())).collect()
}

pub(super) fn rules(
    kind: ThreadKind,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls(kind)
        .into_iter()
        .chain(REFUSED.iter().copied())
        .map(|nr| (nr, Vec::new()))
        .collect();
    // REFUSED passes this list only to meet the refusal filter, whose EACCES then wins
    // (seccomp returns the strictest action of all filters installed).
    match kind {
        ThreadKind::Vcpu => {
            map.insert(libc::SYS_ioctl, one_of(1, VCPU_IOCTLS)?);
        }
        ThreadKind::DeviceLoop => {
            map.insert(libc::SYS_ioctl, one_of(1, DEVICE_LOOP_IOCTLS)?);
            // Only unix sockets: the vsock host side.
            map.insert(libc::SYS_socket, one_of(0, &[libc::AF_UNIX as u64])?);
        }
        ThreadKind::Main => {
            // Every VMM runs as the same jail uid, so the kernel would let one signal
            // another: only this process's own threads (the vCPU kick). The filter is
            // therefore for the process that builds it.
            map.insert(
                libc::SYS_tgkill,
                vec![SeccompRule::new(vec![arg_eq(
                    0,
                    u64::from(std::process::id()),
                )?])?],
            );
        }
    }
    Ok(map)
}
