//! The pseudo filesystems a guest's PID 1 mounts before anything else runs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("create mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount {fstype} on {path}: {source}")]
    Mount {
        fstype: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One filesystem to mount: (source, target relative to the root, type, flags, data).
struct PseudoFs {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const fn fs(
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
) -> PseudoFs {
    PseudoFs {
        source,
        target,
        fstype,
        flags,
        data,
    }
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In mount order: each later target lives inside an earlier one.
const GUEST_FILESYSTEMS: &[PseudoFs] = &[
    fs("proc", "proc", "proc", NOSUID_NODEV_NOEXEC, None),
    fs("sysfs", "sys", "sysfs", NOSUID_NODEV_NOEXEC, None),
    fs(
        "devtmpfs",
        "dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    ),
    fs(
        "devpts",
        "dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        Some("newinstance,ptmxmode=0666,mode=0620"),
    ),
    fs(
        "shm",
        "dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=1777"),
    ),
    fs(
        "tmpfs",
        "run",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=0755"),
    ),
    fs(
        "cgroup2",
        "sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        None,
    ),
];

/// Controllers handed down to the containers' cgroups. Each is enabled on its own so that a
/// kernel built without one of them still gets the others.
const CGROUP_CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "pids"];

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and the cgroup2 hierarchy under
/// `root` (`/` in a guest). A filesystem that is already mounted there is left alone.
pub fn mount_pseudo_filesystems(root: &Path) -> Result<(), MountError> {
    for fs in GUEST_FILESYSTEMS {
        let path = root.join(fs.target);
        fs::create_dir_all(&path).map_err(|source| MountError::MountPoint {
            path: path.clone(),
            source,
        })?;
        match mount(Some(fs.source), &path, Some(fs.fstype), fs.flags, fs.data) {
            // EBUSY: the kernel (or an earlier agent) mounted it already.
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => {
                return Err(MountError::Mount {
                    fstype: fs.fstype.to_owned(),
                    path,
                    source: e.into(),
                })
            }
        }
    }
    let ptmx = root.join("dev/ptmx");
    if fs::symlink_metadata(&ptmx).is_err() {
        // Best effort: devtmpfs normally provides the node already.
        let _ = std::os::unix::fs::symlink("pts/ptmx", &ptmx);
    }
    Ok(())
}

/// Enables the resource controllers for the cgroups below the root one; returns the
/// controllers that could not be enabled (absent from the kernel).
pub fn enable_cgroup_controllers(cgroup_root: &Path) -> Vec<&'static str> {
    let control = cgroup_root.join("cgroup.subtree_control");
    CGROUP_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| fs::write(&control, format!("+{c}")).is_err())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn mounts_everything_in_a_private_mount_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create a mount namespace");
            return;
        }
        let mounts = thread::spawn(|| {
            // A thread of its own with its own mount namespace: the mounts vanish with it.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .unwrap();
            let root =
                std::env::temp_dir().join(format!("agent-init-mounts-{}", std::process::id()));
            fs::create_dir_all(&root).unwrap();
            mount(
                Some("tmpfs"),
                &root,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            mount_pseudo_filesystems(&root).unwrap();
            // A second call (an agent restarted in the same guest) must not fail.
            mount_pseudo_filesystems(&root).unwrap();
            let missing = enable_cgroup_controllers(&root.join("sys/fs/cgroup"));
            let info = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
            let found: Vec<(String, String)> = info
                .lines()
                .filter_map(|l| {
                    let fields: Vec<&str> = l.split(' ').collect();
                    let dash = fields.iter().position(|f| *f == "-")?;
                    let target = fields[4].strip_prefix(root.to_str().unwrap())?;
                    Some((target.to_owned(), fields[dash + 1].to_owned()))
                })
                .collect();
            nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH).unwrap();
            let _ = fs::remove_dir(&root);
            (found, missing)
        })
        .join()
        .unwrap();
        let (found, _missing) = mounts;
        for (target, fstype) in [
            ("/proc", "proc"),
            ("/sys", "sysfs"),
            ("/dev", "devtmpfs"),
            ("/dev/pts", "devpts"),
            ("/dev/shm", "tmpfs"),
            ("/run", "tmpfs"),
            ("/sys/fs/cgroup", "cgroup2"),
        ] {
            assert!(
                found.iter().any(|(t, f)| t == target && f == fstype),
                "{target} ({fstype}) not mounted: {found:?}"
            );
        }
    }
}
