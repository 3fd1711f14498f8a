//! What the processes the runtime starts (the agent, the VMM, virtiofsd, a container's
//! monitor, the shim's server) get between fork and exec. Every function here is
//! async-signal-safe, as code in a forked child must be.

use std::io;
use std::os::fd::RawFd;

/// No signal left blocked: the runtime blocks some for its own use, and a blocked mask
/// survives exec.
pub fn unblock_signals() {
    // SAFETY: sigprocmask is async-signal-safe; the set is a local.
    unsafe {
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Unblocked signals, and SIGKILL when the thread that forked the child ends, so that
/// nothing outlives the process owning the sandbox.
pub fn reset_signals_and_die_with_parent() -> io::Result<()> {
    unblock_signals();
    // SAFETY: prctl is async-signal-safe.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A session of its own: no terminal signals from the caller's session reach it.
pub fn new_session() -> io::Result<()> {
    // SAFETY: setsid is async-signal-safe.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `fd` the child's descriptor `target`, open across exec. dup2 clears close-on-exec
/// on the copy, but onto itself it does nothing, so then the flag is cleared by hand.
pub fn pass_fd(fd: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: fcntl and dup2 are async-signal-safe and touch only descriptors.
    let r = unsafe {
        if fd == target {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, target)
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    /// The child sees the descriptor at the target number whether or not it was there
    /// already (close-on-exec set, as every descriptor the runtime opens has it).
    #[test]
    fn a_passed_descriptor_survives_exec_at_its_number() {
        for target in [9, 0] {
            let file = tempfile_with(b"passed\n");
            let fd = file.as_raw_fd();
            let target = if target == 0 { fd } else { target };
            let mut cmd = Command::new("cat");
            cmd.arg(format!("/proc/self/fd/{target}"));
            // SAFETY: only pass_fd, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || pass_fd(fd, target));
            }
            let out = cmd.output().unwrap();
            assert_eq!(out.stdout, b"passed\n", "target {target}: {out:?}");
        }
    }

    fn tempfile_with(content: &[u8]) -> std::fs::File {
        use std::io::{Seek, Write};
        let path = std::env::temp_dir().join(format!("pass-fd-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(content).unwrap();
        f.rewind().unwrap();
        f
    }
}
