//! A process's stdio through containerd's fifos: containerd names up to three fifos in the
//! create/exec request; the shim copies the agent's stdout/stderr streams into them and the
//! stdin fifo into the agent's stdin stream, one thread per stream.
//!
//! The stdin fifo is opened read-write, so that opening never waits for a writer and a
//! client that has not connected yet does not look like end of input; the end of input is
//! announced by containerd's CloseIO instead, which [`Pumps::close_stdin`] turns into closing
//! the process's stdin.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent::protocol::{Client, ProcessRef, StdioRequest, StreamKind};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::error::{agent, Result, ShimError};

/// The fifo paths containerd gave for one process (empty: not wanted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    pub fn request(&self) -> StdioRequest {
        StdioRequest {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            // A terminal has one output stream.
            stderr: !self.terminal && !self.stderr.is_empty(),
        }
    }
}

/// The running copies of one process.
pub struct Pumps {
    outputs: Vec<JoinHandle<()>>,
    /// Closing this wakes the stdin copy, which then closes the process's stdin.
    stdin_stop: Option<OwnedFd>,
}

/// Attaches the agent's streams of `process` (right away, so failures are reported to the
/// caller) and starts copying.
pub fn start(client: &Client, process: &ProcessRef, paths: &StdioPaths) -> Result<Pumps> {
    let want = paths.request();
    let mut outputs = Vec::new();
    for (wanted, kind, path) in [
        (want.stdout, StreamKind::Stdout, &paths.stdout),
        (want.stderr, StreamKind::Stderr, &paths.stderr),
    ] {
        if !wanted {
            continue;
        }
        let conn = client
            .attach(process, kind)
            .map_err(agent("attach an output stream"))?;
        let path = path.clone();
        outputs.push(std::thread::spawn(move || copy_out(conn, &path)));
    }
    let mut stdin_stop = None;
    if want.stdin {
        let fifo = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&paths.stdin)
            .map_err(|source| ShimError::Stdio {
                path: paths.stdin.clone(),
                source,
            })?;
        let conn = client
            .attach(process, StreamKind::Stdin)
            .map_err(agent("attach stdin"))?;
        let (stop_rd, stop_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| ShimError::Agent(format!("pipe: {e}")))?;
        std::thread::spawn(move || copy_in(fifo, stop_rd, conn));
        stdin_stop = Some(stop_wr);
    }
    Ok(Pumps {
        outputs,
        stdin_stop,
    })
}

impl Pumps {
    /// Ends the stdin copy; the process sees end of file once what was read is delivered.
    pub fn close_stdin(&mut self) {
        self.stdin_stop = None;
    }

    /// Waits (bounded) for the output copies to deliver everything the process wrote.
    pub fn drain(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for h in std::mem::take(&mut self.outputs) {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

fn copy_out(from: UnixStream, path: &str) {
    // The client holds the read side already; opening blocks only if it went away.
    let to = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            log::warn!("stdio {path}: {e}");
            return;
        }
    };
    crate::sandbox::stdio::pump(from, to);
}

fn copy_in(mut fifo: File, stop: OwnedFd, mut to: UnixStream) {
    let mut buf = vec![0u8; 32 * 1024];
    'outer: loop {
        let mut fds = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let stop_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        let data_ready = fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLIN));
        if data_ready {
            match fifo.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    continue 'outer;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if stop_ready {
            break;
        }
    }
    log::debug!("stdin copy ended");
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_follows_paths_and_terminal() {
        let p = StdioPaths {
            stdin: String::new(),
            stdout: "/o".into(),
            stderr: "/e".into(),
            terminal: false,
        };
        assert_eq!(
            p.request(),
            StdioRequest {
                stdin: false,
                stdout: true,
                stderr: true
            }
        );
        let t = StdioPaths {
            terminal: true,
            stdin: "/i".into(),
            ..p
        };
        assert_eq!(
            t.request(),
            StdioRequest {
                stdin: true,
                stdout: true,
                stderr: false
            }
        );
    }

    #[test]
    fn stdin_copy_delivers_then_closes_on_stop() {
        let dir = std::env::temp_dir().join(format!("shim-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo_path = dir.join("in");
        nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let fifo = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo_path)
            .unwrap();
        let mut writer = OpenOptions::new().write(true).open(&fifo_path).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let (stop_rd, stop_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let h = std::thread::spawn(move || copy_in(fifo, stop_rd, a));
        writer.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // Closing the writer alone is not the end: the fifo is held open read-write.
        drop(writer);
        drop(stop_wr);
        h.join().unwrap();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
