//! VM configuration: what `--config FILE.json` holds and what the command-line flags set.
//!
//! New device kinds add a field here (with `#[serde(default)]`) and a flag in `main.rs`; a
//! flag of the `key=value,...` form parses with `key_value`.

pub mod key_value;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::cpu_template::CpuTemplate;
use crate::arch::x86_64::mptable;
use crate::devices::virtio::block::{BlockConfig, BlockConfigError};
use crate::devices::virtio::fs::{FsConfig, FsConfigError};
use crate::devices::virtio::net::{NetConfig, NetConfigError};
use crate::devices::virtio::vsock::{VsockConfig, VsockConfigError};
use crate::jail::{JailConfig, JailConfigError};
use crate::vstate::memory::MemoryBacking;

pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEM_MIB: u64 = 128;
/// Used when no command line is given: serial console, reset through the i8042 on reboot,
/// reboot on panic, no PCI bus to probe.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// Where the guest's COM1 output goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialOutput {
    #[default]
    Stdout,
    None,
    File(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid serial output {0:?}: expected stdout, none or file:PATH")]
pub struct InvalidSerialOutput(String);

impl FromStr for SerialOutput {
    type Err = InvalidSerialOutput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "none" => Ok(Self::None),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
                _ => Err(InvalidSerialOutput(s.to_string())),
            },
        }
    }
}

impl fmt::Display for SerialOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::None => f.write_str("none"),
            Self::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl Serialize for SerialOutput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SerialOutput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}

fn default_mem_mib() -> u64 {
    DEFAULT_MEM_MIB
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub kernel: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; `DEFAULT_CMDLINE` when absent. Devices append their own
    /// parameters to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_mem_mib")]
    pub mem_mib: u64,
    #[serde(default)]
    pub serial: SerialOutput,
    #[serde(default)]
    pub cpu_template: CpuTemplate,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<BlockConfig>,
    /// virtio-net NICs on TAP interfaces, in the order the guest sees them (eth0, eth1, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<NetConfig>,
    /// The virtio-vsock device: guest CID and host-side unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices, one per shared directory, each served by its vhost-user backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsConfig>,
    /// A virtio-rng entropy device.
    #[serde(default)]
    pub rng: bool,
    /// Per-thread seccomp filters; off only for debugging.
    #[serde(default = "default_true")]
    pub seccomp: bool,
    /// Confine the process once its devices are open (`jail.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no kernel given (--kernel PATH or \"kernel\" in the config file)")]
    NoKernel,
    #[error("vcpus must be at least 1")]
    ZeroVcpus,
    #[error("at most {max} vCPUs are supported, not {requested}")]
    TooManyVcpus { requested: u8, max: u8 },
    #[error("disk {index}: {source}")]
    Disk {
        index: usize,
        source: BlockConfigError,
    },
    #[error("NIC {index}: {source}")]
    Net {
        index: usize,
        source: NetConfigError,
    },
    #[error("TAP `{0}` is given to more than one NIC")]
    DuplicateTap(String),
    #[error("vsock: {0}")]
    Vsock(VsockConfigError),
    #[error("virtio-fs {index}: {source}")]
    Fs { index: usize, source: FsConfigError },
    #[error("virtio-fs tag `{0}` is given to more than one device")]
    DuplicateFsTag(String),
    #[error("{0}")]
    Jail(JailConfigError),
    #[error("vsock: with a jail the socket path must be relative to the jail directory (guest connections open `PATH_<port>` after the VMM is confined to it), not {0}")]
    VsockOutsideJail(String),
}

impl VmConfig {
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            vcpus: DEFAULT_VCPUS,
            mem_mib: DEFAULT_MEM_MIB,
            serial: SerialOutput::default(),
            cpu_template: CpuTemplate::default(),
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            fs: Vec::new(),
            rng: false,
            seccomp: true,
            jail: None,
        }
    }

    pub fn from_json(text: &str, path: &Path) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Checks what can be checked without touching the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if self.vcpus == 0 {
            return Err(ConfigError::ZeroVcpus);
        }
        if self.vcpus > mptable::MAX_CPUS {
            return Err(ConfigError::TooManyVcpus {
                requested: self.vcpus,
                max: mptable::MAX_CPUS,
            });
        }
        for (index, disk) in self.disks.iter().enumerate() {
            disk.validate()
                .map_err(|source| ConfigError::Disk { index, source })?;
        }
        for (index, net) in self.nets.iter().enumerate() {
            net.validate()
                .map_err(|source| ConfigError::Net { index, source })?;
            if self.nets[..index].iter().any(|other| other.tap == net.tap) {
                return Err(ConfigError::DuplicateTap(net.tap.clone()));
            }
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate().map_err(ConfigError::Vsock)?;
        }
        for (index, fs) in self.fs.iter().enumerate() {
            fs.validate()
                .map_err(|source| ConfigError::Fs { index, source })?;
            if self.fs[..index].iter().any(|other| other.tag == fs.tag) {
                return Err(ConfigError::DuplicateFsTag(fs.tag.clone()));
            }
        }
        if let Some(jail) = &self.jail {
            jail.validate().map_err(ConfigError::Jail)?;
            if let Some(vsock) = &self.vsock {
                if !crate::jail::is_inside_jail(&vsock.path) {
                    return Err(ConfigError::VsockOutsideJail(
                        vsock.path.display().to_string(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Shared file-backed memory when a backend process must map guest memory too.
    pub fn memory_backing(&self) -> MemoryBacking {
        if self.fs.is_empty() {
            MemoryBacking::Anonymous
        } else {
            MemoryBacking::SharedFile
        }
    }

    pub fn cmdline(&self) -> &str {
        self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<VmConfig, ConfigError> {
        VmConfig::from_json(json, Path::new("test.json"))
    }

    #[test]
    fn minimal_json_gets_defaults() {
        let cfg = parse(r#"{"kernel": "/boot/vmlinux"}"#).unwrap();
        assert_eq!(cfg, VmConfig::new("/boot/vmlinux"));
        assert_eq!(cfg.cmdline(), DEFAULT_CMDLINE);
        cfg.validate().unwrap();
    }

    #[test]
    fn full_json_round_trips() {
        let json = r#"{
            "kernel": "k", "initrd": "i", "cmdline": "console=ttyS0 quiet",
            "vcpus": 2, "mem_mib": 256, "serial": "file:/tmp/console.log",
            "cpu_template": "minimal"
        }"#;
        let cfg = parse(json).unwrap();
        assert_eq!(cfg.vcpus, 2);
        assert_eq!(cfg.mem_mib, 256);
        assert_eq!(cfg.initrd, Some(PathBuf::from("i")));
        assert_eq!(cfg.serial, SerialOutput::File("/tmp/console.log".into()));
        assert_eq!(cfg.cpu_template, CpuTemplate::Minimal);
        assert_eq!(cfg.cmdline(), "console=ttyS0 quiet");
        let again = parse(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn bad_json_is_reported_with_the_file() {
        let err = parse(r#"{"kernel": "k", "vcpu": 2}"#).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("test.json") && text.contains("vcpu"),
            "{text}"
        );
        assert!(parse(r#"{"kernel": "k", "serial": "tty"}"#).is_err());
        assert!(parse(r#"{"kernel": "k", "cpu_template": "T2"}"#).is_err());
        assert!(parse(r#"{"kernel": "k", "vcpus": -1}"#).is_err());
        assert!(parse(r#"{}"#).is_err());
        assert!(matches!(
            VmConfig::from_file(Path::new("/nonexistent.json")),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn validation_catches_vcpu_counts_and_empty_kernel() {
        let mut cfg = VmConfig::new("k");
        cfg.vcpus = 0;
        assert!(matches!(cfg.validate(), Err(ConfigError::ZeroVcpus)));
        cfg.vcpus = 33;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::TooManyVcpus { .. })
        ));
        cfg.vcpus = 32;
        cfg.validate().unwrap();
        assert!(matches!(
            VmConfig::new("").validate(),
            Err(ConfigError::NoKernel)
        ));
    }

    #[test]
    fn virtio_devices_in_json() {
        let cfg = parse(
            r#"{"kernel": "k", "rng": true, "seccomp": false,
                "disks": [{"path": "/a.img"}, {"path": "/b.img", "read_only": true, "id": "data"}]}"#,
        )
        .unwrap();
        assert!(cfg.rng && !cfg.seccomp);
        assert_eq!(cfg.disks.len(), 2);
        assert!(cfg.disks[1].read_only);
        assert_eq!(cfg.disks[1].id.as_deref(), Some("data"));
        cfg.validate().unwrap();
        assert!(parse(r#"{"kernel": "k"}"#).unwrap().seccomp);
        let bad =
            parse(r#"{"kernel": "k", "disks": [{"path": "/a", "id": "has space"}]}"#).unwrap();
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Disk { index: 0, .. })
        ));
        assert!(parse(r#"{"kernel": "k", "disks": [{"path": "/a", "size": 1}]}"#).is_err());
    }

    #[test]
    fn fs_devices_need_distinct_tags_and_shared_memory() {
        let cfg = parse(
            r#"{"kernel": "k", "fs": [{"tag": "a", "socket": "/a.sock"},
                                      {"tag": "b", "socket": "/b.sock"}]}"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.memory_backing(), MemoryBacking::SharedFile);
        assert_eq!(
            VmConfig::new("k").memory_backing(),
            MemoryBacking::Anonymous
        );
        let clash = parse(
            r#"{"kernel": "k", "fs": [{"tag": "a", "socket": "/a.sock"},
                                      {"tag": "a", "socket": "/b.sock"}]}"#,
        )
        .unwrap();
        let err = clash.validate().unwrap_err();
        assert!(
            matches!(&err, ConfigError::DuplicateFsTag(t) if t == "a"),
            "{err}"
        );
    }

    #[test]
    fn nics_and_vsock_from_the_config_file() {
        let cfg = parse(
            r#"{"kernel": "k",
                "nets": [{"tap": "tap0", "mac": "52:54:00:00:00:01"}, {"tap": "tap1"}],
                "vsock": {"cid": 3, "path": "/run/v.sock"}}"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.nets.len(), 2);
        assert_eq!(cfg.nets[1].tap, "tap1");
        assert_eq!(cfg.vsock.as_ref().unwrap().cid, 3);
        let again = parse(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(again, cfg);

        let dup = parse(r#"{"kernel": "k", "nets": [{"tap": "t"}, {"tap": "t"}]}"#).unwrap();
        assert!(matches!(dup.validate(), Err(ConfigError::DuplicateTap(t)) if t == "t"));
        let bad_tap = parse(r#"{"kernel": "k", "nets": [{"tap": "a/b"}]}"#).unwrap();
        assert!(matches!(
            bad_tap.validate(),
            Err(ConfigError::Net { index: 0, .. })
        ));
        let bad_cid = parse(r#"{"kernel": "k", "vsock": {"cid": 2, "path": "/v"}}"#).unwrap();
        assert!(matches!(bad_cid.validate(), Err(ConfigError::Vsock(_))));
        assert!(parse(r#"{"kernel": "k", "nets": [{"tap": "t", "mac": "x"}]}"#).is_err());
        assert!(parse(r#"{"kernel": "k", "vsock": {"cid": 3}}"#).is_err());
    }

    #[test]
    fn jail_in_json() {
        let cfg = parse(
            r#"{"kernel": "k", "vsock": {"cid": 3, "path": "vsock.sock"},
                "jail": {"dir": "/run/j", "uid": 65534, "gid": 65534,
                         "cgroup": "/sys/fs/cgroup/sandbox/x", "memory_max_mib": 300}}"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let jail = cfg.jail.as_ref().unwrap();
        assert_eq!(jail.dir, PathBuf::from("/run/j"));
        assert_eq!(jail.memory_max_mib, Some(300));
        assert_eq!(jail.cpu_max_percent, None);
        let again = parse(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(again, cfg);

        let e = parse(r#"{"kernel": "k", "jail": {"dir": "/j", "uid": 1, "gid": 1, "root": "/"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("root"), "{e}");
        let root = parse(r#"{"kernel": "k", "jail": {"dir": "/j", "uid": 0, "gid": 1}}"#).unwrap();
        let e = root.validate().unwrap_err().to_string();
        assert!(e.contains("uid 0 is not an unprivileged id"), "{e}");
        let outside = parse(
            r#"{"kernel": "k", "vsock": {"cid": 3, "path": "/run/v.sock"},
                "jail": {"dir": "/j", "uid": 1, "gid": 1}}"#,
        )
        .unwrap();
        let e = outside.validate().unwrap_err().to_string();
        assert!(
            e.contains("relative to the jail directory") && e.contains("/run/v.sock"),
            "{e}"
        );
    }

    #[test]
    fn serial_output_parses() {
        assert_eq!("stdout".parse(), Ok(SerialOutput::Stdout));
        assert_eq!("none".parse(), Ok(SerialOutput::None));
        assert_eq!("file:/x".parse(), Ok(SerialOutput::File("/x".into())));
        assert!("file:".parse::<SerialOutput>().is_err());
        assert!("tty".parse::<SerialOutput>().is_err());
    }
}
