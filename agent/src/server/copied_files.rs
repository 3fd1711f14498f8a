//! File bind mounts in a guest: the host sends the contents of each file a bind mount names
//! (a guest cannot see the host's filesystem), and they are written into the container's own
//! directory, which the mount then binds from. What it may name is checked against the spec,
//! so a request cannot write outside that directory or turn a mount that is not a bind into one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::engine::is_bind;

use crate::protocol::{CopiedFile, ErrorCode, ErrorReply, MAX_COPIED_BYTES};

/// Writes `files` under `dir/copied` and points each one's mount at its copy.
pub fn apply(files: &[CopiedFile], dir: &Path, spec: &mut Spec) -> Result<(), ErrorReply> {
    let invalid = |m: String| ErrorReply::new(ErrorCode::InvalidParams, m);
    let total: usize = files.iter().map(|f| f.contents.len()).sum();
    if total > MAX_COPIED_BYTES {
        return Err(invalid(format!(
            "copied_files: {total} bytes in all, more than the {MAX_COPIED_BYTES} allowed"
        )));
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let mut seen = Vec::with_capacity(files.len());
    for f in files {
        let m = mounts.get_mut(f.mount_index).ok_or_else(|| {
            invalid(format!(
                "copied_files: the spec has no mounts[{}]",
                f.mount_index
            ))
        })?;
        if !is_bind(m) {
            return Err(invalid(format!(
                "copied_files: mounts[{}] ({}) is not a bind mount",
                f.mount_index,
                m.destination().display()
            )));
        }
        if seen.contains(&f.mount_index) {
            return Err(invalid(format!(
                "copied_files: mounts[{}] is named twice",
                f.mount_index
            )));
        }
        seen.push(f.mount_index);
        let copy = write_copy(dir, f).map_err(|e| {
            ErrorReply::new(
                ErrorCode::Internal,
                format!("copied_files: mounts[{}]: {e}", f.mount_index),
            )
        })?;
        m.set_source(Some(copy));
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

fn write_copy(dir: &Path, f: &CopiedFile) -> std::io::Result<PathBuf> {
    let parent = dir.join("copied");
    fs::create_dir_all(&parent)?;
    let path = parent.join(f.mount_index.to_string());
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    out.write_all(&f.contents)?;
    // The mode the host file has, set bits beyond the permissions cleared.
    out.set_permissions(fs::Permissions::from_mode(f.mode & 0o777))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(mounts: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": mounts,
        }))
        .unwrap()
    }

    fn file(mount_index: usize, contents: &[u8]) -> CopiedFile {
        CopiedFile {
            mount_index,
            mode: 0o644,
            contents: contents.to_vec(),
        }
    }

    #[test]
    fn a_bind_source_becomes_its_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "source": "/host/hosts", "options": ["rbind", "ro"]},
        ]));
        apply(&[file(1, b"127.0.0.1 box\n")], dir.path(), &mut spec).unwrap();
        let mounts = spec.mounts().as_ref().unwrap();
        let source = mounts[1].source().as_ref().unwrap();
        assert!(source.starts_with(dir.path()), "{}", source.display());
        assert_eq!(fs::read(source).unwrap(), b"127.0.0.1 box\n");
        let mode = fs::metadata(source).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(mounts[0].source().as_deref(), Some(Path::new("proc")));
    }

    #[test]
    fn what_is_not_a_bind_mount_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
        ]));
        let e = apply(&[file(0, b"x")], dir.path(), &mut spec).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert!(e.message.contains("not a bind mount"), "{}", e.message);
        let e = apply(&[file(3, b"x")], dir.path(), &mut spec).unwrap_err();
        assert!(e.message.contains("no mounts[3]"), "{}", e.message);
    }

    #[test]
    fn too_many_bytes_or_a_mount_named_twice_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with(serde_json::json!([
            {"destination": "/a", "type": "bind", "source": "/x"},
        ]));
        let big = vec![0u8; MAX_COPIED_BYTES + 1];
        let e = apply(&[file(0, &big)], dir.path(), &mut spec).unwrap_err();
        assert!(e.message.contains("allowed"), "{}", e.message);
        let e = apply(&[file(0, b"a"), file(0, b"b")], dir.path(), &mut spec).unwrap_err();
        assert!(e.message.contains("named twice"), "{}", e.message);
    }
}
