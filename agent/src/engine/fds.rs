//! File descriptor chores in freshly forked children.

use std::os::fd::RawFd;

/// Closes every descriptor above 2 except those in `keep`, so that a forked child holds no
/// descriptor of another container that the parent happened to have open at fork time.
pub(crate) fn close_fds_except(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    let mut first: libc::c_uint = 3;
    for fd in keep {
        let fd = fd as libc::c_uint;
        if fd > first {
            // SAFETY: close_range only closes descriptors; none of these are in use by Rust
            // objects that outlive this call in the single-threaded child.
            unsafe { libc::syscall(libc::SYS_close_range, first, fd - 1, 0) };
        }
        first = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
}

/// Moves `fd` to `target` (dup2) keeping it open across execve.
pub(crate) fn dup_to(fd: RawFd, target: RawFd) -> nix::Result<()> {
    if fd == target {
        // dup2 onto itself would keep close-on-exec set: clear it by hand.
        // SAFETY: fcntl on a descriptor this process owns.
        let flags = nix::errno::Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
        // SAFETY: as above.
        nix::errno::Errno::result(unsafe {
            libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC)
        })?;
        return Ok(());
    }
    // SAFETY: dup2 on raw descriptors owned by this process.
    nix::errno::Errno::result(unsafe { libc::dup2(fd, target) }).map(drop)
}
