//! Waiting in the foreground on a monitor (`sandbox run`, `sandbox exec` without --detach):
//! signals sent to us go on to the process in the sandbox, a terminal is put in raw mode and
//! its size follows the user's window, and our exit status is the process's.

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

/// Forwards signals until the monitor exits, then returns its status in shell form.
pub fn wait(
    mut monitor: Child,
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
