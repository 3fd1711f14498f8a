//! The device event-loop thread: one epoll loop (event-manager) that serves every device's
//! queue notifications and backend fds, so that device emulation never runs on a vCPU thread
//! and needs no locking beyond the per-device mutex the transport also takes.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use log::error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What the loop holds: every device, shared with its transport.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Name of the thread, as seen in /proc/PID/task/*/comm.
pub const THREAD_NAME: &str = "vmm-devices";

#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot create the device event loop: {0}")]
    Create(String),
    #[error("cannot create the stop eventfd: {0}")]
    EventFd(#[source] io::Error),
    #[error("cannot start the device event-loop thread: {0}")]
    Spawn(#[source] io::Error),
    #[error("device event-loop thread could not prepare itself: {0}")]
    Setup(String),
    #[error("device event loop failed: {0}")]
    Poll(String),
    #[error("device event-loop thread panicked")]
    Panicked,
}

/// Ends the loop when its eventfd is written.
struct StopSignal {
    evt: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopSignal {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            error!("device event loop: cannot register the stop eventfd: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// The loop before it runs: devices are added here by the VMM builder.
pub struct DeviceEventLoop {
    manager: EventManager<Subscriber>,
    stop_evt: EventFd,
    stopped: Arc<AtomicBool>,
}

impl DeviceEventLoop {
    pub fn new() -> Result<Self, EventLoopError> {
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(|e| EventLoopError::Create(e.to_string()))?;
        let stop_evt = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::EventFd)?;
        let stopped = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Arc::new(Mutex::new(StopSignal {
            evt: stop_evt.try_clone().map_err(EventLoopError::EventFd)?,
            stopped: stopped.clone(),
        })));
        Ok(Self {
            manager,
            stop_evt,
            stopped,
        })
    }

    /// Adds a device; its `init` registers its activation event right away.
    pub fn add(&mut self, subscriber: Subscriber) {
        self.manager.add_subscriber(subscriber);
    }

    /// Runs one round (waiting at most `timeout_ms`, -1 for ever) on the calling thread.
    /// Returns the number of events served.
    pub fn run_once(&mut self, timeout_ms: i32) -> Result<usize, EventLoopError> {
        match self.manager.run_with_timeout(timeout_ms) {
            Ok(n) => Ok(n),
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => Ok(0),
            Err(e) => Err(EventLoopError::Poll(e.to_string())),
        }
    }

    /// Starts the loop on its own thread. `setup` runs first on that thread (the VMM installs
    /// the thread's seccomp filter there); if it fails the loop does not start. `on_failure`
    /// is called on the thread if the loop ends with an error, so the VM can be stopped.
    pub fn spawn<F, E>(mut self, setup: F, on_failure: E) -> Result<EventLoopHandle, EventLoopError>
    where
        F: FnOnce() -> Result<(), String> + Send + 'static,
        E: FnOnce(&EventLoopError) + Send + 'static,
    {
        let stop_evt = self.stop_evt.try_clone().map_err(EventLoopError::EventFd)?;
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                // A device that panics must not leave the guest waiting on a dead loop: the
                // panic ends the loop like any other failure, and the VM is stopped.
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    setup().map_err(EventLoopError::Setup)?;
                    while !self.stopped.load(Ordering::SeqCst) {
                        self.run_once(-1)?;
                    }
                    Ok(())
                }))
                .unwrap_or(Err(EventLoopError::Panicked));
                if let Err(e) = &result {
                    error!("{e}");
                    on_failure(e);
                }
                result
            })
            .map_err(EventLoopError::Spawn)?;
        Ok(EventLoopHandle { stop_evt, thread })
    }
}

/// A running event-loop thread.
pub struct EventLoopHandle {
    stop_evt: EventFd,
    thread: JoinHandle<Result<(), EventLoopError>>,
}

impl EventLoopHandle {
    /// Whether the thread has ended (by itself only on an error or a panic).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops the loop and waits for it; reports how it ended.
    pub fn stop(self) -> Result<(), EventLoopError> {
        // If the thread already ended, the write is harmless.
        let _ = self.stop_evt.write(1);
        self.thread.join().map_err(|_| EventLoopError::Panicked)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::test_utils::{test_memory, Buf, DriverQueue, MockInterrupt};
    use crate::devices::virtio::VIRTIO_F_VERSION_1;
    use std::time::{Duration, Instant};
    use vm_memory::GuestAddress;

    #[test]
    fn serves_devices_on_its_own_thread_and_stops() {
        let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
        let mut el = DeviceEventLoop::new().unwrap();
        el.add(rng.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = el
            .spawn(
                move || {
                    tx.send(std::thread::current().name().map(String::from))
                        .unwrap();
                    Ok(())
                },
                |e| panic!("loop failed: {e}"),
            )
            .unwrap();
        assert_eq!(rx.recv().unwrap().as_deref(), Some(THREAD_NAME));

        let mem = test_memory(0x10_0000);
        let mut dq = DriverQueue::new(&mem, GuestAddress(0x1000), 64);
        let irq = Arc::new(MockInterrupt::default());
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        dq.activate_device(
            &mut *rng.lock().unwrap(),
            irq.clone(),
            notify.try_clone().unwrap(),
            VIRTIO_F_VERSION_1,
        )
        .unwrap();
        dq.add_chain(&[Buf::write(0x8000, 32)]);
        notify.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while dq.used_idx() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(dq.used_idx(), 1);
        assert_eq!(irq.queue_count(), 1);
        handle.stop().unwrap();
    }

    struct Panicker(EventFd);

    impl MutEventSubscriber for Panicker {
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.0, EventSet::IN)).unwrap();
        }
        fn process(&mut self, _: Events, _: &mut EventOps) {
            panic!("device bug");
        }
    }

    #[test]
    fn a_panicking_device_ends_the_loop_and_is_reported() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut el = DeviceEventLoop::new().unwrap();
        el.add(Arc::new(Mutex::new(Panicker(evt.try_clone().unwrap()))));
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = el
            .spawn(|| Ok(()), move |e| tx.send(e.to_string()).unwrap())
            .unwrap();
        evt.write(1).unwrap();
        assert!(rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .contains("panicked"));
        assert!(matches!(handle.stop(), Err(EventLoopError::Panicked)));
    }

    #[test]
    fn failed_setup_is_reported() {
        let el = DeviceEventLoop::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = el
            .spawn(
                || Err("no filter".into()),
                move |e| tx.send(e.to_string()).unwrap(),
            )
            .unwrap();
        assert!(rx.recv().unwrap().contains("no filter"));
        assert!(matches!(handle.stop(), Err(EventLoopError::Setup(m)) if m == "no filter"));
    }
}
