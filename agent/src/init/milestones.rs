//! Milestones of the guest's start, written to the VMM's boot-complete port so that the host
//! places them on its time line (`sandbox run --timings`). Written only where the kernel
//! command line asks for it (`sandbox.milestones`): on a host, or under a VMM of another
//! kind, port 0x510 is something else (QEMU's fw_cfg lives there).

/// The VMM's boot-complete port (`vmm::arch::x86_64::layout::BOOT_COMPLETE_PORT`).
const BOOT_COMPLETE_PORT: u16 = 0x510;

/// The command-line word that turns the reports on.
pub const CMDLINE_FLAG: &str = "sandbox.milestones";

/// The values written, as the runtime names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Milestone {
    /// PID 1 runs: the kernel's own boot is over.
    InitStarted = 1,
    /// The agent's socket listens: the host can connect.
    AgentListening = 2,
}

/// Whether this guest reports milestones, decided once from its command line.
#[derive(Clone, Copy, Debug)]
pub struct Milestones {
    enabled: bool,
}

impl Milestones {
    /// Reads `/proc/cmdline` (mounted by then) and, when asked to report, gains access to
    /// the port.
    pub fn from_kernel() -> Self {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let asked = Self::asked_in(&cmdline);
        Milestones {
            enabled: asked && port_access(),
        }
    }

    pub fn asked_in(cmdline: &str) -> bool {
        cmdline.split_whitespace().any(|w| w == CMDLINE_FLAG)
    }

    pub fn report(&self, milestone: Milestone) {
        if self.enabled {
            write_port(milestone as u8);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn port_access() -> bool {
    // SAFETY: ioperm changes only this process's I/O permission bitmap.
    unsafe { libc::ioperm(u64::from(BOOT_COMPLETE_PORT), 1, 1) == 0 }
}

#[cfg(not(target_arch = "x86_64"))]
fn port_access() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn write_port(value: u8) {
    // SAFETY: the port is the VMM's boot-complete device, to which ioperm gave this process
    // access; the write has no effect on memory.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") BOOT_COMPLETE_PORT, in("al") value,
            options(nomem, nostack, preserves_flags));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn write_port(_value: u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_word_turns_reports_on() {
        assert!(Milestones::asked_in(
            "console=ttyS0 sandbox.milestones quiet"
        ));
        assert!(!Milestones::asked_in("console=ttyS0 quiet"));
        assert!(!Milestones::asked_in("sandbox.milestones=0"));
        assert!(!Milestones::asked_in("xsandbox.milestones"));
    }

    #[test]
    fn a_guest_that_was_not_asked_writes_nothing() {
        // On this host the port is not ours: a disabled report must not touch it (an `out`
        // without ioperm would kill the test with SIGSEGV).
        Milestones { enabled: false }.report(Milestone::InitStarted);
    }
}
