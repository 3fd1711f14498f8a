//! Host directories bound into a VM container: each directory bind mount of the spec becomes
//! a virtio-fs device of its own, served by a virtiofsd that this process starts, owns and
//! reaps, and the mount reaches the guest as a `virtiofs` mount of the device's tag.
//!
//! virtiofsd runs sandboxed (its namespace mode: own mount, pid and net namespaces, the
//! shared directory as its root). A read-only volume is also read-only for virtiofsd: it is
//! started in a mount namespace of its own in which the directory is a read-only bind mount,
//! so a guest that remounts the volume read-write still cannot write the host's files.

use std::ffi::CString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Mount, Spec};

use crate::error::{Error, IoContext, Result};

/// How long virtiofsd may take to listen. It takes milliseconds; the bound is for a host
/// under emulation or heavy load, and only a broken start waits it out.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A host directory and the virtio-fs device that carries it: a directory bind mount of the
/// spec, or the container's rootfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedDir {
    /// Index in the spec's `mounts`; none for the rootfs.
    pub mount_index: Option<usize>,
    /// The device's tag, which the guest mounts.
    pub tag: String,
    /// The host directory, symlinks resolved.
    pub source: PathBuf,
    pub read_only: bool,
}

/// The spec's bind mounts whose source is a directory. A missing source is an error that
/// names the mount; file sources are left to [`super::vm::copied_files`].
pub fn shared_dirs(spec: &Spec, bundle_dir: &Path) -> Result<Vec<SharedDir>> {
    let mut shares = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !agent::engine::is_bind(m) {
            continue;
        }
        let Some(source) = m.source() else {
            continue; // copied_files names the mount
        };
        let source = bundle_dir.join(source);
        let dest = m.destination().display();
        let meta = fs::metadata(&source).map_err(|e| {
            Error::Vm(format!(
                "mounts[{i}] ({dest}): bind source {}: {e}",
                source.display()
            ))
        })?;
        if !meta.is_dir() {
            continue;
        }
        // Symlinks in the source are the host's, resolved here as runc resolves them.
        let source = fs::canonicalize(&source).ctx("resolve bind source", &source)?;
        let read_only = m
            .options()
            .iter()
            .flatten()
            .any(|o| o == "ro" || o == "readonly");
        shares.push(SharedDir {
            mount_index: Some(i),
            tag: format!("vol{i}"),
            source,
            read_only,
        });
    }
    Ok(shares)
}

/// The spec with each shared bind mount turned into a mount of its virtio-fs tag; the other
/// options (ro, nosuid, propagation, ...) stay as the spec gave them.
pub fn share_mounts(spec: &Spec, shares: &[SharedDir]) -> Spec {
    rewrite_shared_mounts(spec, shares, |share, m| {
        m.set_typ(Some("virtiofs".into()));
        m.set_source(Some(PathBuf::from(&share.tag)));
        let options: Vec<String> = m
            .options()
            .iter()
            .flatten()
            .filter(|o| *o != "bind" && *o != "rbind")
            .cloned()
            .collect();
        m.set_options(Some(options));
    })
}

/// The spec with `rewrite` applied to the mount each share stands for.
pub fn rewrite_shared_mounts(
    spec: &Spec,
    shares: &[SharedDir],
    mut rewrite: impl FnMut(&SharedDir, &mut Mount),
) -> Spec {
    let mut spec = spec.clone();
    let Some(mut mounts) = spec.mounts().clone() else {
        return spec;
    };
    for share in shares {
        if let Some(m) = share.mount_index.and_then(|i| mounts.get_mut(i)) {
            rewrite(share, m);
        }
    }
    spec.set_mounts(Some(mounts));
    spec
}

/// The virtiofsd processes of one VM; killed and reaped when dropped.
#[derive(Default)]
pub struct FsDaemons {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl FsDaemons {
    /// Starts one virtiofsd per share, the one for `shares[i]` listening on `sockets[i]` and
    /// logging into `log_dir`, and waits until each listens. On an error the ones started
    /// are stopped.
    pub fn start(shares: &[SharedDir], sockets: &[PathBuf], log_dir: &Path) -> Result<Self> {
        let mut daemons = FsDaemons::default();
        if shares.is_empty() {
            return Ok(daemons);
        }
        let bin = super::binaries::find_virtiofsd()?;
        let flavor = Flavor::of(&bin);
        for (share, socket) in shares.iter().zip(sockets) {
            let log = log_dir.join(format!("virtiofsd-{}.log", share.tag));
            let child = start_one(&bin, flavor, share, socket, &log)?;
            daemons.children.push(child);
            daemons.logs.push(log);
        }
        Ok(daemons)
    }

    /// Where each virtiofsd writes what it says.
    pub fn logs(&self) -> &[PathBuf] {
        &self.logs
    }
}

impl Drop for FsDaemons {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The two virtiofsd implementations take different command lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    /// QEMU's C virtiofsd (Debian 12's qemu-system-common): `-o` options.
    Qemu,
    /// The Rust virtiofsd (virtio-fs/virtiofsd): long options, and `--readonly`.
    Rust,
}

impl Flavor {
    /// Told apart by `--version`: QEMU's says "virtiofsd version 7.2...", the Rust one
    /// "virtiofsd 1.14.0". Asked once per binary and process.
    fn of(bin: &Path) -> Flavor {
        static SEEN: std::sync::Mutex<Vec<(PathBuf, Flavor)>> = std::sync::Mutex::new(Vec::new());
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, f)) = seen.iter().find(|(p, _)| p == bin) {
            return *f;
        }
        let version = Command::new(bin)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let flavor = if version.starts_with("virtiofsd version") || version.is_empty() {
            Flavor::Qemu
        } else {
            Flavor::Rust
        };
        seen.push((bin.to_path_buf(), flavor));
        flavor
    }
}

fn start_one(
    bin: &Path,
    flavor: Flavor,
    share: &SharedDir,
    socket: &Path,
    log_path: &Path,
) -> Result<Child> {
    let _ = fs::remove_file(socket);
    let log = File::create(log_path).ctx("create", log_path)?;
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--socket-path={}", socket.display()));
    // cache=auto as Kata's default: the guest caches for a second, mmap works.
    match flavor {
        Flavor::Qemu => cmd
            .arg("-o")
            .arg(format!("source={}", share.source.display()))
            .args(["-o", "cache=auto"])
            .args(["-o", "sandbox=namespace"])
            .args(["-o", "log_level=warn"]),
        Flavor::Rust => cmd
            .arg("--shared-dir")
            .arg(&share.source)
            .args(["--cache", "auto"])
            .args(["--sandbox", "namespace"])
            .args(["--log-level", "warn"])
            .args(share.read_only.then_some("--readonly")),
    };
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().ctx("dup", log_path)?)
        .stderr(log);
    let read_only = share
        .read_only
        .then(|| CString::new(share.source.as_os_str().as_bytes()))
        .transpose()
        .map_err(|_| Error::Vm(format!("{}: path holds a NUL", share.source.display())))?;
    // SAFETY: only async-signal-safe calls (prctl, sigprocmask, unshare, mount) on memory
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            super::child::reset_signals_and_die_with_parent()?;
            if let Some(dir) = &read_only {
                read_only_view(dir)?;
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Vm(format!("cannot start {}: {e}", bin.display())))?;
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        if fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
            return Ok(child);
        }
        let failed = match child.try_wait() {
            Ok(Some(status)) => Some(format!("exited ({status}) before listening")),
            Ok(None) if Instant::now() > deadline => Some(format!(
                "did not listen on {} within {} s",
                socket.display(),
                LISTEN_TIMEOUT.as_secs()
            )),
            Ok(None) => None,
            Err(e) => Some(format!("cannot be waited for: {e}")),
        };
        if let Some(why) = failed {
            let _ = child.kill();
            let _ = child.wait();
            let said = fs::read_to_string(log_path).unwrap_or_default();
            return Err(Error::Vm(format!(
                "virtiofsd for the volume {} ({}) {why}; it said: {}",
                share.source.display(),
                share.tag,
                said.trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// In a fresh mount namespace of the child: `dir` becomes a read-only bind of itself, with
/// nothing propagating back to the host's namespace.
fn read_only_view(dir: &CString) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let none = std::ptr::null();
    // SAFETY: raw syscalls on NUL-terminated strings that outlive the calls.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            none,
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            none,
            dir.as_ptr(),
            none,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        ))
    }
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

    #[test]
    fn directory_binds_become_virtiofs_mounts_of_their_tag() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::write(tmp.path().join("hosts"), "x").unwrap();
        std::os::unix::fs::symlink(&data, tmp.path().join("link")).unwrap();
        let spec = spec_with(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": tmp.path().join("hosts"),
             "options": ["rbind"]},
            {"destination": "/data", "type": "bind", "source": tmp.path().join("link"),
             "options": ["rbind", "ro", "rprivate"]},
            {"destination": "/rel", "source": "data", "options": ["bind"]},
        ]));
        let shares = shared_dirs(&spec, tmp.path()).unwrap();
        let canonical = fs::canonicalize(&data).unwrap();
        assert_eq!(
            shares,
            vec![
                SharedDir {
                    mount_index: Some(2),
                    tag: "vol2".into(),
                    source: canonical.clone(),
                    read_only: true,
                },
                SharedDir {
                    mount_index: Some(3),
                    tag: "vol3".into(),
                    source: canonical,
                    read_only: false,
                },
            ]
        );
        let guest = share_mounts(&spec, &shares);
        let mounts = guest.mounts().as_ref().unwrap();
        assert_eq!(
            mounts[1],
            spec.mounts().as_ref().unwrap()[1],
            "file binds stay"
        );
        assert_eq!(mounts[2].typ().as_deref(), Some("virtiofs"));
        assert_eq!(mounts[2].source().as_deref(), Some(Path::new("vol2")));
        assert_eq!(
            mounts[2].options().as_deref(),
            Some(&["ro".to_string(), "rprivate".to_string()][..])
        );
        assert!(!agent::engine::is_bind(&mounts[3]));
    }

    #[test]
    fn a_missing_source_names_the_mount() {
        let spec = spec_with(serde_json::json!([
            {"destination": "/data", "type": "bind", "source": "/nonexistent/vol",
             "options": ["rbind"]},
        ]));
        let e = shared_dirs(&spec, Path::new("/")).unwrap_err().to_string();
        assert!(e.contains("mounts[0] (/data)"), "{e}");
        assert!(e.contains("/nonexistent/vol"), "{e}");
    }

    #[test]
    fn virtiofsd_listens_and_a_read_only_share_is_read_only_for_it() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        fs::create_dir(&vol).unwrap();
        let share = SharedDir {
            mount_index: Some(0),
            tag: "vol0".into(),
            source: vol.clone(),
            read_only: true,
        };
        let socket = tmp.path().join("vol0.sock");
        let daemons = FsDaemons::start(
            std::slice::from_ref(&share),
            std::slice::from_ref(&socket),
            tmp.path(),
        )
        .unwrap();
        assert!(fs::metadata(&socket).unwrap().file_type().is_socket());
        let pid = daemons.children[0].id();
        // The read-only view is in the namespace virtiofsd was started in: QEMU's keeps it
        // in its first process until a frontend connects (the volume mounted at its path),
        // the Rust one has already made the volume its root (mounted at /). Either way the
        // mount's root within its filesystem is the volume's path.
        let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let line = mountinfo
            .lines()
            .find(|l| {
                l.split(' ')
                    .nth(3)
                    .is_some_and(|root| vol.to_str().unwrap().ends_with(root) && root != "/")
            })
            .unwrap_or_else(|| panic!("no mount of {} in {mountinfo}", vol.display()));
        assert!(
            line.split(' ')
                .nth(5)
                .unwrap()
                .split(',')
                .any(|o| o == "ro"),
            "{line}"
        );
        // The host's own view is untouched.
        fs::write(vol.join("host-write"), "ok").unwrap();
        drop(daemons);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
    }

    #[test]
    fn a_virtiofsd_that_cannot_start_is_reported_with_what_it_said() {
        let tmp = tempfile::tempdir().unwrap();
        let share = SharedDir {
            mount_index: Some(0),
            tag: "vol0".into(),
            source: tmp.path().join("gone"),
            read_only: false,
        };
        let e = FsDaemons::start(
            std::slice::from_ref(&share),
            &[tmp.path().join("s.sock")],
            tmp.path(),
        )
        .err()
        .expect("virtiofsd refuses a missing source")
        .to_string();
        assert!(e.contains("virtiofsd for the volume"), "{e}");
        assert!(e.contains("exited"), "{e}");
    }
}
