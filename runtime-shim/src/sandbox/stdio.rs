//! Copying a process's stdio between host file descriptors and the agent's stream
//! connections, one thread per direction.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use agent::protocol::{Client, ProcessRef, StdioRequest, StreamKind};

use crate::error::Result;
use crate::sandbox::link::agent_err;

/// The host ends of a process's stdio.
pub struct HostStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl HostStdio {
    pub fn request(&self, tty: bool) -> StdioRequest {
        StdioRequest {
            stdin: self.stdin.is_some(),
            stdout: self.stdout.is_some(),
            stderr: !tty && self.stderr.is_some(),
        }
    }
}

/// The running copies; outputs are joined before the process's exit is reported so no output
/// is lost.
pub struct Plumbing {
    /// How many output copies are running; each says on `done` when it has drained.
    outputs: usize,
    done: Receiver<()>,
}

/// Copies one output to its end, then says so on `done` (a wake-up, not a poll, so the exit
/// is reported as soon as the last byte is written).
fn spawn_output(conn: std::os::unix::net::UnixStream, to: OwnedFd, done: Sender<()>) {
    std::thread::spawn(move || {
        copy_out(conn, File::from(to));
        let _ = done.send(());
    });
}

pub fn attach(client: &Client, process: &ProcessRef, tty: bool, io: HostStdio) -> Result<Plumbing> {
    let stderr = if tty { None } else { io.stderr };
    let mut kinds = Vec::new();
    if io.stdout.is_some() {
        kinds.push(StreamKind::Stdout);
    }
    if stderr.is_some() {
        kinds.push(StreamKind::Stderr);
    }
    if io.stdin.is_some() {
        kinds.push(StreamKind::Stdin);
    }
    // All at once: each stream is a connection of its own, and their handshakes overlap.
    let mut conns = client
        .attach_all(process, &kinds)
        .map_err(agent_err("attach stdio"))?
        .into_iter();
    let (done_tx, done) = channel();
    let mut outputs = 0;
    for out in [io.stdout, stderr].into_iter().flatten() {
        let conn = conns.next().expect("one stream per kind asked for");
        spawn_output(conn, out, done_tx.clone());
        outputs += 1;
    }
    if let Some(input) = io.stdin {
        let conn = conns.next().expect("one stream per kind asked for");
        // Never joined: a terminal or an open pipe may never reach end of file.
        std::thread::spawn(move || copy_in(File::from(input), conn));
    }
    Ok(Plumbing { outputs, done })
}

impl Plumbing {
    /// Waits (bounded) for the output copies to drain after the process has exited.
    pub fn finish(self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for _ in 0..self.outputs {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.done.recv_timeout(left).is_err() {
                // Still copying at the deadline (an output held open by a process the
                // container left behind): the copy goes on without us.
                return;
            }
        }
    }
}

/// How a [`pump`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PumpEnd {
    /// The reader reached its end (or failed): everything it gave was written.
    ReaderDone,
    /// The writer refused more.
    WriterGone,
}

/// Copies `from` to `to` until either side ends.
pub(crate) fn pump(mut from: impl Read, mut to: impl Write) -> PumpEnd {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return PumpEnd::ReaderDone,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return PumpEnd::WriterGone;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return PumpEnd::ReaderDone,
        }
    }
}

fn copy_out(from: std::os::unix::net::UnixStream, to: File) {
    pump(from, to);
}

fn copy_in(from: File, to: std::os::unix::net::UnixStream) {
    if pump(from, &to) == PumpEnd::ReaderDone {
        // End of input closes the process's stdin.
        let _ = to.shutdown(Shutdown::Write);
    }
}
