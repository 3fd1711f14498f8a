//! The reaper takes every child of its process, so it is tested in a test binary of its own
//! with plain fork/exit children that nothing else waits for.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use agent::protocol::ExitStatus;
use agent::server::reaper::Reaper;

fn fork_exit(code: i32, delay_ms: u64) -> i32 {
    // SAFETY: the child only sleeps and calls _exit, both async-signal-safe.
    match unsafe { libc::fork() } {
        // SAFETY: usleep and _exit are async-signal-safe, all a forked child may call.
        0 => unsafe {
            libc::usleep((delay_ms * 1000) as libc::c_uint);
            libc::_exit(code)
        },
        pid => pid,
    }
}

#[test]
fn dispatches_late_and_early_exits_and_ignores_stale_marks() {
    let reaper = Reaper::start();

    // Watched before the exit.
    let mark = reaper.before_spawn();
    let pid = fork_exit(7, 200);
    let (tx, rx) = mpsc::channel();
    reaper.watch(pid, mark, move |s| tx.send(s).unwrap());
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        ExitStatus::exited(7)
    );

    // Exited (and reaped) before anyone watched it.
    let mark = reaper.before_spawn();
    let pid = fork_exit(3, 0);
    thread::sleep(Duration::from_millis(300));
    let (tx, rx) = mpsc::channel();
    reaper.watch(pid, mark, move |s| tx.send(s).unwrap());
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        ExitStatus::exited(3)
    );

    // Killed by a signal.
    let mark = reaper.before_spawn();
    let pid = fork_exit(0, 10_000);
    let (tx, rx) = mpsc::channel();
    reaper.watch(pid, mark, move |s| tx.send(s).unwrap());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        ExitStatus::signaled(libc::SIGTERM)
    );

    // A status recorded before the mark is not handed out: it belongs to an older process
    // with the same pid.
    let pid = fork_exit(5, 0);
    thread::sleep(Duration::from_millis(300));
    let mark = reaper.before_spawn();
    let (tx, rx) = mpsc::channel();
    reaper.watch(pid, mark, move |s| tx.send(s).unwrap());
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}
