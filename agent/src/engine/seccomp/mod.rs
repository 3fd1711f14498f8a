//! The spec's seccomp profile, compiled to classic BPF here (no libseccomp) and installed
//! with seccomp(2).

mod bpf;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
// The x86_64 table explicitly, not the host's: filters are only ever compiled for x86_64.
use syscalls::x86_64::Sysno;

pub(crate) use bpf::SockFilter;
use bpf::{ArgCmp, CmpOp, Rule};

use super::error::SpecError;

const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// The number of an x86_64 system call, `None` for a name the table does not know.
fn syscall_number(name: &str) -> Option<u32> {
    name.parse::<Sysno>().ok().map(|call| call.id() as u32)
}

/// Every x86_64 system call the table knows.
fn every_syscall() -> impl Iterator<Item = Sysno> {
    // By number rather than with `Sysno::iter`, which in syscalls 0.8 stops before the last
    // call of the table.
    (Sysno::first().id()..=Sysno::last().id()).filter_map(|nr| Sysno::new(nr as usize))
}

/// A compiled filter, ready to install in the container process.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    prog: Vec<SockFilter>,
    flags: u32,
}

fn action(field: &str, a: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SpecError> {
    use LinuxSeccompAction::*;
    if errno.is_some() && !matches!(a, ScmpActErrno | ScmpActTrace) {
        return Err(SpecError::new(
            field,
            format!("errnoRet is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {a}"),
        ));
    }
    let data = |default: u32| -> Result<u32, SpecError> {
        let v = errno.unwrap_or(default);
        if v > 0xffff {
            return Err(SpecError::new(
                field,
                format!("errnoRet must fit in 16 bits, got {v}"),
            ));
        }
        Ok(v)
    };
    Ok(match a {
        ScmpActKill | ScmpActKillThread => RET_KILL_THREAD,
        ScmpActKillProcess => RET_KILL_PROCESS,
        ScmpActTrap => RET_TRAP,
        ScmpActErrno => RET_ERRNO | data(libc::EPERM as u32)?,
        ScmpActTrace => RET_TRACE | data(libc::EPERM as u32)?,
        ScmpActLog => RET_LOG,
        ScmpActAllow => RET_ALLOW,
        ScmpActNotify => {
            return Err(SpecError::new(
                field,
                "SCMP_ACT_NOTIFY is not supported (no seccomp agent)",
            ))
        }
    })
}

fn cmp(field: &str, arg: &oci_spec::runtime::LinuxSeccompArg) -> Result<ArgCmp, SpecError> {
    let index = arg.index();
    if index > 5 {
        return Err(SpecError::new(
            format!("{field}.index"),
            format!("a system call has 6 arguments (0-5), got {index}"),
        ));
    }
    use LinuxSeccompOperator::*;
    let (op, value) = match arg.op() {
        ScmpCmpNe => (CmpOp::Ne, arg.value()),
        ScmpCmpLt => (CmpOp::Lt, arg.value()),
        ScmpCmpLe => (CmpOp::Le, arg.value()),
        ScmpCmpEq => (CmpOp::Eq, arg.value()),
        ScmpCmpGe => (CmpOp::Ge, arg.value()),
        ScmpCmpGt => (CmpOp::Gt, arg.value()),
        ScmpCmpMaskedEq => (
            CmpOp::MaskedEq { mask: arg.value() },
            arg.value_two().unwrap_or(0),
        ),
    };
    Ok(ArgCmp {
        index: index as u8,
        op,
        value,
    })
}

/// Compiles the profile, checking every field on the way. Unknown system call names are
/// skipped (profiles list calls newer or older than any one kernel), as runc does.
pub(crate) fn compile(s: &LinuxSeccomp) -> Result<Filter, SpecError> {
    const F: &str = "linux.seccomp";
    let default = action(
        &format!("{F}.defaultAction"),
        s.default_action(),
        s.default_errno_ret(),
    )?;
    if let Some(archs) = s.architectures() {
        let native = archs
            .iter()
            .any(|a| matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative));
        if !archs.is_empty() && !native {
            return Err(SpecError::new(
                format!("{F}.architectures"),
                "no supported architecture: this engine compiles filters for SCMP_ARCH_X86_64",
            ));
        }
    }
    let mut flags = 0u32;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 1,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }
    let mut rules = Vec::new();
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        let field = format!("{F}.syscalls[{i}]");
        if sc.names().is_empty() {
            return Err(SpecError::new(
                format!("{field}.names"),
                "must not be empty",
            ));
        }
        let act = action(&format!("{field}.action"), sc.action(), sc.errno_ret())?;
        let mut conds = Vec::new();
        let mut per_index = [0u8; 6];
        for (j, a) in sc.args().iter().flatten().enumerate() {
            let c = cmp(&format!("{field}.args[{j}]"), a)?;
            per_index[c.index as usize] += 1;
            conds.push(c);
        }
        if act == default {
            continue;
        }
        // Conditions on different arguments must all hold; several conditions on the same
        // argument are alternatives (libseccomp's and runc's reading of the spec).
        let alternatives: Vec<Vec<ArgCmp>> = if per_index.iter().any(|&n| n > 1) {
            conds.into_iter().map(|c| vec![c]).collect()
        } else {
            vec![conds]
        };
        for name in sc.names() {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            for conditions in &alternatives {
                rules.push(Rule {
                    nr,
                    conditions: conditions.clone(),
                    action: act,
                });
            }
        }
    }
    // Calls of other ABIs cannot be matched against x86_64 numbers: refuse them.
    let foreign = RET_ERRNO | libc::ENOSYS as u32;
    let prog = bpf::compile(&rules, default, foreign)
        .map_err(|e| SpecError::new(format!("{F}.syscalls"), e))?;
    Ok(Filter { prog, flags })
}

/// How much of the x86_64 system call table a profile leaves reachable, read from the
/// profile data as `compile` reads it: a call's own unconditional rule decides it, a call with
/// only argument-conditional rules is counted apart, every other call gets the default action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyscallSurface {
    /// Calls in the engine's x86_64 table.
    pub known: usize,
    /// Calls allowed whatever their arguments (SCMP_ACT_ALLOW or SCMP_ACT_LOG).
    pub allowed: usize,
    /// Calls whose action depends on their arguments.
    pub conditional: usize,
}

/// The surface left by `profile`; with no profile every call in the table is allowed.
pub fn syscall_surface(profile: Option<&LinuxSeccomp>) -> SyscallSurface {
    use LinuxSeccompAction::{ScmpActAllow, ScmpActLog};
    let known = every_syscall().count();
    let Some(p) = profile else {
        return SyscallSurface {
            known,
            allowed: known,
            conditional: 0,
        };
    };
    let allows = |a: LinuxSeccompAction| matches!(a, ScmpActAllow | ScmpActLog);
    let mut s = SyscallSurface {
        known,
        ..Default::default()
    };
    for call in every_syscall() {
        let name = call.name();
        let rules: Vec<_> = p
            .syscalls()
            .iter()
            .flatten()
            .filter(|r| r.names().iter().any(|n| n == name))
            .collect();
        let plain = rules
            .iter()
            .find(|r| r.args().as_ref().is_none_or(|a| a.is_empty()));
        match plain {
            Some(r) if allows(r.action()) => s.allowed += 1,
            Some(_) => {}
            None if !rules.is_empty() => s.conditional += 1,
            None if allows(p.default_action()) => s.allowed += 1,
            None => {}
        }
    }
    s
}

impl Filter {
    /// Installs the filter on the calling thread. Needs no_new_privs or CAP_SYS_ADMIN.
    pub(crate) fn install(&self) -> Result<(), String> {
        #[repr(C)]
        struct SockFprog {
            len: u16,
            filter: *const SockFilter,
        }
        let fprog = SockFprog {
            len: self.prog.len() as u16,
            filter: self.prog.as_ptr(),
        };
        const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
        // SAFETY: fprog points at a valid program that outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                self.flags as libc::c_ulong,
                &fprog as *const SockFprog,
            )
        };
        if r < 0 {
            return Err(format!(
                "installing the seccomp filter: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    #[cfg(test)]
    fn program(&self) -> &[SockFilter] {
        &self.prog
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn compiles_per_syscall_actions() {
        let f = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["no_such_call"], "action": "SCMP_ACT_KILL"},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
            ]
        })))
        .unwrap();
        let run = |nr: i64, a0: u64| {
            bpf::tests::run(
                f.program(),
                bpf::AUDIT_ARCH_X86_64,
                nr as u32,
                [a0, 0, 0, 0, 0, 0],
            )
        };
        assert_eq!(run(libc::SYS_mkdir, 0), RET_ERRNO | 13);
        assert_eq!(run(libc::SYS_mkdirat, 0), RET_ERRNO | 13);
        assert_eq!(run(libc::SYS_personality, 8), RET_ERRNO | 1);
        assert_eq!(run(libc::SYS_personality, 0), RET_ALLOW);
        assert_eq!(run(libc::SYS_getpid, 0), RET_ALLOW);
    }

    #[test]
    fn bad_profiles_name_the_field() {
        let e = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 5}]
        })))
        .unwrap_err();
        assert_eq!(e.field, "linux.seccomp.syscalls[0].action");
        let e = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]
        })))
        .unwrap_err();
        assert_eq!(e.field, "linux.seccomp.syscalls[0].args[0].index");
        let e = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_AARCH64"]
        })))
        .unwrap_err();
        assert_eq!(e.field, "linux.seccomp.architectures");
    }

    #[test]
    fn surface_counts_the_calls_a_profile_leaves() {
        let all = syscall_surface(None);
        assert_eq!(all.allowed, all.known);
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read", "write", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
            ]
        }));
        let s = syscall_surface(Some(&p));
        assert_eq!((s.allowed, s.conditional, s.known), (2, 1, all.known));
    }

    #[test]
    fn syscall_table_matches_libc() {
        let from_libc = [
            ("read", libc::SYS_read),
            ("write", libc::SYS_write),
            ("open", libc::SYS_open),
            ("mmap", libc::SYS_mmap),
            ("ioctl", libc::SYS_ioctl),
            ("clone", libc::SYS_clone),
            ("fork", libc::SYS_fork),
            ("execve", libc::SYS_execve),
            ("kill", libc::SYS_kill),
            ("ptrace", libc::SYS_ptrace),
            ("personality", libc::SYS_personality),
            ("mount", libc::SYS_mount),
            ("umount2", libc::SYS_umount2),
            ("keyctl", libc::SYS_keyctl),
            ("unshare", libc::SYS_unshare),
            ("perf_event_open", libc::SYS_perf_event_open),
            ("setns", libc::SYS_setns),
            ("bpf", libc::SYS_bpf),
            ("userfaultfd", libc::SYS_userfaultfd),
            ("rseq", libc::SYS_rseq),
            ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("open_tree", libc::SYS_open_tree),
            ("fsopen", libc::SYS_fsopen),
            ("pidfd_open", libc::SYS_pidfd_open),
            ("clone3", libc::SYS_clone3),
            ("openat2", libc::SYS_openat2),
            ("seccomp", libc::SYS_seccomp),
            ("mount_setattr", libc::SYS_mount_setattr),
            ("landlock_create_ruleset", libc::SYS_landlock_create_ruleset),
            ("memfd_secret", libc::SYS_memfd_secret),
            ("futex_waitv", libc::SYS_futex_waitv),
            ("set_mempolicy_home_node", libc::SYS_set_mempolicy_home_node),
            ("fchmodat2", libc::SYS_fchmodat2),
            ("mseal", libc::SYS_mseal),
        ];
        for (name, nr) in from_libc {
            assert_eq!(syscall_number(name), Some(nr as u32), "{name}");
        }
        // Newer than libc's constants; the numbers are the kernel's syscall_64.tbl.
        for (name, nr) in [
            ("cachestat", 451),
            ("statmount", 457),
            ("lsm_list_modules", 461),
        ] {
            assert_eq!(syscall_number(name), Some(nr), "{name}");
        }
        // Removed from the kernel long ago, still in the table (profiles name them).
        assert_eq!(syscall_number("create_module"), Some(174));
        for unknown in ["bogus", "READ", "", "read ", "x32_read"] {
            assert_eq!(syscall_number(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn every_syscall_walks_the_whole_table() {
        let calls: Vec<Sysno> = every_syscall().collect();
        assert_eq!(calls.len(), Sysno::count());
        assert_eq!(calls.first(), Some(&Sysno::read));
        assert_eq!(calls.last(), Some(&Sysno::last()));
        assert!(calls.windows(2).all(|w| w[0].id() < w[1].id()));
        // The kernel table's x32 entries (512 on) belong to the x32 ABI, which the filter
        // refuses as foreign.
        assert!(calls.iter().all(|c| c.id() < 512));
    }
}
