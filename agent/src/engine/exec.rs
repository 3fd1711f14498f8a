//! A process started in a running container.

use std::os::fd::OwnedFd;

use nix::unistd::Pid;

use super::error::EngineError;
use super::wait::{wait_pid, ExitStatus};

/// A process exec'd into a container: a direct child of the caller, which reaps it.
#[derive(Debug)]
pub struct ExecProcess {
    pub(crate) pid: Pid,
    pub(crate) pty_master: Option<OwnedFd>,
}

impl ExecProcess {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The master side of its terminal (once; `None` without a terminal).
    pub fn pty_master(&mut self) -> Option<OwnedFd> {
        self.pty_master.take()
    }

    /// Blocks until it exits and reaps it.
    pub fn wait(&self) -> Result<ExitStatus, EngineError> {
        wait_pid(self.pid)
    }
}
