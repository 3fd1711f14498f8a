//! What the agent tracks for each process it started: its pid, its exit status once the
//! reaper has it, and the agent's ends of its stdio.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::protocol::{ErrorCode, ErrorReply, ExitStatus, StdioRequest, StreamKind};

/// The agent's ends of a process's stdio.
#[derive(Debug, Default)]
struct StdioEnds {
    /// Write end of the stdin pipe, or a copy of the terminal master.
    stdin: Option<File>,
    /// Read end of the stdout pipe, or a copy of the terminal master.
    stdout: Option<File>,
    stderr: Option<File>,
    /// The connection feeding stdin, once attached: `close_stdin` shuts it down so that the
    /// copying thread sees the end and closes the pipe.
    stdin_conn: Option<UnixStream>,
    stdin_closed: bool,
}

/// One process: a container's init or an exec'd process.
#[derive(Debug)]
pub struct Process {
    pub pid: i32,
    exit: Mutex<Option<ExitStatus>>,
    exited: Condvar,
    stdio: Mutex<StdioEnds>,
    /// The terminal master, kept for resizing.
    pty: Option<File>,
}

/// The descriptors to hand to the engine for a process's stdio, and the agent's ends.
pub struct StdioPlan {
    child: Option<crate::engine::Stdio>,
    ends: StdioEnds,
    terminal: bool,
}

fn pipe() -> io::Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((File::from(r), File::from(w)))
}

fn dev_null(write: bool) -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?;
    Ok(file.into())
}

impl StdioPlan {
    /// Pipes for the streams the client asked for and /dev/null for the rest; with a
    /// terminal, the engine opens the pty and hands back the master.
    pub fn new(request: StdioRequest, terminal: bool) -> io::Result<StdioPlan> {
        if terminal {
            return Ok(StdioPlan {
                child: Some(crate::engine::Stdio::Pty),
                ends: StdioEnds::default(),
                terminal,
            });
        }
        let mut ends = StdioEnds::default();
        let stdin = if request.stdin {
            let (r, w) = pipe()?;
            ends.stdin = Some(w);
            Some(OwnedFd::from(r))
        } else {
            None
        };
        let output = |wanted: bool, end: &mut Option<File>| -> io::Result<OwnedFd> {
            if wanted {
                let (r, w) = pipe()?;
                *end = Some(r);
                Ok(w.into())
            } else {
                dev_null(true)
            }
        };
        let stdout = output(request.stdout, &mut ends.stdout)?;
        let stderr = output(request.stderr, &mut ends.stderr)?;
        Ok(StdioPlan {
            child: Some(crate::engine::Stdio::Fds {
                stdin,
                stdout,
                stderr,
            }),
            ends,
            terminal,
        })
    }

    pub fn is_terminal(&self) -> bool {
        self.terminal
    }

    /// The engine's side of the plan; called once, before spawning.
    pub fn take_child(&mut self) -> crate::engine::Stdio {
        self.child.take().unwrap_or(crate::engine::Stdio::Null)
    }

    /// Builds the process record once the engine has started it (and, with a terminal,
    /// given back the master).
    pub fn into_process(self, pid: i32, pty_master: Option<OwnedFd>) -> io::Result<Process> {
        let mut ends = self.ends;
        let pty = match pty_master {
            Some(master) => {
                let master = File::from(master);
                ends.stdin = Some(master.try_clone()?);
                ends.stdout = Some(master.try_clone()?);
                Some(master)
            }
            None => None,
        };
        Ok(Process {
            pid,
            exit: Mutex::new(None),
            exited: Condvar::new(),
            stdio: Mutex::new(ends),
            pty,
        })
    }
}

/// What a stream connection gets to copy.
pub enum Attachment {
    /// Copy from the process's output to the connection.
    Output(File),
    /// Copy from the connection to the process's input.
    Input(File),
}

impl Process {
    pub fn set_exit(&self, status: ExitStatus) {
        *self.exit.lock().unwrap() = Some(status);
        self.exited.notify_all();
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.lock().unwrap()
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> ExitStatus {
        let mut exit = self.exit.lock().unwrap();
        loop {
            if let Some(status) = *exit {
                return status;
            }
            exit = self.exited.wait(exit).unwrap();
        }
    }

    /// Waits up to `timeout`; `None` if the process is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let exit = self.exit.lock().unwrap();
        let (exit, _) = self
            .exited
            .wait_timeout_while(exit, timeout, |e| e.is_none())
            .unwrap();
        *exit
    }

    /// Hands one stdio end to a stream connection; each stream can be attached once.
    pub fn attach(&self, kind: StreamKind, conn: &UnixStream) -> Result<Attachment, ErrorReply> {
        let mut ends = self.stdio.lock().unwrap();
        if kind == StreamKind::Stderr && self.pty.is_some() {
            return Err(ErrorReply::new(
                ErrorCode::InvalidParams,
                "a process with a terminal has no separate stderr stream",
            ));
        }
        let taken = match kind {
            StreamKind::Stdin => ends.stdin.take().map(Attachment::Input),
            StreamKind::Stdout => ends.stdout.take().map(Attachment::Output),
            StreamKind::Stderr => ends.stderr.take().map(Attachment::Output),
        };
        match taken {
            Some(a) => {
                if kind == StreamKind::Stdin {
                    ends.stdin_conn = conn.try_clone().ok();
                }
                Ok(a)
            }
            None => Err(ErrorReply::new(
                ErrorCode::InvalidState,
                format!("{kind} was not requested, is already attached or has been closed"),
            )),
        }
    }

    /// Closes the process's stdin: drops the pipe end if nobody attached it, or ends the
    /// attached connection's input so that its copier closes the pipe. A terminal cannot be
    /// half-closed; there the end of input is signalled the way a user would, with the
    /// terminal's EOF character (^D), which ends a read in canonical mode.
    pub fn close_stdin(&self) -> Result<(), ErrorReply> {
        let mut ends = self.stdio.lock().unwrap();
        if ends.stdin_closed {
            return Ok(());
        }
        ends.stdin_closed = true;
        ends.stdin = None;
        if let Some(conn) = ends.stdin_conn.take() {
            let _ = conn.shutdown(std::net::Shutdown::Read);
        }
        if let Some(mut pty) = self.pty.as_ref() {
            use std::io::Write;
            pty.write_all(&[0x04]).map_err(|e| {
                ErrorReply::new(
                    ErrorCode::Internal,
                    format!("write EOF to the terminal: {e}"),
                )
            })?;
        }
        Ok(())
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ErrorReply> {
        let pty = self.pty.as_ref().ok_or_else(|| {
            ErrorReply::new(ErrorCode::InvalidState, "the process has no terminal")
        })?;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer on our own pty master.
        let rc = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc < 0 {
            return Err(ErrorReply::new(
                ErrorCode::Internal,
                format!("TIOCSWINSZ: {}", io::Error::last_os_error()),
            ));
        }
        Ok(())
    }
}
