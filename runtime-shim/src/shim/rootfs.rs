//! The container's root filesystem as containerd prepares it: a list of mounts (an overlay of
//! the image's snapshots, or a bind of a directory) that the shim mounts onto
//! `<bundle>/rootfs` before the container is created and unmounts when the task is deleted,
//! as containerd's runc shim does.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;

use nix::mount::{mount, MsFlags};

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
        if let Err(e) = mount_one(&m.type_, &m.source, &m.options, &rootfs) {
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

/// mount(8)-style options split into flags and filesystem data, as the engine reads a spec's
/// mounts; propagation words play no part in mounting the rootfs.
fn parse_options(options: &[String]) -> (MsFlags, Vec<String>) {
    let o = agent::engine::parse_mount_options(options);
    let mut flags = o.flags;
    if o.bind {
        flags |= MsFlags::MS_BIND;
    }
    if o.recursive {
        flags |= MsFlags::MS_REC;
    }
    (flags, o.data)
}

/// Mounts one of containerd's mounts. Done here rather than with containerd-shim's helper,
/// which forks and waits for the child through the reaper of the crate's own `run`.
fn mount_one(
    fs_type: &str,
    source: &str,
    options: &[String],
    target: &Path,
) -> std::result::Result<(), String> {
    let (flags, data) = parse_options(options);
    let data = data.join(",");
    if data.len() >= 4096 {
        return Err(format!(
            "mount options of {} bytes exceed one page",
            data.len()
        ));
    }
    let data = (!data.is_empty()).then_some(data.as_str());
    let bind = flags.contains(MsFlags::MS_BIND);
    let fs = (!bind).then_some(fs_type);
    mount(
        Some(source),
        target,
        fs,
        flags & !MsFlags::MS_RDONLY
            | if bind {
                MsFlags::empty()
            } else {
                flags & MsFlags::MS_RDONLY
            },
        data,
    )
    .map_err(|e| e.to_string())?;
    if bind && flags.contains(MsFlags::MS_RDONLY) {
        // A bind mount takes its read-only flag only on a remount.
        mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| format!("remount read-only: {e}"))?;
    }
    Ok(())
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
    fn options_split_into_flags_and_data() {
        let o: Vec<String> = ["rbind", "ro", "nosuid", "lowerdir=/a:/b", "index=off"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&o);
        assert!(flags.contains(
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        ));
        assert_eq!(data, vec!["lowerdir=/a:/b", "index=off"]);
        let (flags, _) = parse_options(&["ro".to_string(), "rw".to_string()]);
        assert!(!flags.contains(MsFlags::MS_RDONLY));
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
