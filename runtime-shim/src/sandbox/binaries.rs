//! Finding the programs a sandbox needs: an explicit environment variable, then the directory
//! of the running `sandbox` binary (where cargo and packages put them together), then PATH.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The program `env_var` names, when it is set: it is taken as given, or refused.
fn from_env(env_var: &str) -> Option<Result<PathBuf>> {
    let p = PathBuf::from(std::env::var_os(env_var)?);
    Some(if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Other(format!(
            "{env_var}={} does not name a file",
            p.display()
        )))
    })
}

pub fn find(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(found) = from_env(env_var) {
        return found;
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

/// The guest agent: a statically linked `sandbox-agent` (the guest has no libc). Takes
/// $SANDBOX_GUEST_AGENT as given; otherwise the first static one next to `sandbox`, at the
/// static build's cargo path beside it, or on PATH, so a dynamically linked development build
/// next to `sandbox` does not hide the static one that set-up installed.
pub fn find_guest_agent() -> Result<PathBuf> {
    if let Some(found) = from_env("SANDBOX_GUEST_AGENT") {
        return found;
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("sandbox-agent"));
            // target/<profile>/sandbox -> target/x86_64-unknown-linux-gnu/<profile>/sandbox-agent
            if let (Some(profile), Some(target)) = (dir.file_name(), dir.parent()) {
                candidates.push(
                    target
                        .join("x86_64-unknown-linux-gnu")
                        .join(profile)
                        .join("sandbox-agent"),
                );
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("sandbox-agent")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file() && crate::image::disk::ensure_static(p).is_ok())
        .ok_or_else(|| {
            Error::Other(
                "no statically linked sandbox-agent found for the guest: build it with \
                 RUSTFLAGS='-C target-feature=+crt-static' cargo build -p agent --target \
                 x86_64-unknown-linux-gnu, or set SANDBOX_GUEST_AGENT"
                    .into(),
            )
        })
}

/// Where Debian's packages put virtiofsd: qemu-system-common's C one, the virtiofsd package's
/// Rust one.
const VIRTIOFSD_PATHS: &[&str] = &["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"];

/// The virtiofsd that serves shared directories: $SANDBOX_VIRTIOFSD, else the first packaged
/// one present.
pub fn find_virtiofsd() -> Result<PathBuf> {
    if let Some(found) = from_env("SANDBOX_VIRTIOFSD") {
        return found;
    }
    VIRTIOFSD_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Vm(format!(
                "a shared directory in vm isolation needs virtiofsd, found at none of {} \
                 (install qemu-system-common, or set SANDBOX_VIRTIOFSD)",
                VIRTIOFSD_PATHS.join(", ")
            ))
        })
}
