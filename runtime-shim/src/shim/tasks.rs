//! The shim's table of tasks: the pod's sandbox and, per container containerd created in it,
//! its init and execs. Lookups and the changes that need no agent live here, so that the
//! task service asks the agent only after the table agreed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::api;
use containerd_shim::protos::protobuf::EnumOrUnknown;

use super::error::{Result, ShimError};
use super::io::StdioPaths;
use super::pod::Pod;
use super::process::{Exec, Proc, ProcStatus};

pub struct TaskEntry {
    pub bundle: PathBuf,
    pub rootfs_mounted: bool,
    pub init: Proc,
    execs: HashMap<String, Exec>,
}

impl TaskEntry {
    pub fn new(bundle: PathBuf, rootfs_mounted: bool, init: Proc) -> TaskEntry {
        TaskEntry {
            bundle,
            rootfs_mounted,
            init,
            execs: HashMap::new(),
        }
    }
}

#[derive(Default)]
pub struct State {
    /// Started by the pod's first container, ended with the shim.
    pub pod: Option<Arc<Pod>>,
    tasks: HashMap<String, TaskEntry>,
}

impl State {
    pub fn pod(&self) -> Result<Arc<Pod>> {
        self.pod
            .clone()
            .ok_or_else(|| ShimError::SandboxGone("no sandbox has been created".into()))
    }

    pub fn has_tasks(&self) -> bool {
        !self.tasks.is_empty()
    }

    pub fn ensure_new_task(&self, id: &str) -> Result<()> {
        if self.tasks.contains_key(id) {
            return Err(ShimError::TaskExists(id.to_string()));
        }
        Ok(())
    }

    pub fn insert_task(&mut self, id: String, task: TaskEntry) {
        self.tasks.insert(id, task);
    }

    fn task(&self, id: &str) -> Result<&TaskEntry> {
        self.tasks
            .get(id)
            .ok_or_else(|| ShimError::NoTask(id.to_string()))
    }

    fn task_mut(&mut self, id: &str) -> Result<&mut TaskEntry> {
        self.tasks
            .get_mut(id)
            .ok_or_else(|| ShimError::NoTask(id.to_string()))
    }

    fn no_exec(id: &str, exec_id: &str) -> ShimError {
        ShimError::NoExec {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
        }
    }

    /// The task's init for an empty `exec_id`, else the exec.
    pub fn proc(&self, id: &str, exec_id: &str) -> Result<&Proc> {
        let t = self.task(id)?;
        if exec_id.is_empty() {
            return Ok(&t.init);
        }
        t.execs
            .get(exec_id)
            .map(|e| &e.proc)
            .ok_or_else(|| Self::no_exec(id, exec_id))
    }

    pub fn proc_mut(&mut self, id: &str, exec_id: &str) -> Result<&mut Proc> {
        let t = self.task_mut(id)?;
        if exec_id.is_empty() {
            return Ok(&mut t.init);
        }
        t.execs
            .get_mut(exec_id)
            .map(|e| &mut e.proc)
            .ok_or_else(|| Self::no_exec(id, exec_id))
    }

    /// The pid of the task's init, 0 for a task the shim does not have.
    pub fn init_pid(&self, id: &str) -> u32 {
        self.tasks.get(id).map(|t| t.init.pid).unwrap_or(0)
    }

    pub fn add_exec(&mut self, id: &str, exec_id: &str, exec: Exec) -> Result<()> {
        let t = self.task_mut(id)?;
        t.init.ensure_accepts_exec(id)?;
        if t.execs.contains_key(exec_id) {
            return Err(ShimError::ExecExists {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
            });
        }
        t.execs.insert(exec_id.to_string(), exec);
        Ok(())
    }

    /// What the agent needs to start an exec that has not been started.
    pub fn exec_to_start(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(serde_json::Value, StdioPaths)> {
        let e = self
            .task(id)?
            .execs
            .get(exec_id)
            .ok_or_else(|| Self::no_exec(id, exec_id))?;
        e.proc.ensure_startable(id, exec_id)?;
        Ok((e.spec.clone(), e.proc.stdio.clone()))
    }

    /// Removes an exec that is not running.
    pub fn remove_exec(&mut self, id: &str, exec_id: &str) -> Result<Proc> {
        let t = self.task_mut(id)?;
        match t.execs.get(exec_id) {
            Some(e) => e.proc.ensure_deletable(id, exec_id)?,
            None => return Err(Self::no_exec(id, exec_id)),
        }
        t.execs
            .remove(exec_id)
            .map(|e| e.proc)
            .ok_or_else(|| Self::no_exec(id, exec_id))
    }

    /// Whether the task may be deleted; true when its init never started, which the agent
    /// must remove by force.
    pub fn task_to_delete(&self, id: &str) -> Result<bool> {
        let init = &self.task(id)?.init;
        init.ensure_deletable(id, "")?;
        Ok(init.status == ProcStatus::Created)
    }

    pub fn remove_task(&mut self, id: &str) -> Result<TaskEntry> {
        self.tasks
            .remove(id)
            .ok_or_else(|| ShimError::NoTask(id.to_string()))
    }

    /// containerd's view of one process of a task.
    pub fn state_response(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        let p = self.proc(id, exec_id)?;
        let bundle = self.task(id)?.bundle.display().to_string();
        let (exit_status, exited_at) = match &p.exit {
            Some(exit) => (exit.code, Some(exit.at.clone())),
            None => (0, None),
        };
        Ok(api::StateResponse {
            id: id.to_string(),
            bundle,
            pid: p.pid,
            status: EnumOrUnknown::new(p.status.api()),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status,
            exited_at: exited_at.into(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::process::Exit;
    use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
    use containerd_shim::protos::ttrpc::Code;

    fn stdio(name: &str) -> StdioPaths {
        StdioPaths {
            stdin: format!("/fifo/{name}-in"),
            stdout: format!("/fifo/{name}-out"),
            stderr: format!("/fifo/{name}-err"),
            terminal: false,
        }
    }

    /// The error of a lookup or change the table must refuse.
    fn refused<T>(r: Result<T>) -> ShimError {
        match r {
            Ok(_) => panic!("the table agreed"),
            Err(e) => e,
        }
    }

    fn exit(code: u32, seconds: i64) -> Exit {
        let mut at = Timestamp::new();
        at.seconds = seconds;
        Exit { code, at }
    }

    /// A table with task `c` whose init has pid 100 and is in `status`.
    fn table_with(status: ProcStatus) -> State {
        let mut init = Proc::new(stdio("init"));
        init.pid = 100;
        init.status = status;
        let mut st = State::default();
        st.insert_task("c".into(), TaskEntry::new("/b/c".into(), true, init));
        st
    }

    fn exec(n: u64) -> Exec {
        Exec {
            spec: serde_json::json!({ "args": ["sh"], "n": n }),
            proc: Proc::new(stdio("exec")),
        }
    }

    /// Task `c` running with exec `e` added and in `status`.
    fn table_with_exec(status: ProcStatus) -> State {
        let mut st = table_with(ProcStatus::Running);
        st.add_exec("c", "e", exec(1)).unwrap();
        st.proc_mut("c", "e").unwrap().status = status;
        st
    }

    #[test]
    fn without_a_sandbox_the_pod_is_unavailable() {
        let st = State::default();
        let e = refused(st.pod());
        assert!(matches!(e, ShimError::SandboxGone(_)));
        assert_eq!(e.code(), Code::UNAVAILABLE);
        assert_eq!(
            e.to_string(),
            "the sandbox is gone: no sandbox has been created"
        );
    }

    #[test]
    fn a_task_id_is_taken_once() {
        let mut st = State::default();
        assert!(!st.has_tasks());
        st.ensure_new_task("c").unwrap();
        st.insert_task(
            "c".into(),
            TaskEntry::new("/b/c".into(), false, Proc::new(stdio("init"))),
        );
        assert!(st.has_tasks());
        let e = st.ensure_new_task("c").unwrap_err();
        assert_eq!(e.code(), Code::ALREADY_EXISTS);
        assert_eq!(e.to_string(), "task \"c\" already exists");
        st.ensure_new_task("d").unwrap();
    }

    #[test]
    fn an_empty_exec_id_names_the_init() {
        let mut st = table_with_exec(ProcStatus::Created);
        assert_eq!(st.proc("c", "").unwrap().pid, 100);
        assert_eq!(st.proc("c", "").unwrap().stdio, stdio("init"));
        assert_eq!(st.proc("c", "e").unwrap().stdio, stdio("exec"));
        st.proc_mut("c", "e").unwrap().pid = 7;
        assert_eq!(st.proc("c", "e").unwrap().pid, 7);
        assert_eq!(st.proc("c", "").unwrap().pid, 100);
        assert_eq!(st.init_pid("c"), 100);
    }

    #[test]
    fn unknown_tasks_are_not_found() {
        let mut st = table_with(ProcStatus::Running);
        let errors = [
            st.proc("x", "").err(),
            st.proc("x", "e").err(),
            st.exec_to_start("x", "e").err(),
            st.task_to_delete("x").err(),
            st.state_response("x", "").err(),
            st.add_exec("x", "e", exec(1)).err(),
            st.remove_exec("x", "e").err(),
            st.proc_mut("x", "").err(),
            st.remove_task("x").err(),
        ];
        for e in errors {
            let e = e.expect("an unknown task is refused");
            assert!(matches!(&e, ShimError::NoTask(id) if id == "x"), "{e}");
            assert_eq!(e.code(), Code::NOT_FOUND);
            assert_eq!(e.to_string(), "task \"x\" does not exist");
        }
        assert_eq!(st.init_pid("x"), 0);
        assert!(st.has_tasks());
    }

    #[test]
    fn unknown_execs_are_not_found() {
        let mut st = table_with(ProcStatus::Running);
        let errors = [
            st.proc("c", "x").err(),
            st.exec_to_start("c", "x").err(),
            st.state_response("c", "x").err(),
            st.proc_mut("c", "x").err(),
            st.remove_exec("c", "x").err(),
        ];
        for e in errors {
            let e = e.expect("an unknown exec is refused");
            assert!(matches!(&e, ShimError::NoExec { .. }), "{e}");
            assert_eq!(e.code(), Code::NOT_FOUND);
            assert_eq!(e.to_string(), "exec \"x\" of task \"c\" does not exist");
        }
    }

    #[test]
    fn exec_into_a_task_that_is_not_running_is_a_failed_precondition() {
        for status in [ProcStatus::Created, ProcStatus::Stopped] {
            let mut st = table_with(status);
            let e = st.add_exec("c", "e", exec(1)).unwrap_err();
            assert!(matches!(e, ShimError::WrongState { .. }));
            assert_eq!(e.code(), Code::FAILED_PRECONDITION);
            assert_eq!(
                e.to_string(),
                format!("task \"c\" is {}: cannot exec in it", status.name())
            );
            assert!(st.proc("c", "e").is_err());
        }
    }

    #[test]
    fn an_added_exec_is_created_with_its_spec_and_stdio() {
        let mut st = table_with(ProcStatus::Running);
        st.add_exec("c", "e", exec(1)).unwrap();
        let p = st.proc("c", "e").unwrap();
        assert_eq!(p.status, ProcStatus::Created);
        assert_eq!(p.pid, 0);
        let (spec, io) = st.exec_to_start("c", "e").unwrap();
        assert_eq!(spec, exec(1).spec);
        assert_eq!(io, stdio("exec"));
    }

    #[test]
    fn a_duplicate_exec_already_exists_and_the_first_is_kept() {
        let mut st = table_with(ProcStatus::Running);
        st.add_exec("c", "e", exec(1)).unwrap();
        let e = st.add_exec("c", "e", exec(2)).unwrap_err();
        assert!(matches!(e, ShimError::ExecExists { .. }));
        assert_eq!(e.code(), Code::ALREADY_EXISTS);
        assert_eq!(e.to_string(), "exec \"e\" of task \"c\" already exists");
        assert_eq!(st.exec_to_start("c", "e").unwrap().0, exec(1).spec);
        st.add_exec("c", "f", exec(2)).unwrap();
    }

    #[test]
    fn an_exec_is_started_once() {
        for status in [ProcStatus::Running, ProcStatus::Stopped] {
            let st = table_with_exec(status);
            let e = st.exec_to_start("c", "e").unwrap_err();
            assert_eq!(e.code(), Code::FAILED_PRECONDITION);
            assert_eq!(
                e.to_string(),
                format!(
                    "exec \"e\" of task \"c\" is {}: cannot start",
                    status.name()
                )
            );
        }
    }

    #[test]
    fn a_running_exec_is_not_deleted() {
        let mut st = table_with_exec(ProcStatus::Running);
        let e = refused(st.remove_exec("c", "e"));
        assert_eq!(e.code(), Code::FAILED_PRECONDITION);
        assert_eq!(
            e.to_string(),
            "exec \"e\" of task \"c\" is running: cannot delete"
        );
        assert!(st.proc("c", "e").is_ok());
    }

    #[test]
    fn a_stopped_exec_is_removed_with_its_exit() {
        let mut st = table_with_exec(ProcStatus::Running);
        st.proc_mut("c", "e").unwrap().pid = 7;
        assert_eq!(st.proc_mut("c", "e").unwrap().record_exit(exit(2, 50)), 7);
        let p = st.remove_exec("c", "e").unwrap();
        assert_eq!(p.pid, 7);
        assert_eq!(p.exit, Some(exit(2, 50)));
        assert!(matches!(
            refused(st.proc("c", "e")),
            ShimError::NoExec { .. }
        ));
        assert!(matches!(
            refused(st.remove_exec("c", "e")),
            ShimError::NoExec { .. }
        ));
        // The task itself stays.
        assert_eq!(st.proc("c", "").unwrap().status, ProcStatus::Running);
    }

    #[test]
    fn a_created_exec_may_be_deleted() {
        let mut st = table_with_exec(ProcStatus::Created);
        let p = st.remove_exec("c", "e").unwrap();
        assert_eq!(p.status, ProcStatus::Created);
        assert!(st.proc("c", "e").is_err());
    }

    #[test]
    fn a_task_with_a_running_init_is_not_deleted() {
        let st = table_with(ProcStatus::Running);
        let e = st.task_to_delete("c").unwrap_err();
        assert_eq!(e.code(), Code::FAILED_PRECONDITION);
        assert_eq!(e.to_string(), "task \"c\" is running: cannot delete");
    }

    #[test]
    fn only_a_never_started_task_is_removed_by_force() {
        assert!(table_with(ProcStatus::Created).task_to_delete("c").unwrap());
        assert!(!table_with(ProcStatus::Stopped).task_to_delete("c").unwrap());
    }

    #[test]
    fn a_removed_task_is_gone_with_its_execs() {
        let mut st = table_with_exec(ProcStatus::Stopped);
        st.proc_mut("c", "").unwrap().record_exit(exit(0, 60));
        let t = st.remove_task("c").unwrap();
        assert_eq!(t.bundle, PathBuf::from("/b/c"));
        assert!(t.rootfs_mounted);
        assert_eq!(t.init.pid, 100);
        assert_eq!(t.init.exit, Some(exit(0, 60)));
        assert!(!st.has_tasks());
        assert!(matches!(refused(st.proc("c", "e")), ShimError::NoTask(_)));
        assert!(matches!(refused(st.remove_task("c")), ShimError::NoTask(_)));
    }

    #[test]
    fn a_recorded_exit_is_what_a_wait_finds() {
        let mut st = table_with_exec(ProcStatus::Running);
        assert_eq!(st.proc("c", "e").unwrap().exit, None);
        st.proc_mut("c", "e").unwrap().record_exit(exit(9, 70));
        assert_eq!(st.proc("c", "e").unwrap().exit, Some(exit(9, 70)));
        // The init's wait is not answered by its exec's exit.
        assert_eq!(st.proc("c", "").unwrap().exit, None);
    }

    #[test]
    fn the_state_of_a_live_process_has_no_exit() {
        let st = table_with(ProcStatus::Running);
        let r = st.state_response("c", "").unwrap();
        assert_eq!(r.id, "c");
        assert_eq!(r.bundle, "/b/c");
        assert_eq!(r.pid, 100);
        assert_eq!(r.status.enum_value(), Ok(api::Status::RUNNING));
        assert_eq!(r.stdin, "/fifo/init-in");
        assert_eq!(r.stdout, "/fifo/init-out");
        assert_eq!(r.stderr, "/fifo/init-err");
        assert!(!r.terminal);
        assert_eq!(r.exit_status, 0);
        assert!(r.exited_at.is_none());
        assert_eq!(r.exec_id, "");
    }

    #[test]
    fn the_state_of_an_exited_exec_has_its_exit_and_the_tasks_bundle() {
        let mut st = table_with_exec(ProcStatus::Running);
        st.proc_mut("c", "e").unwrap().record_exit(exit(42, 80));
        let r = st.state_response("c", "e").unwrap();
        assert_eq!(r.id, "c");
        assert_eq!(r.exec_id, "e");
        assert_eq!(r.bundle, "/b/c");
        assert_eq!(r.status.enum_value(), Ok(api::Status::STOPPED));
        assert_eq!(r.stdout, "/fifo/exec-out");
        assert_eq!(r.exit_status, 42);
        assert_eq!(r.exited_at.seconds, 80);
    }
}
