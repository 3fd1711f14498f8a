//! Ending the guest.

use nix::sys::reboot::{reboot, RebootMode};

/// Flushes the filesystems and powers the VM off. Only meaningful as PID 1 in a guest; if
/// the kernel refuses, the error is returned so that the caller can report it.
pub fn power_off() -> nix::Result<std::convert::Infallible> {
    nix::unistd::sync();
    reboot(RebootMode::RB_POWER_OFF)
}
