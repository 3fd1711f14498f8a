//! How a running VM ends: the first reason given wins, everyone else is told to stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::vcpu::VcpuError;

/// Why the VM stopped.
#[derive(Debug)]
pub enum VmExit {
    /// The guest asked for a reset (through the i8042); this is how a guest powers off.
    GuestReset,
    /// A vCPU hit something the VMM cannot handle.
    VcpuFailed { vcpu: u8, error: VcpuError },
    /// A device backend failed in a way the guest cannot recover from.
    DeviceFailed { device: String, message: String },
}

/// Process exit statuses of `sandbox-vmm`.
pub mod exit_code {
    /// The guest reset itself (a clean guest shutdown).
    pub const GUEST_RESET: i32 = 0;
    /// The VM could not be set up: configuration, kernel, memory or KVM errors.
    pub const SETUP_ERROR: i32 = 1;
    /// Bad command-line usage.
    pub const USAGE: i32 = 2;
    /// The VM ran and ended with an error: an unhandled vCPU exit or a failed device.
    pub const VM_ERROR: i32 = 3;
}

impl VmExit {
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::GuestReset => exit_code::GUEST_RESET,
            VmExit::VcpuFailed { .. } | VmExit::DeviceFailed { .. } => exit_code::VM_ERROR,
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::GuestReset => f.write_str("guest reset"),
            VmExit::VcpuFailed { vcpu, error } => write!(f, "vCPU {vcpu}: {error}"),
            VmExit::DeviceFailed { device, message } => write!(f, "device {device}: {message}"),
        }
    }
}

#[derive(Default)]
struct State {
    stopping: AtomicBool,
    reason: Mutex<Option<VmExit>>,
    changed: Condvar,
}

/// Shared by vCPU threads, devices and the thread that waits for the VM to end.
#[derive(Clone, Default)]
pub struct StopHandle(Arc<State>);

impl StopHandle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `reason` unless the VM is already stopping, and wakes the waiter.
    pub fn request(&self, reason: VmExit) {
        let mut slot = self.0.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.0.stopping.store(true, Ordering::SeqCst);
        self.0.changed.notify_all();
    }

    pub fn is_stopping(&self) -> bool {
        self.0.stopping.load(Ordering::SeqCst)
    }

    /// Blocks until someone calls `request`.
    pub fn wait(&self) {
        let mut slot = self.0.reason.lock().unwrap_or_else(|e| e.into_inner());
        while slot.is_none() {
            slot = self.0.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The first reason given, once the VM stopped.
    pub fn take_reason(&self) -> Option<VmExit> {
        self.0
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes_the_waiter() {
        let stop = StopHandle::new();
        assert!(!stop.is_stopping());
        let waiter = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                stop.wait();
                stop.take_reason()
            })
        };
        stop.request(VmExit::GuestReset);
        stop.request(VmExit::DeviceFailed {
            device: "x".into(),
            message: "late".into(),
        });
        assert!(stop.is_stopping());
        let reason = waiter.join().unwrap().unwrap();
        assert!(matches!(reason, VmExit::GuestReset));
        assert_eq!(reason.exit_code(), 0);
    }
}
