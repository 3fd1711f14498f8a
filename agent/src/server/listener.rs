//! The agent's listening socket: a unix socket (native isolation, tests) or AF_VSOCK (inside
//! a guest). The choice is always explicit; nothing falls back from one to the other.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A unix socket at this path; a stale socket file there is replaced.
    Unix(PathBuf),
    /// A unix socket at this path that the parent already bound and listens on, handed down
    /// as this descriptor. Clients can connect (their connections queue) before the agent
    /// has started, so nobody polls for the socket to appear.
    InheritedUnix { path: PathBuf, fd: RawFd },
    /// AF_VSOCK on any CID at this port. Only for a guest: the host side of vsock belongs to
    /// the VMM.
    Vsock { port: u32 },
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::InheritedUnix { path, fd } => {
                write!(f, "unix:{} (inherited fd {fd})", path.display())
            }
            ListenAddr::Vsock { port } => write!(f, "vsock:{port}"),
        }
    }
}

/// A bound, listening stream socket of either family.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    unix_path: Option<PathBuf>,
}

impl Listener {
    pub fn bind(addr: &ListenAddr) -> io::Result<Self> {
        match addr {
            ListenAddr::Unix(path) => Self::bind_unix(path),
            ListenAddr::InheritedUnix { path, fd } => Self::inherit_unix(path, *fd),
            ListenAddr::Vsock { port } => Self::bind_vsock(*port),
        }
    }

    /// Takes over a listening unix socket from the parent. Anything else on that descriptor
    /// (a closed fd, a file, a socket nobody listens on) is refused rather than served.
    fn inherit_unix(path: &Path, fd: RawFd) -> io::Result<Self> {
        let mut listening: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `listening`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                &mut listening as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if listening == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {fd} is a socket that does not listen"),
            ));
        }
        // SAFETY: the descriptor was handed to this process to own; checked to be a
        // listening socket above.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Our children must not inherit it.
        // SAFETY: F_SETFD on the descriptor we now own.
        unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(Listener {
            fd: owned,
            unix_path: Some(path.to_owned()),
        })
    }

    fn bind_unix(path: &Path) -> io::Result<Self> {
        if let Ok(meta) = fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            // Only a leftover socket is removed; any other file there is the caller's mistake.
            if meta.file_type().is_socket() {
                fs::remove_file(path)?;
            }
        }
        let listener = UnixListener::bind(path)?;
        // Whoever can connect can run processes as root: owner only.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        Ok(Listener {
            fd: listener.into(),
            unix_path: Some(path.to_owned()),
        })
    }

    fn bind_vsock(port: u32) -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked.
        let raw =
            unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_vm; the fields that matter are set below.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        // SAFETY: `addr` is a valid sockaddr_vm of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: listen(2) on our own socket.
        if unsafe { libc::listen(fd.as_raw_fd(), 64) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Listener {
            fd,
            unix_path: None,
        })
    }

    /// Waits for the next connection. The accepted socket is returned as a `UnixStream`
    /// whatever its family: only read, write and shutdown are used on it, and those behave
    /// the same for every stream socket.
    pub fn accept(&self) -> io::Result<UnixStream> {
        loop {
            // SAFETY: accept4 with no address buffer on our listening socket.
            let raw = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if raw >= 0 {
                // SAFETY: accept4 returned a fresh descriptor that we now own.
                return Ok(unsafe { UnixStream::from_raw_fd(raw) });
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // The peer gave up before we accepted it: not our problem.
                Some(libc::EINTR) | Some(libc::ECONNABORTED) | Some(libc::EPROTO) => continue,
                _ => return Err(e),
            }
        }
    }

    /// Makes a blocked or future `accept` fail, which ends the accept loop.
    pub fn shut_down(&self) {
        // SAFETY: shutdown(2) on our own socket; on Linux it wakes accept() with EINVAL.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.unix_path {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn unix_listener_accepts_replaces_stale_socket_and_shuts_down() {
        let dir = std::env::temp_dir().join(format!("agent-listener-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");
        drop(UnixListener::bind(&path).unwrap()); // a stale socket file
        let listener = Listener::bind(&ListenAddr::Unix(path.clone())).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut client = UnixStream::connect(&path).unwrap();
        let mut server = listener.accept().unwrap();
        client.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        listener.shut_down();
        assert!(listener.accept().is_err());
        drop(listener);
        assert!(!path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_inherited_listening_socket_is_served_and_anything_else_refused() {
        let dir = std::env::temp_dir().join(format!("agent-listener-inh-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");
        let bound = UnixListener::bind(&path).unwrap();
        // A client that connects before the agent takes the socket over is queued, not refused.
        let mut client = UnixStream::connect(&path).unwrap();
        let fd = OwnedFd::from(bound);
        let raw = fd.as_raw_fd();
        std::mem::forget(fd); // the listener takes ownership
        let addr = ListenAddr::InheritedUnix {
            path: path.clone(),
            fd: raw,
        };
        let listener = Listener::bind(&addr).unwrap();
        let mut server = listener.accept().unwrap();
        client.write_all(b"ok").unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ok");
        drop(listener);
        assert!(!path.exists());

        // A connected (not listening) socket and a regular file are refused.
        let (a, _b) = UnixStream::pair().unwrap();
        let err = Listener::bind(&ListenAddr::InheritedUnix {
            path: dir.join("b.sock"),
            fd: a.as_raw_fd(),
        })
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let file = fs::File::create(dir.join("f")).unwrap();
        assert!(Listener::bind(&ListenAddr::InheritedUnix {
            path: dir.join("c.sock"),
            fd: file.as_raw_fd(),
        })
        .is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_regular_file_at_the_socket_path_is_not_removed() {
        let path = std::env::temp_dir().join(format!("agent-listener-file-{}", std::process::id()));
        fs::write(&path, b"keep").unwrap();
        assert!(Listener::bind(&ListenAddr::Unix(path.clone())).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"keep");
        fs::remove_file(&path).unwrap();
    }
}
