//! The jail every sandbox's VMM is started in (`sandbox-vmm --jail`): a directory of its
//! own holding only its vsock socket, uid/gid 65534, and a cgroup v2 of its own that the VMM
//! caps at its guest memory + overhead and one CPU per vCPU plus one.
//!
//! The jail directory and the cgroup are named after the sandbox's state directory, so
//! `sandbox delete` finds and removes them even when the monitor died before it recorded
//! them.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};

/// `nobody`/`nogroup` on Debian. Shared by every VMM: what keeps one VMM from another is
/// the mount namespace (each sees only its own jail), non-dumpability (no ptrace, /proc
/// files root's) and the seccomp filters (no kill, ptrace or open of new paths).
pub const VMM_UID: u32 = 65534;
pub const VMM_GID: u32 = 65534;
/// The name the VMM's socket has inside its jail (`--vsock path=`).
pub const VSOCK_NAME: &str = "vsock.sock";
/// Where jails go whose state directory is too deep for a unix socket address.
pub const SHORT_JAIL_DIR: &str = "/run/sandbox-jail";
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The parent of every VMM cgroup, directly under the root so that it can hand the memory
/// and cpu controllers down without a service manager's cgroup in the way.
pub const CGROUP_PARENT: &str = "sandbox-vmm";

/// A short name derived from a state directory, for paths that must fit a unix socket
/// address however deep the state root is.
pub fn hash_of(dir: &Path) -> String {
    use sha2::Digest;
    crate::image::tree_hash::hex(&sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes())[..12])
}

/// The jail for the sandbox whose state is in `dir`: `dir/jail` when its vsock socket path
/// there leaves room for the VMM's `_<port>` suffix, else under SHORT_JAIL_DIR.
pub fn jail_dir(dir: &Path) -> PathBuf {
    let inside = dir.join("jail");
    if inside.join(VSOCK_NAME).as_os_str().len()
        <= vmm::devices::virtio::vsock::config::MAX_PATH_LEN
    {
        return inside;
    }
    Path::new(SHORT_JAIL_DIR).join(hash_of(dir))
}

/// The VMM's cgroup name: the sandbox id, made unique across state roots.
fn cgroup_name(dir: &Path) -> String {
    let id: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .take(64)
        .collect();
    format!("{id}-{}", &hash_of(dir)[..12])
}

pub fn cgroup_path(root: &Path, dir: &Path) -> PathBuf {
    root.join(CGROUP_PARENT).join(cgroup_name(dir))
}

/// What `prepare` made.
pub struct Jail {
    pub dir: PathBuf,
    pub cgroup: Option<PathBuf>,
}

impl Jail {
    /// The VMM's side of it (`VmConfig::jail`); the limits follow from the VM's size.
    pub fn config(&self) -> vmm::jail::JailConfig {
        vmm::jail::JailConfig {
            dir: self.dir.clone(),
            uid: VMM_UID,
            gid: VMM_GID,
            cgroup: self.cgroup.clone(),
            memory_max_mib: None,
            cpu_max_percent: None,
        }
    }

    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join(VSOCK_NAME)
    }
}

/// Makes a fresh jail directory (owned by the VMM's uid, 0700: it can remove its socket
/// there, no one else but root can enter) and, when `capped`, the cgroup, if this host has
/// cgroup v2 with the memory and cpu controllers; without them the VMM runs uncapped, with a
/// warning. An unjailed VMM still keeps its socket there, so its paths are the same.
pub fn prepare(dir: &Path, cgroup_root: &Path, capped: bool) -> Result<Jail> {
    let jail = jail_dir(dir);
    let _ = fs::remove_dir_all(&jail);
    if let Some(parent) = jail.parent() {
        fs::create_dir_all(parent).ctx("create", parent)?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&jail)
        .ctx("create the VMM's jail directory", &jail)?;
    std::os::unix::fs::chown(&jail, Some(VMM_UID), Some(VMM_GID))
        .ctx("hand the jail directory to the VMM's uid", &jail)?;
    fs::set_permissions(&jail, fs::Permissions::from_mode(0o700)).ctx("chmod", &jail)?;
    if !capped {
        return Ok(Jail {
            dir: jail,
            cgroup: None,
        });
    }
    let cgroup = match create_cgroup(cgroup_root, dir) {
        Ok(cg) => cg,
        Err(why) => {
            log::warn!("sandbox-vmm runs without a memory and CPU cap: {why}");
            None
        }
    };
    Ok(Jail { dir: jail, cgroup })
}

/// Creates `ROOT/sandbox-vmm/NAME` with memory and cpu delegated to it. `Ok(None)` where the
/// host has no cgroup v2 at ROOT (a v1 or hybrid host); an error where it has one but the
/// controllers cannot be had.
fn create_cgroup(root: &Path, dir: &Path) -> std::result::Result<Option<PathBuf>, String> {
    let controllers = match fs::read_to_string(root.join("cgroup.controllers")) {
        Ok(c) => c,
        Err(_) => {
            log::warn!(
                "{} is not a cgroup v2 hierarchy: sandbox-vmm runs without a memory and CPU cap",
                root.display()
            );
            return Ok(None);
        }
    };
    let available: Vec<&str> = controllers.split_whitespace().collect();
    for c in ["memory", "cpu"] {
        if !available.contains(&c) {
            return Err(format!(
                "the {c} controller is not available in {}",
                root.display()
            ));
        }
    }
    let enable = |cg: &Path| -> std::result::Result<(), String> {
        let file = cg.join("cgroup.subtree_control");
        let current = fs::read_to_string(&file).unwrap_or_default();
        let have: Vec<&str> = current.split_whitespace().collect();
        if have.contains(&"memory") && have.contains(&"cpu") {
            return Ok(());
        }
        fs::write(&file, "+memory +cpu")
            .map_err(|e| format!("enable memory and cpu in {}: {e}", file.display()))
    };
    enable(root)?;
    let parent = root.join(CGROUP_PARENT);
    match fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("create {}: {e}", parent.display())),
    }
    enable(&parent)?;
    let cg = cgroup_path(root, dir);
    // A leftover of an earlier run under the same state directory.
    remove_cgroup(&cg);
    fs::create_dir(&cg).map_err(|e| format!("create {}: {e}", cg.display()))?;
    Ok(Some(cg))
}

/// Kills whatever is left in the cgroup (the VMM, if its monitor died without taking it
/// along) and removes it.
pub fn remove_cgroup(cg: &Path) {
    if !cg.exists() {
        return;
    }
    // cgroup.kill needs Linux 5.14; before that, each process is killed by pid.
    let killed = fs::OpenOptions::new()
        .write(true)
        .open(cg.join("cgroup.kill"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"1"));
    if killed.is_err() {
        for pid in fs::read_to_string(cg.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    // rmdir fails with EBUSY until the killed processes are gone.
    let deadline = Instant::now() + Duration::from_secs(3);
    while let Err(e) = fs::remove_dir(cg) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return;
        }
        if Instant::now() >= deadline {
            log::warn!("cannot remove the VMM's cgroup {}: {e}", cg.display());
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes the jail and the cgroup of the sandbox whose state is in `dir`, whether or not
/// they were recorded.
pub fn release(dir: &Path, cgroup_root: &Path) {
    remove_cgroup(&cgroup_path(cgroup_root, dir));
    let _ = fs::remove_dir_all(jail_dir(dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmm-jail-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn deep_state_directories_get_a_short_jail() {
        let short = Path::new("/run/sandbox/c1");
        assert_eq!(jail_dir(short), short.join("jail"));
        let deep = PathBuf::from(format!("/tmp/{}/root/c1", "d".repeat(90)));
        let jail = jail_dir(&deep);
        assert!(jail.starts_with(SHORT_JAIL_DIR), "{}", jail.display());
        assert!(
            jail.join(VSOCK_NAME).as_os_str().len()
                <= vmm::devices::virtio::vsock::config::MAX_PATH_LEN
        );
        assert_eq!(jail, jail_dir(&deep), "the same directory, the same jail");
        assert_ne!(jail, jail_dir(&deep.with_file_name("c2")));
        assert_ne!(
            cgroup_path(Path::new("/cg"), Path::new("/a/root/c1")),
            cgroup_path(Path::new("/cg"), Path::new("/b/root/c1")),
            "two state roots with the same id"
        );
    }

    #[test]
    fn the_jail_is_the_vmms_own_and_release_removes_it() {
        let state = scratch("state").join("c1");
        fs::create_dir_all(&state).unwrap();
        let no_cgroups = scratch("no-cgroup-v2");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let e = prepare(&state, &no_cgroups, true)
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.contains("hand the jail directory to the VMM's uid"),
                "{e}"
            );
            fs::remove_dir_all(state.parent().unwrap()).unwrap();
            fs::remove_dir_all(&no_cgroups).unwrap();
            return;
        }
        let jail = prepare(&state, &no_cgroups, true).unwrap();
        assert_eq!(jail.dir, state.join("jail"));
        assert!(jail.cgroup.is_none());
        let meta = fs::metadata(&jail.dir).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.uid(), meta.gid()), (VMM_UID, VMM_GID));
        assert_eq!(meta.mode() & 0o777, 0o700);
        let config = jail.config();
        assert_eq!(config.dir, jail.dir);
        assert_eq!(
            (config.uid, config.gid, config.cgroup),
            (65534, 65534, None)
        );
        assert_eq!(jail.vsock_socket(), state.join("jail/vsock.sock"));
        fs::write(jail.dir.join("vsock.sock"), b"").unwrap();
        release(&state, &no_cgroups);
        assert!(!jail.dir.exists());
        fs::remove_dir_all(state.parent().unwrap()).unwrap();
        fs::remove_dir_all(&no_cgroups).unwrap();
    }

    #[test]
    fn cgroups_get_memory_and_cpu_delegated() {
        // A directory laid out like a cgroup v2 root; mkdir there makes plain directories,
        // so the files the kernel would add are written by hand.
        let root = scratch("cgroup-root");
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let parent = root.join(CGROUP_PARENT);
        fs::create_dir(&parent).unwrap();
        fs::write(parent.join("cgroup.subtree_control"), "").unwrap();
        let state = Path::new("/var/lib/sandbox/root/c1");
        let cg = create_cgroup(&root, state).unwrap().unwrap();
        assert_eq!(cg, cgroup_path(&root, state));
        assert!(cg.is_dir());
        assert!(cg.file_name().unwrap().to_string_lossy().starts_with("c1-"));
        for dir in [&root, &parent] {
            assert_eq!(
                fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(),
                "+memory +cpu"
            );
        }
        remove_cgroup(&cg);
        assert!(!cg.exists());

        fs::write(root.join("cgroup.controllers"), "cpuset io pids\n").unwrap();
        let e = create_cgroup(&root, state).unwrap_err();
        assert!(e.contains("memory controller is not available"), "{e}");
        fs::remove_dir_all(&root).unwrap();
    }

    /// The cgroup v2 mount, wherever this host has it (`/sys/fs/cgroup`, or
    /// `/sys/fs/cgroup/unified` on a hybrid host).
    fn cgroup2_mount() -> Option<PathBuf> {
        let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
        info.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split(' ').next() != Some("cgroup2") {
                return None;
            }
            left.split(' ').nth(4).map(PathBuf::from)
        })
    }

    #[test]
    fn release_kills_a_leftover_vmm_and_removes_what_no_record_names() {
        // SAFETY: geteuid has no preconditions.
        let root_user = unsafe { libc::geteuid() } == 0;
        let Some(mount) = cgroup2_mount().filter(|_| root_user) else {
            // Without root or cgroup v2 only the jail directory can be shown to go.
            let state = scratch("leftover-nocg").join("c1");
            fs::create_dir_all(jail_dir(&state)).unwrap();
            release(&state, Path::new("/nonexistent"));
            assert!(!jail_dir(&state).exists());
            return;
        };
        // Our own parent under the real hierarchy stands in for the cgroup root.
        let root = mount.join(format!("sandbox-test-{}", std::process::id()));
        let _ = fs::remove_dir(root.join(CGROUP_PARENT));
        let _ = fs::remove_dir(&root);
        fs::create_dir_all(root.join(CGROUP_PARENT)).unwrap();
        let state = scratch("leftover").join("c1");
        fs::create_dir_all(jail_dir(&state)).unwrap();
        let cg = cgroup_path(&root, &state);
        fs::create_dir(&cg).unwrap();
        // A VMM whose monitor died: still running, in its cgroup, recorded nowhere.
        let mut vmm = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        fs::write(cg.join("cgroup.procs"), vmm.id().to_string()).unwrap();

        release(&state, &root);
        let status = vmm.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert!(!cg.exists(), "{}", cg.display());
        assert!(!jail_dir(&state).exists());
        fs::remove_dir(root.join(CGROUP_PARENT)).unwrap();
        fs::remove_dir(&root).unwrap();
        fs::remove_dir_all(state.parent().unwrap()).unwrap();
    }
}
