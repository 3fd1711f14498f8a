//! OOM kills of all containers, as a log with sequence numbers that clients poll or
//! long-poll (`oom_events` with `after` and `wait_ms`).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::engine::OomWatcher;
use crate::protocol::OomEvent;

/// Events kept for clients that poll late.
const LOG_LIMIT: usize = 1024;

#[derive(Default)]
struct Log {
    next_sequence: u64,
    events: VecDeque<OomEvent>,
}

#[derive(Default)]
pub struct OomLog {
    log: Mutex<Log>,
    added: Condvar,
}

impl OomLog {
    pub fn new() -> Arc<OomLog> {
        Arc::new(OomLog::default())
    }

    fn push(&self, container_id: &str, count: u64) {
        let mut log = self.log.lock().unwrap();
        for _ in 0..count {
            let sequence = log.next_sequence;
            log.next_sequence += 1;
            if log.events.len() == LOG_LIMIT {
                log.events.pop_front();
            }
            log.events.push_back(OomEvent {
                sequence,
                container_id: container_id.to_owned(),
            });
        }
        self.added.notify_all();
    }

    /// Events with `sequence >= after` (for one container when given), waiting up to
    /// `wait` for the first one.
    pub fn events(
        &self,
        container_id: Option<&str>,
        after: u64,
        wait: Option<Duration>,
    ) -> Vec<OomEvent> {
        let deadline = wait.map(|w| Instant::now() + w);
        let mut log = self.log.lock().unwrap();
        loop {
            let found: Vec<OomEvent> = log
                .events
                .iter()
                .filter(|e| e.sequence >= after)
                .filter(|e| container_id.is_none_or(|id| e.container_id == id))
                .cloned()
                .collect();
            let now = Instant::now();
            match deadline {
                Some(d) if found.is_empty() && now < d => {
                    log = self.added.wait_timeout(log, d - now).unwrap().0;
                }
                _ => return found,
            }
        }
    }

    /// Watches one container's cgroup until `stop` says the container is gone.
    pub fn watch(
        self: &Arc<Self>,
        container_id: String,
        watcher: OomWatcher,
        stop: impl Fn() -> bool + Send + 'static,
    ) {
        let log = self.clone();
        // Read before returning, so that a kill right after `start` is not taken as the
        // starting point.
        let mut seen = watcher.oom_kills().unwrap_or(0);
        let _ = thread::Builder::new()
            .name(format!("oom-{container_id}"))
            .spawn(move || {
                while !stop() {
                    let mut fds = [PollFd::new(watcher.fd(), PollFlags::POLLIN)];
                    // The notification can come before the kernel counts the kill (cgroup
                    // v1 signals the OOM condition itself), so the count is also read on
                    // every timeout; the timeout bounds that delay and how long a removed
                    // container's thread lingers.
                    match poll(&mut fds, PollTimeout::from(250u16)) {
                        Ok(0) => {}
                        Ok(_) => watcher.drain(),
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => return,
                    }
                    if let Ok(now) = watcher.oom_kills() {
                        if now > seen {
                            log.push(&container_id, now - seen);
                            seen = now;
                        }
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_sequence_and_container_and_waits() {
        let log = OomLog::new();
        log.push("a", 2);
        log.push("b", 1);
        assert_eq!(log.events(None, 0, None).len(), 3);
        assert_eq!(log.events(Some("a"), 0, None).len(), 2);
        let after_one: Vec<u64> = log
            .events(None, 1, None)
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(after_one, vec![1, 2]);
        assert!(log.events(None, 3, None).is_empty());

        let l = log.clone();
        let t = thread::spawn(move || l.events(Some("c"), 3, Some(Duration::from_secs(5))));
        thread::sleep(Duration::from_millis(100));
        log.push("c", 1);
        let got = t.join().unwrap();
        assert_eq!(
            got,
            vec![OomEvent {
                sequence: 3,
                container_id: "c".into()
            }]
        );

        let start = Instant::now();
        assert!(log
            .events(None, 10, Some(Duration::from_millis(50)))
            .is_empty());
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
