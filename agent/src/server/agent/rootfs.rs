//! A container's root filesystem as the request names it (a bundle, a directory, a block
//! device to mount) and the copied files that go into the container's own directory.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::init;
use crate::protocol::{CopiedFile, ErrorCode, ErrorReply, RootfsSource};
use crate::server::copied_files;

use super::errors::invalid;
use super::Mode;

/// What the agent made for a container's rootfs, undone when the container is removed or
/// its creation fails.
#[derive(Debug, Default)]
pub(super) struct RootfsSetup {
    /// A rootfs the agent mounted for this container (block device).
    pub(super) mounted: Option<PathBuf>,
    /// A directory the agent made for this container under its root.
    pub(super) own_dir: Option<PathBuf>,
}

impl RootfsSetup {
    /// Best effort: a removal must not fail on a mount or directory that is gone already.
    pub(super) fn undo(&self) {
        if let Some(m) = &self.mounted {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(d) = &self.own_dir {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// Prepares the rootfs of a container that does not come as a bundle: returns the bundle
/// directory to hand to the engine and what to undo on removal.
pub(super) fn prepare(
    mode: Mode,
    root: &Path,
    id: &str,
    rootfs: &RootfsSource,
    spec: &mut Spec,
) -> Result<(PathBuf, RootfsSetup), ErrorReply> {
    let set_root = |spec: &mut Spec, path: &Path, read_only: bool| {
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(path.to_owned());
        if read_only {
            root.set_readonly(Some(true));
        }
        spec.set_root(Some(root));
    };
    let make_dir = |dir: &Path| {
        fs::create_dir_all(dir).map_err(|e| {
            ErrorReply::new(
                ErrorCode::Internal,
                format!("create {}: {e}", dir.display()),
            )
        })
    };
    match rootfs {
        RootfsSource::Bundle { path } => Ok((path.clone(), RootfsSetup::default())),
        RootfsSource::Directory { path } => {
            if !path.is_absolute() {
                return Err(invalid(format!(
                    "rootfs.path {}: must be absolute",
                    path.display()
                )));
            }
            let dir = root.join(id);
            make_dir(&dir)?;
            set_root(spec, path, false);
            let setup = RootfsSetup {
                mounted: None,
                own_dir: Some(dir.clone()),
            };
            Ok((dir, setup))
        }
        RootfsSource::BlockDevice {
            source,
            fs_type,
            read_only,
            options,
        } => {
            if mode == Mode::Native {
                return Err(ErrorReply::new(
                    ErrorCode::Unsupported,
                    "rootfs.block_device: native isolation takes a bundle or a directory",
                ));
            }
            let dir = root.join(id);
            let target = dir.join("rootfs");
            make_dir(&dir)?;
            if let Err(e) =
                init::sandbox::mount_block_device(source, fs_type, &target, *read_only, options)
            {
                let _ = fs::remove_dir_all(&dir);
                return Err(ErrorReply::new(ErrorCode::Sandbox, e.to_string()));
            }
            set_root(spec, &target, *read_only);
            let setup = RootfsSetup {
                mounted: Some(target),
                own_dir: Some(dir.clone()),
            };
            Ok((dir, setup))
        }
    }
}

/// Checked before the rootfs is prepared, so that a refused request leaves nothing behind.
pub(super) fn check_copied_files(mode: Mode, files: &[CopiedFile]) -> Result<(), ErrorReply> {
    if !files.is_empty() && mode == Mode::Native {
        return Err(invalid(
            "copied_files: a native agent binds the host's files themselves",
        ));
    }
    Ok(())
}

/// Writes the copied files into the container's own directory; the caller undoes `setup`
/// when this fails.
pub(super) fn copy_files(
    files: &[CopiedFile],
    setup: &RootfsSetup,
    spec: &mut Spec,
) -> Result<(), ErrorReply> {
    if files.is_empty() {
        return Ok(());
    }
    match &setup.own_dir {
        Some(dir) => copied_files::apply(files, dir, spec),
        None => Err(invalid(
            "copied_files: a rootfs given as a bundle has no directory of the agent's own",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "source": "/host/hosts", "options": ["rbind"]},
            ],
        }))
        .unwrap()
    }

    fn hosts_file() -> CopiedFile {
        CopiedFile {
            mount_index: 1,
            mode: 0o644,
            contents: b"127.0.0.1 box\n".to_vec(),
        }
    }

    #[test]
    fn a_bundle_is_handed_on_as_it_is() {
        let root = tempfile::tempdir().unwrap();
        let mut spec = spec();
        let before = spec.clone();
        let source = RootfsSource::Bundle {
            path: "/run/bundles/c1".into(),
        };
        let (bundle, setup) = prepare(Mode::Native, root.path(), "c1", &source, &mut spec).unwrap();
        assert_eq!(bundle, Path::new("/run/bundles/c1"));
        assert!(setup.mounted.is_none() && setup.own_dir.is_none());
        assert_eq!(spec, before);
        assert!(!root.path().join("c1").exists());
    }

    #[test]
    fn a_directory_rootfs_gets_a_bundle_of_the_agents_own() {
        let root = tempfile::tempdir().unwrap();
        let mut spec = spec();
        let source = RootfsSource::Directory {
            path: "/run/storage/c1".into(),
        };
        let (bundle, setup) = prepare(Mode::Guest, root.path(), "c1", &source, &mut spec).unwrap();
        assert_eq!(bundle, root.path().join("c1"));
        assert!(bundle.is_dir());
        assert_eq!(setup.own_dir.as_deref(), Some(bundle.as_path()));
        assert!(setup.mounted.is_none());
        let spec_root = spec.root().as_ref().unwrap();
        assert_eq!(spec_root.path(), Path::new("/run/storage/c1"));
        assert_ne!(spec_root.readonly(), Some(true));

        setup.undo();
        assert!(!bundle.exists());
    }

    #[test]
    fn a_relative_rootfs_directory_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let source = RootfsSource::Directory {
            path: "storage/c1".into(),
        };
        let e = prepare(Mode::Guest, root.path(), "c1", &source, &mut spec()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert_eq!(e.message, "rootfs.path storage/c1: must be absolute");
        assert!(!root.path().join("c1").exists());
    }

    #[test]
    fn a_native_agent_mounts_no_block_device() {
        let root = tempfile::tempdir().unwrap();
        let source = RootfsSource::BlockDevice {
            source: "/dev/vdb".into(),
            fs_type: "ext4".into(),
            read_only: true,
            options: vec![],
        };
        let e = prepare(Mode::Native, root.path(), "c1", &source, &mut spec()).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unsupported);
        assert_eq!(
            e.message,
            "rootfs.block_device: native isolation takes a bundle or a directory"
        );
        assert!(!root.path().join("c1").exists());
    }

    #[test]
    fn undo_tolerates_what_is_gone_already() {
        let root = tempfile::tempdir().unwrap();
        let setup = RootfsSetup {
            mounted: None,
            own_dir: Some(root.path().join("never-made")),
        };
        setup.undo();
        RootfsSetup::default().undo();
        assert!(root.path().exists());
    }

    #[test]
    fn only_a_guest_takes_copied_files() {
        assert!(check_copied_files(Mode::Native, &[]).is_ok());
        assert!(check_copied_files(Mode::Guest, &[hosts_file()]).is_ok());
        let e = check_copied_files(Mode::Native, &[hosts_file()]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert_eq!(
            e.message,
            "copied_files: a native agent binds the host's files themselves"
        );
    }

    #[test]
    fn copied_files_need_a_directory_of_the_agents_own() {
        let mut spec = spec();
        let before = spec.clone();
        copy_files(&[], &RootfsSetup::default(), &mut spec).unwrap();
        let e = copy_files(&[hosts_file()], &RootfsSetup::default(), &mut spec).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert_eq!(
            e.message,
            "copied_files: a rootfs given as a bundle has no directory of the agent's own"
        );
        assert_eq!(spec, before);
    }

    #[test]
    fn copied_files_land_in_the_own_directory() {
        let root = tempfile::tempdir().unwrap();
        let setup = RootfsSetup {
            mounted: None,
            own_dir: Some(root.path().to_owned()),
        };
        let mut spec = spec();
        copy_files(&[hosts_file()], &setup, &mut spec).unwrap();
        let mounts = spec.mounts().as_ref().unwrap();
        let source = mounts[1].source().as_ref().unwrap();
        assert!(source.starts_with(root.path()), "{}", source.display());
        assert_eq!(fs::read(source).unwrap(), b"127.0.0.1 box\n");
    }
}
