//! Exit statuses of container processes and blocking wait helpers.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::error::EngineError;

/// How a container process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// The status as a shell reports it: the exit code, or 128 + the signal number.
    pub fn as_shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// Converts a wait status of a terminated process; `None` for stop/continue notifications,
/// which do not end the process.
pub fn exit_status(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::Code(code)),
        WaitStatus::Signaled(_, sig, _) => Some(ExitStatus::Signal(sig as i32)),
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
            Some(ExitStatus::Code(3))
        );
        assert_eq!(
            exit_status(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(ExitStatus::Signal(9))
        );
        assert_eq!(exit_status(WaitStatus::Stopped(p, Signal::SIGSTOP)), None);
        assert_eq!(ExitStatus::Signal(15).as_shell_code(), 143);
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
