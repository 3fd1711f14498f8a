//! How the engine learns the exit status of the children it needs one from: the hook
//! processes it runs itself (prestart, createRuntime, poststart, poststop).
//!
//! A caller that reaps every child with `waitpid(-1, ..)` takes such an exit before the
//! engine can wait for it, so the engine asks a [`ChildWaiter`] instead of calling
//! `waitpid` itself: the caller's reaper implements it by handing over the statuses it
//! reaped. [`DirectWait`], the default, calls `waitpid` on the pid, for callers that reap
//! nothing on their own.

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::error::EngineError;
use super::wait::{exit_status, wait_pid, ExitStatus};

/// Delivers the exit status of an engine child to the engine.
///
/// The engine calls [`ChildWaiter::before_spawn`] right before spawning the child and
/// passes the mark it returned to [`ChildWaiter::wait_until`], so that an implementation
/// can tell an exit reaped before the engine asked (which it must keep) from the exit of an
/// earlier process that had the same pid (which it must not hand over).
pub trait ChildWaiter: Send + Sync + fmt::Debug {
    /// Called right before a child whose status the engine needs is spawned.
    fn before_spawn(&self) -> u64;

    /// Blocks until `pid`, spawned after `mark` was taken, has exited and returns its
    /// status, or returns `Ok(None)` once `deadline` has passed; the engine may then call
    /// again for the same pid (after killing it), and the exit must not be lost in between.
    fn wait_until(
        &self,
        pid: Pid,
        mark: u64,
        deadline: Option<Instant>,
    ) -> Result<Option<ExitStatus>, EngineError>;
}

/// Waits with `waitpid` on the pid itself: right where nothing else reaps the engine's
/// children.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectWait;

/// How often a wait with a deadline looks at the child.
const POLL: Duration = Duration::from_millis(2);

impl ChildWaiter for DirectWait {
    fn before_spawn(&self) -> u64 {
        0
    }

    fn wait_until(
        &self,
        pid: Pid,
        _mark: u64,
        deadline: Option<Instant>,
    ) -> Result<Option<ExitStatus>, EngineError> {
        let Some(deadline) = deadline else {
            return wait_pid(pid).map(Some);
        };
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => {
                    if let Some(s) = exit_status(status) {
                        return Ok(Some(s));
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(EngineError::sys(format!("waitpid({pid})"), e)),
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    // The children are reaped by the waiter under test, not through `Child::wait`.
    #[allow(clippy::zombie_processes)]
    #[test]
    fn direct_wait_returns_the_status_and_honours_the_deadline() {
        let w = DirectWait;
        let mark = w.before_spawn();
        let child = Command::new("/bin/sh")
            .args(["-c", "exit 5"])
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        assert_eq!(
            w.wait_until(pid, mark, None).unwrap(),
            Some(ExitStatus::exited(5))
        );

        let mut child = Command::new("/bin/sleep").arg("10").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(w.wait_until(pid, mark, Some(soon)).unwrap(), None);
        child.kill().unwrap();
        assert_eq!(
            w.wait_until(pid, mark, None).unwrap(),
            Some(ExitStatus::signaled(9))
        );
    }
}
