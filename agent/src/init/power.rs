//! Ending the guest.

use nix::sys::reboot::{reboot, RebootMode};

/// Flushes the filesystems and ends the VM. Only meaningful as PID 1 in a guest; if the
/// kernel refuses, the error is returned so that the caller can report it.
///
/// A restart, not a power-off: the guest has no ACPI, so a power-off returns to PID 1, whose
/// exit then panics the kernel, which prints its panic over the emulated serial port before
/// `panic=-1` restarts it. A restart with `reboot=k` on the command line goes straight to the
/// i8042 reset, on which the VMM exits with status 0.
pub fn power_off() -> nix::Result<std::convert::Infallible> {
    nix::unistd::sync();
    reboot(RebootMode::RB_AUTOBOOT)
}
