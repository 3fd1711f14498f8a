//! Finding the programs a sandbox needs: an explicit environment variable, then the directory
//! of the running `sandbox` binary (where cargo and packages put them together), then PATH.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

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
        let agent = found?;
        ensure_static(&agent)?;
        return Ok(agent);
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
        .find(|p| p.is_file() && ensure_static(p).is_ok())
        .ok_or_else(|| {
            Error::Other(
                "no statically linked sandbox-agent found for the guest: build it with \
                 RUSTFLAGS='-C target-feature=+crt-static' cargo build -p agent --target \
                 x86_64-unknown-linux-gnu, or set SANDBOX_GUEST_AGENT"
                    .into(),
            )
        })
}

/// A dynamically linked agent cannot run as the guest's /init (there is no libc there).
fn ensure_static(path: &Path) -> Result<()> {
    let mut head = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .ctx("read", path)?;
    let head = &head[..n];
    if !head.starts_with(b"\x7fELF") {
        return Err(Error::Other(format!(
            "{} is not an ELF binary",
            path.display()
        )));
    }
    if head.windows(10).any(|w| w == b"ld-linux-x") {
        return Err(Error::Other(format!(
            "{} is dynamically linked; build the guest agent with \
             RUSTFLAGS='-C target-feature=+crt-static' cargo build -p agent --target x86_64-unknown-linux-gnu",
            path.display()
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_static_elf_binary_can_be_the_guest_agent() {
        // Debian's busybox-static is a static ELF binary like the guest agent must be.
        ensure_static(Path::new("/bin/busybox")).unwrap();
        // A dynamically linked binary cannot be /init in a guest without libc.
        let err = ensure_static(Path::new("/bin/ls")).unwrap_err().to_string();
        assert!(err.contains("/bin/ls is dynamically linked"), "{err}");
        let script = std::env::temp_dir().join(format!("sandbox-not-elf-{}", std::process::id()));
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let err = ensure_static(&script).unwrap_err().to_string();
        std::fs::remove_file(&script).unwrap();
        assert!(err.contains("is not an ELF binary"), "{err}");
    }
}
