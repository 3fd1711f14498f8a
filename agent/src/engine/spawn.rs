//! Forking the container's processes.
//!
//! ```text
//! engine ──fork──> intermediate ──clone(CLONE_PARENT)──> init / exec'd process
//!                  joins the cgroup,                     (a child of the engine, PID 1 of
//!                  enters/creates namespaces             a new pid namespace for init)
//! ```
//! A plain fork first, because the engine may be multi-threaded and glibc's fork makes
//! malloc safe to use in the child; the intermediate is single-threaded, so it may call
//! setns on a mount namespace and use the raw clone syscall. unshare(CLONE_NEWPID) only
//! affects children, which is why a second process is needed at all; CLONE_PARENT makes
//! that second process a direct child of the engine, which can then wait for it. An init
//! created with `orphan` is cloned without it instead: the intermediate's exit orphans it,
//! and the nearest subreaper above the engine adopts it, the way runc's caller adopts the
//! container's init once `runc create` exits. The clone always returns a pidfd
//! (CLONE_PIDFD), so the engine can watch and signal the process whoever reaps it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, Process, Spec};

use super::cgroups::Cgroup;
use super::children::DirectWait;
use super::error::EngineError;
use super::fds::{close_fds_except, dup_to};
use super::hooks;
use super::namespaces::NsPlan;
use super::process;
use super::rootfs::{self, RootfsPlan};
use super::seccomp::Filter;
use super::stdio::Stdio;
use super::sync::{Channel, Msg};
use super::wait::{pidfd_send_signal, reap_quietly, wait_pidfd};

/// What only the init of a new container does: build its root filesystem.
pub(crate) struct InitSetup<'a> {
    pub spec: &'a Spec,
    pub rootfs: PathBuf,
    pub bundle: PathBuf,
    pub no_pivot: bool,
    pub uid_mappings: Vec<LinuxIdMapping>,
    pub gid_mappings: Vec<LinuxIdMapping>,
    /// The container's id, for the hooks' state.
    pub id: &'a str,
    /// Runs the createRuntime and prestart hooks in the engine, given the init's pid.
    pub runtime_hooks: Option<&'a dyn Fn(Pid) -> Result<(), String>>,
    /// Leave the init to whoever adopts orphans above the engine instead of making it the
    /// engine's child.
    pub orphan: bool,
}

/// Everything the forked processes need.
pub(crate) struct ChildSetup<'a> {
    pub ns: &'a NsPlan,
    pub cgroup: &'a Cgroup,
    pub stdio: &'a Stdio,
    pub process: &'a Process,
    pub seccomp: Option<&'a Filter>,
    pub init: Option<InitSetup<'a>>,
}

/// A process that is set up and waits for `Go` before it execs.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: Pid,
    /// Refers to the process itself, not to its pid, even after someone else reaped it.
    pub pidfd: OwnedFd,
    pub chan: Channel,
    pub pty_master: Option<OwnedFd>,
}

impl Spawned {
    /// Lets the process exec its program; returns once it has (its end of the channel
    /// closed on exec) or with the reason it could not.
    pub(crate) fn go(&self) -> Result<(), EngineError> {
        self.chan
            .send(&Msg::Go)
            .map_err(|e| EngineError::sys("telling the container process to start", e))?;
        match self.chan.recv() {
            Ok(None) => Ok(()),
            Ok(Some((Msg::Error(e), _))) => Err(EngineError::Child(e)),
            Ok(Some((m, _))) => Err(EngineError::Child(format!("unexpected message {m:?}"))),
            Err(e) => Err(EngineError::Child(e)),
        }
    }
}

fn write_id_map(pid: Pid, file: &str, maps: &[LinuxIdMapping]) -> Result<(), EngineError> {
    let text: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect();
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, text).map_err(|e| EngineError::sys(format!("write {path}"), e))
}

/// Forks the intermediate and waits until the container process is ready (or failed).
pub(crate) fn spawn(setup: &ChildSetup) -> Result<Spawned, EngineError> {
    let (parent, child) = Channel::pair().map_err(|e| EngineError::sys("socketpair", e))?;
    let null = match setup.stdio {
        Stdio::Null => Some(
            std::fs::File::open("/dev/null").map_err(|e| EngineError::sys("open /dev/null", e))?,
        ),
        Stdio::Fds { stdin: None, .. } => Some(
            std::fs::File::open("/dev/null").map_err(|e| EngineError::sys("open /dev/null", e))?,
        ),
        _ => None,
    };
    // SAFETY: the child only runs `intermediate`, which never returns; glibc's fork keeps
    // malloc usable in the child of a multi-threaded parent.
    let fork_pid = unsafe { libc::fork() };
    if fork_pid < 0 {
        return Err(EngineError::sys("fork", std::io::Error::last_os_error()));
    }
    if fork_pid == 0 {
        intermediate(setup, &child, null.as_ref().map(|f| f.as_raw_fd()));
    }
    let intermediate_pid = Pid::from_raw(fork_pid);
    drop(child);
    drop(null);

    let mut pid = None;
    let mut pidfd: Option<OwnedFd> = None;
    let mut failure: Option<EngineError> = None;
    let mut master = None;
    // The init may ask for hooks before the intermediate's pid report is read.
    let mut hooks_wanted = false;
    let mut ready = false;
    loop {
        if ready && pid.is_some() {
            break;
        }
        if hooks_wanted && failure.is_none() {
            if let (Some(p), Some(init)) = (pid, &setup.init) {
                hooks_wanted = false;
                let r = init.runtime_hooks.map(|f| f(p)).unwrap_or(Ok(()));
                let reply = match r {
                    Ok(()) => Msg::HooksDone,
                    Err(e) => Msg::Error(e),
                };
                let _ = parent.send(&reply);
            }
        }
        match parent.recv() {
            Ok(Some((Msg::RunHooks, _))) => hooks_wanted = true,
            Ok(Some((Msg::MapIds, _))) => {
                if let Some(init) = &setup.init {
                    let r = write_id_map(intermediate_pid, "uid_map", &init.uid_mappings).and_then(
                        |_| write_id_map(intermediate_pid, "gid_map", &init.gid_mappings),
                    );
                    if let Err(e) = r {
                        failure = Some(e);
                        let _ = kill(intermediate_pid, Signal::SIGKILL);
                        continue;
                    }
                }
                let _ = parent.send(&Msg::MapsDone);
            }
            Ok(Some((Msg::ChildPid(p), fd))) => {
                pid = Some(Pid::from_raw(p));
                reap_quietly(intermediate_pid);
                match fd {
                    Some(fd) => pidfd = Some(fd),
                    None => {
                        failure.get_or_insert(EngineError::Child(
                            "the intermediate process sent no pidfd for its child".into(),
                        ));
                    }
                }
                if setup.init.is_some() && failure.is_none() {
                    // The init waits for this before anything else.
                    if let Err(e) = parent.send(&Msg::HostPid(p)) {
                        failure.get_or_insert(EngineError::sys("sending the init its pid", e));
                    }
                }
            }
            // Ready may overtake the intermediate's pid report: keep it until both are in.
            Ok(Some((Msg::Ready, fd))) if failure.is_none() => {
                master = fd;
                ready = true;
            }
            Ok(Some((Msg::Error(e), _))) => {
                failure.get_or_insert(EngineError::Child(e));
            }
            Ok(Some((m, _))) => {
                failure.get_or_insert(EngineError::Child(format!("unexpected message {m:?}")));
            }
            // Every child end closed: both processes are gone.
            Ok(None) => {
                failure.get_or_insert(EngineError::ChildVanished(
                    "it closed the setup channel".into(),
                ));
                break;
            }
            Err(e) => {
                failure.get_or_insert(EngineError::Child(e));
                break;
            }
        }
        // A failure ends the wait as soon as both processes are accounted for.
        if failure.is_some() && pid.is_some() {
            break;
        }
    }
    if let Some(err) = failure {
        if let Some(p) = pid {
            match &pidfd {
                Some(fd) => {
                    let _ = pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
                    // An orphaned init is not ours to reap: wait for its exit, bounded.
                    let _ = wait_pidfd(fd.as_fd(), Some(std::time::Duration::from_secs(5)));
                }
                None => {
                    let _ = kill(p, Signal::SIGKILL);
                }
            }
            reap_quietly(p);
        }
        let _ = kill(intermediate_pid, Signal::SIGKILL);
        reap_quietly(intermediate_pid);
        return Err(err);
    }
    Ok(Spawned {
        pid: pid.expect("set before Ready"),
        pidfd: pidfd.expect("set with the pid"),
        chan: parent,
        pty_master: master,
    })
}

/// The container's program must not inherit the engine's signal state: Rust ignores
/// SIGPIPE at start-up, an event loop typically blocks SIGCHLD for a signalfd, and both
/// survive execve.
fn reset_signals() {
    // The raw syscall, because glibc's sigaction refuses the two real-time signals it
    // reserves for itself (32 and 33), which may be ignored too.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installs SIG_DFL from a valid struct; the old action is not read.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }
    // SAFETY: an empty set, fully initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit skips atexit handlers and stdio flushing that belong to the parent.
    unsafe { libc::_exit(code) }
}

/// The intermediate process: cgroup, namespaces, then the clone.
fn intermediate(setup: &ChildSetup, chan: &Channel, null: Option<RawFd>) -> ! {
    let result = (|| -> Result<(), String> {
        reset_signals();
        let mut keep = vec![chan.raw()];
        keep.extend(setup.ns.fds());
        keep.extend(null);
        match setup.stdio {
            Stdio::Fds {
                stdin,
                stdout,
                stderr,
            } => {
                let fds = [
                    stdin.as_ref().map(|f| f.as_raw_fd()).or(null),
                    Some(stdout.as_raw_fd()),
                    Some(stderr.as_raw_fd()),
                ];
                keep.extend(fds.iter().flatten());
                close_fds_except(&keep);
                // Move them out of the way first so that dup2 cannot clobber one of them.
                let mut moved = Vec::new();
                for fd in fds.iter().flatten() {
                    // SAFETY: duplicating a descriptor we hold.
                    moved.push(unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) });
                }
                for (target, fd) in moved.into_iter().enumerate() {
                    dup_to(fd, target as RawFd).map_err(|e| format!("stdio fd {target}: {e}"))?;
                }
                // The originals may lack close-on-exec: the program gets 0-2 only.
                for fd in fds.iter().flatten().filter(|&&fd| fd > 2) {
                    // SAFETY: closing this process's copy of a descriptor it no longer uses.
                    unsafe { libc::close(*fd) };
                }
            }
            Stdio::Null => {
                close_fds_except(&keep);
                let n = null.expect("opened for Null");
                for target in 0..3 {
                    dup_to(n, target).map_err(|e| format!("stdio fd {target}: {e}"))?;
                }
            }
            Stdio::Inherit | Stdio::Pty => close_fds_except(&keep),
        }
        // This child is single-threaded (fresh from fork), as joining through a v1 `tasks`
        // file needs.
        for f in setup.cgroup.join_files() {
            std::fs::write(&f, "0").map_err(|e| format!("join cgroup {}: {e}", f.display()))?;
        }
        setup.ns.join_all()?;
        if setup.ns.new_user {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
                .map_err(|e| format!("unshare(CLONE_NEWUSER): {e}"))?;
            chan.send(&Msg::MapIds)
                .map_err(|e| format!("asking for id maps: {e}"))?;
            match chan.recv()? {
                Some((Msg::MapsDone, _)) => {}
                other => return Err(format!("waiting for id maps: got {other:?}")),
            }
            // SAFETY: plain syscalls.
            if unsafe { libc::setresgid(0, 0, 0) } != 0 || unsafe { libc::setresuid(0, 0, 0) } != 0
            {
                return Err(format!(
                    "become root in the user namespace: {}",
                    Errno::last()
                ));
            }
        }
        setup.ns.unshare_rest()?;
        let orphan = setup.init.as_ref().is_some_and(|i| i.orphan);
        let parent_flag = if orphan { 0 } else { libc::CLONE_PARENT };
        let mut pidfd: libc::c_int = -1;
        // SAFETY: fork-like clone (no new stack); the child continues below with a copy of
        // this single-threaded process. CLONE_PIDFD stores the pidfd through the
        // parent_tid argument, a valid int of ours.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (parent_flag | libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                &mut pidfd as *mut libc::c_int,
                0usize,
                0usize,
            )
        };
        if pid < 0 {
            return Err(format!("clone(CLONE_PIDFD): {}", Errno::last()));
        }
        if pid == 0 {
            container_process(setup, chan);
        }
        chan.send_with_fd(&Msg::ChildPid(pid as i32), Some(pidfd))
            .map_err(|e| format!("reporting the pid: {e}"))
    })();
    match result {
        Ok(()) => exit_now(0),
        Err(e) => {
            let _ = chan.send(&Msg::Error(e));
            exit_now(1)
        }
    }
}

/// The container's init, or a process exec'd into a running container.
fn container_process(setup: &ChildSetup, chan: &Channel) -> ! {
    let result = (|| -> Result<(), String> {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        let terminal = matches!(setup.stdio, Stdio::Pty);
        let mut host_pid = 0;
        let master = match &setup.init {
            Some(init) => {
                let (master, pid) = setup_init(setup, init, chan, terminal)?;
                host_pid = pid;
                master
            }
            None => {
                process::set_oom_score_adj(setup.process)?;
                if terminal {
                    Some(process::open_terminal(setup.process, false)?)
                } else {
                    None
                }
            }
        };
        process::set_rlimits(setup.process)?;
        chan.send_with_fd(&Msg::Ready, master.as_ref().map(|m| m.as_raw_fd()))
            .map_err(|e| format!("reporting ready: {e}"))?;
        drop(master);
        match chan.recv()? {
            Some((Msg::Go, _)) => {}
            // The engine went away: there is nobody to start us.
            None => exit_now(1),
            Some((m, _)) => return Err(format!("waiting for start: got {m:?}")),
        }
        if let Some(init) = &setup.init {
            let state = hooks::state_json(init.spec, init.id, "created", host_pid, &init.bundle);
            let h = init.spec.hooks().as_ref();
            hooks::run_all(
                "startContainer",
                h.and_then(|h| h.start_container().as_ref()),
                &state,
                &DirectWait,
            )?;
        }
        Err(process::exec(setup.process, setup.seccomp))
    })();
    let msg = result.err().unwrap_or_default();
    let _ = chan.send(&Msg::Error(msg));
    exit_now(127)
}

fn setup_init(
    setup: &ChildSetup,
    init: &InitSetup,
    chan: &Channel,
    terminal: bool,
) -> Result<(Option<OwnedFd>, i32), String> {
    let spec = init.spec;
    let linux = spec.linux().as_ref();
    let host_pid = match chan.recv()? {
        Some((Msg::HostPid(p), _)) => p,
        other => return Err(format!("waiting for the init's pid: got {other:?}")),
    };
    // The host's /proc is still mounted here; net and ipc sysctls act on the namespaces of
    // the writer, which are the container's now.
    for (k, v) in linux
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flatten()
    {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&path, v).map_err(|e| format!("linux.sysctl.{k}: write {path}: {e}"))?;
    }
    if let Some(h) = spec.hostname() {
        nix::unistd::sethostname(h).map_err(|e| format!("hostname: sethostname {h:?}: {e}"))?;
    }
    if let Some(d) = spec.domainname() {
        // SAFETY: pointer and length of a live string.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(format!(
                "domainname: setdomainname {d:?}: {}",
                Errno::last()
            ));
        }
    }
    let plan = RootfsPlan {
        spec,
        rootfs: init.rootfs.clone(),
        bundle: init.bundle.clone(),
        cgroup: Some(setup.cgroup),
        cgroupns: setup.ns.has(oci_spec::runtime::LinuxNamespaceType::Cgroup),
        userns: setup.ns.has(oci_spec::runtime::LinuxNamespaceType::User),
        no_pivot: init.no_pivot,
        own_mount_ns: setup.ns.has(oci_spec::runtime::LinuxNamespaceType::Mount),
    };
    rootfs::prepare(&plan)?;
    if let Some(h) = spec.hooks() {
        if h.prestart().is_some() || h.create_runtime().is_some() {
            chan.send(&Msg::RunHooks)
                .map_err(|e| format!("asking for hooks: {e}"))?;
            match chan.recv()? {
                Some((Msg::HooksDone, _)) => {}
                Some((Msg::Error(e), _)) => return Err(e),
                other => return Err(format!("waiting for hooks: got {other:?}")),
            }
        }
        // In the container's namespaces, before the root changes: paths resolve on the host.
        let state = hooks::state_json(spec, init.id, "created", host_pid, &init.bundle);
        // The container's init runs these hooks as its own children, which it alone reaps.
        hooks::run_all(
            "createContainer",
            h.create_container().as_ref(),
            &state,
            &DirectWait,
        )?;
    }
    process::set_oom_score_adj(setup.process)?;
    rootfs::change_root(&plan)?;
    let master = if terminal {
        Some(process::open_terminal(setup.process, true)?)
    } else {
        None
    };
    rootfs::finish(&plan)?;
    Ok((master, host_pid))
}
