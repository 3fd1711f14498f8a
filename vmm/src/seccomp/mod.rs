//! Per-thread seccomp filters.
//!
//! Every VMM thread runs under an allow-list made for what that kind of thread does once the
//! guest runs: a vCPU thread only runs KVM_RUN and the MMIO/port handlers, the device event
//! loop serves queues and backends, and the main thread only waits for the VM to end and
//! tears it down. Everything set-up needs (opening files, creating the VM, spawning threads)
//! happens before the filters are installed. A syscall outside the list kills the whole
//! process (SECCOMP_RET_KILL_PROCESS, seen as SIGSYS): a thread doing something it never
//! does is taken as a compromised VMM, and a VMM missing one thread must not keep running.
//! Opening a file is the one exception: it fails with EACCES (`rules::REFUSED`), since the C
//! library may try it on its own and copes with the refusal. That takes a second filter
//! stacked under the allow-list, because a seccompiler filter has a single match action.
//!
//! The lists were taken from strace runs of the test guest with every device attached, plus
//! the paths the code reaches only on errors, reset or shutdown (see `rules`).

mod gate;
mod rules;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use gate::StartGate;
pub use rules::{allowed_ioctls, allowed_syscalls, REFUSED};

/// The kinds of threads of a running VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    Vcpu,
    DeviceLoop,
    /// The thread that built the VM and then waits for it to end.
    Main,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vcpu, ThreadKind::DeviceLoop, ThreadKind::Main];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::DeviceLoop => "device loop",
            ThreadKind::Main => "main",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {kind} seccomp filter: {message}")]
    Build { kind: &'static str, message: String },
    #[error("cannot install the {kind} seccomp filter: {message}")]
    Install { kind: &'static str, message: String },
}

/// What one thread installs: the refusal filter (REFUSED fails with EACCES, all else passes)
/// and its kind's allow-list (all else kills).
#[derive(Clone, Debug)]
pub struct ThreadFilter {
    pub refusals: BpfProgram,
    pub allow_list: BpfProgram,
}

/// The compiled filters of every thread kind, built once before the threads start.
#[derive(Clone, Debug)]
pub struct Filters {
    pub vcpu: ThreadFilter,
    pub device_loop: ThreadFilter,
    pub main: ThreadFilter,
}

impl Filters {
    pub fn build() -> Result<Self, SeccompError> {
        Ok(Self {
            vcpu: build(ThreadKind::Vcpu)?,
            device_loop: build(ThreadKind::DeviceLoop)?,
            main: build(ThreadKind::Main)?,
        })
    }

    pub fn get(&self, kind: ThreadKind) -> &ThreadFilter {
        match kind {
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::DeviceLoop => &self.device_loop,
            ThreadKind::Main => &self.main,
        }
    }
}

/// Compiles the filters of one thread kind.
pub fn build(kind: ThreadKind) -> Result<ThreadFilter, SeccompError> {
    let err = |e: &dyn std::fmt::Display| SeccompError::Build {
        kind: kind.name(),
        message: e.to_string(),
    };
    let compile = |rules, mismatch, matched| -> Result<BpfProgram, SeccompError> {
        SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
            .map_err(|e| err(&e))?
            .try_into()
            .map_err(|e: seccompiler::BackendError| err(&e))
    };
    Ok(ThreadFilter {
        refusals: compile(
            rules::refusal_rules(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
        )?,
        allow_list: compile(
            rules::rules(kind).map_err(|e| err(&e))?,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
        )?,
    })
}

/// Installs `filter` on the calling thread (and sets no_new_privs, which seccomp needs).
pub fn install(kind: ThreadKind, filter: &ThreadFilter) -> Result<(), SeccompError> {
    for program in [&filter.refusals, &filter.allow_list] {
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Install {
            kind: kind.name(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
