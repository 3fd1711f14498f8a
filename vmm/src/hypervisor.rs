//! The narrow boundary to KVM: opening `/dev/kvm` with errors that say what is wrong, and
//! the capabilities this VMM relies on.

use std::fs::OpenOptions;
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

pub const KVM_PATH: &str = "/dev/kvm";
/// KVM_GET_API_VERSION has returned 12 since Linux 2.6.22 and is not expected to change.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities without which a guest cannot be booted the way this VMM boots it.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "irqchip"),
    (Cap::Pit2, "pit2"),
    (Cap::UserMemory, "user_memory"),
    (Cap::SetTssAddr, "set_tss_addr"),
    (Cap::SetIdentityMapAddr, "set_identity_map_addr"),
    (Cap::ExtCpuid, "ext_cpuid"),
    (Cap::Ioeventfd, "ioeventfd"),
    (Cap::Irqfd, "irqfd"),
    (Cap::ImmediateExit, "immediate_exit"),
    (Cap::VcpuEvents, "vcpu_events"),
    (Cap::MpState, "mp_state"),
];

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("{KVM_PATH} does not exist: the kernel has no KVM support loaded (modprobe kvm-intel or kvm-amd), or this is a container without the device")]
    Missing,
    #[error("{KVM_PATH} is not accessible to this user (add the user to the 'kvm' group or adjust the device's permissions)")]
    PermissionDenied,
    #[error("cannot open {KVM_PATH}: {0}")]
    Open(std::io::Error),
    #[error("KVM API version {found}, expected {KVM_API_VERSION}")]
    ApiVersion { found: i32 },
    #[error("KVM lacks required capabilities: {}", .0.join(", "))]
    MissingCaps(Vec<&'static str>),
}

/// Opens `/dev/kvm` read-write with close-on-exec and checks the API version.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    open_kvm_at(Path::new(KVM_PATH))
}

pub fn open_kvm_at(path: &Path) -> Result<Kvm, KvmError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => KvmError::Missing,
            std::io::ErrorKind::PermissionDenied => KvmError::PermissionDenied,
            _ => KvmError::Open(e),
        })?;
    // SAFETY: the descriptor was just opened and is owned by nothing else.
    let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
    let found = kvm.get_api_version();
    if found != KVM_API_VERSION {
        return Err(KvmError::ApiVersion { found });
    }
    Ok(kvm)
}

/// Names of required capabilities this KVM does not offer.
pub fn missing_caps(kvm: &Kvm) -> Vec<&'static str> {
    REQUIRED_CAPS
        .iter()
        .filter(|(cap, _)| !kvm.check_extension(*cap))
        .map(|(_, name)| *name)
        .collect()
}

pub fn check_caps(kvm: &Kvm) -> Result<(), KvmError> {
    let missing = missing_caps(kvm);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(KvmError::MissingCaps(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_named() {
        let err = open_kvm_at(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(matches!(err, KvmError::Missing));
        assert!(err.to_string().contains("/dev/kvm does not exist"));
    }

    #[test]
    fn non_kvm_file_fails_cleanly() {
        // /dev/null opens but answers KVM_GET_API_VERSION with an error, not 12.
        let err = open_kvm_at(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, KvmError::ApiVersion { .. }), "{err}");
    }
}
