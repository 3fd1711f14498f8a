//! One process of a task (its init or an exec) as containerd sees it: its status, pid, stdio
//! and exit, and the rules for what containerd may ask of it in each status. The refusals
//! are the shim's errors, so each carries the code containerd's errdefs expect.

use agent::protocol::ProcessRef;
use containerd_shim::api;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

use super::error::{Result, ShimError};
use super::io::{Pumps, StdioPaths};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcStatus {
    Created,
    Running,
    Stopped,
}

impl ProcStatus {
    pub fn name(self) -> &'static str {
        match self {
            ProcStatus::Created => "created",
            ProcStatus::Running => "running",
            ProcStatus::Stopped => "stopped",
        }
    }

    pub fn api(self) -> api::Status {
        match self {
            ProcStatus::Created => api::Status::CREATED,
            ProcStatus::Running => api::Status::RUNNING,
            ProcStatus::Stopped => api::Status::STOPPED,
        }
    }
}

/// How a process ended, as containerd reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Exit {
    pub code: u32,
    pub at: Timestamp,
}

pub fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// The agent's name of a process; containerd names a task's init with an empty exec id.
pub fn process_ref(id: &str, exec_id: &str) -> ProcessRef {
    if exec_id.is_empty() {
        ProcessRef::init(id)
    } else {
        ProcessRef::exec(id, exec_id)
    }
}

/// A process as a refusal names it.
fn describe(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        format!("task {id:?}")
    } else {
        format!("exec {exec_id:?} of task {id:?}")
    }
}

pub struct Proc {
    pub pid: u32,
    pub status: ProcStatus,
    pub exit: Option<Exit>,
    pub stdio: StdioPaths,
    pub pumps: Option<Pumps>,
}

impl Proc {
    pub fn new(stdio: StdioPaths) -> Proc {
        Proc {
            pid: 0,
            status: ProcStatus::Created,
            exit: None,
            stdio,
            pumps: None,
        }
    }

    fn refuse(&self, id: &str, exec_id: &str, action: &'static str) -> ShimError {
        ShimError::WrongState {
            what: describe(id, exec_id),
            state: self.status.name(),
            action,
        }
    }

    /// A process is started once.
    pub fn ensure_startable(&self, id: &str, exec_id: &str) -> Result<()> {
        match self.status {
            ProcStatus::Created => Ok(()),
            _ => Err(self.refuse(id, exec_id, "start")),
        }
    }

    /// The init became running in the agent. Its waiter may have recorded its exit in the
    /// meantime, which a late start must not undo.
    pub fn mark_started(&mut self) {
        if self.status == ProcStatus::Created {
            self.status = ProcStatus::Running;
        }
    }

    /// An exec became running in the agent; its waiter starts only after this.
    pub fn exec_started(&mut self, pid: u32, pumps: Pumps) {
        self.pid = pid;
        self.status = ProcStatus::Running;
        self.pumps = Some(pumps);
    }

    /// A running process must be stopped before containerd may delete it.
    pub fn ensure_deletable(&self, id: &str, exec_id: &str) -> Result<()> {
        match self.status {
            ProcStatus::Running => Err(self.refuse(id, exec_id, "delete")),
            _ => Ok(()),
        }
    }

    /// A finished process is not found, as containerd's runc shim reports it; a created init
    /// may be signalled (the agent holds its process), a created exec has no process yet.
    pub fn ensure_signallable(&self, id: &str, exec_id: &str) -> Result<()> {
        match self.status {
            ProcStatus::Stopped => Err(ShimError::Finished(process_ref(id, exec_id).to_string())),
            ProcStatus::Created if !exec_id.is_empty() => Err(self.refuse(id, exec_id, "signal")),
            _ => Ok(()),
        }
    }

    /// Pids, stats, resource updates and terminal resizes are about a live container; once
    /// its init stopped there is nothing left to ask the agent.
    pub fn ensure_not_stopped(&self, id: &str) -> Result<()> {
        match self.status {
            ProcStatus::Stopped => Err(self.refuse(id, "", "query or change it")),
            _ => Ok(()),
        }
    }

    /// An exec joins the namespaces of a running init only.
    pub fn ensure_accepts_exec(&self, id: &str) -> Result<()> {
        match self.status {
            ProcStatus::Running => Ok(()),
            _ => Err(self.refuse(id, "", "exec in it")),
        }
    }

    /// Records the exit the waiter saw; returns the pid containerd knows the process by.
    pub fn record_exit(&mut self, exit: Exit) -> u32 {
        self.status = ProcStatus::Stopped;
        self.exit = Some(exit);
        self.pid
    }

    /// The recorded exit, or `code` at the current time for a process that never ran to
    /// its end.
    pub fn exit_or(&self, code: u32) -> Exit {
        self.exit
            .clone()
            .unwrap_or_else(|| Exit { code, at: now() })
    }

    pub fn close_stdin(&mut self) {
        if let Some(pumps) = self.pumps.as_mut() {
            pumps.close_stdin();
        }
    }
}

/// A process containerd added to a task, started later with its own spec.
pub struct Exec {
    pub spec: serde_json::Value,
    pub proc: Proc,
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::ttrpc::Code;

    fn proc_in(status: ProcStatus) -> Proc {
        let mut p = Proc::new(StdioPaths::default());
        p.status = status;
        p
    }

    fn exit(code: u32, seconds: i64) -> Exit {
        let mut at = Timestamp::new();
        at.seconds = seconds;
        Exit { code, at }
    }

    #[test]
    fn a_new_process_is_created_without_pid_or_exit() {
        let stdio = StdioPaths {
            stdin: "/run/in".into(),
            terminal: true,
            ..Default::default()
        };
        let p = Proc::new(stdio.clone());
        assert_eq!(p.status, ProcStatus::Created);
        assert_eq!(p.pid, 0);
        assert_eq!(p.exit, None);
        assert_eq!(p.stdio, stdio);
        assert!(p.pumps.is_none());
    }

    #[test]
    fn statuses_have_containerds_names_and_values() {
        for (status, name, api_status) in [
            (ProcStatus::Created, "created", api::Status::CREATED),
            (ProcStatus::Running, "running", api::Status::RUNNING),
            (ProcStatus::Stopped, "stopped", api::Status::STOPPED),
        ] {
            assert_eq!(status.name(), name);
            assert_eq!(status.api(), api_status);
        }
    }

    #[test]
    fn process_refs_name_the_init_by_an_empty_exec_id() {
        assert_eq!(process_ref("c", ""), ProcessRef::init("c"));
        assert_eq!(process_ref("c", "e"), ProcessRef::exec("c", "e"));
    }

    #[test]
    fn only_a_created_process_may_be_started() {
        assert!(proc_in(ProcStatus::Created)
            .ensure_startable("c", "")
            .is_ok());
        for status in [ProcStatus::Running, ProcStatus::Stopped] {
            let e = proc_in(status).ensure_startable("c", "").unwrap_err();
            assert_eq!(e.code(), Code::FAILED_PRECONDITION);
            assert_eq!(
                e.to_string(),
                format!("task \"c\" is {}: cannot start", status.name())
            );
        }
    }

    #[test]
    fn starting_twice_is_refused() {
        let mut p = proc_in(ProcStatus::Created);
        p.ensure_startable("c", "e").unwrap();
        p.status = ProcStatus::Running;
        let e = p.ensure_startable("c", "e").unwrap_err();
        assert_eq!(e.code(), Code::FAILED_PRECONDITION);
        assert_eq!(
            e.to_string(),
            "exec \"e\" of task \"c\" is running: cannot start"
        );
    }

    #[test]
    fn a_started_init_runs_unless_it_already_exited() {
        let mut p = proc_in(ProcStatus::Created);
        p.mark_started();
        assert_eq!(p.status, ProcStatus::Running);

        let mut p = proc_in(ProcStatus::Created);
        p.record_exit(exit(3, 10));
        p.mark_started();
        assert_eq!(p.status, ProcStatus::Stopped);
        assert_eq!(p.exit, Some(exit(3, 10)));
    }

    #[test]
    fn a_running_process_may_not_be_deleted() {
        let e = proc_in(ProcStatus::Running)
            .ensure_deletable("c", "e")
            .unwrap_err();
        assert_eq!(e.code(), Code::FAILED_PRECONDITION);
        assert_eq!(
            e.to_string(),
            "exec \"e\" of task \"c\" is running: cannot delete"
        );
        let e = proc_in(ProcStatus::Running)
            .ensure_deletable("c", "")
            .unwrap_err();
        assert_eq!(e.to_string(), "task \"c\" is running: cannot delete");
        for status in [ProcStatus::Created, ProcStatus::Stopped] {
            assert!(proc_in(status).ensure_deletable("c", "e").is_ok());
            assert!(proc_in(status).ensure_deletable("c", "").is_ok());
        }
    }

    #[test]
    fn signalling_a_stopped_process_finds_it_finished() {
        let e = proc_in(ProcStatus::Stopped)
            .ensure_signallable("c", "")
            .unwrap_err();
        assert!(matches!(e, ShimError::Finished(_)));
        assert_eq!(e.code(), Code::NOT_FOUND);
        assert_eq!(e.to_string(), "container \"c\" has already finished");

        let e = proc_in(ProcStatus::Stopped)
            .ensure_signallable("c", "e")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "exec \"e\" of container \"c\" has already finished"
        );
    }

    #[test]
    fn a_created_init_may_be_signalled_but_not_a_created_exec() {
        assert!(proc_in(ProcStatus::Created)
            .ensure_signallable("c", "")
            .is_ok());
        let e = proc_in(ProcStatus::Created)
            .ensure_signallable("c", "e")
            .unwrap_err();
        assert_eq!(e.code(), Code::FAILED_PRECONDITION);
        assert_eq!(
            e.to_string(),
            "exec \"e\" of task \"c\" is created: cannot signal"
        );
        assert!(proc_in(ProcStatus::Running)
            .ensure_signallable("c", "e")
            .is_ok());
    }

    #[test]
    fn a_stopped_init_may_not_be_queried_or_changed() {
        for status in [ProcStatus::Created, ProcStatus::Running] {
            assert!(proc_in(status).ensure_not_stopped("c").is_ok());
        }
        let e = proc_in(ProcStatus::Stopped)
            .ensure_not_stopped("c")
            .unwrap_err();
        assert_eq!(e.code(), Code::FAILED_PRECONDITION);
        assert_eq!(
            e.to_string(),
            "task \"c\" is stopped: cannot query or change it"
        );
    }

    #[test]
    fn only_a_running_init_accepts_execs() {
        assert!(proc_in(ProcStatus::Running)
            .ensure_accepts_exec("c")
            .is_ok());
        for status in [ProcStatus::Created, ProcStatus::Stopped] {
            let e = proc_in(status).ensure_accepts_exec("c").unwrap_err();
            assert_eq!(e.code(), Code::FAILED_PRECONDITION);
            assert_eq!(
                e.to_string(),
                format!("task \"c\" is {}: cannot exec in it", status.name())
            );
        }
    }

    #[test]
    fn recording_an_exit_stops_the_process_and_keeps_its_pid() {
        let mut p = proc_in(ProcStatus::Running);
        p.pid = 4242;
        assert_eq!(p.record_exit(exit(137, 99)), 4242);
        assert_eq!(p.status, ProcStatus::Stopped);
        assert_eq!(p.exit, Some(exit(137, 99)));
        assert_eq!(p.exit_or(0), exit(137, 99));
    }

    #[test]
    fn a_process_without_exit_reports_the_given_code_now() {
        let before = now().seconds;
        let e = proc_in(ProcStatus::Created).exit_or(137);
        assert_eq!(e.code, 137);
        assert!(e.at.seconds >= before);
        assert!(e.at.seconds <= now().seconds);
    }
}
