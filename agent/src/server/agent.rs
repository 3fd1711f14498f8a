//! The agent's state and the handler of every request: containers, their processes and
//! the sandbox as a whole.

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};

use crate::engine::{self, CgroupStats, Container, CreateOptions, EngineError};
use crate::init;
use crate::protocol::*;

use super::listener::Listener;
use super::oom::OomLog;
use super::process::{Attachment, Process, StdioPlan};
use super::reaper::Reaper;

/// How long `remove_container` with `force` waits for a killed container to go.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the agent runs, which decides what `create_sandbox` may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Directly on the host: the sandbox is the host, so hostname, network and storage are
    /// left alone; `power_off` only ends the agent.
    Native,
    /// PID 1 of a guest: the sandbox is the VM.
    Guest,
}

/// One container and the processes the agent started in it.
struct Entry {
    id: String,
    /// `None` once destroyed.
    engine: Mutex<Option<Container>>,
    init: Arc<Process>,
    /// Whether the engine has been told that the init exited.
    exit_told: AtomicBool,
    started: AtomicBool,
    removed: AtomicBool,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// A rootfs the agent mounted for this container (block device).
    mounted_rootfs: Option<PathBuf>,
    /// A directory the agent made for this container under its root.
    own_dir: Option<PathBuf>,
}

impl Entry {
    /// Locks the engine's container after passing on an exit the reaper has seen, so that
    /// the engine never signals a pid that may have been reused.
    fn engine(&self) -> MutexGuard<'_, Option<Container>> {
        let mut guard = self.engine.lock().unwrap();
        if let Some(status) = self.init.exit_status() {
            if !self.exit_told.swap(true, Ordering::SeqCst) {
                if let Some(c) = guard.as_mut() {
                    tell_exit(c, status);
                }
            }
        }
        guard
    }

    fn status(&self) -> ContainerStatus {
        if self.init.exit_status().is_some() {
            ContainerStatus::Stopped
        } else if self.started.load(Ordering::SeqCst) {
            ContainerStatus::Running
        } else {
            ContainerStatus::Created
        }
    }
}

/// Hands the engine an init's end: its status, or only the end where the init was left to
/// another reaper (neither code nor signal).
fn tell_exit(c: &mut Container, status: ExitStatus) {
    if status.is_unknown() {
        c.set_ended();
    } else {
        c.set_exited(to_engine_status(status));
    }
}

pub(super) fn to_engine_status(status: ExitStatus) -> engine::ExitStatus {
    match (status.code, status.signal) {
        (Some(code), _) => engine::ExitStatus::Code(code),
        (None, Some(sig)) => engine::ExitStatus::Signal(sig),
        (None, None) => engine::ExitStatus::Code(255),
    }
}

fn engine_error(e: EngineError) -> ErrorReply {
    let code = match &e {
        EngineError::Spec(_) | EngineError::InvalidId { .. } => ErrorCode::InvalidParams,
        EngineError::WrongState { .. } => ErrorCode::InvalidState,
        _ => ErrorCode::Engine,
    };
    ErrorReply::new(code, e.to_string())
}

fn not_found(what: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::NotFound, format!("no {what}"))
}

fn invalid(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidParams, message)
}

fn parse_signal(signal: i32) -> Result<Signal, ErrorReply> {
    Signal::try_from(signal).map_err(|_| invalid(format!("signal {signal}: not a signal number")))
}

fn check_id(what: &str, id: &str) -> Result<(), ErrorReply> {
    match crate::engine::id_problem(id) {
        None => Ok(()),
        Some(problem) => Err(invalid(format!(
            "{what} {id:?}: {problem} ({})",
            crate::engine::ID_RULE
        ))),
    }
}

/// The agent: containers by id, the reaper, the OOM log and the shutdown switch.
pub struct Agent {
    mode: Mode,
    root: PathBuf,
    containers: Mutex<HashMap<String, Arc<Entry>>>,
    /// Ids whose `create_container` is in progress, so that two creates cannot race.
    creating: Mutex<Vec<String>>,
    reaper: Arc<Reaper>,
    oom: Arc<OomLog>,
    shutdown: AtomicBool,
    power_off: AtomicBool,
    listener: Weak<Listener>,
    /// Containers' inits are left to whoever adopts orphans above the agent
    /// (`ServerConfig::orphan_inits`).
    orphan_inits: bool,
}

impl Agent {
    pub fn new(
        mode: Mode,
        root: PathBuf,
        reaper: Arc<Reaper>,
        listener: Weak<Listener>,
        orphan_inits: bool,
    ) -> Agent {
        Agent {
            mode,
            root,
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(Vec::new()),
            reaper,
            oom: OomLog::new(),
            shutdown: AtomicBool::new(false),
            power_off: AtomicBool::new(false),
            listener,
            orphan_inits,
        }
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Whether the sandbox was destroyed with `power_off`.
    pub fn power_off_requested(&self) -> bool {
        self.power_off.load(Ordering::SeqCst)
    }

    /// Stops accepting connections; the accept loop then returns.
    pub fn shut_down(&self) {
        if let Some(l) = self.listener.upgrade() {
            l.shut_down();
        }
    }

    /// Answers one request.
    pub fn handle(&self, request: Request) -> Outcome {
        match self.dispatch(request) {
            Ok(response) => Outcome::Result(response),
            Err(error) => Outcome::Error(error),
        }
    }

    fn dispatch(&self, request: Request) -> Result<Response, ErrorReply> {
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::CreateSandbox(config) => self.create_sandbox(config),
            Request::DestroySandbox { power_off } => self.destroy_sandbox(power_off),
            Request::CreateContainer(req) => self.create_container(req),
            Request::StartContainer { container_id } => self.start_container(&container_id),
            Request::Exec(req) => self.exec(req),
            Request::Signal(req) => self.signal(req),
            Request::Wait(p) => Ok(Response::Exited(self.process(&p)?.wait())),
            Request::ResizeTty {
                process,
                rows,
                cols,
            } => {
                self.process(&process)?.resize(rows, cols)?;
                Ok(Response::Done)
            }
            Request::CloseStdin(p) => {
                self.process(&p)?.close_stdin()?;
                Ok(Response::Done)
            }
            Request::State { container_id } => self.state(&container_id),
            Request::Processes { container_id } => self.processes(&container_id),
            Request::ProcessTable { container_id } => self.process_table(&container_id),
            Request::Stats { container_id } => self.stats(&container_id),
            Request::UpdateResources {
                container_id,
                resources,
            } => self.update(&container_id, resources),
            Request::OomEvents {
                container_id,
                after,
                wait_ms,
            } => Ok(Response::OomEvents(self.oom.events(
                container_id.as_deref(),
                after,
                wait_ms.map(Duration::from_millis),
            ))),
            Request::RemoveContainer {
                container_id,
                force,
            } => self.remove(&container_id, force),
        }
    }

    /// Answers a `wait`, giving up without an answer once `gone` says the client has left,
    /// so that abandoned waits on long-lived processes do not pile up.
    pub fn wait_for_client(
        &self,
        process: &ProcessRef,
        gone: impl Fn() -> bool,
    ) -> Option<Outcome> {
        let p = match self.process(process) {
            Ok(p) => p,
            Err(e) => return Some(Outcome::Error(e)),
        };
        loop {
            if let Some(status) = p.wait_timeout(Duration::from_millis(500)) {
                return Some(Outcome::Result(Response::Exited(status)));
            }
            if gone() {
                return None;
            }
        }
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>, ErrorReply> {
        self.containers
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(format_args!("container {id:?}")))
    }

    fn process(&self, p: &ProcessRef) -> Result<Arc<Process>, ErrorReply> {
        let entry = self.entry(&p.container_id)?;
        match &p.exec_id {
            None => Ok(entry.init.clone()),
            Some(exec) => entry
                .execs
                .lock()
                .unwrap()
                .get(exec)
                .cloned()
                .ok_or_else(|| not_found(p)),
        }
    }

    /// Hands a stdio end to a new stream connection.
    pub fn attach(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        kind: StreamKind,
        conn: &std::os::unix::net::UnixStream,
    ) -> Result<Attachment, ErrorReply> {
        let p = ProcessRef {
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
        };
        self.process(&p)?.attach(kind, conn)
    }

    fn create_sandbox(&self, config: SandboxConfig) -> Result<Response, ErrorReply> {
        match self.mode {
            Mode::Native => {
                if config != SandboxConfig::default() {
                    return Err(ErrorReply::new(
                        ErrorCode::Unsupported,
                        "native isolation shares the host's hostname, network and storage: \
                         create_sandbox takes an empty configuration there",
                    ));
                }
            }
            Mode::Guest => init::sandbox::apply(&config)
                .map_err(|e| ErrorReply::new(ErrorCode::Sandbox, e.to_string()))?,
        }
        Ok(Response::Done)
    }

    fn destroy_sandbox(&self, power_off: bool) -> Result<Response, ErrorReply> {
        let ids: Vec<String> = self.containers.lock().unwrap().keys().cloned().collect();
        let mut failures = Vec::new();
        for id in ids {
            if let Err(e) = self.remove(&id, true) {
                failures.push(format!("{id}: {}", e.message));
            }
        }
        if power_off {
            self.power_off.store(true, Ordering::SeqCst);
            self.shutdown.store(true, Ordering::SeqCst);
        }
        if failures.is_empty() {
            Ok(Response::Done)
        } else {
            Err(ErrorReply::new(
                ErrorCode::Engine,
                format!("could not remove every container: {}", failures.join("; ")),
            ))
        }
    }

    /// Prepares the rootfs of a container that does not come as a bundle: returns the
    /// bundle directory to hand to the engine and what to undo on removal.
    fn prepare_rootfs(
        &self,
        id: &str,
        rootfs: &RootfsSource,
        spec: &mut Spec,
    ) -> Result<(PathBuf, Option<PathBuf>, Option<PathBuf>), ErrorReply> {
        let set_root = |spec: &mut Spec, path: &Path, read_only: bool| {
            let mut root = spec.root().clone().unwrap_or_default();
            root.set_path(path.to_owned());
            if read_only {
                root.set_readonly(Some(true));
            }
            spec.set_root(Some(root));
        };
        let make_dir = |dir: &Path| {
            fs::create_dir_all(dir).map_err(|e| {
                ErrorReply::new(
                    ErrorCode::Internal,
                    format!("create {}: {e}", dir.display()),
                )
            })
        };
        match rootfs {
            RootfsSource::Bundle { path } => Ok((path.clone(), None, None)),
            RootfsSource::Directory { path } => {
                if !path.is_absolute() {
                    return Err(invalid(format!(
                        "rootfs.path {}: must be absolute",
                        path.display()
                    )));
                }
                let dir = self.root.join(id);
                make_dir(&dir)?;
                set_root(spec, path, false);
                Ok((dir.clone(), None, Some(dir)))
            }
            RootfsSource::BlockDevice {
                source,
                fs_type,
                read_only,
                options,
            } => {
                if self.mode == Mode::Native {
                    return Err(ErrorReply::new(
                        ErrorCode::Unsupported,
                        "rootfs.block_device: native isolation takes a bundle or a directory",
                    ));
                }
                let dir = self.root.join(id);
                let target = dir.join("rootfs");
                make_dir(&dir)?;
                if let Err(e) =
                    init::sandbox::mount_block_device(source, fs_type, &target, *read_only, options)
                {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(ErrorReply::new(ErrorCode::Sandbox, e.to_string()));
                }
                set_root(spec, &target, *read_only);
                Ok((dir.clone(), Some(target), Some(dir)))
            }
        }
    }

    fn create_container(&self, req: CreateContainer) -> Result<Response, ErrorReply> {
        let id = req.container_id.clone();
        check_id("container_id", &id)?;
        {
            let containers = self.containers.lock().unwrap();
            let mut creating = self.creating.lock().unwrap();
            if containers.contains_key(&id) || creating.contains(&id) {
                return Err(ErrorReply::new(
                    ErrorCode::AlreadyExists,
                    format!("container {id:?} exists already"),
                ));
            }
            creating.push(id.clone());
        }
        let result = self.create_reserved(req);
        self.creating.lock().unwrap().retain(|c| *c != id);
        result
    }

    fn create_reserved(&self, req: CreateContainer) -> Result<Response, ErrorReply> {
        let id = req.container_id;
        let mut spec: Spec =
            serde_json::from_value(req.spec).map_err(|e| invalid(format!("spec: {e}")))?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        if !req.copied_files.is_empty() && self.mode == Mode::Native {
            return Err(invalid(
                "copied_files: a native agent binds the host's files themselves",
            ));
        }
        let (bundle, mounted_rootfs, own_dir) = self.prepare_rootfs(&id, &req.rootfs, &mut spec)?;
        let undo = || {
            if let Some(m) = &mounted_rootfs {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
            if let Some(d) = &own_dir {
                let _ = fs::remove_dir_all(d);
            }
        };
        if !req.copied_files.is_empty() {
            let applied = match &own_dir {
                Some(dir) => super::copied_files::apply(&req.copied_files, dir, &mut spec),
                None => Err(invalid(
                    "copied_files: a rootfs given as a bundle has no directory of the agent's own",
                )),
            };
            if let Err(e) = applied {
                undo();
                return Err(e);
            }
        }
        let mut plan = match StdioPlan::new(req.stdio, terminal) {
            Ok(plan) => plan,
            Err(e) => {
                undo();
                return Err(ErrorReply::new(
                    ErrorCode::Internal,
                    format!("stdio pipes: {e}"),
                ));
            }
        };
        let mark = self.reaper.before_spawn();
        let mut options = CreateOptions::new(id.clone(), bundle, spec);
        options.stdio = plan.take_child();
        // The reaper takes every exit, the engine's hook processes included.
        options.children = self.reaper.clone();
        options.orphan_init = self.orphan_inits;
        let created = Container::create(options);
        let mut container = match created {
            Ok(c) => c,
            Err(e) => {
                undo();
                return Err(engine_error(e));
            }
        };
        let pid = container.pid().as_raw();
        let init_pidfd = match container.init_orphaned() {
            false => None,
            true => match container.init_pidfd().try_clone_to_owned() {
                Ok(fd) => Some(fd),
                Err(e) => {
                    let _ = container.destroy();
                    undo();
                    return Err(ErrorReply::new(
                        ErrorCode::Internal,
                        format!("dup the init's pidfd: {e}"),
                    ));
                }
            },
        };
        let pty = container.pty_master();
        let init = match plan.into_process(pid, pty) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let _ = container.destroy();
                undo();
                return Err(ErrorReply::new(ErrorCode::Internal, format!("stdio: {e}")));
            }
        };
        let oom = container.oom_events();
        let entry = Arc::new(Entry {
            id: id.clone(),
            engine: Mutex::new(Some(container)),
            init: init.clone(),
            exit_told: AtomicBool::new(false),
            started: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            execs: Mutex::new(HashMap::new()),
            mounted_rootfs,
            own_dir,
        });
        self.containers
            .lock()
            .unwrap()
            .insert(id.clone(), entry.clone());
        let weak = Arc::downgrade(&entry);
        let on_exit = move |status: ExitStatus| {
            init.set_exit(status);
            // Tell the engine now if nobody holds it; otherwise the next lock does.
            if let Some(entry) = weak.upgrade() {
                if let Ok(mut guard) = entry.engine.try_lock() {
                    if let Some(c) = guard.as_mut() {
                        if !entry.exit_told.swap(true, Ordering::SeqCst) {
                            tell_exit(c, status);
                        }
                    }
                }
            }
        };
        match init_pidfd {
            // Someone above us reaps it: its pidfd says when it has ended.
            Some(pidfd) => {
                let watcher =
                    std::thread::Builder::new()
                        .name("init-pidfd".into())
                        .spawn(move || {
                            if let Err(e) = engine::wait_pidfd(pidfd.as_fd(), None) {
                                log::warn!("poll the pidfd of init {pid}: {e}");
                            }
                            on_exit(ExitStatus::default());
                        });
                if let Err(e) = watcher {
                    let _ = self.remove(&id, true);
                    return Err(ErrorReply::new(
                        ErrorCode::Internal,
                        format!("start the init's watcher: {e}"),
                    ));
                }
            }
            None => self.reaper.watch(pid, mark, on_exit),
        }
        if let Ok(watcher) = oom {
            let weak = Arc::downgrade(&entry);
            self.oom.watch(id, watcher, move || {
                weak.upgrade()
                    .is_none_or(|e| e.removed.load(Ordering::SeqCst))
            });
        }
        Ok(Response::Pid(pid))
    }

    fn start_container(&self, id: &str) -> Result<Response, ErrorReply> {
        let entry = self.entry(id)?;
        let mut guard = entry.engine();
        let container = guard
            .as_mut()
            .ok_or_else(|| not_found(format_args!("container {id:?}")))?;
        if entry.started.load(Ordering::SeqCst) {
            return Err(ErrorReply::new(
                ErrorCode::InvalidState,
                format!("container {id:?} has been started already"),
            ));
        }
        container.start().map_err(engine_error)?;
        entry.started.store(true, Ordering::SeqCst);
        Ok(Response::Done)
    }

    fn exec(&self, req: ExecRequest) -> Result<Response, ErrorReply> {
        check_id("exec_id", &req.exec_id)?;
        let entry = self.entry(&req.container_id)?;
        let process: OciProcess =
            serde_json::from_value(req.process).map_err(|e| invalid(format!("process: {e}")))?;
        let terminal = process.terminal().unwrap_or(false);
        let mut guard = entry.engine();
        if entry.status() != ContainerStatus::Running {
            return Err(ErrorReply::new(
                ErrorCode::InvalidState,
                format!(
                    "container {:?} is {:?}; exec needs it running",
                    entry.id,
                    entry.status()
                ),
            ));
        }
        let container = guard
            .as_mut()
            .ok_or_else(|| not_found(format_args!("container {:?}", entry.id)))?;
        let mut execs = entry.execs.lock().unwrap();
        if execs.contains_key(&req.exec_id) {
            return Err(ErrorReply::new(
                ErrorCode::AlreadyExists,
                format!(
                    "exec {:?} exists already in container {:?}",
                    req.exec_id, entry.id
                ),
            ));
        }
        let mut plan = StdioPlan::new(req.stdio, terminal)
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("stdio pipes: {e}")))?;
        let mark = self.reaper.before_spawn();
        let mut exec = container
            .exec(&process, plan.take_child())
            .map_err(engine_error)?;
        let pid = exec.pid().as_raw();
        let process = Arc::new(
            plan.into_process(pid, exec.pty_master())
                .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("stdio: {e}")))?,
        );
        execs.insert(req.exec_id, process.clone());
        drop(execs);
        drop(guard);
        self.reaper
            .watch(pid, mark, move |status| process.set_exit(status));
        Ok(Response::Pid(pid))
    }

    fn signal(&self, req: SignalRequest) -> Result<Response, ErrorReply> {
        let signal = parse_signal(req.signal)?;
        let entry = self.entry(&req.process.container_id)?;
        match &req.process.exec_id {
            Some(_) => {
                let process = self.process(&req.process)?;
                // Holding the engine lock keeps the exit (and so the pid) from being
                // handed on while we signal.
                let _guard = entry.engine();
                if process.exit_status().is_some() {
                    return Err(ErrorReply::new(
                        ErrorCode::InvalidState,
                        format!("{} has exited", req.process),
                    ));
                }
                kill(Pid::from_raw(process.pid), signal).map_err(|e| {
                    ErrorReply::new(ErrorCode::Engine, format!("kill {}: {e}", process.pid))
                })?;
            }
            None => {
                let mut guard = entry.engine();
                let container = guard.as_mut().ok_or_else(|| not_found(&req.process))?;
                container.signal(signal, req.all).map_err(engine_error)?;
            }
        }
        Ok(Response::Done)
    }

    fn state(&self, id: &str) -> Result<Response, ErrorReply> {
        let entry = self.entry(id)?;
        Ok(Response::State(ContainerState {
            container_id: entry.id.clone(),
            status: entry.status(),
            pid: entry.init.pid,
            exit: entry.init.exit_status(),
        }))
    }

    fn processes(&self, id: &str) -> Result<Response, ErrorReply> {
        self.container_pids(id).map(Response::Processes)
    }

    fn container_pids(&self, id: &str) -> Result<Vec<i32>, ErrorReply> {
        let entry = self.entry(id)?;
        let guard = entry.engine();
        let container = guard.as_ref().ok_or_else(|| not_found(id))?;
        // Every hierarchy of the container's cgroup lists the same processes.
        let dirs = container.cgroup_dirs();
        let procs = dirs
            .iter()
            .map(|d| d.join("cgroup.procs"))
            .find(|f| f.exists())
            .ok_or_else(|| {
                ErrorReply::new(
                    ErrorCode::Engine,
                    format!("container {id:?} has no cgroup.procs"),
                )
            })?;
        let text = fs::read_to_string(&procs).map_err(|e| {
            ErrorReply::new(ErrorCode::Engine, format!("read {}: {e}", procs.display()))
        })?;
        let pids = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        Ok(pids)
    }

    fn process_table(&self, id: &str) -> Result<Response, ErrorReply> {
        let table = self
            .container_pids(id)?
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                args: fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|raw| {
                        raw.split(|&b| b == 0)
                            .filter(|a| !a.is_empty())
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Response::ProcessTable(table))
    }

    fn stats(&self, id: &str) -> Result<Response, ErrorReply> {
        let entry = self.entry(id)?;
        let guard = entry.engine();
        let container = guard.as_ref().ok_or_else(|| not_found(id))?;
        let s: CgroupStats = container.stats().map_err(engine_error)?;
        Ok(Response::Stats(ContainerStats {
            cpu_usage_ns: s.cpu_usage_ns,
            cpu_user_ns: s.cpu_user_ns,
            cpu_system_ns: s.cpu_system_ns,
            memory_usage_bytes: s.memory_usage,
            memory_limit_bytes: s.memory_limit,
            memory_max_usage_bytes: s.memory_max_usage,
            swap_usage_bytes: s.swap_usage,
            pids_current: s.pids_current,
            pids_limit: s.pids_limit,
            oom_kills: s.oom_kills,
        }))
    }

    fn update(&self, id: &str, resources: serde_json::Value) -> Result<Response, ErrorReply> {
        let resources: LinuxResources =
            serde_json::from_value(resources).map_err(|e| invalid(format!("resources: {e}")))?;
        let entry = self.entry(id)?;
        let mut guard = entry.engine();
        let container = guard.as_mut().ok_or_else(|| not_found(id))?;
        container.update(&resources).map_err(engine_error)?;
        Ok(Response::Done)
    }

    fn remove(&self, id: &str, force: bool) -> Result<Response, ErrorReply> {
        let entry = self.entry(id)?;
        if entry.status() == ContainerStatus::Running && !force {
            return Err(ErrorReply::new(
                ErrorCode::InvalidState,
                format!("container {id:?} is running; kill it first or remove with force"),
            ));
        }
        if entry.init.exit_status().is_none() {
            // A created (never started) container, or a forced removal.
            {
                let mut guard = entry.engine();
                if let Some(c) = guard.as_mut() {
                    c.signal(Signal::SIGKILL, true).map_err(engine_error)?;
                }
            }
            if entry.init.wait_timeout(KILL_TIMEOUT).is_none() {
                return Err(ErrorReply::new(
                    ErrorCode::Engine,
                    format!("container {id:?} did not exit within {KILL_TIMEOUT:?} of SIGKILL"),
                ));
            }
        }
        let container = entry.engine().take();
        if let Some(container) = container {
            container.destroy().map_err(engine_error)?;
        }
        if let Some(m) = &entry.mounted_rootfs {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(d) = &entry.own_dir {
            let _ = fs::remove_dir_all(d);
        }
        entry.removed.store(true, Ordering::SeqCst);
        self.containers.lock().unwrap().remove(id);
        Ok(Response::Done)
    }
}
