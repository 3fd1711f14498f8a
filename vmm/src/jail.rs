//! Confining the VMM process once it holds every descriptor it needs (`--jail`).
//!
//! Like Firecracker's jailer, but done by the VMM itself after its devices are open, so that
//! nothing has to be copied or linked into the jail first: join a cgroup v2 that caps the
//! process's memory and CPU, take a private mount namespace whose root is the jail directory
//! (the old root unmounted, so no path leads back to the host's files), drop every group and
//! switch to an unprivileged uid/gid, and set no_new_privs. Seccomp filters come after.
//!
//! What still resolves by path afterwards must lie in the jail directory: the vsock device's
//! socket (`<path>_<port>` is connected to for each guest-initiated connection), which is
//! why, when jailed, the VMM works in the jail directory from the start and the vsock path
//! must be relative to it.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::key_value::{KeyValueError, KeyValueFlag};

/// Room for the VMM's own allocations, thread stacks, KVM's per-vCPU and page-table memory
/// and the page cache its disk I/O brings in, on top of guest RAM.
pub const DEFAULT_MEMORY_OVERHEAD_MIB: u64 = 128;
/// cgroup v2 `cpu.max` period.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The `jail` section of the config file, or `--jail dir=D,uid=U,gid=G[,cgroup=C]...`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The new root directory (absolute). Relative paths in the rest of the config are taken
    /// relative to it.
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// An existing cgroup v2 directory (e.g. `/sys/fs/cgroup/sandbox/ID`) the process moves
    /// into; its `memory.max` and `cpu.max` are written first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// `memory.max` in MiB; default guest memory + `DEFAULT_MEMORY_OVERHEAD_MIB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max_mib: Option<u64>,
    /// `cpu.max` as a percentage of one CPU; default 100 per vCPU plus 100 for the device
    /// thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max_percent: Option<u32>,
}

const JAIL_FLAG: KeyValueFlag = KeyValueFlag {
    name: "--jail",
    keys: &["dir", "uid", "gid", "cgroup", "mem-max-mib", "cpu-max-pct"],
    skip_empty_items: true,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JailConfigError {
    #[error(transparent)]
    Flag(#[from] KeyValueError),
    #[error("jail: dir `{0}` must be an absolute path")]
    RelativeDir(String),
    #[error("jail: cgroup `{0}` must be an absolute path")]
    RelativeCgroup(String),
    #[error("jail: {what} {value} is not an unprivileged id (0 is root, {max} means \"unchanged\" to the kernel)", max = u32::MAX)]
    PrivilegedId { what: &'static str, value: u32 },
    #[error("jail: {0} must be more than 0")]
    ZeroLimit(&'static str),
}

impl JailConfig {
    pub fn validate(&self) -> Result<(), JailConfigError> {
        if !self.dir.is_absolute() {
            return Err(JailConfigError::RelativeDir(self.dir.display().to_string()));
        }
        if let Some(cg) = &self.cgroup {
            if !cg.is_absolute() {
                return Err(JailConfigError::RelativeCgroup(cg.display().to_string()));
            }
        }
        for (what, value) in [("uid", self.uid), ("gid", self.gid)] {
            if value == 0 || value == u32::MAX {
                return Err(JailConfigError::PrivilegedId { what, value });
            }
        }
        if self.memory_max_mib == Some(0) {
            return Err(JailConfigError::ZeroLimit("mem-max-mib"));
        }
        if self.cpu_max_percent == Some(0) {
            return Err(JailConfigError::ZeroLimit("cpu-max-pct"));
        }
        Ok(())
    }

    /// What `enter` does for a VM of `mem_mib` MiB and `vcpus` vCPUs.
    pub fn spec(&self, mem_mib: u64, vcpus: u8) -> JailSpec {
        JailSpec {
            dir: self.dir.clone(),
            uid: self.uid,
            gid: self.gid,
            cgroup: self.cgroup.as_ref().map(|path| CgroupSpec {
                path: path.clone(),
                memory_max: Some(
                    self.memory_max_mib
                        .unwrap_or(mem_mib.saturating_add(DEFAULT_MEMORY_OVERHEAD_MIB))
                        .saturating_mul(1 << 20),
                ),
                cpu_max_us: Some(
                    self.cpu_max_percent
                        .map(u64::from)
                        .unwrap_or((u64::from(vcpus) + 1) * 100)
                        * CPU_PERIOD_US
                        / 100,
                ),
            }),
        }
    }
}

impl FromStr for JailConfig {
    type Err = JailConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const NUMBER: &str = "a number";
        let values = JAIL_FLAG.parse(s)?;
        Ok(Self {
            dir: PathBuf::from(values.require("dir")?),
            uid: values.parse_required("uid", NUMBER)?,
            gid: values.parse_required("gid", NUMBER)?,
            cgroup: values.get("cgroup").map(PathBuf::from),
            memory_max_mib: values.parse("mem-max-mib", NUMBER)?,
            cpu_max_percent: values.parse("cpu-max-pct", NUMBER)?,
        })
    }
}

/// Whether `path` stays inside the jail directory when taken relative to it: relative, and
/// no `..`.
pub fn is_inside_jail(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && !path.as_os_str().is_empty()
}

/// The cgroup part of a jail: limits are written (when set) before the process moves in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupSpec {
    pub path: PathBuf,
    /// `memory.max` in bytes (also `memory.swap.max` 0 where swap accounting exists).
    pub memory_max: Option<u64>,
    /// `cpu.max` quota in microseconds per `CPU_PERIOD_US`.
    pub cpu_max_us: Option<u64>,
}

/// Everything `enter` does, resolved from a `JailConfig` and the VM's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailSpec {
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub cgroup: Option<CgroupSpec>,
}

#[derive(Debug)]
pub struct JailError {
    step: String,
    source: io::Error,
    hint: Option<&'static str>,
}

impl fmt::Display for JailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "jail: {}: {}", self.step, self.source)?;
        if let Some(hint) = self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for JailError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn err(step: impl Into<String>, source: io::Error) -> JailError {
    let hint = match source.raw_os_error() {
        Some(libc::EPERM) => Some("sandbox-vmm must start as root to jail itself"),
        _ => None,
    };
    JailError {
        step: step.into(),
        source,
        hint,
    }
}

fn check(ret: libc::c_int, step: impl Into<String>) -> Result<(), JailError> {
    if ret == 0 {
        Ok(())
    } else {
        Err(err(step, io::Error::last_os_error()))
    }
}

fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        err(
            format!("{}", path.display()),
            io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"),
        )
    })
}

/// Checks that the jail directory is there, and changes into it so that relative paths in
/// the configuration (the vsock socket) name the same file before and after `enter`.
pub fn prepare(dir: &Path) -> Result<(), JailError> {
    let meta =
        std::fs::metadata(dir).map_err(|e| err(format!("jail directory {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(err(
            format!("jail directory {}", dir.display()),
            io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    std::env::set_current_dir(dir).map_err(|e| err(format!("chdir {}", dir.display()), e))
}

/// Writes the limits and moves this process into the cgroup.
pub fn join_cgroup(cg: &CgroupSpec) -> Result<(), JailError> {
    let dir = &cg.path;
    if !dir.join("cgroup.procs").exists() {
        return Err(JailError {
            step: format!("cgroup {}", dir.display()),
            source: io::Error::from_raw_os_error(libc::ENOENT),
            hint: Some("it must be an existing cgroup v2 directory"),
        });
    }
    let write = |name: &str, value: String| -> Result<(), JailError> {
        let file = dir.join(name);
        // Never created: a missing interface file means a missing controller.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()))
            .map_err(|e| {
                let mut e = err(format!("write {value:?} to {}", file.display()), e);
                if !file.exists() {
                    e.hint = Some("enable the controller in the parent's cgroup.subtree_control");
                }
                e
            })
    };
    if let Some(bytes) = cg.memory_max {
        write("memory.max", bytes.to_string())?;
        // Without this the cap holds for RAM only and the rest of the guest goes to swap.
        if dir.join("memory.swap.max").exists() {
            write("memory.swap.max", "0".into())?;
        }
    }
    if let Some(quota) = cg.cpu_max_us {
        write("cpu.max", format!("{quota} {CPU_PERIOD_US}"))?;
    }
    write("cgroup.procs", std::process::id().to_string())
}

/// Makes `dir` the root of a private mount namespace, with the host's root unmounted.
///
/// Where the current root cannot be pivoted away from (an initramfs root, as in the nested
/// test machine) it falls back to chroot; that is as tight once the uid is dropped, since an
/// unprivileged process has no CAP_SYS_CHROOT to climb out with, and no directory descriptor
/// outside the jail is open.
pub fn enter_root(dir: &Path) -> Result<(), JailError> {
    let c_dir = cstring(dir)?;
    // SAFETY: plain syscalls on NUL-terminated paths that outlive the calls.
    unsafe {
        // Only this thread gets the namespace (the kernel gives it a private fs_struct); the
        // threads the VMM starts afterwards inherit it.
        check(
            libc::unshare(libc::CLONE_NEWNS),
            "unshare the mount namespace",
        )?;
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "make the mounts private",
        )?;
        // pivot_root wants the new root to be a mount point.
        check(
            libc::mount(
                c_dir.as_ptr(),
                c_dir.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ),
            format!("bind-mount {}", dir.display()),
        )?;
        check(
            libc::chdir(c_dir.as_ptr()),
            format!("chdir {}", dir.display()),
        )?;
        let dot = c".".as_ptr();
        if libc::syscall(libc::SYS_pivot_root, dot, dot) == 0 {
            // The old root is stacked under the new one at "/": detach it.
            check(libc::umount2(dot, libc::MNT_DETACH), "unmount the old root")?;
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(err(format!("pivot_root to {}", dir.display()), e));
            }
            check(libc::chroot(dot), format!("chroot {}", dir.display()))?;
        }
        check(libc::chdir(c"/".as_ptr()), "chdir / in the jail")?;
    }
    Ok(())
}

/// Drops supplementary groups, then gid, then uid (the order that leaves no way back), and
/// checks that root cannot be regained.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: plain syscalls; glibc applies the set*id calls to every thread of the process;
    // the prctl pointer argument points at a live c_int.
    unsafe {
        // A change of uid clears the parent-death signal, which is how a VMM dies with its
        // monitor: read here, set again below.
        let mut pdeathsig: libc::c_int = 0;
        check(
            libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeathsig as *mut libc::c_int),
            "PR_GET_PDEATHSIG",
        )?;
        let parent = libc::getppid();
        check(
            libc::setgroups(0, std::ptr::null()),
            "drop supplementary groups",
        )?;
        check(libc::setresgid(gid, gid, gid), format!("setresgid {gid}"))?;
        check(libc::setresuid(uid, uid, uid), format!("setresuid {uid}"))?;
        let (mut r, mut e, mut s) = (0, 0, 0);
        check(libc::getresuid(&mut r, &mut e, &mut s), "getresuid")?;
        if (r, e, s) != (uid, uid, uid) {
            return Err(err(
                format!("uid is {r}/{e}/{s} after setresuid {uid}"),
                io::Error::from_raw_os_error(libc::EPERM),
            ));
        }
        if libc::setuid(0) == 0 || libc::setgid(0) == 0 {
            return Err(err(
                "root could be regained after dropping privileges",
                io::Error::from_raw_os_error(libc::EPERM),
            ));
        }
        // Credentials changed from root already make the process non-dumpable; said here
        // so that no sysctl (suid_dumpable) lets another process of this uid ptrace it.
        check(
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
            "PR_SET_DUMPABLE",
        )?;
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "PR_SET_NO_NEW_PRIVS",
        )?;
        if pdeathsig != 0 {
            check(
                libc::prctl(libc::PR_SET_PDEATHSIG, pdeathsig as libc::c_ulong),
                "PR_SET_PDEATHSIG",
            )?;
            // The parent may have gone while the signal was unset, and no signal would come.
            if libc::getppid() != parent {
                return Err(err(
                    "the parent process exited while the VMM was being jailed",
                    io::Error::from_raw_os_error(libc::ESRCH),
                ));
            }
        }
    }
    Ok(())
}

/// All of it, in the order it must happen: the cgroup and the mount namespace need root.
pub fn enter(spec: &JailSpec) -> Result<(), JailError> {
    if let Some(cg) = &spec.cgroup {
        join_cgroup(cg)?;
    }
    enter_root(&spec.dir)?;
    drop_privileges(spec.uid, spec.gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JailConfig {
        "dir=/run/j,uid=65534,gid=65534".parse().unwrap()
    }

    #[test]
    fn flags_parse_and_default_limits_follow_the_vm() {
        let c: JailConfig = "dir=/run/j,uid=1000,gid=1001,cgroup=/sys/fs/cgroup/s/x"
            .parse()
            .unwrap();
        c.validate().unwrap();
        assert_eq!((c.uid, c.gid), (1000, 1001));
        let spec = c.spec(256, 2);
        let cg = spec.cgroup.unwrap();
        assert_eq!(cg.path, PathBuf::from("/sys/fs/cgroup/s/x"));
        assert_eq!(
            cg.memory_max,
            Some((256 + DEFAULT_MEMORY_OVERHEAD_MIB) << 20)
        );
        assert_eq!(cg.cpu_max_us, Some(300_000));

        let c: JailConfig = "dir=/j,uid=5,gid=5,cgroup=/c,mem-max-mib=512,cpu-max-pct=150"
            .parse()
            .unwrap();
        let cg = c.spec(256, 2).cgroup.unwrap();
        assert_eq!(cg.memory_max, Some(512 << 20));
        assert_eq!(cg.cpu_max_us, Some(150_000));
        assert_eq!(config().spec(128, 1).cgroup, None);
    }

    #[test]
    fn bad_flags_name_the_problem() {
        let e = |s: &str| s.parse::<JailConfig>().unwrap_err().to_string();
        assert!(e("uid=1,gid=1").contains("`dir` is missing"));
        assert!(e("dir=/j,gid=1").contains("`uid` is missing"));
        assert!(e("dir=/j,uid=x,gid=1").contains("`uid=x` is not a number"));
        assert!(e("dir=/j,uid=-1,gid=1").contains("`uid=-1`"));
        assert!(e("dir=/j,uid=1,gid=1,root=/").contains("unknown key `root`"));
        assert!(e("dir=/j,uid=1,gid=1,uid=2").contains("`uid` given twice"));
        assert!(e("dir=/j,uid").contains("`uid` is not KEY=VALUE"));
        assert!(e("dir=/j,uid=1,gid=1,cpu-max-pct=4294967296").contains("`cpu-max-pct=4294967296`"));
        assert_eq!(
            e("dir=/j,uid=1,gid=1,root=/"),
            "--jail: unknown key `root` (expected dir, uid, gid, cgroup, mem-max-mib, cpu-max-pct)"
        );
    }

    #[test]
    fn validation_refuses_root_ids_and_relative_paths() {
        let v = |c: JailConfig| c.validate().unwrap_err().to_string();
        let mut c = config();
        c.uid = 0;
        assert!(v(c).contains("uid 0 is not an unprivileged id"));
        let mut c = config();
        c.gid = u32::MAX;
        assert!(v(c).contains("gid 4294967295 is not an unprivileged id"));
        let mut c = config();
        c.dir = "jail".into();
        assert!(v(c).contains("dir `jail` must be an absolute path"));
        let mut c = config();
        c.cgroup = Some("sandbox/x".into());
        assert!(v(c).contains("cgroup `sandbox/x` must be an absolute path"));
        let mut c = config();
        c.memory_max_mib = Some(0);
        assert!(v(c).contains("mem-max-mib must be more than 0"));
    }

    #[test]
    fn paths_inside_the_jail() {
        assert!(is_inside_jail(Path::new("vsock.sock")));
        assert!(is_inside_jail(Path::new("./run/v.sock")));
        assert!(!is_inside_jail(Path::new("/run/v.sock")));
        assert!(!is_inside_jail(Path::new("../v.sock")));
        assert!(!is_inside_jail(Path::new("a/../../v.sock")));
        assert!(!is_inside_jail(Path::new("")));
    }

    #[test]
    fn a_missing_jail_directory_is_named() {
        let dir = std::env::temp_dir().join(format!("no-such-jail-{}", std::process::id()));
        let e = prepare(&dir).unwrap_err().to_string();
        assert!(
            e.contains(&format!("jail directory {}", dir.display())) && e.contains("No such file"),
            "{e}"
        );
        let file = std::env::temp_dir().join(format!("jail-file-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let e = prepare(&file).unwrap_err().to_string();
        std::fs::remove_file(&file).unwrap();
        assert!(e.contains("Not a directory"), "{e}");
    }

    #[test]
    fn limits_are_written_before_the_process_moves_in() {
        // A directory shaped like a cgroup: the files are plain, so the move is recorded
        // rather than done.
        let dir = std::env::temp_dir().join(format!("fake-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["cgroup.procs", "memory.max", "memory.swap.max", "cpu.max"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        join_cgroup(&CgroupSpec {
            path: dir.clone(),
            memory_max: Some(384 << 20),
            cpu_max_us: Some(200_000),
        })
        .unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (384u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "200000 100000");
        assert_eq!(read("cgroup.procs"), std::process::id().to_string());

        std::fs::remove_file(dir.join("cpu.max")).unwrap();
        let e = join_cgroup(&CgroupSpec {
            path: dir.clone(),
            memory_max: None,
            cpu_max_us: Some(100_000),
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cpu.max") && e.contains("subtree_control"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let e = join_cgroup(&CgroupSpec {
            path: dir.clone(),
            memory_max: None,
            cpu_max_us: None,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains(&format!("cgroup {}", dir.display())), "{e}");
        assert!(e.contains("existing cgroup v2 directory"), "{e}");
    }
}
