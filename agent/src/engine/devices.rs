//! Device nodes in the container's /dev: the default set every container gets, the spec's
//! `linux.devices`, the usual symlinks, and /dev/pts and /dev/shm when the spec does not
//! mount them itself.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chown, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::mounts::secure_join;

/// A device to create: path inside the container, kind, numbers, permissions, owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub path: String,
    pub kind: SFlag,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// /dev/null, zero, full, random, urandom and tty, as runc and crun create them.
pub(crate) fn defaults() -> Vec<Node> {
    [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
    .iter()
    .map(|&(name, major, minor)| Node {
        path: format!("/dev/{name}"),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// A spec device as a node (the spec was validated: `path` is absolute).
pub(crate) fn from_spec(d: &LinuxDevice) -> Node {
    let kind = match d.typ() {
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        _ => SFlag::S_IFCHR,
    };
    Node {
        path: d.path().to_string_lossy().into_owned(),
        kind,
        major: d.major() as u64,
        minor: d.minor() as u64,
        mode: d.file_mode().unwrap_or(0o666) & 0o7777,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    }
}

/// Refuses a spec device whose path already holds something else: another kind of file or
/// another device number (the runtime spec makes that an error). A matching node is fine.
pub(crate) fn check_existing(rootfs: &Path, node: &Node) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dest = secure_join(rootfs, Path::new(&node.path))?;
    let Ok(meta) = fs::symlink_metadata(&dest) else {
        return Ok(());
    };
    let t = meta.file_type();
    let same_kind = match node.kind {
        SFlag::S_IFBLK => t.is_block_device(),
        SFlag::S_IFIFO => t.is_fifo(),
        _ => t.is_char_device(),
    };
    let same_number = node.kind == SFlag::S_IFIFO || meta.rdev() == makedev(node.major, node.minor);
    if same_kind && same_number {
        return Ok(());
    }
    Err(format!(
        "linux.devices: {} exists in the rootfs and is not the requested device ({}:{})",
        node.path, node.major, node.minor
    ))
}

/// Creates the node under `rootfs`. In a user namespace mknod is not allowed: the host's
/// node of the same path is bind-mounted instead (what runc does too).
pub(crate) fn create(rootfs: &Path, node: &Node, bind_from_host: bool) -> Result<(), String> {
    let dest = secure_join(rootfs, Path::new(&node.path))?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    if bind_from_host {
        if !dest.exists() {
            fs::File::create(&dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
        }
        return mount(
            Some(node.path.as_str()),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind-mount device {}: {e}", node.path));
    }
    let _ = fs::remove_file(&dest);
    mknod(
        &dest,
        node.kind,
        Mode::from_bits_truncate(node.mode),
        makedev(node.major, node.minor),
    )
    .map_err(|e| format!("mknod {} ({}:{}): {e}", node.path, node.major, node.minor))?;
    // mknod's mode passed through the umask: set it exactly.
    fs::set_permissions(&dest, fs::Permissions::from_mode(node.mode))
        .map_err(|e| format!("chmod {}: {e}", node.path))?;
    chown(
        &dest,
        Some(Uid::from_raw(node.uid)),
        Some(Gid::from_raw(node.gid)),
    )
    .map_err(|e| format!("chown {}: {e}", node.path))
}

/// The symlinks programs expect in /dev.
pub(crate) fn symlinks(rootfs: &Path) -> Result<(), String> {
    let dev = secure_join(rootfs, Path::new("/dev"))?;
    for (target, name) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ] {
        let link = dev.join(name);
        if fs::symlink_metadata(&link).is_ok() {
            if name != "ptmx" {
                continue;
            }
            // A ptmx node from a host /dev copy would open the host's devpts.
            let _ = fs::remove_file(&link);
        }
        symlink(target, &link).map_err(|e| format!("symlink /dev/{name}: {e}"))?;
    }
    Ok(())
}

/// Mounts a private devpts on /dev/pts and a tmpfs on /dev/shm unless the spec did.
pub(crate) fn pts_and_shm(
    rootfs: &Path,
    spec_mounted: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    if !spec_mounted("/dev/pts") {
        let d = secure_join(rootfs, Path::new("/dev/pts"))?;
        fs::create_dir_all(&d).map_err(|e| format!("mkdir /dev/pts: {e}"))?;
        mount(
            Some("devpts"),
            &d,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )
        .map_err(|e| format!("mount devpts on /dev/pts: {e}"))?;
    }
    if !spec_mounted("/dev/shm") {
        let d = secure_join(rootfs, Path::new("/dev/shm"))?;
        fs::create_dir_all(&d).map_err(|e| format!("mkdir /dev/shm: {e}"))?;
        mount(
            Some("shm"),
            &d,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(|e| format!("mount tmpfs on /dev/shm: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_path_must_be_the_requested_device() {
        let root = std::env::temp_dir().join(format!("devices-check-{}", std::process::id()));
        fs::create_dir_all(root.join("dev")).unwrap();
        let node = |path: &str, major, minor| Node {
            path: path.into(),
            kind: SFlag::S_IFCHR,
            major,
            minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
        };
        // Nothing there: fine.
        check_existing(&root, &node("/dev/absent", 1, 3)).unwrap();
        // A plain file: refused, naming the path.
        fs::write(root.join("dev/plain"), b"").unwrap();
        let err = check_existing(&root, &node("/dev/plain", 1, 3)).unwrap_err();
        assert!(err.contains("/dev/plain exists"), "{err}");
        // A node (root only): the same numbers are fine, others are refused.
        if nix::unistd::geteuid().is_root() {
            mknod(
                &root.join("dev/null"),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(1, 3),
            )
            .unwrap();
            check_existing(&root, &node("/dev/null", 1, 3)).unwrap();
            assert!(check_existing(&root, &node("/dev/null", 1, 5)).is_err());
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn default_set() {
        let d = defaults();
        let null = d.iter().find(|n| n.path == "/dev/null").unwrap();
        assert_eq!((null.major, null.minor, null.mode), (1, 3, 0o666));
        assert_eq!(d.len(), 6);
    }
}
