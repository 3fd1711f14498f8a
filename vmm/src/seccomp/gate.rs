//! Holds vCPU threads back after they installed their own filter until the main thread has
//! installed its filter too, so that no guest instruction runs while any VMM thread is still
//! unfiltered.

use std::sync::{Condvar, Mutex};

/// A one-shot go/abort signal shared by the main thread and the vCPU threads.
#[derive(Debug, Default)]
pub struct StartGate {
    state: Mutex<Option<bool>>,
    changed: Condvar,
}

impl StartGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets the waiting threads run the guest.
    pub fn open(&self) {
        self.set(true);
    }

    /// Tells the waiting threads to end without running the guest.
    pub fn abort(&self) {
        self.set(false);
    }

    fn set(&self, go: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.is_none() {
            *state = Some(go);
        }
        self.changed.notify_all();
    }

    /// Blocks until `open` (true) or `abort` (false).
    pub fn wait(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(go) = *state {
                return go;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waiters_learn_go_or_abort_and_the_first_word_wins() {
        for go in [true, false] {
            let gate = Arc::new(StartGate::new());
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let g = gate.clone();
                    std::thread::spawn(move || g.wait())
                })
                .collect();
            if go {
                gate.open();
                gate.abort();
            } else {
                gate.abort();
                gate.open();
            }
            for w in waiters {
                assert_eq!(w.join().unwrap(), go);
            }
            assert_eq!(gate.wait(), go);
        }
    }
}
