//! The container's root filesystem as containerd prepares it: a list of mounts (an overlay of
//! the image's snapshots, or a bind of a directory) that the shim mounts onto
//! `<bundle>/rootfs` before the container is created and unmounts when the task is deleted,
//! as containerd's runc shim does.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;

use super::error::{Result, ShimError};

/// `<bundle>/rootfs`, where the spec's relative `root.path` points.
pub fn target(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Mounts `mounts` in order onto `<bundle>/rootfs`. Returns whether anything was mounted;
/// on failure, whatever was mounted is unmounted again.
pub fn mount_all(bundle: &Path, mounts: &[Mount]) -> Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let rootfs = target(bundle);
    let err = |reason: String| ShimError::Rootfs {
        bundle: bundle.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(&rootfs)
        .map_err(|e| err(format!("cannot create {}: {e}", rootfs.display())))?;
    for m in mounts {
        if m.type_.is_empty() {
            unmount(bundle);
            return Err(err(format!("mount of {:?} has no type", m.source)));
        }
        if let Err(e) = containerd_shim::mount::mount_rootfs(
            Some(m.type_.as_str()),
            Some(m.source.as_str()),
            &m.options,
            &rootfs,
        ) {
            unmount(bundle);
            return Err(err(format!(
                "mount {} {} on {}: {e}",
                m.type_,
                m.source,
                rootfs.display()
            )));
        }
    }
    Ok(true)
}

/// Unmounts everything at or below `<bundle>/rootfs` (lazily, so a process that still holds
/// it open cannot make delete fail).
pub fn unmount(bundle: &Path) {
    let rootfs = target(bundle);
    if let Some(p) = rootfs.to_str() {
        let _ = containerd_shim::mount::umount_recursive(Some(p), libc::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_mounts_mount_nothing() {
        assert!(!mount_all(Path::new("/nonexistent-bundle"), &[]).unwrap());
    }

    #[test]
    fn a_mount_without_a_type_is_refused() {
        let dir = std::env::temp_dir().join(format!("shim-rootfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = Mount {
            source: "/tmp".into(),
            ..Default::default()
        };
        let err = mount_all(&dir, &[m]).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("no type"), "{err}");
    }
}
