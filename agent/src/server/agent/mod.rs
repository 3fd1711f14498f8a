//! The agent: its state (containers by id, the reaper, the OOM log, the shutdown switch)
//! and the dispatch of every request. `containers` holds the container operations,
//! `rootfs` what a container's root filesystem needs (its source, copied files, undoing
//! both), `sandbox` the sandbox as a whole; `entry` is what is kept per container and
//! `errors` how failures become protocol error codes.

mod containers;
mod entry;
mod errors;
mod rootfs;
mod sandbox;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::protocol::*;

use super::listener::Listener;
use super::oom::OomLog;
use super::process::{Attachment, Process};
use super::reaper::Reaper;
use entry::Entry;
use errors::not_found;

/// Where the agent runs, which decides what `create_sandbox` may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Directly on the host: the sandbox is the host, so hostname, network and storage are
    /// left alone; `power_off` only ends the agent.
    Native,
    /// PID 1 of a guest: the sandbox is the VM.
    Guest,
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
}

/// An agent and containers built without the engine, for the checks a request meets before
/// anything is spawned.
#[cfg(test)]
mod test_support {
    use std::path::Path;

    use super::rootfs::RootfsSetup;
    use super::*;
    use crate::server::process::StdioPlan;

    pub(super) fn agent(mode: Mode, root: &Path) -> Agent {
        Agent::new(
            mode,
            root.to_owned(),
            Reaper::unstarted(),
            Weak::new(),
            false,
        )
    }

    /// A process record for a pid nobody signals: the tests set its exit themselves.
    pub(super) fn process(pid: i32) -> Arc<Process> {
        let plan = StdioPlan::new(StdioRequest::default(), false).unwrap();
        Arc::new(plan.into_process(pid, None).unwrap())
    }

    /// A container whose engine side is gone (as after `destroy`).
    pub(super) fn entry(id: &str, init: Arc<Process>) -> Entry {
        Entry::new(id.to_owned(), None, init, RootfsSetup::default())
    }

    pub(super) fn insert(agent: &Agent, entry: Entry) -> Arc<Entry> {
        let entry = Arc::new(entry);
        agent
            .containers
            .lock()
            .unwrap()
            .insert(entry.id.clone(), entry.clone());
        entry
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::test_support::{agent, entry, insert, process};
    use super::*;

    fn error(outcome: Outcome) -> ErrorReply {
        match outcome {
            Outcome::Error(e) => e,
            Outcome::Result(r) => panic!("expected an error, got {r:?}"),
        }
    }

    #[test]
    fn ping_answers_pong() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        assert_eq!(a.handle(Request::Ping), Outcome::Result(Response::Pong));
    }

    #[test]
    fn requests_for_an_unknown_container_are_not_found() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let requests = [
            Request::StartContainer {
                container_id: "c1".into(),
            },
            Request::Wait(ProcessRef::init("c1")),
            Request::CloseStdin(ProcessRef::init("c1")),
            Request::ResizeTty {
                process: ProcessRef::init("c1"),
                rows: 24,
                cols: 80,
            },
            Request::State {
                container_id: "c1".into(),
            },
            Request::Processes {
                container_id: "c1".into(),
            },
            Request::ProcessTable {
                container_id: "c1".into(),
            },
            Request::Stats {
                container_id: "c1".into(),
            },
            Request::RemoveContainer {
                container_id: "c1".into(),
                force: true,
            },
        ];
        for request in requests {
            let e = error(a.handle(request.clone()));
            assert_eq!(e.code, ErrorCode::NotFound, "{request:?}");
            assert_eq!(e.message, "no container \"c1\"", "{request:?}");
        }
    }

    #[test]
    fn an_unknown_exec_is_named_with_its_container() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        insert(&a, entry("c1", process(4242)));
        let e = error(a.handle(Request::Wait(ProcessRef::exec("c1", "e1"))));
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(e.message, "no exec \"e1\" of container \"c1\"");
    }

    #[test]
    fn wait_answers_with_the_exit() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let e = insert(&a, entry("c1", process(4242)));
        let exec = process(4243);
        e.execs.lock().unwrap().insert("e1".into(), exec.clone());
        e.init.set_exit(ExitStatus::exited(7));
        exec.set_exit(ExitStatus::signaled(15));
        assert_eq!(
            a.handle(Request::Wait(ProcessRef::init("c1"))),
            Outcome::Result(Response::Exited(ExitStatus::exited(7)))
        );
        assert_eq!(
            a.handle(Request::Wait(ProcessRef::exec("c1", "e1"))),
            Outcome::Result(Response::Exited(ExitStatus::signaled(15)))
        );
    }

    #[test]
    fn a_wait_ends_without_an_answer_once_the_client_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        insert(&a, entry("c1", process(4242)));
        let asked = AtomicUsize::new(0);
        let outcome = a.wait_for_client(&ProcessRef::init("c1"), || {
            asked.fetch_add(1, Ordering::SeqCst) >= 1
        });
        assert!(outcome.is_none());
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_wait_for_client_answers_an_exit_and_a_missing_process() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let e = insert(&a, entry("c1", process(4242)));
        e.init.set_exit(ExitStatus::exited(0));
        assert_eq!(
            a.wait_for_client(&ProcessRef::init("c1"), || true),
            Some(Outcome::Result(Response::Exited(ExitStatus::exited(0))))
        );
        let missing = a.wait_for_client(&ProcessRef::init("c2"), || true).unwrap();
        assert_eq!(error(missing).code, ErrorCode::NotFound);
    }

    #[test]
    fn attaching_to_an_unknown_process_is_not_found() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let (conn, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = a
            .attach("c1", None, StreamKind::Stdout, &conn)
            .err()
            .unwrap();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(e.message, "no container \"c1\"");
        insert(&a, entry("c1", process(4242)));
        let e = a
            .attach("c1", Some("e1"), StreamKind::Stdout, &conn)
            .err()
            .unwrap();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(e.message, "no exec \"e1\" of container \"c1\"");
    }

    #[test]
    fn oom_events_start_empty() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        let request = Request::OomEvents {
            container_id: None,
            after: 0,
            wait_ms: Some(10),
        };
        assert_eq!(
            a.handle(request),
            Outcome::Result(Response::OomEvents(vec![]))
        );
    }
}
