//! What the agent keeps for one container: the engine's handle, its init and execs, and
//! what to undo of its rootfs on removal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::engine::Container;
use crate::protocol::{ContainerStatus, ExitStatus};
use crate::server::process::Process;

use super::rootfs::RootfsSetup;

/// One container and the processes the agent started in it.
pub(super) struct Entry {
    pub(super) id: String,
    /// `None` once destroyed.
    pub(super) engine: Mutex<Option<Container>>,
    pub(super) init: Arc<Process>,
    /// Whether the engine has been told that the init exited.
    pub(super) exit_told: AtomicBool,
    pub(super) started: AtomicBool,
    pub(super) removed: AtomicBool,
    pub(super) execs: Mutex<HashMap<String, Arc<Process>>>,
    pub(super) rootfs: RootfsSetup,
}

impl Entry {
    pub(super) fn new(
        id: String,
        container: Option<Container>,
        init: Arc<Process>,
        rootfs: RootfsSetup,
    ) -> Entry {
        Entry {
            id,
            engine: Mutex::new(container),
            init,
            exit_told: AtomicBool::new(false),
            started: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            execs: Mutex::new(HashMap::new()),
            rootfs,
        }
    }

    /// Locks the engine's container after passing on an exit the reaper has seen, so that
    /// the engine never signals a pid that may have been reused.
    pub(super) fn engine(&self) -> MutexGuard<'_, Option<Container>> {
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

    pub(super) fn status(&self) -> ContainerStatus {
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
pub(super) fn tell_exit(c: &mut Container, status: ExitStatus) {
    if status.is_unknown() {
        c.set_ended();
    } else {
        c.set_exited(status);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{entry, process};
    use super::*;

    #[test]
    fn status_follows_start_and_exit() {
        let e = entry("c1", process(4242));
        assert_eq!(e.status(), ContainerStatus::Created);
        e.started.store(true, Ordering::SeqCst);
        assert_eq!(e.status(), ContainerStatus::Running);
        e.init.set_exit(ExitStatus::exited(0));
        assert_eq!(e.status(), ContainerStatus::Stopped);
    }

    #[test]
    fn an_init_that_exits_before_start_is_stopped() {
        let e = entry("c1", process(4242));
        e.init.set_exit(ExitStatus::signaled(9));
        assert_eq!(e.status(), ContainerStatus::Stopped);
    }
}
