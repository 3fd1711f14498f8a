//! The one place where the agent reaps children.
//!
//! A thread blocks in `waitpid(-1)` and hands each exit status to whoever watches that pid.
//! Exits of pids nobody watches yet are kept for a while, because a fast process can exit
//! before its creator has registered the pid; a sequence number taken before the spawn
//! makes sure that an old status of a reused pid is never taken for the new process. The
//! engine's own short-lived helper processes also end up here and are simply forgotten
//! (the engine tolerates `ECHILD` for them). The hooks the engine runs itself are children
//! whose status it does need: it waits for them through this reaper, as the engine's
//! [`ChildWaiter`]. As PID 1 this is also what reaps orphans.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::engine::{self, ChildWaiter, EngineError};
use crate::protocol::ExitStatus;

/// Unwatched exits kept for late registrations; older ones are dropped.
const UNCLAIMED_LIMIT: usize = 4096;

type Callback = Box<dyn FnOnce(ExitStatus) + Send>;

#[derive(Default)]
struct State {
    /// Number of exits reaped so far; an exit's sequence number is the value after it.
    sequence: u64,
    watched: HashMap<i32, Callback>,
    unclaimed: VecDeque<(u64, i32, ExitStatus)>,
    /// Bumped whenever children may have appeared, so that the reaping thread never sleeps
    /// through a wake-up that came while it was busy in `waitpid`.
    wakeups: u64,
}

/// Reaps every child of the agent and dispatches exit statuses by pid.
pub struct Reaper {
    state: Mutex<State>,
    /// Wakes the reaping thread when it is idle because there were no children.
    spawned: Condvar,
    /// The engine's children it waits for, by pid, until it has taken their status: a wait
    /// that ran into its deadline leaves the slot here for the next one.
    engine_waits: Mutex<HashMap<i32, Arc<ExitSlot>>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

/// Where the reaper puts one exit status for a thread that blocks on it.
#[derive(Default)]
struct ExitSlot {
    status: Mutex<Option<ExitStatus>>,
    filled: Condvar,
}

impl ExitSlot {
    fn fill(&self, status: ExitStatus) {
        *self.status.lock().unwrap() = Some(status);
        self.filled.notify_all();
    }

    /// The status once there is one, or `None` after `deadline`.
    fn wait(&self, deadline: Option<Instant>) -> Option<ExitStatus> {
        let mut status = self.status.lock().unwrap();
        loop {
            if let Some(s) = *status {
                return Some(s);
            }
            status = match deadline {
                None => self.filled.wait(status).unwrap(),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.filled.wait_timeout(status, left).unwrap().0
                }
            };
        }
    }
}

impl Reaper {
    fn new() -> Arc<Reaper> {
        Arc::new(Reaper {
            state: Mutex::new(State::default()),
            spawned: Condvar::new(),
            engine_waits: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the reaping thread.
    pub fn start() -> Arc<Reaper> {
        let reaper = Reaper::new();
        let r = reaper.clone();
        thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run())
            .expect("spawn the reaper thread");
        reaper
    }

    /// A reaper without its thread: a unit test's agent must not `waitpid(-1)` away the
    /// children of the other tests in the process.
    #[cfg(test)]
    pub(super) fn unstarted() -> Arc<Reaper> {
        Reaper::new()
    }

    /// To be called before spawning a process: wakes the thread and returns the mark to
    /// pass to [`Reaper::watch`].
    pub fn before_spawn(&self) -> u64 {
        let mut state = self.state.lock().unwrap();
        state.wakeups += 1;
        self.spawned.notify_all();
        state.sequence
    }

    /// Calls `on_exit` once `pid` has exited, right away if it already has (after `mark`).
    pub fn watch(&self, pid: i32, mark: u64, on_exit: impl FnOnce(ExitStatus) + Send + 'static) {
        let mut state = self.state.lock().unwrap();
        let early = state
            .unclaimed
            .iter()
            .position(|(seq, p, _)| *p == pid && *seq > mark);
        match early {
            Some(i) => {
                let (_, _, status) = state.unclaimed.remove(i).unwrap();
                drop(state);
                on_exit(status);
            }
            None => {
                state.watched.insert(pid, Box::new(on_exit));
                // The child exists now for sure: a thread that found no children while it
                // was being spawned must look again.
                state.wakeups += 1;
                self.spawned.notify_all();
            }
        }
    }

    fn run(&self) {
        loop {
            let seen = self.state.lock().unwrap().wakeups;
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {
                Ok(status) => {
                    let (pid, exit) = match status {
                        WaitStatus::Exited(pid, code) => (pid, ExitStatus::exited(code)),
                        WaitStatus::Signaled(pid, sig, _) => {
                            (pid, ExitStatus::signaled(sig as i32))
                        }
                        _ => continue,
                    };
                    self.dispatch(pid.as_raw(), exit);
                }
                Err(Errno::EINTR) => {}
                Err(_) => {
                    // ECHILD: nothing to reap until the next spawn, or until an orphan is
                    // reparented to us (PID 1, subreaper), which nobody announces: hence
                    // the timeout.
                    let state = self.state.lock().unwrap();
                    if state.wakeups == seen {
                        let _ = self
                            .spawned
                            .wait_timeout(state, Duration::from_millis(100))
                            .unwrap();
                    }
                }
            }
        }
    }

    fn dispatch(&self, pid: i32, exit: ExitStatus) {
        let mut state = self.state.lock().unwrap();
        state.sequence += 1;
        let seq = state.sequence;
        match state.watched.remove(&pid) {
            Some(callback) => {
                drop(state);
                callback(exit);
            }
            None => {
                if state.unclaimed.len() == UNCLAIMED_LIMIT {
                    state.unclaimed.pop_front();
                }
                state.unclaimed.push_back((seq, pid, exit));
            }
        }
    }
}

/// The engine's hooks are children of the agent like any other, so this thread reaps them;
/// their statuses go to the engine through the same pid + mark bookkeeping as everything
/// else, which is why an exit reaped before the engine asks is never lost.
impl ChildWaiter for Reaper {
    fn before_spawn(&self) -> u64 {
        Reaper::before_spawn(self)
    }

    fn wait_until(
        &self,
        pid: engine::Pid,
        mark: u64,
        deadline: Option<Instant>,
    ) -> Result<Option<ExitStatus>, EngineError> {
        let raw = pid.as_raw();
        let slot = {
            let mut waits = self.engine_waits.lock().unwrap();
            match waits.get(&raw) {
                Some(slot) => slot.clone(),
                None => {
                    let slot = Arc::new(ExitSlot::default());
                    waits.insert(raw, slot.clone());
                    let filler = slot.clone();
                    self.watch(raw, mark, move |status| filler.fill(status));
                    slot
                }
            }
        };
        let status = slot.wait(deadline);
        if status.is_some() {
            self.engine_waits.lock().unwrap().remove(&raw);
        }
        Ok(status)
    }
}
