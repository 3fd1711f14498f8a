//! Copying a process's stdio between host file descriptors and the agent's stream
//! connections, one thread per direction.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::thread::JoinHandle;
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
    outputs: Vec<JoinHandle<()>>,
}

pub fn attach(client: &Client, process: &ProcessRef, tty: bool, io: HostStdio) -> Result<Plumbing> {
    let mut outputs = Vec::new();
    if let Some(out) = io.stdout {
        let conn = client
            .attach(process, StreamKind::Stdout)
            .map_err(agent_err("attach stdout"))?;
        outputs.push(std::thread::spawn(move || copy_out(conn, File::from(out))));
    }
    if !tty {
        if let Some(err) = io.stderr {
            let conn = client
                .attach(process, StreamKind::Stderr)
                .map_err(agent_err("attach stderr"))?;
            outputs.push(std::thread::spawn(move || copy_out(conn, File::from(err))));
        }
    }
    if let Some(input) = io.stdin {
        let conn = client
            .attach(process, StreamKind::Stdin)
            .map_err(agent_err("attach stdin"))?;
        // Never joined: a terminal or an open pipe may never reach end of file.
        std::thread::spawn(move || copy_in(File::from(input), conn));
    }
    Ok(Plumbing { outputs })
}

impl Plumbing {
    /// Waits (bounded) for the output copies to drain after the process has exited.
    pub fn finish(self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for h in self.outputs {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

fn copy_out(mut from: std::os::unix::net::UnixStream, mut to: File) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

fn copy_in(mut from: File, mut to: std::os::unix::net::UnixStream) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // End of input closes the process's stdin.
    let _ = to.shutdown(Shutdown::Write);
}
