//! Applies a `create_sandbox` request inside a guest: hostname, DNS, network, storage.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::protocol::{SandboxConfig, StorageConfig};

use super::dns::{self, DnsError};
use super::network::{self, NetworkError};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("hostname {0:?}: must be 1 to 64 characters without NUL, '/' or whitespace")]
    BadHostname(String),
    #[error("set hostname: {0}")]
    Hostname(#[source] io::Error),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("storage {source_dev}: {problem}")]
    BadStorage {
        source_dev: PathBuf,
        problem: String,
    },
    #[error("mount {source_dev} ({fs_type}) on {target}: {error}")]
    Mount {
        source_dev: PathBuf,
        fs_type: String,
        target: PathBuf,
        #[source]
        error: io::Error,
    },
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name
            .chars()
            .any(|c| c == '\0' || c == '/' || c.is_whitespace() || c.is_control())
}

/// Mounts one block device. The mount point must be absolute so that a relative path cannot
/// land somewhere unexpected.
pub fn mount_storage(storage: &StorageConfig) -> Result<(), SandboxError> {
    mount_block_device(
        &storage.source,
        &storage.fs_type,
        &storage.mount_point,
        storage.read_only,
        &storage.options,
    )
}

/// Mounts `source` (a block device) of type `fs_type` on `target`, creating `target`.
pub fn mount_block_device(
    source: &Path,
    fs_type: &str,
    target: &Path,
    read_only: bool,
    options: &[String],
) -> Result<(), SandboxError> {
    let bad = |problem: String| SandboxError::BadStorage {
        source_dev: source.to_owned(),
        problem,
    };
    if !target.is_absolute() {
        return Err(bad(format!(
            "mount point {} is not absolute",
            target.display()
        )));
    }
    if fs_type.is_empty() || fs_type.contains(',') {
        return Err(bad(format!("{fs_type:?} is not a filesystem type")));
    }
    if options.iter().any(|o| o.contains(',') || o.contains('\0')) {
        return Err(bad(
            "an option contains ',' or NUL; give one option per entry".into(),
        ));
    }
    let wrap = |error| SandboxError::Mount {
        source_dev: source.to_owned(),
        fs_type: fs_type.to_owned(),
        target: target.to_owned(),
        error,
    };
    fs::create_dir_all(target).map_err(wrap)?;
    let mut flags = MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = options.join(",");
    mount(
        Some(source),
        target,
        Some(fs_type),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| wrap(e.into()))
}

/// Applies the whole configuration, in an order where each step can rely on the earlier ones.
pub fn apply(config: &SandboxConfig) -> Result<(), SandboxError> {
    if let Some(name) = &config.hostname {
        if !valid_hostname(name) {
            return Err(SandboxError::BadHostname(name.clone()));
        }
        nix::unistd::sethostname(name).map_err(|e| SandboxError::Hostname(e.into()))?;
    }
    for storage in &config.storage {
        mount_storage(storage)?;
    }
    network::configure(&config.interfaces, &config.routes)?;
    if let Some(d) = &config.dns {
        dns::write_resolv_conf(Path::new("/"), d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_checked() {
        assert!(valid_hostname("sandbox-1"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("a b"));
        assert!(!valid_hostname(&"x".repeat(65)));
    }

    #[test]
    fn storage_input_is_checked_before_mounting() {
        let err = mount_block_device(Path::new("/dev/vdb"), "ext4", Path::new("rel"), false, &[])
            .unwrap_err();
        assert!(err.to_string().contains("not absolute"), "{err}");
        let err = mount_block_device(
            Path::new("/dev/vdb"),
            "ext4",
            Path::new("/mnt/x"),
            false,
            &["a,b".into()],
        )
        .unwrap_err();
        assert!(matches!(err, SandboxError::BadStorage { .. }), "{err}");
    }
}
