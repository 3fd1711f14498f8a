//! An OCI bundle on disk: `config.json` parsed into the runtime spec, with errors that name the
//! JSON path of the offending field, and the checks a bundle must pass before anything starts.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::error::{Error, Result};

pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle> {
        let dir = fs::canonicalize(dir).map_err(|e| Error::Bundle {
            path: dir.to_path_buf(),
            reason: format!("cannot open bundle directory: {e}"),
        })?;
        let config = dir.join("config.json");
        let text = fs::read(&config).map_err(|e| Error::Bundle {
            path: dir.clone(),
            reason: format!("cannot read config.json: {e}"),
        })?;
        let spec = parse_spec(&text).map_err(|reason| Error::Config {
            path: dir.clone(),
            reason,
        })?;
        let rootfs = validate(&dir, &spec)?;
        Ok(Bundle { dir, spec, rootfs })
    }
}

/// Parses a runtime spec, reporting where in the document the first problem is.
pub fn parse_spec(text: &[u8]) -> std::result::Result<Spec, String> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            format!("{inner}")
        } else {
            format!("at {path}: {inner}")
        }
    })
}

fn validate(dir: &Path, spec: &Spec) -> Result<PathBuf> {
    let bad = |reason: String| Error::Config {
        path: dir.to_path_buf(),
        reason,
    };
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| bad("root: missing (the spec must name the root filesystem)".into()))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        dir.join(root.path())
    };
    if !rootfs.is_dir() {
        return Err(bad(format!(
            "root.path: {} is not a directory",
            rootfs.display()
        )));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| bad("process: missing (nothing to run)".into()))?;
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err(bad("process.args: empty (nothing to run)".into())),
    }
    if !process.cwd().is_absolute() {
        return Err(bad(format!(
            "process.cwd: {} is not an absolute path",
            process.cwd().display()
        )));
    }
    Ok(rootfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_name_the_json_path() {
        let err =
            parse_spec(br#"{"ociVersion":"1.0.2","process":{"args":"not-a-list","cwd":"/"}}"#)
                .unwrap_err();
        assert!(err.contains("process.args"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let err = parse_spec(b"{ not json").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn missing_rootfs_is_rejected() {
        let dir = std::env::temp_dir().join(format!("sandbox-bundle-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("config.json"),
            br#"{"ociVersion":"1.0.2","root":{"path":"nope"},"process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"}}"#,
        )
        .unwrap();
        let err = Bundle::load(&dir).err().unwrap().to_string();
        assert!(err.contains("root.path"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
