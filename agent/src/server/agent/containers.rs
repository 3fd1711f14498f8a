//! The container operations: create, start, exec, signal, the queries (state, processes,
//! stats) and removal.

use std::fs;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};

use crate::engine::{self, CgroupStats, Container, CreateOptions};
use crate::protocol::*;
use crate::server::process::StdioPlan;

use super::entry::{tell_exit, Entry};
use super::errors::{check_id, engine_error, invalid, not_found, parse_signal};
use super::{rootfs, Agent};

/// How long `remove_container` with `force` waits for a killed container to go.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

impl Agent {
    pub(super) fn create_container(&self, req: CreateContainer) -> Result<Response, ErrorReply> {
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
        rootfs::check_copied_files(self.mode, &req.copied_files)?;
        let (bundle, setup) = rootfs::prepare(self.mode, &self.root, &id, &req.rootfs, &mut spec)?;
        if let Err(e) = rootfs::copy_files(&req.copied_files, &setup, &mut spec) {
            setup.undo();
            return Err(e);
        }
        let mut plan = match StdioPlan::new(req.stdio, terminal) {
            Ok(plan) => plan,
            Err(e) => {
                setup.undo();
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
                setup.undo();
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
                    setup.undo();
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
                setup.undo();
                return Err(ErrorReply::new(ErrorCode::Internal, format!("stdio: {e}")));
            }
        };
        let oom = container.oom_events();
        let entry = Arc::new(Entry::new(id.clone(), Some(container), init.clone(), setup));
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

    pub(super) fn start_container(&self, id: &str) -> Result<Response, ErrorReply> {
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

    pub(super) fn exec(&self, req: ExecRequest) -> Result<Response, ErrorReply> {
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

    pub(super) fn signal(&self, req: SignalRequest) -> Result<Response, ErrorReply> {
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

    pub(super) fn state(&self, id: &str) -> Result<Response, ErrorReply> {
        let entry = self.entry(id)?;
        Ok(Response::State(ContainerState {
            container_id: entry.id.clone(),
            status: entry.status(),
            pid: entry.init.pid,
            exit: entry.init.exit_status(),
        }))
    }

    pub(super) fn processes(&self, id: &str) -> Result<Response, ErrorReply> {
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

    pub(super) fn process_table(&self, id: &str) -> Result<Response, ErrorReply> {
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

    pub(super) fn stats(&self, id: &str) -> Result<Response, ErrorReply> {
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

    pub(super) fn update(
        &self,
        id: &str,
        resources: serde_json::Value,
    ) -> Result<Response, ErrorReply> {
        let resources: LinuxResources =
            serde_json::from_value(resources).map_err(|e| invalid(format!("resources: {e}")))?;
        let entry = self.entry(id)?;
        let mut guard = entry.engine();
        let container = guard.as_mut().ok_or_else(|| not_found(id))?;
        container.update(&resources).map_err(engine_error)?;
        Ok(Response::Done)
    }

    pub(super) fn remove(&self, id: &str, force: bool) -> Result<Response, ErrorReply> {
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
        entry.rootfs.undo();
        entry.removed.store(true, Ordering::SeqCst);
        self.containers.lock().unwrap().remove(id);
        Ok(Response::Done)
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::super::test_support::{agent, entry, insert, process};
    use super::super::Mode;
    use super::*;

    fn create(id: &str, spec: serde_json::Value, rootfs: RootfsSource) -> CreateContainer {
        CreateContainer {
            container_id: id.into(),
            spec,
            rootfs,
            stdio: StdioRequest::default(),
            copied_files: vec![],
        }
    }

    fn spec() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        })
    }

    fn bundle() -> RootfsSource {
        RootfsSource::Bundle {
            path: "/run/bundles/c1".into(),
        }
    }

    fn exec_request(container: &str, exec: &str) -> ExecRequest {
        ExecRequest {
            container_id: container.into(),
            exec_id: exec.into(),
            process: serde_json::json!({
                "args": ["true"],
                "cwd": "/",
                "user": {"uid": 0, "gid": 0},
            }),
            stdio: StdioRequest::default(),
        }
    }

    #[test]
    fn a_bad_container_id_is_refused_before_anything_is_made() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Guest, root.path());
        let dir = RootfsSource::Directory {
            path: "/run/storage/x".into(),
        };
        let e = a.create_container(create("../x", spec(), dir)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert!(
            e.message.starts_with("container_id \"../x\": "),
            "{}",
            e.message
        );
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_id_in_use_already_exists() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        insert(&a, entry("c1", process(4242)));
        let e = a
            .create_container(create("c1", spec(), bundle()))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        assert_eq!(e.message, "container \"c1\" exists already");
    }

    #[test]
    fn an_id_being_created_already_exists() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        a.creating.lock().unwrap().push("c1".into());
        let e = a
            .create_container(create("c1", spec(), bundle()))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        // The refused create must not drop the reservation of the one in progress.
        assert_eq!(*a.creating.lock().unwrap(), vec!["c1".to_owned()]);
    }

    #[test]
    fn a_failed_create_frees_its_id() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let e = a
            .create_container(create("c1", serde_json::json!({"process": 3}), bundle()))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert!(e.message.starts_with("spec: "), "{}", e.message);
        assert!(a.creating.lock().unwrap().is_empty());
        assert!(a.containers.lock().unwrap().is_empty());
    }

    /// c1 on a rootfs directory, with one file to copy into the spec's first mount.
    fn with_a_copied_file_for_mount_0() -> CreateContainer {
        let mut req = create(
            "c1",
            spec(),
            RootfsSource::Directory {
                path: "/run/storage/c1".into(),
            },
        );
        req.copied_files.push(CopiedFile {
            mount_index: 0,
            mode: 0o644,
            contents: b"x".to_vec(),
        });
        req
    }

    #[test]
    fn a_native_create_refuses_copied_files() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let req = with_a_copied_file_for_mount_0();
        let e = a.create_container(req).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert_eq!(
            e.message,
            "copied_files: a native agent binds the host's files themselves"
        );
        assert!(!root.path().join("c1").exists());
    }

    #[test]
    fn refused_copied_files_undo_the_rootfs_directory() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Guest, root.path());
        // mounts[0] is /proc, not a bind mount.
        let req = with_a_copied_file_for_mount_0();
        let e = a.create_container(req).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert_eq!(
            e.message,
            "copied_files: mounts[0] (/proc) is not a bind mount"
        );
        assert!(!root.path().join("c1").exists());
        assert!(a.creating.lock().unwrap().is_empty());
    }

    #[test]
    fn starting_a_destroyed_container_is_not_found() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        insert(&a, entry("c1", process(4242)));
        let e = a.start_container("c1").unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(e.message, "no container \"c1\"");
    }

    #[test]
    fn exec_checks_its_request() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let e = insert(&a, entry("c1", process(4242)));
        e.started.store(true, Ordering::SeqCst);

        let err = a.exec(exec_request("c1", "-e")).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidParams);
        assert!(
            err.message.starts_with("exec_id \"-e\": "),
            "{}",
            err.message
        );

        let err = a.exec(exec_request("c2", "e1")).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert_eq!(err.message, "no container \"c2\"");

        let mut bad = exec_request("c1", "e1");
        bad.process = serde_json::json!(["true"]);
        let err = a.exec(bad).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidParams);
        assert!(err.message.starts_with("process: "), "{}", err.message);
    }

    #[test]
    fn exec_needs_a_running_container() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let e = insert(&a, entry("c1", process(4242)));
        let err = a.exec(exec_request("c1", "e1")).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidState);
        assert_eq!(
            err.message,
            "container \"c1\" is Created; exec needs it running"
        );

        e.started.store(true, Ordering::SeqCst);
        e.init.set_exit(ExitStatus::exited(0));
        let err = a.exec(exec_request("c1", "e1")).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidState);
        assert_eq!(
            err.message,
            "container \"c1\" is Stopped; exec needs it running"
        );
        assert!(e.execs.lock().unwrap().is_empty());
    }

    #[test]
    fn signal_checks_the_number_first() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let e = a
            .signal(SignalRequest {
                process: ProcessRef::init("nope"),
                signal: 4096,
                all: false,
            })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert_eq!(e.message, "signal 4096: not a signal number");
    }

    #[test]
    fn signalling_an_exited_exec_is_invalid_state() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let e = insert(&a, entry("c1", process(4242)));
        let exec = process(4243);
        exec.set_exit(ExitStatus::exited(0));
        e.execs.lock().unwrap().insert("e1".into(), exec);
        let err = a
            .signal(SignalRequest {
                process: ProcessRef::exec("c1", "e1"),
                signal: libc::SIGTERM,
                all: false,
            })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidState);
        assert_eq!(err.message, "exec \"e1\" of container \"c1\" has exited");

        let err = a
            .signal(SignalRequest {
                process: ProcessRef::exec("c1", "e2"),
                signal: libc::SIGTERM,
                all: false,
            })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert_eq!(err.message, "no exec \"e2\" of container \"c1\"");
    }

    #[test]
    fn signalling_a_destroyed_init_is_not_found() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        insert(&a, entry("c1", process(4242)));
        let err = a
            .signal(SignalRequest {
                process: ProcessRef::init("c1"),
                signal: libc::SIGKILL,
                all: true,
            })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert_eq!(err.message, "no container \"c1\"");
    }

    #[test]
    fn state_reports_status_pid_and_exit() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let e = insert(&a, entry("c1", process(4242)));
        let state = |a: &Agent| match a.state("c1").unwrap() {
            Response::State(s) => s,
            other => panic!("{other:?}"),
        };
        let s = state(&a);
        assert_eq!(s.container_id, "c1");
        assert_eq!(s.status, ContainerStatus::Created);
        assert_eq!(s.pid, 4242);
        assert_eq!(s.exit, None);

        e.started.store(true, Ordering::SeqCst);
        e.init.set_exit(ExitStatus::signaled(9));
        let s = state(&a);
        assert_eq!(s.status, ContainerStatus::Stopped);
        assert_eq!(s.exit, Some(ExitStatus::signaled(9)));
    }

    #[test]
    fn queries_of_a_destroyed_container_are_not_found() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        insert(&a, entry("c1", process(4242)));
        for e in [
            a.processes("c1").unwrap_err(),
            a.process_table("c1").unwrap_err(),
            a.stats("c1").unwrap_err(),
            a.update("c1", serde_json::json!({})).unwrap_err(),
        ] {
            assert_eq!(e.code, ErrorCode::NotFound);
            assert_eq!(e.message, "no c1");
        }
    }

    #[test]
    fn update_checks_the_resources_first() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let e = a
            .update("nope", serde_json::json!({"memory": {"limit": "lots"}}))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert!(e.message.starts_with("resources: "), "{}", e.message);
    }

    #[test]
    fn a_running_container_is_removed_only_with_force() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let e = insert(&a, entry("c1", process(4242)));
        e.started.store(true, Ordering::SeqCst);
        let err = a.remove("c1", false).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidState);
        assert_eq!(
            err.message,
            "container \"c1\" is running; kill it first or remove with force"
        );
        assert!(a.containers.lock().unwrap().contains_key("c1"));
        assert!(!e.removed.load(Ordering::SeqCst));
    }

    #[test]
    fn removal_undoes_the_rootfs_and_forgets_the_container() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let own_dir = root.path().join("c1");
        fs::create_dir(&own_dir).unwrap();
        let e = Entry::new(
            "c1".into(),
            None,
            process(4242),
            rootfs::RootfsSetup {
                mounted: None,
                own_dir: Some(own_dir.clone()),
            },
        );
        e.init.set_exit(ExitStatus::exited(0));
        let e = insert(&a, e);
        assert_eq!(a.remove("c1", false).unwrap(), Response::Done);
        assert!(e.removed.load(Ordering::SeqCst));
        assert!(!own_dir.exists());
        assert!(a.containers.lock().unwrap().is_empty());
        assert_eq!(a.remove("c1", false).unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn a_forced_removal_waits_for_the_init_to_end() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let e = insert(&a, entry("c1", process(4242)));
        e.started.store(true, Ordering::SeqCst);
        let init = e.init.clone();
        let exiter = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            init.set_exit(ExitStatus::signaled(9));
        });
        assert_eq!(a.remove("c1", true).unwrap(), Response::Done);
        exiter.join().unwrap();
        assert_eq!(e.init.exit_status(), Some(ExitStatus::signaled(9)));
        assert!(a.containers.lock().unwrap().is_empty());
    }
}
