//! What every process a sandbox starts (the agent, the VMM, virtiofsd) gets between fork and
//! exec.

/// In a forked child before exec: no signal left blocked (the runtime blocks some for its own
/// use, and a blocked mask survives exec), and SIGKILL when the thread that forked it ends,
/// so that nothing outlives the process owning the sandbox. Async-signal-safe.
pub fn reset_signals_and_die_with_parent() -> std::io::Result<()> {
    // SAFETY: sigprocmask and prctl are async-signal-safe; the set is a local.
    unsafe {
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
