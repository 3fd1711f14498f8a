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
    if options.iter().any(|o| o.contains('\0')) {
        return Err(bad("an option contains NUL".into()));
    }
    let wrap = |error| SandboxError::Mount {
        source_dev: source.to_owned(),
        fs_type: fs_type.to_owned(),
        target: target.to_owned(),
        error,
    };
    fs::create_dir_all(target).map_err(wrap)?;
    let data = options.join(",");
    if fs_type == "overlay" {
        // The writable layer is usually a fresh filesystem: make its directories.
        for dir in data.split(',').filter_map(|o| {
            o.strip_prefix("upperdir=")
                .or_else(|| o.strip_prefix("workdir="))
        }) {
            fs::create_dir_all(dir).map_err(wrap)?;
        }
    }
    let mut flags = MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
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
            &["a\0b".into()],
        )
        .unwrap_err();
        assert!(matches!(err, SandboxError::BadStorage { .. }), "{err}");
        let err = mount_block_device(
            Path::new("/dev/vdb"),
            "ext4,x",
            Path::new("/mnt/x"),
            false,
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, SandboxError::BadStorage { .. }), "{err}");
    }

    #[test]
    fn overlay_storage_gets_its_directories_and_keeps_writes_apart() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let base = std::env::temp_dir().join(format!("agent-overlay-{}", std::process::id()));
        let b = base.clone();
        let result = std::thread::spawn(move || {
            // A mount namespace of this thread only: the mounts vanish with it.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .unwrap();
            fs::create_dir_all(b.join("lower")).unwrap();
            fs::write(b.join("lower/image-file"), "from the image").unwrap();
            // The writable layer: an empty filesystem, as a fresh disk would be.
            mount_storage(&StorageConfig {
                source: "tmpfs".into(),
                fs_type: "tmpfs".into(),
                mount_point: b.join("upper"),
                read_only: false,
                options: vec![],
            })
            .unwrap();
            let rootfs = b.join("rootfs");
            mount_storage(&StorageConfig {
                source: "overlay".into(),
                fs_type: "overlay".into(),
                mount_point: rootfs.clone(),
                read_only: false,
                options: vec![format!(
                    "lowerdir={},upperdir={},workdir={}",
                    b.join("lower").display(),
                    b.join("upper/upper").display(),
                    b.join("upper/work").display()
                )],
            })
            .unwrap();
            let seen = fs::read_to_string(rootfs.join("image-file")).unwrap();
            fs::write(rootfs.join("image-file"), "changed").unwrap();
            let lower = fs::read_to_string(b.join("lower/image-file")).unwrap();
            let upper = fs::read_to_string(b.join("upper/upper/image-file")).unwrap();
            (seen, lower, upper)
        })
        .join()
        .unwrap();
        let _ = fs::remove_dir_all(&base);
        assert_eq!(result.0, "from the image");
        assert_eq!(result.1, "from the image", "the image must not change");
        assert_eq!(result.2, "changed");
    }
}
