//! The one shared directory of a pod in a VM. A running VM gets no new devices, so a pod's
//! later containers cannot each bring a virtio-fs device of their own: the pod has one, and
//! every container's rootfs and directory volumes are bind-mounted on the host into the
//! directory it carries, under a directory named after the container, when the container is
//! created, and unmounted when it is removed.
//!
//! The directory is a shared mount (a bind of itself); virtiofsd's sandbox makes its copy a
//! slave, so mounts made after virtiofsd started reach it. A read-only volume is made
//! read-only before it enters the share (a remount does not propagate; a new mount carries
//! its flags), so virtiofsd, and with it the guest, cannot write it.
//!
//! The directory lives beside the sandbox's state directory, not in it: that one is removed
//! recursively, and a recursive removal would walk into the containers' rootfs and the host
//! directories bound there. The share is only ever unmounted and `rmdir`ed.

use std::fs;
use std::path::{Path, PathBuf};

use agent::protocol::{RootfsSource, StorageConfig};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use crate::bundle::Bundle;
use crate::error::{Error, IoContext, Result};
use crate::sandbox::shared_dirs::{self, SharedDir};

/// The virtio-fs tag of a pod's share.
pub const POD_TAG: &str = "pod";
/// Where the guest mounts it.
const GUEST_MOUNT: &str = "/run/sandbox/pod";

/// A pod's shared directory, mounted and shared; unmounted when dropped.
#[derive(Debug)]
pub struct PodShare {
    /// `<state directory>.pod`, beside it: `share/` is what the guest sees, `staging/` where
    /// read-only binds are made before they enter it.
    base: PathBuf,
}

/// A container's place in the share: what the agent is given for it.
#[derive(Debug)]
pub struct PodContainer {
    pub rootfs: RootfsSource,
    /// The spec as the guest must see it: directory binds come from the share.
    pub spec: Spec,
    /// The directory binds the share carries for it (file binds are copied in).
    pub shares: Vec<SharedDir>,
}

impl PodShare {
    fn base_for(state_dir: &Path) -> PathBuf {
        let mut base = state_dir.as_os_str().to_owned();
        base.push(".pod");
        PathBuf::from(base)
    }

    /// Makes the share of the sandbox whose state is in `state_dir`, after clearing what a
    /// sandbox there that ended without cleaning up may have left.
    pub fn create(state_dir: &Path) -> Result<PodShare> {
        Self::clear(state_dir);
        let share = PodShare {
            base: Self::base_for(state_dir),
        };
        let dir = share.host_dir();
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        fs::create_dir_all(share.staging()).ctx("create", share.staging())?;
        let made = bind_mount(&dir, &dir, MsFlags::empty())
            .and_then(|_| change_mount(&dir, MsFlags::MS_SHARED));
        if let Err(e) = made {
            drop(share);
            return Err(Error::Vm(format!(
                "cannot make {} a shared mount for the pod's virtio-fs device: {e}",
                dir.display()
            )));
        }
        Ok(share)
    }

    /// Unmounts and removes the share of `state_dir` if one is left.
    pub fn clear(state_dir: &Path) {
        let base = Self::base_for(state_dir);
        if base.exists() {
            unmount_and_remove(&base);
        }
    }

    fn host_dir(&self) -> PathBuf {
        self.base.join("share")
    }

    fn staging(&self) -> PathBuf {
        self.base.join("staging")
    }

    /// The virtio-fs device that carries the share.
    pub fn shared_dir(&self) -> SharedDir {
        SharedDir {
            mount_index: None,
            tag: POD_TAG.into(),
            source: self.host_dir(),
            read_only: false,
        }
    }

    /// The guest's mount of the share.
    pub fn storage() -> StorageConfig {
        StorageConfig {
            source: POD_TAG.into(),
            fs_type: "virtiofs".into(),
            mount_point: GUEST_MOUNT.into(),
            read_only: false,
            options: vec![],
        }
    }

    /// Binds the container `id`'s rootfs and directory volumes into the share. On an error
    /// whatever was bound for it is unbound again.
    pub fn add(&self, id: &str, bundle: &Bundle) -> Result<PodContainer> {
        crate::state::validate_id(id)?;
        let shares = shared_dirs::shared_dirs(&bundle.spec, &bundle.dir)?;
        let added = self.bind_all(id, bundle, &shares);
        if added.is_err() {
            self.remove(id);
        }
        added?;
        let guest = Path::new(GUEST_MOUNT).join(id);
        let spec = guest_mounts(&bundle.spec, &shares, &guest);
        Ok(PodContainer {
            rootfs: RootfsSource::Directory {
                path: guest.join("rootfs"),
            },
            spec,
            shares,
        })
    }

    fn bind_all(&self, id: &str, bundle: &Bundle, shares: &[SharedDir]) -> Result<()> {
        let dir = self.host_dir().join(id);
        if dir.exists() {
            return Err(Error::Vm(format!(
                "{} exists already: container {id} is in the pod's share",
                dir.display()
            )));
        }
        fs::create_dir(&dir).ctx("create", &dir)?;
        let rootfs = fs::canonicalize(&bundle.rootfs).ctx("resolve rootfs", &bundle.rootfs)?;
        self.bind(&rootfs, &dir.join("rootfs"), false)?;
        for share in shares {
            self.bind(&share.source, &dir.join(&share.tag), share.read_only)?;
        }
        Ok(())
    }

    /// Binds `source` (with what is mounted beneath it) onto `target`, a new directory in
    /// the share; read-only first, in staging, when asked.
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<()> {
        let fail = |what: &str, e: nix::Error| {
            Error::Vm(format!(
                "cannot {what} {} for the pod's share at {}: {e}",
                source.display(),
                target.display()
            ))
        };
        fs::create_dir(target).ctx("create", target)?;
        if !read_only {
            return bind_mount(source, target, MsFlags::MS_REC).map_err(|e| fail("bind", e));
        }
        let staged = self.staging().join(
            target
                .strip_prefix(self.host_dir())
                .unwrap_or(target)
                .to_string_lossy()
                .replace('/', "_"),
        );
        fs::create_dir_all(&staged).ctx("create", &staged)?;
        let result = bind_mount(source, &staged, MsFlags::MS_REC)
            .map_err(|e| fail("bind", e))
            .and_then(|_| {
                // Private first: the read-only remount must not reach the source's peers.
                change_mount(&staged, MsFlags::MS_PRIVATE)
                    .and_then(|_| {
                        let read_only = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                        change_mount(&staged, read_only)
                    })
                    .map_err(|e| fail("make read-only", e))
            })
            .and_then(|_| {
                bind_mount(&staged, target, MsFlags::empty()).map_err(|e| fail("bind", e))
            });
        let _ = umount2(&staged, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&staged);
        result
    }

    /// Unbinds what [`add`](Self::add) bound for `id` and removes its (then empty)
    /// directories.
    pub fn remove(&self, id: &str) {
        if crate::state::validate_id(id).is_ok() {
            remove_container_dir(&self.host_dir().join(id));
        }
    }
}

impl Drop for PodShare {
    fn drop(&mut self) {
        unmount_and_remove(&self.base);
    }
}

/// A bind mount of `source` onto `target`, with `extra` flags (MS_REC for what is mounted
/// beneath it).
fn bind_mount(source: &Path, target: &Path, extra: MsFlags) -> nix::Result<()> {
    let flags = MsFlags::MS_BIND | extra;
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
}

/// A change of the mount at `target`: its propagation, or a remount.
fn change_mount(target: &Path, flags: MsFlags) -> nix::Result<()> {
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
}

/// Unmounts what is bound in a container's directory of the share, then removes its
/// directories, each only if empty.
fn remove_container_dir(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let target = entry.path();
        while umount2(&target, MntFlags::MNT_DETACH).is_ok() {}
        let _ = fs::remove_dir(&target);
    }
    let _ = fs::remove_dir(dir);
}

/// Detaches a share (which detaches everything bound beneath it), then removes its
/// directories, each only if empty.
fn unmount_and_remove(base: &Path) {
    let share = base.join("share");
    while umount2(&share, MntFlags::MNT_DETACH).is_ok() {}
    for entry in fs::read_dir(&share).into_iter().flatten().flatten() {
        remove_container_dir(&entry.path());
    }
    for dir in [share, base.join("staging"), base.to_path_buf()] {
        let _ = fs::remove_dir(dir);
    }
}

/// `spec` with each shared directory bind taken from the container's directory `guest` in
/// the guest's mount of the share; its options stay as the spec gave them.
fn guest_mounts(spec: &Spec, shares: &[SharedDir], guest: &Path) -> Spec {
    shared_dirs::rewrite_shared_mounts(spec, shares, |share, m| {
        m.set_source(Some(guest.join(&share.tag)));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_of(path: &Path) -> Option<String> {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
        text.lines()
            .find(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
            .map(str::to_owned)
    }

    /// A bundle whose rootfs holds `marker`, with a read-only and a writable volume.
    fn bundle(dir: &Path, marker: &str) -> Bundle {
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        fs::write(rootfs.join("marker"), marker).unwrap();
        for v in ["ro-vol", "rw-vol"] {
            fs::create_dir_all(dir.join(v)).unwrap();
        }
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "mounts": [
                {"destination": "/ro", "type": "bind", "source": dir.join("ro-vol"),
                 "options": ["rbind", "ro"]},
                {"destination": "/rw", "type": "bind", "source": dir.join("rw-vol"),
                 "options": ["rbind"]},
            ],
        });
        fs::write(dir.join("config.json"), spec.to_string()).unwrap();
        Bundle::load(dir).unwrap()
    }

    #[test]
    fn containers_enter_and_leave_the_share_and_nothing_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        fs::create_dir(&state).unwrap();
        let b = bundle(&tmp.path().join("b1"), "one");
        let share = PodShare::create(&state).unwrap();
        let host = share.shared_dir().source;
        assert!(
            mount_of(&host).unwrap().contains(" shared:"),
            "a shared mount"
        );

        let c = share.add("c1", &b).unwrap();
        assert_eq!(
            c.rootfs,
            RootfsSource::Directory {
                path: PathBuf::from(GUEST_MOUNT).join("c1/rootfs")
            }
        );
        assert_eq!(
            fs::read_to_string(host.join("c1/rootfs/marker")).unwrap(),
            "one"
        );
        // The guest's spec takes each volume from the container's directory in the share.
        let sources: Vec<_> = c
            .spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.source().clone().unwrap())
            .collect();
        assert_eq!(
            sources,
            [
                PathBuf::from(GUEST_MOUNT).join("c1/vol0"),
                PathBuf::from(GUEST_MOUNT).join("c1/vol1")
            ]
        );
        // The read-only volume is read-only in the share itself, not only in the guest.
        let ro = mount_of(&host.join("c1/vol0")).unwrap();
        assert!(
            ro.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro"),
            "{ro}"
        );
        assert!(fs::write(host.join("c1/vol0/x"), "x").is_err());
        fs::write(host.join("c1/vol1/x"), "x").unwrap();
        assert!(tmp.path().join("b1/rw-vol/x").exists());
        // ... and the host's own directory stays writable.
        fs::write(tmp.path().join("b1/ro-vol/y"), "y").unwrap();

        let e = share.add("c1", &b).unwrap_err().to_string();
        assert!(e.contains("c1 is in the pod's share"), "{e}");
        assert!(share.add("../c2", &b).is_err());

        share.remove("c1");
        assert!(mount_of(&host.join("c1/rootfs")).is_none());
        assert!(!host.join("c1").exists());
        assert_eq!(
            fs::read_to_string(tmp.path().join("b1/rootfs/marker")).unwrap(),
            "one"
        );

        share.add("c3", &b).unwrap();
        drop(share);
        assert!(mount_of(&host).is_none());
        assert!(!PodShare::base_for(&state).exists());
        assert!(
            tmp.path().join("b1/rw-vol/x").exists(),
            "the volume's files stay"
        );
    }

    #[test]
    fn a_share_left_behind_is_cleared_without_touching_what_was_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        fs::create_dir(&state).unwrap();
        let b = bundle(&tmp.path().join("b1"), "kept");
        let share = PodShare::create(&state).unwrap();
        share.add("c1", &b).unwrap();
        // As if the shim had been killed: the mounts stay, nothing unmounts them.
        std::mem::forget(share);
        let again = PodShare::create(&state).unwrap();
        assert!(mount_of(&again.host_dir().join("c1/rootfs")).is_none());
        drop(again);
        assert!(!PodShare::base_for(&state).exists());
        assert_eq!(
            fs::read_to_string(tmp.path().join("b1/rootfs/marker")).unwrap(),
            "kept"
        );
    }
}
