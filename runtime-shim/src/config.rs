//! What the layers below the front ends are told about this runtime instance: where state
//! and images live, how containers are isolated, how slow a KVM may be, how a VM gets its
//! rootfs, how to log. `sandbox` builds it from its flags and environment, the containerd shim
//! from its options file; nothing under `sandbox/`, `compare/` or `shim/` sees either source.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use crate::state::Isolation;

pub const DEFAULT_ROOT: &str = "/run/sandbox";
pub const DEFAULT_IMAGE_STORE: &str = "/var/lib/sandbox/images";
/// Allows slow KVM where a caller cannot pass `--allow-slow-kvm` (Docker, containerd).
pub const ALLOW_SLOW_KVM_ENV: &str = "SANDBOX_ALLOW_SLOW_KVM";
/// Turns the VMM's jail off (`0`, `false`) where a caller cannot pass `--jail-vmm=false`.
pub const JAIL_VMM_ENV: &str = "SANDBOX_JAIL_VMM";
/// Turns the cap on every jailed VMM's memory and CPU on (`1`, `true`) where a caller cannot
/// pass `--cap-vmm`.
pub const CAP_VMM_ENV: &str = "SANDBOX_CAP_VMM";

/// A yes/no environment variable's value, as callers that cannot pass flags set it.
pub fn parse_switch(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{value:?} is not one of true, false, 1, 0")),
    }
}

/// What the switch variable `name` in this process's environment says; `unset` where it is
/// not set.
pub fn switch_from_environment(name: &str, unset: bool) -> Result<bool, String> {
    match std::env::var(name) {
        Ok(v) => parse_switch(&v).map_err(|why| format!("{name}: {why}")),
        Err(std::env::VarError::NotPresent) => Ok(unset),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not UTF-8")),
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How a container's rootfs reaches the guest (`--vm-rootfs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RootfsPath {
    /// `image` for a rootfs inside the image store, `shared` otherwise.
    #[default]
    Auto,
    /// A content-cached read-only ext4 image and a writable disk, joined by overlayfs in the
    /// guest: the rootfs directory is never written.
    Image,
    /// The rootfs directory through virtio-fs: no image to build, and the host sees what the
    /// container writes.
    Shared,
}

impl RootfsPath {
    /// Whether `rootfs` is shared with the guest. The image store's unpacked images are
    /// shared by every container of that image, so they keep the image path under `auto`.
    pub fn shares(self, rootfs: &Path, image_store: &Path) -> bool {
        match self {
            RootfsPath::Image => false,
            RootfsPath::Shared => true,
            RootfsPath::Auto => {
                let canonical = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
                !canonical(rootfs).starts_with(canonical(image_store))
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Logging {
    /// Log to this file instead of stderr.
    pub file: Option<PathBuf>,
    pub format: LogFormat,
    pub debug: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// One state directory per container (or per pod, for the shim) lives here.
    pub root: PathBuf,
    /// Imported images and cached rootfs disk images.
    pub image_store: PathBuf,
    pub isolation: Isolation,
    /// Start VMs on a KVM that cannot be identified as hardware-assisted.
    pub allow_slow_kvm: bool,
    pub vm_rootfs: RootfsPath,
    /// Start each VMM in its jail (`sandbox::vmm_jail`; docs/security.md, "The VMM
    /// confined"). On by default.
    pub jail_vmm: bool,
    /// Put each jailed VMM in a cgroup of its own that caps its memory and CPU. Off by
    /// default: it slows a start (docs/security.md, "The VMM confined").
    pub cap_vmm: bool,
    pub logging: Logging,
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            root: PathBuf::from(DEFAULT_ROOT),
            image_store: PathBuf::from(DEFAULT_IMAGE_STORE),
            isolation: Isolation::Vm,
            allow_slow_kvm: false,
            vm_rootfs: RootfsPath::default(),
            jail_vmm: true,
            cap_vmm: false,
            logging: Logging::default(),
        }
    }
}

/// The name the command line gives `value`: the one its parser reads back.
fn flag_value<T: clap::ValueEnum>(value: &T) -> OsString {
    value
        .to_possible_value()
        .map(|v| v.get_name().into())
        .unwrap_or_default()
}

impl RuntimeConfig {
    pub fn with_isolation(&self, isolation: Isolation) -> RuntimeConfig {
        RuntimeConfig {
            isolation,
            ..self.clone()
        }
    }

    /// The global flags that give a child `sandbox` process (a container's monitor, a compare
    /// probe) this configuration. A child inherits this process's environment, so a flag
    /// that is only ever turned on (`--allow-slow-kvm`) reads the same variable there; the
    /// jail and the cap are said either way, as a flag outranks the variable.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--root".into(),
            self.root.clone().into(),
            "--image-store".into(),
            self.image_store.clone().into(),
            "--isolation".into(),
            self.isolation.to_string().into(),
            "--vm-rootfs".into(),
            flag_value(&self.vm_rootfs),
            "--log-format".into(),
            flag_value(&self.logging.format),
        ];
        if self.allow_slow_kvm {
            args.push("--allow-slow-kvm".into());
        }
        args.push(format!("--jail-vmm={}", self.jail_vmm).into());
        args.push(format!("--cap-vmm={}", self.cap_vmm).into());
        if let Some(file) = &self.logging.file {
            args.push("--log".into());
            args.push(file.clone().into());
        }
        if self.logging.debug {
            args.push("--debug".into());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_values() {
        for (value, want) in [("true", true), ("1", true), ("TRUE", true)] {
            assert_eq!(parse_switch(value), Ok(want), "{value}");
        }
        for (value, want) in [("false", false), ("0", false), ("False", false)] {
            assert_eq!(parse_switch(value), Ok(want), "{value}");
        }
        for value in ["", "yes", "2", "maybe"] {
            assert!(parse_switch(value).is_err(), "{value}");
        }
    }

    #[test]
    fn an_unset_switch_takes_its_default() {
        let name = "SANDBOX_TEST_SWITCH_NEVER_SET";
        assert_eq!(switch_from_environment(name, true), Ok(true));
        assert_eq!(switch_from_environment(name, false), Ok(false));
    }
}
