//! The host process of a back end, watched from a thread of its own: its end is known the
//! moment it happens, to whoever holds it (the monitor's connect loop, the shim's tasks), and
//! why it ended is read from its logs before anyone removes the state directory.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::ProcessLogs;

/// How long a killed back end may take to be reaped before it is given up on.
const REAP_LIMIT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct EndState {
    why: Mutex<Option<String>>,
    changed: Condvar,
    /// Set before this side sends SIGKILL: that end needs no logs to explain it.
    killed_here: AtomicBool,
}

/// A running back end process and the thread that reaps it.
pub struct WatchedProcess {
    pid: i32,
    /// Taken while the process is an unreaped child, so that a signal sent through it reaches
    /// this process or none, never a later one that reuses the pid after the reaper ran.
    pidfd: Option<OwnedFd>,
    program: &'static str,
    end: Arc<EndState>,
}

impl WatchedProcess {
    /// Starts reaping `child` (`program`, for messages) on a thread of its own. A process that
    /// ends with an error has the tails of `logs` in the reason it ended.
    pub fn watch(child: std::process::Child, program: &'static str, logs: ProcessLogs) -> Self {
        let pid = child.id() as i32;
        let pidfd = pidfd_open(pid)
            .map_err(|e| log::warn!("pidfd_open of {program} (pid {pid}): {e}; kill goes by pid"))
            .ok();
        // The thread reaps it by pid: `Child` would neither kill nor wait when dropped.
        drop(child);
        let end = Arc::new(EndState::default());
        let watched = end.clone();
        std::thread::spawn(move || {
            let status = wait_for_end(pid);
            let killed_here = watched.killed_here.load(Ordering::SeqCst);
            let why = describe_end(program, pid, status, killed_here, &logs);
            log::info!("{why}");
            let mut guard = watched.why.lock().unwrap_or_else(|p| p.into_inner());
            *guard = Some(why);
            watched.changed.notify_all();
        });
        WatchedProcess {
            pid,
            program,
            pidfd,
            end,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn program(&self) -> &'static str {
        self.program
    }

    /// Why the process ended, once it has.
    pub fn ended(&self) -> Option<String> {
        self.end
            .why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits at most `limit` for the process to end; why it ended, if it did.
    pub fn wait_ended(&self, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let mut guard = self.end.why.lock().unwrap_or_else(|p| p.into_inner());
        while guard.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            guard = match self.end.changed.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        guard.clone()
    }

    /// Ends the process for certain (SIGKILL) unless it has ended already, and waits for it
    /// to be reaped.
    pub fn kill(&self) {
        if self.ended().is_none() {
            self.end.killed_here.store(true, Ordering::SeqCst);
            let _ = match &self.pidfd {
                Some(fd) => pidfd_kill(fd),
                None => nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGKILL)
                    .map_err(std::io::Error::from),
            };
            if self.wait_ended(REAP_LIMIT).is_none() {
                log::warn!(
                    "{} (pid {}) was not reaped within {}s of SIGKILL",
                    self.program,
                    self.pid,
                    REAP_LIMIT.as_secs()
                );
            }
        }
    }
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and only returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

fn pidfd_kill(pidfd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo (null) and no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn wait_for_end(pid: i32) -> Result<WaitStatus, nix::Error> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok(s),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One line on how the process ended, then its logs' last lines when that was a failure
/// (not a clean exit, not the SIGKILL this side sent).
fn describe_end(
    program: &str,
    pid: i32,
    status: Result<WaitStatus, nix::Error>,
    killed_here: bool,
    logs: &ProcessLogs,
) -> String {
    let mut why = match status {
        Ok(WaitStatus::Exited(_, 0)) => {
            return format!("{program} (pid {pid}) exited with status 0")
        }
        Ok(WaitStatus::Exited(_, code)) => {
            format!("{program} (pid {pid}) exited with status {code}")
        }
        Ok(WaitStatus::Signaled(_, Signal::SIGSYS, _)) => format!(
            "{program} (pid {pid}) was killed by SIGSYS (a system call its seccomp filter forbids)"
        ),
        Ok(WaitStatus::Signaled(_, Signal::SIGKILL, _)) if killed_here => {
            return format!("{program} (pid {pid}) was killed by SIGKILL when it was shut down")
        }
        Ok(WaitStatus::Signaled(_, sig, _)) => format!("{program} (pid {pid}) was killed by {sig}"),
        Ok(other) => format!("{program} (pid {pid}) ended: {other:?}"),
        Err(e) => format!("{program} (pid {pid}) could not be waited for: {e}"),
    };
    why.push_str(&logs.last_words());
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn no_logs() -> ProcessLogs {
        ProcessLogs::default()
    }

    #[test]
    fn an_exit_is_seen_with_its_status_and_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("err.log");
        std::fs::write(&log, "first\nthe reason\n").unwrap();
        let child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let logs = ProcessLogs::default().with("test log", log);
        let p = WatchedProcess::watch(child, "sh", logs);
        let why = p.wait_ended(Duration::from_secs(10)).expect("sh ends");
        assert!(why.contains("exited with status 7"), "{why}");
        assert!(why.contains("the reason"), "{why}");
        assert_eq!(p.ended(), Some(why));
    }

    #[test]
    fn a_clean_exit_has_no_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        std::fs::write(&log, "chatter\n").unwrap();
        let child = Command::new("true").spawn().unwrap();
        let p = WatchedProcess::watch(child, "true", ProcessLogs::default().with("log", log));
        let why = p.wait_ended(Duration::from_secs(10)).unwrap();
        assert!(!why.contains("chatter"), "{why}");
    }

    #[test]
    fn kill_ends_a_running_process_and_waiting_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        std::fs::write(&log, "what it said\n").unwrap();
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let p = WatchedProcess::watch(child, "sleep", ProcessLogs::default().with("log", log));
        assert_eq!(p.wait_ended(Duration::from_millis(50)), None);
        p.kill();
        let why = p.ended().expect("reaped after kill");
        assert!(why.contains("SIGKILL"), "{why}");
        // Its own shutdown needs no logs to explain it.
        assert!(!why.contains("what it said"), "{why}");
        // Killing what has ended is harmless.
        p.kill();
    }

    #[test]
    fn seccomp_deaths_are_named() {
        let why = describe_end(
            "sandbox-vmm",
            42,
            Ok(WaitStatus::Signaled(
                Pid::from_raw(42),
                Signal::SIGSYS,
                false,
            )),
            false,
            &no_logs(),
        );
        assert!(why.contains("seccomp"), "{why}");
    }
}
