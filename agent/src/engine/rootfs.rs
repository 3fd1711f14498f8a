//! The container's root filesystem, set up by its init inside the new mount namespace:
//! propagation, the rootfs bind mount, the spec's mounts and devices, pivot_root (or
//! MS_MOVE + chroot where pivot_root cannot work, e.g. a rootfs on the initramfs), then
//! masked paths, read-only paths and the read-only root.
//!
//! A spec without a mount namespace shares the runtime's (as the runtime spec says of every
//! namespace not listed). The same steps then run there, minus the ones that would change
//! the runtime's own tree: the propagation of `/` is left alone, and the root changes by
//! chroot, never pivot_root or MS_MOVE. Everything the container mounts sits on the rootfs
//! bind mount, which the engine detaches at destroy ([`detach_shared_rootfs`]).

use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, chroot, pivot_root};
use oci_spec::runtime::Spec;

use super::cgroups::Cgroup;
use super::devices;
use super::mounts::{mount_entry, propagation, secure_join};

/// Root propagations set on the new root once it is in place rather than on the old one
/// first: shared (the host side must not become a peer) and unbindable (the rootfs bind
/// would fail).
const APPLIED_TO_THE_NEW_ROOT: MsFlags = MsFlags::MS_SHARED.union(MsFlags::MS_UNBINDABLE);

/// Everything the rootfs steps need.
pub(crate) struct RootfsPlan<'a> {
    pub spec: &'a Spec,
    /// Absolute path of the rootfs on the host.
    pub rootfs: PathBuf,
    pub bundle: PathBuf,
    pub cgroup: Option<&'a Cgroup>,
    pub cgroupns: bool,
    pub userns: bool,
    pub no_pivot: bool,
    /// The container has a mount namespace of its own (new or joined); without one, the
    /// runtime's is shared.
    pub own_mount_ns: bool,
}

fn none() -> Option<&'static str> {
    None
}

/// Steps before the root changes.
pub(crate) fn prepare(plan: &RootfsPlan) -> Result<(), String> {
    let linux = plan.spec.linux().as_ref();
    if plan.own_mount_ns {
        // Nothing mounted from here on may leak back to the host: the default is rslave.
        let prop = linux
            .and_then(|l| l.rootfs_propagation().as_deref())
            .map(|p| propagation(p).expect("validated"))
            .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
        let first = if prop.intersects(APPLIED_TO_THE_NEW_ROOT) {
            // Applied to the new root at the end (the rootfs could not be bound from an
            // unbindable tree); the host side stays slave meanwhile.
            MsFlags::MS_SLAVE | MsFlags::MS_REC
        } else {
            prop | MsFlags::MS_REC
        };
        mount(none(), "/", none(), first, none()).map_err(|e| format!("make / {first:?}: {e}"))?;
    }

    // pivot_root needs the new root to be a mount point; in a shared mount namespace the
    // bind holds every mount of the container, so that one detach removes them all.
    mount(
        Some(&plan.rootfs),
        &plan.rootfs,
        none(),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none(),
    )
    .map_err(|e| format!("bind-mount the rootfs {}: {e}", plan.rootfs.display()))?;

    let mounts = plan.spec.mounts().as_deref().unwrap_or(&[]);
    for (i, m) in mounts.iter().enumerate() {
        mount_entry(m, &plan.rootfs, &plan.bundle, plan.cgroup, plan.cgroupns)
            .map_err(|e| format!("mounts[{i}] ({}): {e}", m.destination().display()))?;
    }
    let spec_mounted = |dest: &str| {
        mounts
            .iter()
            .any(|m| Path::new("/").join(m.destination()) == Path::new(dest))
    };
    for node in devices::defaults() {
        devices::create(&plan.rootfs, &node, plan.userns)?;
    }
    for d in linux.and_then(|l| l.devices().as_deref()).unwrap_or(&[]) {
        let node = devices::from_spec(d);
        devices::check_existing(&plan.rootfs, &node)?;
        devices::create(&plan.rootfs, &node, plan.userns)?;
    }
    devices::pts_and_shm(&plan.rootfs, &spec_mounted)?;
    devices::symlinks(&plan.rootfs)?;
    // Like runc, a missing working directory is created rather than refused.
    if let Some(p) = plan.spec.process() {
        let cwd = secure_join(&plan.rootfs, p.cwd())?;
        if !cwd.exists() {
            fs::create_dir_all(&cwd)
                .map_err(|e| format!("process.cwd: mkdir {}: {e}", p.cwd().display()))?;
        }
    }
    Ok(())
}

/// Makes the rootfs the root of the mount namespace, or of this process alone where the
/// mount namespace is the runtime's.
pub(crate) fn change_root(plan: &RootfsPlan) -> Result<(), String> {
    let rootfs = plan.rootfs.as_path();
    chdir(rootfs).map_err(|e| format!("chdir {}: {e}", rootfs.display()))?;
    if !plan.own_mount_ns {
        // pivot_root or MS_MOVE would change the runtime's own root.
        chroot(".").map_err(|e| format!("chroot: {e}"))?;
        return chdir("/").map_err(|e| format!("chdir /: {e}"));
    }
    if !plan.no_pivot {
        match pivot_root(".", ".") {
            Ok(()) => {
                // The old root is now stacked under the new one: detach it, without letting
                // the unmount propagate to the host.
                mount(
                    none(),
                    ".",
                    none(),
                    MsFlags::MS_SLAVE | MsFlags::MS_REC,
                    none(),
                )
                .map_err(|e| format!("make the old root rslave: {e}"))?;
                umount2(".", MntFlags::MNT_DETACH)
                    .map_err(|e| format!("detach the old root: {e}"))?;
                return chdir("/").map_err(|e| format!("chdir /: {e}"));
            }
            // The initramfs (rootfs) cannot be pivoted away from.
            Err(Errno::EINVAL) => {}
            Err(e) => return Err(format!("pivot_root: {e}")),
        }
    }
    mount(Some("."), "/", none(), MsFlags::MS_MOVE, none())
        .map_err(|e| format!("move the rootfs onto /: {e}"))?;
    chroot(".").map_err(|e| format!("chroot: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))
}

/// The id of the mount a path is on (statx's STX_MNT_ID), to tell the container's rootfs
/// bind from whatever the rootfs was on before.
pub fn mount_id(path: &Path) -> Result<u64, super::error::EngineError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| super::error::EngineError::sys(format!("statx {}", path.display()), e))?;
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx fills the struct we pass; the path is a valid C string.
    let rc = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, libc::STATX_MNT_ID, &mut st) };
    if rc != 0 || st.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(super::error::EngineError::sys(
            format!("statx(STATX_MNT_ID) {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(st.stx_mnt_id)
}

/// Undoes, from the runtime's mount namespace, what a container sharing it mounted: the
/// rootfs bind and everything on it, lazily (something may still use them), down to the
/// mount `before` (the one the rootfs was on before the container), which stays.
pub fn detach_shared_rootfs(rootfs: &Path, before: u64) -> Result<(), super::error::EngineError> {
    // The container may have stacked mounts on its own root; a few levels at most.
    for _ in 0..16 {
        if mount_id(rootfs)? == before {
            return Ok(());
        }
        umount2(rootfs, MntFlags::MNT_DETACH).map_err(|e| {
            super::error::EngineError::sys(
                format!("detach the container's mounts at {}", rootfs.display()),
                e,
            )
        })?;
    }
    Err(super::error::EngineError::sys(
        format!("detach the container's mounts at {}", rootfs.display()),
        std::io::Error::other("still mounted after 16 detaches"),
    ))
}

/// Steps inside the new root.
pub(crate) fn finish(plan: &RootfsPlan) -> Result<(), String> {
    let spec = plan.spec;
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or(&[])
    {
        mask(Path::new(p))?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or(&[])
    {
        readonly(Path::new(p))?;
    }
    if let Some(true) = spec.root().as_ref().and_then(|r| r.readonly()) {
        remount_ro(Path::new("/"))?;
    }
    if let Some(p) = linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        let f = propagation(p).expect("validated");
        if f.intersects(APPLIED_TO_THE_NEW_ROOT) {
            mount(none(), "/", none(), f, none()).map_err(|e| format!("make / {p}: {e}"))?;
        }
    }
    Ok(())
}

/// Hides a path: /dev/null over a file, an empty read-only tmpfs over a directory.
fn mask(p: &Path) -> Result<(), String> {
    let p = secure_join(Path::new("/"), p)?;
    match fs::metadata(&p) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => mount(
            Some("tmpfs"),
            &p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=0,mode=555"),
        )
        .map_err(|e| format!("mask {}: {e}", p.display())),
        Ok(_) => mount(Some("/dev/null"), &p, none(), MsFlags::MS_BIND, none())
            .map_err(|e| format!("mask {}: {e}", p.display())),
    }
}

fn readonly(p: &Path) -> Result<(), String> {
    let p = secure_join(Path::new("/"), p)?;
    if fs::symlink_metadata(&p).is_err() {
        return Ok(());
    }
    mount(
        Some(&p),
        &p,
        none(),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none(),
    )
    .map_err(|e| format!("bind {} for read-only: {e}", p.display()))?;
    remount_ro(&p)
}

/// Remounts a mount point read-only, keeping its nosuid/nodev/noexec flags (a bind
/// remount that dropped them would be refused in a user namespace).
fn remount_ro(p: &Path) -> Result<(), String> {
    let st = nix::sys::statvfs::statvfs(p).map_err(|e| format!("statvfs {}: {e}", p.display()))?;
    use nix::sys::statvfs::FsFlags;
    let mut f = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (fs_flag, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if st.flags().contains(fs_flag) {
            f |= ms;
        }
    }
    mount(none(), p, none(), f, none())
        .map_err(|e| format!("remount {} read-only: {e}", p.display()))
}
