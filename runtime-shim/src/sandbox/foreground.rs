//! Waiting in the foreground on a monitor (`sandbox run`, `sandbox exec` without --detach):
//! signals sent to us go on to the process in the sandbox, a terminal is put in raw mode and
//! its size follows the user's window, and our exit status is the process's: taken from the
//! native container's init, which we adopt as a subreaper and reap, or else from the
//! monitor, which exits the way the process did.

use std::os::fd::AsFd;
use std::process::Child;

use agent::protocol::{Client, Endpoint, ProcessRef};
use nix::sys::signal::{SigSet, Signal};

use crate::sandbox::console::{self, RawMode};

const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Blocks the forwarded signals in this thread (and the threads it starts later), so they
/// queue for the forwarder instead of killing us. Call before starting the process.
pub fn block_forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    let _ = set.thread_block();
    set
}

/// Puts our terminal in raw mode for a tty session, when stdin is a terminal.
pub fn raw_terminal(tty: bool) -> Option<RawMode> {
    if tty && nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        RawMode::enter(std::io::stdin().as_fd())
    } else {
        None
    }
}

/// Sends our terminal's size to the process (once now, then on every SIGWINCH).
pub fn push_window_size(endpoint: &Endpoint, process: &ProcessRef) {
    if let Some((rows, cols)) = console::window_size(std::io::stdin().as_fd()) {
        if let Ok(mut c) = Client::connect(endpoint.clone()) {
            let _ = c.resize_tty(process.clone(), rows, cols);
        }
    }
}

/// Makes this process the one that adopts orphans among its descendants: a native
/// container's init, which the agent leaves to the nearest subreaper above it.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// The status of a reaped child in shell form, or `None` for a stop or continue report.
fn shell_code(status: nix::sys::wait::WaitStatus) -> Option<(i32, i32)> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

/// Reaps `pid`, a child of ours, and returns its status in shell form; `None` if it is not
/// our child.
fn reap(pid: i32) -> Option<i32> {
    use nix::errno::Errno;
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(status) => {
                if let Some((_, code)) = shell_code(status) {
                    return Some(code);
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// Reaps children until the monitor has ended and returns the status to exit with: the
/// init's, which we adopted; the monitor's where it ended first, which happens only when it
/// lost the back end under a running container (it reports that with 255, and the teardown
/// that follows kills the container). A monitor that exits 0 has seen the init end, so the
/// init's exit, if not reaped yet, is at most a moment away.
fn reap_init_and_monitor(init: i32, monitor: i32) -> i32 {
    use nix::errno::Errno;
    use nix::sys::wait::waitpid;
    use nix::unistd::Pid;
    let mut init_code = None;
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(status) => match shell_code(status) {
                Some((pid, code)) if pid == init => init_code = Some(code),
                Some((pid, code)) if pid == monitor => {
                    if init_code.is_none() && code == 0 {
                        init_code = reap(init);
                    }
                    return init_code.unwrap_or(code);
                }
                // Stops, or orphans of the container that we adopted as well.
                _ => {}
            },
            Err(Errno::EINTR) => {}
            Err(_) => return init_code.unwrap_or(255),
        }
    }
}

/// Forwards signals until the process ends, then returns its status in shell form: that of
/// `init` (a native container's init we adopted, see [`become_subreaper`]) when given, else
/// the monitor's. The monitor is waited for either way: it records the end.
pub fn wait(
    mut monitor: Child,
    init: Option<i32>,
    endpoint: Endpoint,
    process: ProcessRef,
    tty: bool,
    set: SigSet,
) -> i32 {
    let pid = monitor.id();
    std::thread::spawn(move || loop {
        let Ok(sig) = set.wait() else { return };
        if sig == Signal::SIGWINCH {
            if tty {
                push_window_size(&endpoint, &process);
            }
            continue;
        }
        if let Ok(mut c) = Client::connect(endpoint.clone()) {
            let _ = c.signal(process.clone(), sig as i32, false);
        }
        let _ = pid;
    });
    if let Some(init) = init {
        return reap_init_and_monitor(init, pid as i32);
    }
    match monitor.wait() {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(c), _) => c,
                (None, Some(s)) => 128 + s,
                _ => 255,
            }
        }
        Err(_) => 255,
    }
}
