//! The image store: `<store>/<name>/rootfs` plus `<store>/<name>/image.json` holding what the
//! image says about how to run it (entrypoint, cmd, env, working directory, user).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::state::write_atomic;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    pub name: String,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
    /// Where the image came from: a file that was imported, or `built-in`.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub created: String,
    /// This store's id of the unpacked image, new on every import: its cached disk image is
    /// named after it, so that a start finds that image without reading the tree. Empty in
    /// images imported before ids existed.
    #[serde(default)]
    pub id: String,
}

pub struct ImageStore {
    root: PathBuf,
}

/// Where images live under the store (the rest of it holds cached disk images).
const IMAGES_DIR: &str = "images";
/// Cached read-only ext4 images of rootfs trees (`image::disk`).
pub const EXT4_DIR: &str = "ext4";

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Image names as users write them (`busybox`, `library/alpine:3.19`) mapped to one path
    /// component.
    pub fn dir_of(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        let flat: String = name
            .chars()
            .map(|c| {
                if c == '/' || c == ':' || c == '@' {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        Ok(self.root.join(IMAGES_DIR).join(flat))
    }

    pub fn rootfs(&self, name: &str) -> Result<PathBuf> {
        Ok(self.dir_of(name)?.join("rootfs"))
    }

    pub fn get(&self, name: &str) -> Result<ImageConfig> {
        let path = self.dir_of(name)?.join("image.json");
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Image(format!(
                    "no image named {name:?} (see `sandbox image ls`)"
                )))
            }
            Err(e) => return Err(Error::io("read", path, e)),
        };
        serde_json::from_slice(&text).map_err(|e| Error::Image(format!("{}: {e}", path.display())))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.get(name).is_ok()
    }

    pub fn list(&self) -> Result<Vec<(ImageConfig, u64)>> {
        let dir = self.root.join(IMAGES_DIR);
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("list images", dir, e)),
        };
        for e in entries.flatten() {
            let path = e.path().join("image.json");
            if let Ok(text) = fs::read(&path) {
                if let Ok(cfg) = serde_json::from_slice::<ImageConfig>(&text) {
                    let size = tree_size(&e.path().join("rootfs"));
                    out.push((cfg, size));
                }
            }
        }
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        Ok(out)
    }

    /// A fresh directory to unpack an image into, renamed into place by [`ImageStore::commit`]
    /// so a failed import leaves no half image behind.
    pub fn staging(&self, name: &str) -> Result<PathBuf> {
        let final_dir = self.dir_of(name)?;
        let parent = final_dir.parent().expect("images dir");
        fs::create_dir_all(parent).ctx("create image store", parent)?;
        // Images keep their setuid binaries and owners: no host user but root may reach them
        // (containerd keeps its snapshots the same way).
        fs::set_permissions(parent, fs::Permissions::from_mode(0o700))
            .ctx("restrict image store", parent)?;
        let tmp = parent.join(format!(
            ".staging-{}-{}",
            std::process::id(),
            final_dir.file_name().unwrap().to_string_lossy()
        ));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(tmp.join("rootfs")).ctx("create", &tmp)?;
        Ok(tmp)
    }

    /// Moves a staged image into place under a new id, replacing (and uncaching) an image of
    /// the same name.
    pub fn commit(&self, staging: &Path, cfg: &ImageConfig) -> Result<ImageConfig> {
        let cfg = ImageConfig {
            id: new_image_id(&cfg.name),
            ..cfg.clone()
        };
        let data = serde_json::to_vec_pretty(&cfg).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&staging.join("image.json"), &data)?;
        let final_dir = self.dir_of(&cfg.name)?;
        if final_dir.exists() {
            self.uncache(&cfg.name);
            remove_tree(&final_dir)?;
        }
        fs::rename(staging, &final_dir).ctx("move image into place", &final_dir)?;
        Ok(cfg)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        self.get(name)?;
        self.uncache(name);
        remove_tree(&self.dir_of(name)?)
    }

    /// The cached ext4 image of the image `id`.
    pub fn ext4_of_id(&self, id: &str) -> PathBuf {
        self.root.join(EXT4_DIR).join(format!("id-{id}.img"))
    }

    /// The id of the image whose unpacked tree `rootfs` is, if it is one of this store's.
    pub fn id_of_rootfs(&self, rootfs: &Path) -> Option<String> {
        let canonical = fs::canonicalize(rootfs).ok()?;
        if canonical.file_name()? != "rootfs" {
            return None;
        }
        let dir = canonical.parent()?;
        if dir.parent()? != fs::canonicalize(self.root.join(IMAGES_DIR)).ok()? {
            return None;
        }
        let text = fs::read(dir.join("image.json")).ok()?;
        let cfg: ImageConfig = serde_json::from_slice(&text).ok()?;
        Some(cfg.id).filter(|id| validate_id(id))
    }

    /// Drops the cached disk image of `name`'s current version: no later start can use it.
    fn uncache(&self, name: &str) {
        if let Ok(old) = self.get(name) {
            if validate_id(&old.id) {
                let _ = fs::remove_file(self.ext4_of_id(&old.id));
            }
        }
    }
}

/// A fresh id: unique per import (the name, the time, this process), hex so that it is a
/// safe file name.
fn new_image_id(name: &str) -> String {
    use sha2::Digest;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed = format!("{name}\0{}\0{}", now.as_nanos(), std::process::id());
    crate::image::tree_hash::hex(&sha2::Sha256::digest(seed.as_bytes())[..16])
}

/// What an id read back from image.json must look like to become part of a file name.
fn validate_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['.', '-', '/'])
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Image(format!(
            "invalid image name {name:?}: use letters, digits and ._-/:@"
        )))
    }
}

/// Removes a tree that may hold read-only directories (unpacked images keep their modes).
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

fn tree_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        if let Ok(rd) = fs::read_dir(&p) {
            for e in rd.flatten() {
                if let Ok(m) = e.path().symlink_metadata() {
                    if m.is_dir() {
                        stack.push(e.path());
                    } else {
                        total += m.len();
                    }
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_one_component() {
        let s = ImageStore::new("/x");
        assert_eq!(
            s.dir_of("library/alpine:3.19").unwrap(),
            PathBuf::from("/x/images/library_alpine_3.19")
        );
        for bad in ["", "../etc", "/abs", "a b", ".hidden"] {
            assert!(s.dir_of(bad).is_err(), "{bad}");
        }
    }
}
