//! The containerd task service: containerd's task requests turned into agent requests on the
//! pod's sandbox, the state containerd asks about (status, pids, exit codes), and the task
//! events it expects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use agent::protocol::{
    Client, CopiedFile, CreateContainer, ExecRequest, ExitStatus, ProcessRef, RootfsSource,
};
use containerd_shim::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::EnumOrUnknown;
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};

use crate::bundle::Bundle;
use crate::sandbox::{native, vm};

use super::error::{agent, Result, ShimError};
use super::events::Events;
use super::io::{self, Pumps, StdioPaths};
use super::options::ShimOptions;
use super::pod::Pod;
use super::rootfs;
use super::stats;

/// How long the exit of a process waits for its output to reach the fifos.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProcStatus {
    Created,
    Running,
    Stopped,
}

impl ProcStatus {
    fn name(self) -> &'static str {
        match self {
            ProcStatus::Created => "created",
            ProcStatus::Running => "running",
            ProcStatus::Stopped => "stopped",
        }
    }

    fn api(self) -> api::Status {
        match self {
            ProcStatus::Created => api::Status::CREATED,
            ProcStatus::Running => api::Status::RUNNING,
            ProcStatus::Stopped => api::Status::STOPPED,
        }
    }
}

struct Proc {
    pid: u32,
    status: ProcStatus,
    exit: Option<(u32, Timestamp)>,
    stdio: StdioPaths,
    pumps: Option<Pumps>,
}

impl Proc {
    fn new(stdio: StdioPaths) -> Proc {
        Proc {
            pid: 0,
            status: ProcStatus::Created,
            exit: None,
            stdio,
            pumps: None,
        }
    }
}

struct Exec {
    spec: serde_json::Value,
    proc: Proc,
}

struct TaskEntry {
    bundle: PathBuf,
    rootfs_mounted: bool,
    init: Proc,
    execs: HashMap<String, Exec>,
}

#[derive(Default)]
struct State {
    pod: Option<Arc<Pod>>,
    tasks: HashMap<String, TaskEntry>,
}

/// A container as the pod's agent is to see it: in a VM its rootfs and volumes are the pod
/// share's.
struct AgentView<'a> {
    rootfs: RootfsSource,
    spec: &'a oci_spec::runtime::Spec,
    copied_files: Vec<CopiedFile>,
}

pub struct Inner {
    namespace: String,
    group: String,
    events: Events,
    exit: Arc<ExitSignal>,
    state: Mutex<State>,
    changed: Condvar,
}

/// The task service of one shim (one pod).
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

fn exit_code(s: ExitStatus) -> u32 {
    s.shell_code() as u32
}

impl Service {
    pub fn new(namespace: String, group: String, events: Events, exit: Arc<ExitSignal>) -> Self {
        Service {
            inner: Arc::new(Inner {
                namespace,
                group,
                events,
                exit,
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pod(&self) -> Result<Arc<Pod>> {
        let st = self.lock();
        let pod = st
            .pod
            .clone()
            .ok_or_else(|| ShimError::SandboxGone("no sandbox has been created".into()))?;
        Ok(pod)
    }

    fn create(&self, req: &api::CreateTaskRequest) -> Result<u32> {
        if req.id.is_empty() {
            return Err(ShimError::Invalid("task id is empty".into()));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("restoring from a checkpoint"));
        }
        if self.lock().tasks.contains_key(&req.id) {
            return Err(ShimError::TaskExists(req.id.clone()));
        }
        let bundle = PathBuf::from(&req.bundle);
        let mounted = rootfs::mount_all(&bundle, &req.rootfs)?;
        match self.create_mounted(req, &bundle, mounted) {
            Ok(pid) => Ok(pid),
            Err(e) => {
                if mounted {
                    rootfs::unmount(&bundle);
                }
                Err(e)
            }
        }
    }

    fn create_mounted(
        &self,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        mounted: bool,
    ) -> Result<u32> {
        let b = Bundle::load(bundle)?;
        let annotations: HashMap<String, String> = b.spec.annotations().clone().unwrap_or_default();
        let pod = self.pod_for(req, &annotations, bundle)?;
        if let Some(why) = pod.gone() {
            return Err(ShimError::SandboxGone(why));
        }
        // In a VM the container's rootfs and volumes enter through the pod's share.
        let Some(share) = &pod.vm_share else {
            let view = AgentView {
                rootfs: native::rootfs_source(&b.dir),
                spec: &b.spec,
                copied_files: Vec::new(),
            };
            return self.create_in(&pod, req, bundle, mounted, view);
        };
        let c = share.add(&req.id, &b)?;
        let created = vm::copied_files(&b.spec, &c.shares)
            .map_err(ShimError::from)
            .and_then(|copied_files| {
                let view = AgentView {
                    rootfs: c.rootfs,
                    spec: &c.spec,
                    copied_files,
                };
                self.create_in(&pod, req, bundle, mounted, view)
            });
        if created.is_err() {
            share.remove(&req.id);
        }
        created
    }

    /// Creates the container in the pod's agent, its rootfs and spec as the agent must see
    /// them, and records the task.
    fn create_in(
        &self,
        pod: &Arc<Pod>,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        mounted: bool,
        view: AgentView,
    ) -> Result<u32> {
        let AgentView {
            rootfs,
            spec: guest_spec,
            copied_files,
        } = view;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut spec = serde_json::to_value(guest_spec)
            .map_err(|e| ShimError::Invalid(format!("spec: {e}")))?;
        if let Some(p) = spec.get_mut("process").and_then(|p| p.as_object_mut()) {
            // containerd decides about the terminal in the request.
            p.insert("terminal".into(), serde_json::Value::Bool(req.terminal));
        }
        let pid = pod
            .call(|c| {
                c.create_container(CreateContainer {
                    container_id: req.id.clone(),
                    spec: spec.clone(),
                    rootfs: rootfs.clone(),
                    stdio: stdio.request(),
                    copied_files: copied_files.clone(),
                })
            })
            .map_err(agent("create container"))?;
        let init = ProcessRef::init(&req.id);
        let pumps = {
            let c = pod.control.lock().unwrap_or_else(|p| p.into_inner());
            io::start(&c, &init, &stdio)
        };
        let pumps = match pumps {
            Ok(p) => p,
            Err(e) => {
                let _ = pod.call(|c| c.remove_container(&req.id, true));
                return Err(e);
            }
        };
        let pid = pod.host_pid(pid);
        let mut proc = Proc::new(stdio.clone());
        proc.pid = pid;
        proc.pumps = Some(pumps);
        self.lock().tasks.insert(
            req.id.clone(),
            TaskEntry {
                bundle: bundle.to_path_buf(),
                rootfs_mounted: mounted,
                init: proc,
                execs: HashMap::new(),
            },
        );
        self.spawn_waiter(pod, init);
        self.inner.events.send(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: stdio.terminal,
                    ..Default::default()
                })
                .into(),
                checkpoint: String::new(),
                pid,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    /// The pod's sandbox, started by its first container.
    fn pod_for(
        &self,
        req: &api::CreateTaskRequest,
        annotations: &HashMap<String, String>,
        bundle: &Path,
    ) -> Result<Arc<Pod>> {
        let mut st = self.lock();
        let opts = match req.options.as_ref() {
            Some(any) => ShimOptions::from_runtime_options(&any.type_url, &any.value)?,
            None => ShimOptions::default(),
        };
        let wanted = opts.isolation_for(annotations)?;
        if let Some(pod) = &st.pod {
            // A later container of the pod says nothing about isolation, or agrees.
            if annotations.contains_key(super::options::ISOLATION_ANNOTATION)
                && wanted != pod.isolation
            {
                return Err(ShimError::IsolationConflict {
                    id: req.id.clone(),
                    group: self.inner.group.clone(),
                    wanted: wanted.to_string(),
                    running: pod.isolation.to_string(),
                });
            }
            return Ok(pod.clone());
        }
        let pod = Arc::new(Pod::start(
            &opts,
            wanted,
            &self.inner.namespace,
            &self.inner.group,
            bundle,
        )?);
        self.spawn_oom_watcher(&pod);
        st.pod = Some(pod.clone());
        log::info!(
            "sandbox {} started in {} isolation (pid {})",
            self.inner.group,
            pod.isolation,
            pod.backend_pid
        );
        Ok(pod)
    }

    fn proc_mut<'a>(st: &'a mut State, id: &str, exec_id: &str) -> Result<&'a mut Proc> {
        let t = st
            .tasks
            .get_mut(id)
            .ok_or_else(|| ShimError::NoTask(id.to_string()))?;
        if exec_id.is_empty() {
            Ok(&mut t.init)
        } else {
            t.execs
                .get_mut(exec_id)
                .map(|e| &mut e.proc)
                .ok_or_else(|| ShimError::NoExec {
                    id: id.to_string(),
                    exec_id: exec_id.to_string(),
                })
        }
    }

    fn pref(id: &str, exec_id: &str) -> ProcessRef {
        if exec_id.is_empty() {
            ProcessRef::init(id)
        } else {
            ProcessRef::exec(id, exec_id)
        }
    }

    /// Waits for the process on a connection of its own; records its exit once its output
    /// is delivered, then tells containerd.
    fn spawn_waiter(&self, pod: &Arc<Pod>, p: ProcessRef) {
        let svc = self.clone();
        let endpoint = pod.endpoint.clone();
        let pod = pod.clone();
        std::thread::spawn(move || {
            let status = Client::connect(endpoint)
                .and_then(|mut c| c.wait(p.clone()))
                .unwrap_or_else(|e| {
                    let why = pod.gone().unwrap_or_else(|| e.to_string());
                    log::error!("lost {p}: {why}");
                    ExitStatus::exited(255)
                });
            let exec_id = p.exec_id.clone().unwrap_or_default();
            let pumps = {
                let mut st = svc.lock();
                Self::proc_mut(&mut st, &p.container_id, &exec_id)
                    .ok()
                    .and_then(|pr| pr.pumps.take())
            };
            if let Some(mut pumps) = pumps {
                pumps.drain(DRAIN_LIMIT);
                pumps.close_stdin();
            }
            let at = now();
            let pid = {
                let mut st = svc.lock();
                let Ok(pr) = Self::proc_mut(&mut st, &p.container_id, &exec_id) else {
                    return;
                };
                pr.status = ProcStatus::Stopped;
                pr.exit = Some((exit_code(status), at.clone()));
                pr.pid
            };
            svc.inner.changed.notify_all();
            svc.inner.events.send(
                topics::TASK_EXIT_EVENT_TOPIC,
                TaskExit {
                    container_id: p.container_id.clone(),
                    id: if exec_id.is_empty() {
                        p.container_id.clone()
                    } else {
                        exec_id
                    },
                    pid,
                    exit_status: exit_code(status),
                    exited_at: Some(at).into(),
                    ..Default::default()
                },
            );
        });
    }

    fn spawn_oom_watcher(&self, pod: &Arc<Pod>) {
        let events_svc = self.clone();
        let endpoint = pod.endpoint.clone();
        std::thread::spawn(move || {
            let Ok(mut c) = Client::connect(endpoint) else {
                return;
            };
            let mut after = 0;
            loop {
                match c.oom_events(None, after, Some(Duration::from_secs(5))) {
                    Ok(events) => {
                        for ev in events {
                            after = ev.sequence + 1;
                            events_svc.inner.events.send(
                                topics::TASK_OOM_EVENT_TOPIC,
                                TaskOOM {
                                    container_id: ev.container_id,
                                    ..Default::default()
                                },
                            );
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }

    fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let pod = self.pod()?;
        if exec_id.is_empty() {
            {
                let mut st = self.lock();
                let p = Self::proc_mut(&mut st, id, "")?;
                if p.status != ProcStatus::Created {
                    return Err(ShimError::WrongState {
                        what: format!("task {id:?}"),
                        state: p.status.name(),
                        action: "start",
                    });
                }
            }
            pod.call(|c| c.start_container(id))
                .map_err(agent("start container"))?;
            let pid = {
                let mut st = self.lock();
                let p = Self::proc_mut(&mut st, id, "")?;
                if p.status == ProcStatus::Created {
                    p.status = ProcStatus::Running;
                }
                p.pid
            };
            self.inner.events.send(
                topics::TASK_START_EVENT_TOPIC,
                TaskStart {
                    container_id: id.to_string(),
                    pid,
                    ..Default::default()
                },
            );
            return Ok(pid);
        }
        let (spec, stdio) = {
            let mut st = self.lock();
            let t = st
                .tasks
                .get_mut(id)
                .ok_or_else(|| ShimError::NoTask(id.to_string()))?;
            let e = t.execs.get(exec_id).ok_or_else(|| ShimError::NoExec {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
            })?;
            if e.proc.status != ProcStatus::Created {
                return Err(ShimError::WrongState {
                    what: format!("exec {exec_id:?} of task {id:?}"),
                    state: e.proc.status.name(),
                    action: "start",
                });
            }
            (e.spec.clone(), e.proc.stdio.clone())
        };
        let pid = pod
            .call(|c| {
                c.exec(ExecRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    process: spec.clone(),
                    stdio: stdio.request(),
                })
            })
            .map_err(agent("exec"))?;
        let pid = pod.host_pid(pid);
        let pref = ProcessRef::exec(id, exec_id);
        let pumps = {
            let c = pod.control.lock().unwrap_or_else(|p| p.into_inner());
            io::start(&c, &pref, &stdio)
        };
        let pumps = match pumps {
            Ok(p) => p,
            Err(e) => {
                let _ = pod.call(|c| c.signal(pref.clone(), libc::SIGKILL, false));
                return Err(e);
            }
        };
        {
            let mut st = self.lock();
            let p = Self::proc_mut(&mut st, id, exec_id)?;
            p.pid = pid;
            p.status = ProcStatus::Running;
            p.pumps = Some(pumps);
        }
        self.spawn_waiter(&pod, pref);
        self.inner.events.send(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse> {
        let mut st = self.lock();
        if !exec_id.is_empty() {
            let p = Self::proc_mut(&mut st, id, exec_id)?;
            if p.status == ProcStatus::Running {
                return Err(ShimError::WrongState {
                    what: format!("exec {exec_id:?} of task {id:?}"),
                    state: p.status.name(),
                    action: "delete",
                });
            }
            let (code, at) = p.exit.clone().unwrap_or((0, now()));
            let pid = p.pid;
            if let Some(t) = st.tasks.get_mut(id) {
                t.execs.remove(exec_id);
            }
            return Ok(api::DeleteResponse {
                pid,
                exit_status: code,
                exited_at: Some(at).into(),
                ..Default::default()
            });
        }
        let t = st
            .tasks
            .get(id)
            .ok_or_else(|| ShimError::NoTask(id.to_string()))?;
        if t.init.status == ProcStatus::Running {
            return Err(ShimError::WrongState {
                what: format!("task {id:?}"),
                state: "running",
                action: "delete",
            });
        }
        let force = t.init.status == ProcStatus::Created;
        let pod = st.pod.clone();
        drop(st);
        if let Some(pod) = &pod {
            if pod.gone().is_none() {
                if let Err(e) = pod.call(|c| c.remove_container(id, force)) {
                    // Already gone in the agent is fine; anything else is reported.
                    if e.remote().map(|r| r.code) != Some(agent::protocol::ErrorCode::NotFound) {
                        return Err(agent("remove container")(e));
                    }
                }
            }
        }
        let mut st = self.lock();
        let Some(t) = st.tasks.remove(id) else {
            return Err(ShimError::NoTask(id.to_string()));
        };
        drop(st);
        self.inner.changed.notify_all();
        if let Some(share) = pod.as_ref().and_then(|p| p.vm_share.as_ref()) {
            share.remove(id);
        }
        if t.rootfs_mounted {
            rootfs::unmount(&t.bundle);
        }
        let (code, at) = t.init.exit.clone().unwrap_or((137, now()));
        self.inner.events.send(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: id.to_string(),
                pid: t.init.pid,
                exit_status: code,
                exited_at: Some(at.clone()).into(),
                id: id.to_string(),
                ..Default::default()
            },
        );
        Ok(api::DeleteResponse {
            pid: t.init.pid,
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    fn exec(&self, req: &api::ExecProcessRequest) -> Result<()> {
        let spec: serde_json::Value = match req.spec.as_ref() {
            Some(any) => serde_json::from_slice(&any.value)
                .map_err(|e| ShimError::Invalid(format!("exec process spec: {e}")))?,
            None => return Err(ShimError::Invalid("exec without a process spec".into())),
        };
        if req.exec_id.is_empty() {
            return Err(ShimError::Invalid("exec id is empty".into()));
        }
        let mut st = self.lock();
        let t = st
            .tasks
            .get_mut(&req.id)
            .ok_or_else(|| ShimError::NoTask(req.id.clone()))?;
        if t.init.status != ProcStatus::Running {
            return Err(ShimError::WrongState {
                what: format!("task {:?}", req.id),
                state: t.init.status.name(),
                action: "exec in it",
            });
        }
        if t.execs.contains_key(&req.exec_id) {
            return Err(ShimError::ExecExists {
                id: req.id.clone(),
                exec_id: req.exec_id.clone(),
            });
        }
        t.execs.insert(
            req.exec_id.clone(),
            Exec {
                spec,
                proc: Proc::new(StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                }),
            },
        );
        drop(st);
        self.inner.events.send(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(())
    }

    fn kill(&self, req: &api::KillRequest) -> Result<()> {
        let status = {
            let mut st = self.lock();
            Self::proc_mut(&mut st, &req.id, &req.exec_id)?.status
        };
        if status == ProcStatus::Stopped {
            return Err(ShimError::Finished(
                Self::pref(&req.id, &req.exec_id).to_string(),
            ));
        }
        if status == ProcStatus::Created && !req.exec_id.is_empty() {
            return Err(ShimError::WrongState {
                what: format!("exec {:?} of task {:?}", req.exec_id, req.id),
                state: "created",
                action: "signal",
            });
        }
        let pod = self.pod()?;
        let pref = Self::pref(&req.id, &req.exec_id);
        pod.call(|c| c.signal(pref.clone(), req.signal as i32, req.all))
            .map_err(agent("signal"))
    }

    fn wait(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse> {
        let mut st = self.lock();
        loop {
            let p = Self::proc_mut(&mut st, id, exec_id)?;
            if let Some((code, at)) = &p.exit {
                return Ok(api::WaitResponse {
                    exit_status: *code,
                    exited_at: Some(at.clone()).into(),
                    ..Default::default()
                });
            }
            st = self
                .inner
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        let mut st = self.lock();
        let bundle = st
            .tasks
            .get(id)
            .map(|t| t.bundle.display().to_string())
            .unwrap_or_default();
        let p = Self::proc_mut(&mut st, id, exec_id)?;
        let (code, at) = p
            .exit
            .clone()
            .map(|(c, t)| (c, Some(t)))
            .unwrap_or((0, None));
        Ok(api::StateResponse {
            id: id.to_string(),
            bundle,
            pid: p.pid,
            status: EnumOrUnknown::new(p.status.api()),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: code,
            exited_at: at.into(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        })
    }

    fn running_task(&self, id: &str) -> Result<Arc<Pod>> {
        let status = {
            let mut st = self.lock();
            Self::proc_mut(&mut st, id, "")?.status
        };
        if status == ProcStatus::Stopped {
            return Err(ShimError::WrongState {
                what: format!("task {id:?}"),
                state: "stopped",
                action: "query or change it",
            });
        }
        self.pod()
    }

    fn close_io(&self, id: &str, exec_id: &str, stdin: bool) -> Result<()> {
        let mut st = self.lock();
        let p = Self::proc_mut(&mut st, id, exec_id)?;
        log::debug!(
            "close io {id}/{exec_id} stdin={stdin} pumps={}",
            p.pumps.is_some()
        );
        if stdin {
            if let Some(pumps) = p.pumps.as_mut() {
                pumps.close_stdin();
            }
        }
        Ok(())
    }

    /// Ends the shim when no task is left: the sandbox is destroyed and the server stops.
    fn shutdown(&self) {
        let pod = {
            let mut st = self.lock();
            if !st.tasks.is_empty() {
                return;
            }
            st.pod.take()
        };
        if let Some(pod) = pod {
            match Arc::try_unwrap(pod) {
                Ok(pod) => pod.shut_down(),
                Err(pod) => {
                    // A waiter still holds it: end the back end all the same.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pod.backend_pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = std::fs::remove_dir_all(&pod.dir);
                }
            }
        }
        self.inner.exit.signal();
    }
}

fn unimplemented<T>(what: &'static str) -> TtrpcResult<T> {
    Err(ShimError::Unimplemented(what).into())
}

fn logged<T>(what: &str, r: Result<T>) -> TtrpcResult<T> {
    r.map_err(|e| {
        log::warn!("{what}: {e}");
        e.into()
    })
}

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = logged("create", Service::create(self, &req))?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = logged("start", Service::start(self, &req.id, &req.exec_id))?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        logged("delete", Service::delete(self, &req.id, &req.exec_id))
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        logged("exec", Service::exec(self, &req))?;
        Ok(api::Empty::new())
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        Ok(Service::state(self, &req.id, &req.exec_id)?)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let pod = self.running_task(&req.id)?;
        let pids = pod
            .call(|c| c.processes(&req.id))
            .map_err(agent("list processes"))?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        logged("kill", Service::kill(self, &req))?;
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        Ok(Service::wait(self, &req.id, &req.exec_id)?)
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        Service::close_io(self, &req.id, &req.exec_id, req.stdin)?;
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let pod = self.running_task(&req.id)?;
        let rows = u16::try_from(req.height)
            .map_err(|_| ShimError::Invalid(format!("terminal height {}", req.height)))?;
        let cols = u16::try_from(req.width)
            .map_err(|_| ShimError::Invalid(format!("terminal width {}", req.width)))?;
        let pref = Service::pref(&req.id, &req.exec_id);
        pod.call(|c| c.resize_tty(pref.clone(), rows, cols))
            .map_err(agent("resize terminal"))?;
        Ok(api::Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let pod = self.running_task(&req.id)?;
        let resources: serde_json::Value = match req.resources.as_ref() {
            Some(any) => serde_json::from_slice(&any.value)
                .map_err(|e| ShimError::Invalid(format!("resources: {e}")))?,
            None => return Err(ShimError::Invalid("update without resources".into()).into()),
        };
        pod.call(|c| c.update_resources(&req.id, resources.clone()))
            .map_err(agent("update resources"))?;
        Ok(api::Empty::new())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let pod = self.running_task(&req.id)?;
        let s = pod.call(|c| c.stats(&req.id)).map_err(agent("stats"))?;
        let any = stats::to_any(&s).map_err(ShimError::Agent)?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = {
            let st = self.lock();
            st.tasks.get(&req.id).map(|t| t.init.pid).unwrap_or(0)
        };
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        Service::shutdown(self);
        Ok(api::Empty::new())
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        unimplemented("Pause")
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        unimplemented("Resume")
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        unimplemented("Checkpoint")
    }
}
