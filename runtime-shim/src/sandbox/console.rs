//! Terminals on the host side: the pty pair whose master goes to a runc caller's
//! `--console-socket`, and raw mode for a user's own terminal in `sandbox run -t`.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::termios::{self, SetArg, Termios};

use crate::error::{Error, IoContext, Result};

/// A host pty: the master goes to the caller, the monitor pumps the slave to the guest.
pub struct HostPty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

pub fn open_pty() -> Result<HostPty> {
    let pty = nix::pty::openpty(None, None).map_err(|e| Error::sys("openpty", e))?;
    // The container's own terminal does the line discipline; ours must pass bytes untouched.
    let mut t = termios::tcgetattr(&pty.slave).map_err(|e| Error::sys("tcgetattr", e))?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &t).map_err(|e| Error::sys("tcsetattr", e))?;
    Ok(HostPty {
        master: pty.master,
        slave: pty.slave,
    })
}

/// Sends `fd` over the unix socket at `socket`, the way runc hands a console to its caller.
pub fn send_console(socket: &Path, fd: &OwnedFd) -> Result<()> {
    let stream = UnixStream::connect(socket).ctx("connect to console socket", socket)?;
    let name = b"/dev/ptmx";
    let iov = [IoSlice::new(name)];
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(|e| Error::sys("send console fd", e))?;
    Ok(())
}

pub fn window_size(fd: impl AsFd) -> Option<(u16, u16)> {
    // SAFETY: an all-zero winsize is a valid value of this plain C struct.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Puts a terminal in raw mode and restores it when dropped.
pub struct RawMode {
    fd: std::os::fd::RawFd,
    saved: Termios,
}

impl RawMode {
    pub fn enter(fd: std::os::fd::BorrowedFd<'_>) -> Option<RawMode> {
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode {
            fd: fd.as_raw_fd(),
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: the fd is stdin of this process, open for its whole life.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        let _ = termios::tcsetattr(fd, SetArg::TCSANOW, &self.saved);
    }
}
