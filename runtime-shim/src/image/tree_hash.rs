//! A content hash of a directory tree (names, types, modes, owners, file contents, link
//! targets), used to share one rootfs disk image among containers of the same rootfs.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};

pub fn hash_tree(root: &Path) -> Result<String> {
    let mut h = Sha256::new();
    walk(root, Path::new(""), &mut h)?;
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hash_file(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut f = fs::File::open(path).ctx("open", path)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).ctx("read", path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn walk(root: &Path, rel: &Path, h: &mut Sha256) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .ctx("read directory", &dir)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let rel_path = rel.join(&name);
        let path = root.join(&rel_path);
        let m = fs::symlink_metadata(&path).ctx("stat", &path)?;
        h.update(rel_path.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(format!("{:o} {} {}\0", m.mode(), m.uid(), m.gid()).as_bytes());
        if m.file_type().is_symlink() {
            let target = fs::read_link(&path).ctx("readlink", &path)?;
            h.update(target.as_os_str().as_encoded_bytes());
        } else if m.is_file() {
            h.update(m.len().to_le_bytes());
            let mut f = fs::File::open(&path).ctx("open", &path)?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).ctx("read", &path)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        } else if m.is_dir() {
            walk(root, &rel_path, h)?;
        } else {
            h.update(m.rdev().to_le_bytes());
        }
        h.update([0xff]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_changes_with_content_only() {
        let d = std::env::temp_dir().join(format!("sandbox-hash-{}", std::process::id()));
        fs::create_dir_all(d.join("a")).unwrap();
        fs::write(d.join("a/f"), b"one").unwrap();
        let h1 = hash_tree(&d).unwrap();
        assert_eq!(h1, hash_tree(&d).unwrap());
        fs::write(d.join("a/f"), b"two").unwrap();
        assert_ne!(h1, hash_tree(&d).unwrap());
        fs::remove_dir_all(&d).unwrap();
    }
}
