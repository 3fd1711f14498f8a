//! Copying between a stream connection and a process's stdio.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use super::process::Attachment;

/// Runs until the copy ends; consumes the connection and the stdio end.
pub fn pump(attachment: Attachment, conn: UnixStream) {
    match attachment {
        Attachment::Output(from) => {
            copy_output(from, &conn);
            // Tell the client that this stream is complete.
            let _ = conn.shutdown(Shutdown::Write);
        }
        Attachment::Input(to) => {
            copy_input(&conn, to);
        }
    }
}

fn copy_output(mut from: File, mut to: &UnixStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            // EIO: a terminal whose other side has been closed by every process.
            Ok(0) => return,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    // The client went away; keep draining so the process does not block on
                    // a full pipe.
                    drain(from, &mut buf);
                    return;
                }
            }
        }
    }
}

fn drain(mut from: File, buf: &mut [u8]) {
    while matches!(from.read(buf), Ok(n) if n > 0) {}
}

fn copy_input(mut from: &UnixStream, mut to: File) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    // Dropping `to` closes the process's stdin (for a pipe; a terminal stays open for
    // output and resizing).
}
