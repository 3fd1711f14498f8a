//! Finding the programs a sandbox needs: an explicit environment variable, then the directory
//! of the running `sandbox` binary (where cargo and packages put them together), then PATH.

use std::path::PathBuf;

use crate::error::{Error, Result};

pub fn find(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Other(format!(
                "{env_var}={} does not name a file",
                p.display()
            )))
        };
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(Error::Other(format!(
        "{name} not found: set {env_var}, install it next to `sandbox`, or put it on PATH"
    )))
}
