//! The channel between the engine and the processes it forks.
//!
//! A `SOCK_SEQPACKET` socket pair keeps message boundaries, lets the container's init hand
//! back the pty master with `SCM_RIGHTS`, and is close-on-exec on both ends: when the
//! container process execs its program the child end closes, which the engine reads as
//! end-of-file, the signal that `start` succeeded (the same trick std::process::Command uses
//! to report exec failures).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

const MAX_MSG: usize = 4096;

/// One message on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Msg {
    /// intermediate -> engine: the pid (in the engine's pid namespace) of the process it
    /// cloned, with a pidfd for it.
    ChildPid(i32),
    /// engine -> init: its pid as the engine sees it, which the hooks' state carries (inside
    /// a new pid namespace the init's own getpid() says 1).
    HostPid(i32),
    /// intermediate -> engine: it created a user namespace; write its id maps.
    MapIds,
    /// engine -> intermediate: id maps written.
    MapsDone,
    /// init -> engine: set up and waiting for `Go` (may carry the pty master).
    Ready,
    /// engine -> init: exec the program.
    Go,
    /// init -> engine: mounts are done, run the createRuntime / prestart hooks.
    RunHooks,
    /// engine -> init: hooks ran.
    HooksDone,
    /// child -> engine: a step failed; the text names it.
    Error(String),
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Msg::ChildPid(pid) => {
                out.push(b'P');
                out.extend_from_slice(&pid.to_le_bytes());
            }
            Msg::HostPid(pid) => {
                out.push(b'I');
                out.extend_from_slice(&pid.to_le_bytes());
            }
            Msg::MapIds => out.push(b'U'),
            Msg::MapsDone => out.push(b'M'),
            Msg::Ready => out.push(b'R'),
            Msg::Go => out.push(b'G'),
            Msg::RunHooks => out.push(b'H'),
            Msg::HooksDone => out.push(b'D'),
            Msg::Error(text) => {
                out.push(b'E');
                let bytes = text.as_bytes();
                out.extend_from_slice(&bytes[..bytes.len().min(MAX_MSG - 1)]);
            }
        }
        out
    }

    fn decode(buf: &[u8]) -> Result<Msg, String> {
        let (&tag, rest) = buf.split_first().ok_or("empty message")?;
        Ok(match tag {
            b'P' => {
                let bytes: [u8; 4] = rest.try_into().map_err(|_| "bad pid message")?;
                Msg::ChildPid(i32::from_le_bytes(bytes))
            }
            b'I' => {
                let bytes: [u8; 4] = rest.try_into().map_err(|_| "bad host pid message")?;
                Msg::HostPid(i32::from_le_bytes(bytes))
            }
            b'U' => Msg::MapIds,
            b'M' => Msg::MapsDone,
            b'R' => Msg::Ready,
            b'G' => Msg::Go,
            b'H' => Msg::RunHooks,
            b'D' => Msg::HooksDone,
            b'E' => Msg::Error(String::from_utf8_lossy(rest).into_owned()),
            other => return Err(format!("unknown message tag {other:#x}")),
        })
    }
}

/// One end of the channel.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair: (engine end, child end).
    pub(crate) fn pair() -> nix::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(crate) fn send(&self, msg: &Msg) -> nix::Result<()> {
        self.send_with_fd(msg, None)
    }

    pub(crate) fn send_with_fd(&self, msg: &Msg, fd: Option<RawFd>) -> nix::Result<()> {
        let buf = msg.encode();
        let iov = [IoSlice::new(&buf)];
        let fds;
        let cmsgs: &[ControlMessage] = match fd {
            Some(fd) => {
                fds = [fd];
                &[ControlMessage::ScmRights(&fds)]
            }
            None => &[],
        };
        loop {
            match sendmsg::<()>(self.raw(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Err(Errno::EINTR) => continue,
                other => return other.map(drop),
            }
        }
    }

    /// The next message, or `None` at end-of-file (every other end closed). A passed
    /// descriptor comes back owned.
    pub(crate) fn recv(&self) -> Result<Option<(Msg, Option<OwnedFd>)>, String> {
        let mut buf = vec![0u8; MAX_MSG];
        let mut cmsg_buf = nix::cmsg_space!([RawFd; 1]);
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let res = recvmsg::<()>(
                self.raw(),
                &mut iov,
                Some(&mut cmsg_buf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let msg = match res {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("reading from the container process: {e}")),
                Ok(m) => m,
            };
            let mut passed = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for fd in fds {
                            // SAFETY: the kernel just installed this descriptor for us.
                            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                            if passed.is_none() {
                                passed = Some(owned);
                            }
                        }
                    }
                }
            }
            let len = msg.bytes;
            if len == 0 {
                return Ok(None);
            }
            return Msg::decode(&buf[..len]).map(|m| Some((m, passed)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_eof() {
        let (a, b) = Channel::pair().unwrap();
        for m in [
            Msg::ChildPid(4242),
            Msg::HostPid(77),
            Msg::MapIds,
            Msg::MapsDone,
            Msg::Ready,
            Msg::Go,
            Msg::RunHooks,
            Msg::HooksDone,
            Msg::Error("mount /proc: EPERM".into()),
        ] {
            b.send(&m).unwrap();
            assert_eq!(a.recv().unwrap().unwrap().0, m);
        }
        drop(b);
        assert!(a.recv().unwrap().is_none());
    }

    #[test]
    fn passes_a_descriptor() {
        let (a, b) = Channel::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        b.send_with_fd(&Msg::Ready, Some(file.as_raw_fd())).unwrap();
        let (m, fd) = a.recv().unwrap().unwrap();
        assert_eq!(m, Msg::Ready);
        assert!(fd.is_some());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Msg::decode(b"").is_err());
        assert!(Msg::decode(b"Z").is_err());
        assert!(Msg::decode(b"P12").is_err());
    }
}
