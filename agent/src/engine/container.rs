//! The container lifecycle: create (init forked, namespaces, rootfs and cgroup set up,
//! blocked before execve), start, signal, exec, stats, update, OOM events, destroy.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{
    Hooks, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxResources, Process, Spec,
};

use super::cgroups::{Cgroup, CgroupStats, CgroupVersion, Layout, OomWatcher};
use super::children::{ChildWaiter, DirectWait};
use super::error::{EngineError, SpecError};
use super::exec::ExecProcess;
use super::hooks;
use super::namespaces::NsPlan;
use super::rootfs;
use super::seccomp::{self, Filter};
use super::spawn::{spawn, ChildSetup, InitSetup, Spawned};
use super::stdio::Stdio;
use super::validate::{validate_process, validate_resources, validate_spec};
use super::wait::{pidfd_send_signal, reap_quietly, wait_pid, wait_pidfd, ExitStatus};

/// What to create.
#[derive(Debug)]
pub struct CreateOptions {
    /// Container id: letters, digits, `_`, `-` and `.`; it names the cgroup.
    pub id: String,
    /// The bundle directory; `spec.root.path` is relative to it.
    pub bundle: PathBuf,
    pub spec: Spec,
    pub stdio: Stdio,
    /// Parent of the container's cgroup when the spec has no `linux.cgroupsPath`:
    /// absolute from the hierarchy root, relative to the engine's own cgroup. Default
    /// `/sandbox`.
    pub cgroup_parent: Option<String>,
    /// Use MS_MOVE + chroot instead of pivot_root (needed where the root is the initramfs;
    /// a failing pivot_root falls back to this by itself).
    pub no_pivot_root: bool,
    /// Delivers the exit status of the hooks the engine runs itself (prestart,
    /// createRuntime, poststart, poststop): the caller's reaper where it reaps every child,
    /// plain `waitpid` ([`DirectWait`]) by default.
    pub children: Arc<dyn ChildWaiter>,
    /// Leave the init to whoever adopts orphans above the engine (the nearest subreaper, or
    /// the pid namespace's init) instead of making it the engine's child, the process tree
    /// runc leaves behind `runc create`. The engine then learns of the init's end through a
    /// pidfd ([`Container::wait_ended`]), without a status: the adopter reaps it.
    pub orphan_init: bool,
}

impl CreateOptions {
    pub fn new(id: impl Into<String>, bundle: impl Into<PathBuf>, spec: Spec) -> Self {
        CreateOptions {
            id: id.into(),
            bundle: bundle.into(),
            spec,
            stdio: Stdio::Inherit,
            cgroup_parent: None,
            no_pivot_root: false,
            children: Arc::new(DirectWait),
            orphan_init: false,
        }
    }
}

/// Reads `config.json` of a bundle.
pub fn load_bundle_spec(bundle: &Path) -> Result<Spec, EngineError> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| EngineError::sys(format!("read {}", path.display()), e))?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::Spec(SpecError::new("config.json", e.to_string())))
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Init set up and waiting before execve.
    Created,
    /// The program runs.
    Running,
    /// Init has exited (reported through `set_exited` or `wait`).
    Stopped,
}

impl ContainerState {
    fn name(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Stopped => "stopped",
        }
    }
}

/// A container whose init process exists.
#[derive(Debug)]
pub struct Container {
    id: String,
    init: Spawned,
    state: ContainerState,
    cgroup: Cgroup,
    seccomp: Option<Filter>,
    /// Device cgroup rules every container needs, re-applied after the spec's rules.
    device_allows: Vec<LinuxDeviceCgroup>,
    exit: Option<ExitStatus>,
    /// The init has exited, whether or not we know its status.
    ended: bool,
    /// The init was left to another reaper (`CreateOptions::orphan_init`).
    orphaned: bool,
    /// The rootfs and the id of the mount it was on before, where the container shares the
    /// engine's mount namespace: the container's mounts are detached from there at teardown.
    shared_ns_rootfs: Option<(PathBuf, u64)>,
    torn_down: bool,
    /// poststart / poststop hooks with the spec and bundle for their state.
    hooks: Option<(Hooks, Spec, PathBuf)>,
    children: Arc<dyn ChildWaiter>,
}

fn check_id(id: &str) -> Result<(), EngineError> {
    match super::id::id_problem(id) {
        None => Ok(()),
        Some(problem) => Err(EngineError::InvalidId {
            id: id.to_string(),
            problem: problem.to_string(),
        }),
    }
}

impl Container {
    /// Creates the container: validates the spec, creates and configures the cgroup, forks
    /// the init into its namespaces and builds its root filesystem. Returns once the init
    /// waits before execve. On failure nothing is left: no process, cgroup or mount.
    pub fn create(opts: CreateOptions) -> Result<Container, EngineError> {
        check_id(&opts.id)?;
        let spec = &opts.spec;
        validate_spec(spec, &opts.bundle)?;
        let bundle = opts
            .bundle
            .canonicalize()
            .map_err(|e| EngineError::sys(format!("bundle {}", opts.bundle.display()), e))?;
        let root = spec.root().as_ref().expect("validated");
        let rootfs = bundle
            .join(root.path())
            .canonicalize()
            .map_err(|e| SpecError::new("root.path", e.to_string()))?;
        let process = spec.process().as_ref().expect("validated");
        if process.terminal() == Some(true) && !matches!(opts.stdio, Stdio::Pty) {
            return Err(SpecError::new("process.terminal", "true needs Stdio::Pty").into());
        }
        warn_ungrantable(&opts.id, process);
        let linux = spec.linux().as_ref().expect("validated");
        let filter = linux.seccomp().as_ref().map(seccomp::compile).transpose()?;
        let ns = NsPlan::from_spec(spec)?;

        let cgroup_path = match linux.cgroups_path() {
            Some(p) => p.to_string_lossy().into_owned(),
            None => {
                let parent = opts.cgroup_parent.as_deref().unwrap_or("/sandbox");
                format!("{}/{}", parent.trim_end_matches('/'), opts.id)
            }
        };
        let cgroup = Cgroup::create(&cgroup_path)?;
        // A cgroup with processes is someone else's: leave it alone.
        ensure_empty(&cgroup)?;
        let device_allows = device_allow_rules(linux.devices().as_deref().unwrap_or(&[]));
        let res = with_device_allows(
            linux.resources().clone().unwrap_or_default(),
            &device_allows,
        );
        if let Err(e) = cgroup.apply(&res) {
            let _ = cgroup.remove();
            return Err(e);
        }
        let runtime_hooks = |pid: Pid| -> Result<(), String> {
            let h = spec.hooks().as_ref();
            // Lifecycle step 2 (the environment) is done when these run, which the runtime
            // spec's states call `created`; the OCI validation suite checks for it.
            let state = hooks::state_json(spec, &opts.id, "created", pid.as_raw(), &bundle);
            let children = &*opts.children;
            hooks::run_all(
                "prestart",
                h.and_then(|h| h.prestart().as_ref()),
                &state,
                children,
            )?;
            hooks::run_all(
                "createRuntime",
                h.and_then(|h| h.create_runtime().as_ref()),
                &state,
                children,
            )
        };
        let setup = ChildSetup {
            ns: &ns,
            cgroup: &cgroup,
            stdio: &opts.stdio,
            process,
            seccomp: filter.as_ref(),
            init: Some(InitSetup {
                id: &opts.id,
                runtime_hooks: Some(&runtime_hooks),
                spec,
                rootfs: rootfs.clone(),
                bundle: bundle.clone(),
                no_pivot: opts.no_pivot_root,
                orphan: opts.orphan_init,
                uid_mappings: linux.uid_mappings().clone().unwrap_or_default(),
                gid_mappings: linux.gid_mappings().clone().unwrap_or_default(),
            }),
        };
        let shared_ns_rootfs = if ns.has(oci_spec::runtime::LinuxNamespaceType::Mount) {
            None
        } else {
            match rootfs::mount_id(&rootfs) {
                Ok(id) => Some((rootfs.clone(), id)),
                Err(e) => {
                    let _ = cgroup.remove();
                    return Err(e);
                }
            }
        };
        let init = match spawn(&setup) {
            Ok(s) => s,
            Err(e) => {
                let _ = cgroup.kill_all(Duration::from_secs(2));
                let _ = cgroup.remove();
                if let Some((r, before)) = &shared_ns_rootfs {
                    if let Err(d) = rootfs::detach_shared_rootfs(r, *before) {
                        log::warn!("container {}: {d}", opts.id);
                    }
                }
                return Err(e);
            }
        };
        let hooks = spec.hooks().clone();
        let state_spec = hooks.as_ref().map(|_| spec.clone());
        Ok(Container {
            hooks: hooks.zip(state_spec).map(|(h, s)| (h, s, bundle)),
            id: opts.id,
            init,
            state: ContainerState::Created,
            cgroup,
            seccomp: filter,
            device_allows,
            exit: None,
            ended: false,
            orphaned: opts.orphan_init,
            shared_ns_rootfs,
            torn_down: false,
            children: opts.children,
        })
    }

    /// Lets the init exec the program, then runs the poststart hooks. Returns when it has,
    /// or why it could not (the init then exits with status 127). A failing poststart hook
    /// fails the start too and stops the container: the runtime spec's lifecycle goes on
    /// at the container's destruction then.
    pub fn start(&mut self) -> Result<(), EngineError> {
        self.expect(ContainerState::Created)?;
        let r = self.init.go();
        self.state = ContainerState::Running;
        r?;
        if let Some((h, spec, bundle)) = &self.hooks {
            let state =
                hooks::state_json(spec, &self.id, "running", self.init.pid.as_raw(), bundle);
            if let Err(e) =
                hooks::run_all("poststart", h.poststart().as_ref(), &state, &*self.children)
            {
                let _ = self.signal(Signal::SIGKILL, true);
                return Err(EngineError::Hook(e));
            }
        }
        Ok(())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The init's pid in the caller's pid namespace.
    pub fn pid(&self) -> Pid {
        self.init.pid
    }

    /// A pidfd of the init: readable once it has exited, whoever reaps it.
    pub fn init_pidfd(&self) -> BorrowedFd<'_> {
        self.init.pidfd.as_fd()
    }

    /// Whether the init was left to another reaper (`CreateOptions::orphan_init`).
    pub fn init_orphaned(&self) -> bool {
        self.orphaned
    }

    pub fn state(&self) -> ContainerState {
        self.state
    }

    pub fn cgroup_version(&self) -> CgroupVersion {
        self.cgroup.version()
    }

    /// The host directories of the container's cgroup (one per v1 hierarchy).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        match &self.cgroup.layout {
            Layout::V1(hs) => hs.iter().map(|h| h.dir.clone()).collect(),
            Layout::V2(d) => vec![d.clone()],
        }
    }

    /// The master side of the init's terminal (once; `None` without a terminal).
    pub fn pty_master(&mut self) -> Option<OwnedFd> {
        self.init.pty_master.take()
    }

    /// Sends a signal to the init, or with `all` to every process of the container.
    pub fn signal(&self, sig: Signal, all: bool) -> Result<(), EngineError> {
        if self.ended {
            return Err(EngineError::WrongState {
                expected: "created or running",
                actual: "stopped",
            });
        }
        if all {
            for p in self.cgroup.pids()? {
                match kill(p, sig) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => return Err(EngineError::sys(format!("kill({p}, {sig})"), e)),
                }
            }
            return Ok(());
        }
        // Through the pidfd: an init that someone else reaps may have left its pid to
        // another process by now.
        pidfd_send_signal(self.init.pidfd.as_fd(), sig as i32).map_err(|e| {
            EngineError::sys(format!("pidfd_send_signal({}, {sig})", self.init.pid), e)
        })
    }

    /// Starts another process in the running container: same namespaces, cgroup and
    /// seccomp profile, with the capabilities, user, rlimits, env and cwd of `process`.
    pub fn exec(&self, process: &Process, stdio: Stdio) -> Result<ExecProcess, EngineError> {
        if self.ended {
            return Err(EngineError::WrongState {
                expected: "running",
                actual: "stopped",
            });
        }
        validate_process(process, "process")?;
        if process.terminal() == Some(true) && !matches!(stdio, Stdio::Pty) {
            return Err(SpecError::new("process.terminal", "true needs Stdio::Pty").into());
        }
        warn_ungrantable(&self.id, process);
        let ns = NsPlan::of_process(self.init.pid.as_raw())?;
        let setup = ChildSetup {
            ns: &ns,
            cgroup: &self.cgroup,
            stdio: &stdio,
            process,
            seccomp: self.seccomp.as_ref(),
            init: None,
        };
        let spawned = spawn(&setup)?;
        let pid = spawned.pid;
        if let Err(e) = spawned.go() {
            // It exits 127 after reporting; it is ours to reap.
            reap_quietly(pid);
            return Err(e);
        }
        Ok(ExecProcess {
            pid,
            pty_master: spawned.pty_master,
        })
    }

    pub fn stats(&self) -> Result<CgroupStats, EngineError> {
        self.cgroup.stats()
    }

    /// Changes the cgroup limits of the running container.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), EngineError> {
        validate_resources(resources, "linux.resources")?;
        // checkBeforeUpdate: a limit under what the container uses now is refused rather
        // than left to the OOM killer.
        if let Some(m) = resources.memory() {
            if let (Some(true), Some(limit)) = (m.check_before_update(), m.limit()) {
                let usage = self.cgroup.stats()?.memory_usage;
                if limit > 0 && (limit as u64) < usage {
                    return Err(SpecError::new(
                        "linux.resources.memory.limit",
                        format!(
                            "{limit} is below the container's current usage of {usage} bytes \
                             (checkBeforeUpdate)"
                        ),
                    )
                    .into());
                }
            }
        }
        self.cgroup
            .apply(&with_device_allows(resources.clone(), &self.device_allows))
    }

    /// A pollable descriptor for the cgroup's OOM events.
    pub fn oom_events(&self) -> Result<OomWatcher, EngineError> {
        self.cgroup.oom_watcher()
    }

    /// Records the init's exit, for callers whose event loop reaped it.
    pub fn set_exited(&mut self, status: ExitStatus) {
        self.exit = Some(status);
        self.set_ended();
    }

    /// Records that the init has exited without a status: it was left to another reaper
    /// and its pidfd said it ended.
    pub fn set_ended(&mut self) {
        self.ended = true;
        self.state = ContainerState::Stopped;
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Blocks until the init exits and reaps it (for callers without an event loop).
    pub fn wait(&mut self) -> Result<ExitStatus, EngineError> {
        if let Some(s) = self.exit {
            return Ok(s);
        }
        if self.orphaned {
            return Err(EngineError::WrongState {
                expected: "an init the engine reaps",
                actual: "left to another reaper (wait_ended tells its end)",
            });
        }
        let s = wait_pid(self.init.pid)?;
        self.set_exited(s);
        Ok(s)
    }

    /// Blocks until the init has exited: its status where the engine reaped it, `None`
    /// where it was left to another reaper, which alone gets the status.
    pub fn wait_ended(&mut self) -> Result<Option<ExitStatus>, EngineError> {
        if !self.orphaned {
            return self.wait().map(Some);
        }
        if !self.ended {
            wait_pidfd(self.init.pidfd.as_fd(), None)
                .map_err(|e| EngineError::sys("poll the init's pidfd", e))?;
            self.set_ended();
        }
        Ok(self.exit)
    }

    /// Kills every process of the container, reaps the init (unless already reported
    /// through `set_exited`) and removes the cgroup. The mount namespace, and with it every
    /// mount, goes away with the last process.
    pub fn destroy(mut self) -> Result<(), EngineError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), EngineError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        if !self.ended {
            let _ = pidfd_send_signal(self.init.pidfd.as_fd(), libc::SIGKILL);
        }
        let killed = self.cgroup.kill_all(Duration::from_secs(5));
        if !self.ended {
            if self.orphaned {
                // Its adopter reaps it; its end is all we wait for, bounded.
                let _ = wait_pidfd(self.init.pidfd.as_fd(), Some(Duration::from_secs(5)));
            } else {
                reap_quietly(self.init.pid);
            }
            self.set_ended();
        }
        killed?;
        self.cgroup.remove()?;
        if let Some((r, before)) = &self.shared_ns_rootfs {
            rootfs::detach_shared_rootfs(r, *before)?;
        }
        if let Some((h, spec, bundle)) = &self.hooks {
            let state =
                hooks::state_json(spec, &self.id, "stopped", self.init.pid.as_raw(), bundle);
            // As with poststart: warn, and go on as if the hook had succeeded.
            for e in hooks::run_each("poststop", h.poststop().as_ref(), &state, &*self.children) {
                log::warn!("container {}: {e}", self.id);
            }
        }
        Ok(())
    }

    fn expect(&self, s: ContainerState) -> Result<(), EngineError> {
        if self.state != s {
            return Err(EngineError::WrongState {
                expected: s.name(),
                actual: self.state.name(),
            });
        }
        Ok(())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::warn!("container {}: clean-up on drop: {e}", self.id);
        }
    }
}

/// Logs the capabilities of `process` that cannot be granted (see
/// `capabilities::ungrantable`): a warning, not a failure, as the runtime spec asks.
fn warn_ungrantable(id: &str, process: &Process) {
    if let Some(caps) = process.capabilities() {
        for w in super::capabilities::ungrantable(caps) {
            log::warn!("container {id}: {w}");
        }
    }
}

/// A cgroup that already holds processes belongs to someone else.
fn ensure_empty(cg: &Cgroup) -> Result<(), EngineError> {
    if !cg.pids()?.is_empty() {
        return Err(EngineError::CgroupUnsupported(format!(
            "{} already has processes: another container uses it",
            cg.procs_files()[0].display()
        )));
    }
    Ok(())
}

/// The devices a container always needs (as runc allows them): mknod of any node, the
/// default nodes, ptys and /dev/net/tun, plus the spec's `linux.devices`.
fn device_allow_rules(spec_devices: &[LinuxDevice]) -> Vec<LinuxDeviceCgroup> {
    let rule = |typ, major: Option<i64>, minor: Option<i64>, access: &str| {
        serde_json::from_value::<LinuxDeviceCgroup>(serde_json::json!({
            "allow": true, "type": typ, "major": major, "minor": minor, "access": access
        }))
        .expect("a well-formed rule")
    };
    let mut rules = vec![
        rule("c", None, None, "m"),
        rule("b", None, None, "m"),
        rule("c", Some(1), Some(3), "rwm"),
        rule("c", Some(1), Some(5), "rwm"),
        rule("c", Some(1), Some(7), "rwm"),
        rule("c", Some(1), Some(8), "rwm"),
        rule("c", Some(1), Some(9), "rwm"),
        rule("c", Some(5), Some(0), "rwm"),
        rule("c", Some(5), Some(1), "rwm"),
        rule("c", Some(5), Some(2), "rwm"),
        rule("c", Some(136), None, "rwm"),
        rule("c", Some(10), Some(200), "rwm"),
    ];
    for d in spec_devices {
        let typ = match d.typ() {
            LinuxDeviceType::B => "b",
            LinuxDeviceType::P => continue,
            _ => "c",
        };
        rules.push(rule(typ, Some(d.major()), Some(d.minor()), "rwm"));
    }
    rules
}

/// Appends the always-needed device rules when the resources restrict devices at all.
fn with_device_allows(mut res: LinuxResources, allows: &[LinuxDeviceCgroup]) -> LinuxResources {
    if let Some(rules) = res.devices().clone() {
        let mut all = rules;
        all.extend_from_slice(allows);
        res.set_devices(Some(all));
    }
    res
}
