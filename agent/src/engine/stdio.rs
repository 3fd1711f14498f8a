//! Where the container process's standard streams go.

use std::os::fd::OwnedFd;

/// The standard streams of a container process.
#[derive(Debug, Default)]
pub enum Stdio {
    /// The process shares the caller's stdin, stdout and stderr.
    #[default]
    Inherit,
    /// stdin, stdout and stderr are /dev/null (opened on the host before entering the
    /// container).
    Null,
    /// The given descriptors become fds 0, 1 and 2 (stdin is /dev/null when absent).
    Fds {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A new pseudo terminal is opened from the container's own /dev/ptmx (so `tty` inside
    /// names /dev/pts/N of the container's devpts); the slave becomes the controlling
    /// terminal and fds 0-2, and the master is handed back: `Container::pty_master` or
    /// `ExecProcess::pty_master`. The process's `terminal` must be true.
    Pty,
}
