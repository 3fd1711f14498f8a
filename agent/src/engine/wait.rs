//! Exit statuses of container processes and blocking wait helpers.

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
}
