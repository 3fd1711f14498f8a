//! Exit statuses of container processes and blocking wait helpers.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::error::EngineError;

/// How a process ended: `code` for a normal exit, `signal` when a signal killed it, neither
/// when the process ended but another process reaped it (a container's init that the agent
/// left to the caller's reaper, see the agent's `--orphan-inits`), so nobody here knows how.
///
/// The agent protocol sends this type as it is (`protocol` re-exports it): its fields and
/// their serde attributes are the wire format.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

impl ExitStatus {
    pub fn exited(code: i32) -> Self {
        ExitStatus {
            code: Some(code),
            signal: None,
        }
    }

    pub fn signaled(signal: i32) -> Self {
        ExitStatus {
            code: None,
            signal: Some(signal),
        }
    }

    /// Ended, reaped by someone else: the status is not known here.
    pub fn is_unknown(&self) -> bool {
        self.code.is_none() && self.signal.is_none()
    }

    /// The exit code a shell would report: the code, or 128 + the signal; an end nobody
    /// here saw the status of counts as a failure (255).
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 255,
        }
    }
}

/// Converts a wait status of a terminated process; `None` for stop/continue notifications,
/// which do not end the process.
pub fn exit_status(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::exited(code)),
        WaitStatus::Signaled(_, sig, _) => Some(ExitStatus::signaled(sig as i32)),
        _ => None,
    }
}

/// Blocks until `pid` (a child of the calling process) terminates and reaps it.
pub fn wait_pid(pid: Pid) -> Result<ExitStatus, EngineError> {
    loop {
        match waitpid(pid, None) {
            Ok(status) => {
                if let Some(s) = exit_status(status) {
                    return Ok(s);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(EngineError::sys(format!("waitpid({pid})"), e)),
        }
    }
}

/// Reaps `pid` if it is our child, ignoring `ECHILD` (someone else already reaped it).
pub(crate) fn reap_quietly(pid: Pid) {
    loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// Sends `sig` to the process a pidfd refers to: unlike kill(2), never a process that
/// reused its pid after it was reaped (possibly by someone else).
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> Result<(), Errno> {
    // SAFETY: plain syscall on a descriptor we hold; no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Waits until the process behind `pidfd` has exited (a pidfd becomes readable at exit,
/// whoever its parent is and whether or not it has been reaped yet). `None` waits for ever;
/// returns whether it exited within the time.
pub fn wait_pidfd(pidfd: BorrowedFd<'_>, limit: Option<Duration>) -> Result<bool, Errno> {
    let deadline = limit.map(|l| Instant::now() + l);
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Rounded up, so that a last sub-millisecond wait does not spin.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        match rc {
            n if n > 0 => return Ok(true),
            0 if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
            0 => {}
            _ => match Errno::last() {
                Errno::EINTR => {}
                e => return Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn exit_and_signal_statuses() {
        let p = Pid::from_raw(1);
        assert_eq!(
            exit_status(WaitStatus::Exited(p, 3)),
            Some(ExitStatus::exited(3))
        );
        assert_eq!(
            exit_status(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(ExitStatus::signaled(9))
        );
        assert_eq!(exit_status(WaitStatus::Stopped(p, Signal::SIGSTOP)), None);
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::exited(3).shell_code(), 3);
        assert_eq!(ExitStatus::signaled(15).shell_code(), 143);
        assert_eq!(ExitStatus::default().shell_code(), 255);
        assert!(ExitStatus::default().is_unknown());
        assert!(!ExitStatus::exited(0).is_unknown());
        let both = ExitStatus {
            code: Some(0),
            signal: Some(15),
        };
        assert_eq!(both.shell_code(), 0);
    }

    #[test]
    fn pidfd_tells_the_exit_and_signals_the_right_process() {
        use std::os::fd::{AsFd, FromRawFd, OwnedFd};
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // SAFETY: plain syscall; the result is a new descriptor we own.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as i32, 0) };
        assert!(raw >= 0, "pidfd_open: {}", Errno::last());
        // SAFETY: just returned by the kernel for us.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        assert!(!wait_pidfd(fd.as_fd(), Some(Duration::from_millis(50))).unwrap());
        pidfd_send_signal(fd.as_fd(), libc::SIGKILL).unwrap();
        assert!(wait_pidfd(fd.as_fd(), Some(Duration::from_secs(5))).unwrap());
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        // Reaped: the pidfd still names that process, which is gone.
        assert_eq!(pidfd_send_signal(fd.as_fd(), 0), Err(Errno::ESRCH));
    }
}
