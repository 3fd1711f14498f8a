//! What a sandbox can reach on the host, from the code rather than from a run: the host
//! system calls the native container's seccomp profile leaves (the engine's own reading of
//! the profile), and the VMM's per-thread allow-lists and device model.

use serde::Serialize;
use vmm::seccomp::{allowed_ioctls, allowed_syscalls, ThreadKind};

#[derive(Clone, Debug, Serialize)]
pub struct NativeSurface {
    /// "none" when the spec carries no seccomp profile.
    pub profile: String,
    pub syscalls_known: usize,
    pub syscalls_allowed: usize,
    pub syscalls_conditional: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ThreadSurface {
    pub thread: &'static str,
    pub syscalls: usize,
    /// ioctl requests allowed (when ioctl is on the list at all).
    pub ioctls: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct VmSurface {
    pub threads: Vec<ThreadSurface>,
    /// Distinct syscalls any VMM thread may make.
    pub syscalls_union: usize,
    pub devices: Vec<String>,
}

pub fn native(spec: &serde_json::Value) -> NativeSurface {
    let profile: Option<oci_spec::runtime::LinuxSeccomp> = spec["linux"]
        .get("seccomp")
        .filter(|s| !s.is_null())
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let s = agent::engine::syscall_surface(profile.as_ref());
    NativeSurface {
        profile: match &profile {
            Some(p) => format!("default action {}", p.default_action()),
            None => "none".into(),
        },
        syscalls_known: s.known,
        syscalls_allowed: s.allowed,
        syscalls_conditional: s.conditional,
    }
}

pub fn vm() -> VmSurface {
    use vmm::devices::legacy::{i8042, port_sink, serial};
    let threads = ThreadKind::ALL
        .iter()
        .map(|&k| ThreadSurface {
            thread: k.name(),
            syscalls: allowed_syscalls(k).len(),
            ioctls: allowed_ioctls(k).len(),
        })
        .collect();
    let mut union: Vec<i64> = ThreadKind::ALL
        .iter()
        .flat_map(|&k| allowed_syscalls(k))
        .collect();
    union.sort_unstable();
    union.dedup();
    let sinks: Vec<String> = port_sink::SINK_RANGES
        .iter()
        .map(|(b, l)| format!("{b:#x}+{l}"))
        .collect();
    // The virtio set is what `sandbox::backend::vm::launch` attaches to every sandbox VM.
    let devices = vec![
        format!(
            "16550 UART (COM1 at {:#x}, {} ports)",
            serial::COM1_PORT,
            serial::COM_PORT_LEN
        ),
        format!(
            "i8042 reset line only ({:#x}, {:#x})",
            i8042::DATA_PORT,
            i8042::COMMAND_PORT
        ),
        "boot-complete port".into(),
        format!("inert legacy ports ({})", sinks.join(", ")),
        "virtio-mmio block: rootfs image, read-only".into(),
        "virtio-mmio block: container's writable layer".into(),
        "virtio-mmio vsock: agent link (unix socket on the host)".into(),
        "virtio-mmio net: only when the spec names a network namespace".into(),
    ];
    VmSurface {
        threads,
        syscalls_union: union.len(),
        devices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microvm_threads_allow_far_less_than_the_native_table() {
        let v = vm();
        let n = native(&serde_json::json!({"linux": {}}));
        assert_eq!(n.profile, "none");
        assert_eq!(n.syscalls_allowed, n.syscalls_known);
        assert_eq!(v.threads.len(), 3);
        assert!(v.syscalls_union > 0 && v.syscalls_union * 4 < n.syscalls_known);
        let vcpu = v.threads.iter().find(|t| t.thread == "vcpu").unwrap();
        assert!(vcpu.ioctls > 0);
    }
}
