//! The containerd task service: containerd's task requests turned into agent requests on the
//! pod's sandbox, and the task events containerd expects. The state containerd asks about
//! (status, pids, exit codes) is the task table's ([`super::tasks`]); a request the table
//! refuses never reaches the agent.

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
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};

use crate::bundle::Bundle;
use crate::sandbox::backend::{native, vm};

use super::error::{agent, Result, ShimError};
use super::events::Events;
use super::io::{self, StdioPaths};
use super::options::ShimOptions;
use super::pod::Pod;
use super::process::{now, process_ref, Exec, Exit, Proc};
use super::rootfs;
use super::stats;
use super::tasks::{State, TaskEntry};

/// How long the exit of a process waits for its output to reach the fifos.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

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
        self.lock().pod()
    }

    fn create(&self, req: &api::CreateTaskRequest) -> Result<u32> {
        if req.id.is_empty() {
            return Err(ShimError::Invalid("task id is empty".into()));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("restoring from a checkpoint"));
        }
        self.lock().ensure_new_task(&req.id)?;
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
        self.lock().insert_task(
            req.id.clone(),
            TaskEntry::new(bundle.to_path_buf(), mounted, proc),
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
            pod.backend_pid()
        );
        Ok(pod)
    }

    /// Waits for the process on a connection of its own; records its exit once its output
    /// is delivered, then tells containerd.
    fn spawn_waiter(&self, pod: &Arc<Pod>, p: ProcessRef) {
        let svc = self.clone();
        let endpoint = pod.endpoint().clone();
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
                st.proc_mut(&p.container_id, &exec_id)
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
                let Ok(pr) = st.proc_mut(&p.container_id, &exec_id) else {
                    return;
                };
                pr.record_exit(Exit {
                    code: exit_code(status),
                    at: at.clone(),
                })
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
        let endpoint = pod.endpoint().clone();
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
            self.lock().proc(id, "")?.ensure_startable(id, "")?;
            pod.call(|c| c.start_container(id))
                .map_err(agent("start container"))?;
            let pid = {
                let mut st = self.lock();
                let p = st.proc_mut(id, "")?;
                p.mark_started();
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
        let (spec, stdio) = self.lock().exec_to_start(id, exec_id)?;
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
        self.lock().proc_mut(id, exec_id)?.exec_started(pid, pumps);
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
            let p = st.remove_exec(id, exec_id)?;
            let exit = p.exit_or(0);
            return Ok(api::DeleteResponse {
                pid: p.pid,
                exit_status: exit.code,
                exited_at: Some(exit.at).into(),
                ..Default::default()
            });
        }
        let force = st.task_to_delete(id)?;
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
        let t = self.lock().remove_task(id)?;
        self.inner.changed.notify_all();
        if let Some(share) = pod.as_ref().and_then(|p| p.vm_share.as_ref()) {
            share.remove(id);
        }
        if t.rootfs_mounted {
            rootfs::unmount(&t.bundle);
        }
        let exit = t.init.exit_or(137);
        self.inner.events.send(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: id.to_string(),
                pid: t.init.pid,
                exit_status: exit.code,
                exited_at: Some(exit.at.clone()).into(),
                id: id.to_string(),
                ..Default::default()
            },
        );
        Ok(api::DeleteResponse {
            pid: t.init.pid,
            exit_status: exit.code,
            exited_at: Some(exit.at).into(),
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
        let exec = Exec {
            spec,
            proc: Proc::new(StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            }),
        };
        self.lock().add_exec(&req.id, &req.exec_id, exec)?;
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
        let pod = {
            let st = self.lock();
            st.proc(&req.id, &req.exec_id)?
                .ensure_signallable(&req.id, &req.exec_id)?;
            st.pod()?
        };
        let pref = process_ref(&req.id, &req.exec_id);
        pod.call(|c| c.signal(pref.clone(), req.signal as i32, req.all))
            .map_err(agent("signal"))
    }

    fn wait(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse> {
        let mut st = self.lock();
        loop {
            if let Some(exit) = &st.proc(id, exec_id)?.exit {
                return Ok(api::WaitResponse {
                    exit_status: exit.code,
                    exited_at: Some(exit.at.clone()).into(),
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

    fn running_task(&self, id: &str) -> Result<Arc<Pod>> {
        let st = self.lock();
        st.proc(id, "")?.ensure_not_stopped(id)?;
        st.pod()
    }

    fn close_io(&self, id: &str, exec_id: &str, stdin: bool) -> Result<()> {
        let mut st = self.lock();
        let p = st.proc_mut(id, exec_id)?;
        log::debug!(
            "close io {id}/{exec_id} stdin={stdin} pumps={}",
            p.pumps.is_some()
        );
        if stdin {
            p.close_stdin();
        }
        Ok(())
    }

    /// Ends the shim when no task is left: the sandbox is destroyed and the server stops.
    fn shutdown(&self) {
        let pod = {
            let mut st = self.lock();
            if st.has_tasks() {
                return;
            }
            st.pod.take()
        };
        if let Some(pod) = pod {
            match Arc::try_unwrap(pod) {
                Ok(pod) => pod.shut_down(),
                Err(pod) => {
                    // A waiter still holds it: end the back end all the same.
                    pod.kill();
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
        Ok(self.lock().state_response(&req.id, &req.exec_id)?)
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
        let pref = process_ref(&req.id, &req.exec_id);
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
        let task_pid = self.lock().init_pid(&req.id);
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
