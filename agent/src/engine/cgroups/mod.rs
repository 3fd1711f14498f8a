//! The container's control group: created before the container's processes exist, joined
//! by them in the forked child before any namespace is entered, configured from
//! `linux.resources`, read for stats and OOM events, and removed on destroy.
//!
//! Both layouts are handled: the unified v2 hierarchy (what the guest mounts) and the v1
//! per-controller hierarchies that some hosts still have.

mod v1;
mod v2;

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use super::error::EngineError;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Which cgroup layout the host (or guest) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// v2 when /sys/fs/cgroup is the unified hierarchy, v1 otherwise.
    pub fn detect() -> Result<CgroupVersion, EngineError> {
        let st = nix::sys::statfs::statfs(CGROUP_ROOT)
            .map_err(|e| EngineError::cgroup(CGROUP_ROOT, "statfs", e.into()))?;
        if st.filesystem_type().0 as i64 == CGROUP2_SUPER_MAGIC {
            Ok(CgroupVersion::V2)
        } else {
            Ok(CgroupVersion::V1)
        }
    }
}

/// Resource figures of a container's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub memory_usage: u64,
    /// `None` when unlimited.
    pub memory_limit: Option<u64>,
    /// Peak usage, where the kernel records it.
    pub memory_max_usage: Option<u64>,
    pub swap_usage: Option<u64>,
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub pids_current: u64,
    /// `None` when unlimited.
    pub pids_limit: Option<u64>,
    /// Processes killed by the OOM killer in this cgroup.
    pub oom_kills: u64,
}

/// A descriptor that becomes readable when the cgroup hits an OOM condition (v1: an
/// eventfd registered through cgroup.event_control; v2: inotify on memory.events), for a
/// poll/epoll loop. After it fires, call [`OomWatcher::drain`] and read the count with
/// [`OomWatcher::oom_kills`].
#[derive(Debug)]
pub struct OomWatcher {
    fd: OwnedFd,
    file: PathBuf,
}

impl OomWatcher {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Consumes the pending notification so the descriptor is quiet until the next one.
    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        // The descriptor is non-blocking: read until it is empty.
        while matches!(nix::unistd::read(&self.fd, &mut buf), Ok(n) if n > 0) {}
    }

    /// The OOM kill count of the cgroup now.
    pub fn oom_kills(&self) -> Result<u64, EngineError> {
        let text = read(&self.file)?;
        // v1 memory.oom_control and v2 memory.events both carry an `oom_kill N` line.
        let key = "oom_kill";
        Ok(keyed(&text, key).unwrap_or(0))
    }
}

/// One v1 hierarchy the container is part of.
#[derive(Debug, Clone)]
pub(crate) struct Hierarchy {
    /// Controllers bound to it (`cpu`, `cpuacct`, `name=systemd`, ...).
    pub controllers: Vec<String>,
    /// The host directory of the container's cgroup in it.
    pub dir: PathBuf,
    /// The directory of the mount, for the container's view.
    pub mountpoint: PathBuf,
}

#[derive(Debug)]
pub(crate) enum Layout {
    V1(Vec<Hierarchy>),
    V2(PathBuf),
}

/// The container's cgroup.
#[derive(Debug)]
pub(crate) struct Cgroup {
    pub layout: Layout,
    /// Ancestor directories this cgroup's creation made, removed again when empty.
    pub created_parents: Vec<PathBuf>,
}

pub(crate) fn read(path: &Path) -> Result<String, EngineError> {
    fs::read_to_string(path).map_err(|e| EngineError::cgroup(path, "read", e))
}

pub(crate) fn write(path: &Path, value: &str) -> Result<(), EngineError> {
    fs::write(path, value).map_err(|e| EngineError::cgroup(path, format!("write {value:?}"), e))
}

/// The number after `key ` in a flat keyed file (memory.events, memory.stat, cpu.stat).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

/// A cgroup path from the spec, checked: no `..` and nothing but plain components.
pub(crate) fn check_path(p: &str) -> Result<(), String> {
    for c in Path::new(p).components() {
        match c {
            Component::Normal(_) | Component::RootDir | Component::CurDir => {}
            _ => return Err(format!("must not contain `..`, got {p:?}")),
        }
    }
    Ok(())
}

struct MountInfo {
    root: PathBuf,
    mountpoint: PathBuf,
    fstype: String,
    superopts: String,
}

fn mountinfo() -> Result<Vec<MountInfo>, EngineError> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| EngineError::sys("read /proc/self/mountinfo", e))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        out.push(MountInfo {
            root: PathBuf::from(unescape(l[3])),
            mountpoint: PathBuf::from(unescape(l[4])),
            fstype: r[0].to_string(),
            superopts: r[2].to_string(),
        });
    }
    Ok(out)
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The calling process's own cgroup in each hierarchy, keyed by the controller list as
/// /proc/self/cgroup writes it (`cpu,cpuacct`; empty for v2).
fn own_cgroups() -> Result<Vec<(String, PathBuf)>, EngineError> {
    let text = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| EngineError::sys("read /proc/self/cgroup", e))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            Some((ctrls.to_string(), PathBuf::from(path)))
        })
        .collect())
}

/// Joins a cgroup path onto a hierarchy: absolute paths start at the hierarchy's root,
/// relative ones at the calling process's own cgroup (as runc resolves them).
fn resolve(mount: &MountInfo, own: Option<&Path>, path: &str) -> PathBuf {
    let rel = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        own.unwrap_or(Path::new("/")).join(path)
    };
    // A mount of a sub-tree (nested containers): cgroup paths are relative to the real root.
    let rel = rel
        .strip_prefix(&mount.root)
        .map(Path::to_path_buf)
        .unwrap_or(rel);
    let rel = rel.strip_prefix("/").map(Path::to_path_buf).unwrap_or(rel);
    mount.mountpoint.join(rel)
}

impl Cgroup {
    /// Creates the container's cgroup at `path` (see [`resolve`]) in every hierarchy.
    pub(crate) fn create(path: &str) -> Result<Cgroup, EngineError> {
        check_path(path).map_err(|problem| {
            EngineError::Spec(super::error::SpecError::new("linux.cgroupsPath", problem))
        })?;
        let version = CgroupVersion::detect()?;
        let mounts = mountinfo()?;
        let own = own_cgroups()?;
        let cg = match version {
            CgroupVersion::V2 => {
                let m = mounts
                    .iter()
                    .find(|m| m.fstype == "cgroup2" && m.mountpoint == Path::new(CGROUP_ROOT))
                    .ok_or_else(|| {
                        EngineError::CgroupUnsupported("no cgroup2 mount at /sys/fs/cgroup".into())
                    })?;
                let own2 = own
                    .iter()
                    .find(|(c, _)| c.is_empty())
                    .map(|(_, p)| p.as_path());
                let dir = resolve(m, own2, path);
                let created = v2::create(&m.mountpoint, &dir)?;
                Cgroup {
                    layout: Layout::V2(dir),
                    created_parents: created,
                }
            }
            CgroupVersion::V1 => {
                let mut hs: Vec<Hierarchy> = Vec::new();
                // One mount per hierarchy, the one under /sys/fs/cgroup that comes first: the
                // same hierarchy may be mounted elsewhere too, e.g. in the rootfs of a
                // container that shares our mount namespace (read-only, and its own cgroup
                // as root), which is no place to create cgroups in.
                let hierarchy_mounts = mounts
                    .iter()
                    .filter(|m| m.fstype == "cgroup" && m.mountpoint.starts_with(CGROUP_ROOT));
                for m in hierarchy_mounts {
                    let controllers = v1::controllers(&m.superopts);
                    if controllers.is_empty() || hs.iter().any(|h| h.controllers == controllers) {
                        continue;
                    }
                    let key = controllers.join(",");
                    let own1 = own
                        .iter()
                        .find(|(c, _)| {
                            let mut a: Vec<&str> = c.split(',').collect();
                            a.sort_unstable();
                            a.join(",") == key
                        })
                        .map(|(_, p)| p.as_path());
                    let dir = resolve(m, own1, path);
                    hs.push(Hierarchy {
                        controllers,
                        dir,
                        mountpoint: m.mountpoint.clone(),
                    });
                }
                if hs.is_empty() {
                    return Err(EngineError::CgroupUnsupported(
                        "no cgroup v1 hierarchies mounted".into(),
                    ));
                }
                let mut cg = Cgroup {
                    layout: Layout::V1(Vec::new()),
                    created_parents: Vec::new(),
                };
                let mut done = Vec::new();
                for h in hs {
                    match v1::create(&h) {
                        Ok(created) => {
                            cg.created_parents.extend(created);
                            done.push(h);
                        }
                        Err(e) => {
                            cg.layout = Layout::V1(done);
                            let _ = cg.remove();
                            return Err(e);
                        }
                    }
                }
                cg.layout = Layout::V1(done);
                cg
            }
        };
        Ok(cg)
    }

    pub(crate) fn version(&self) -> CgroupVersion {
        match self.layout {
            Layout::V1(_) => CgroupVersion::V1,
            Layout::V2(_) => CgroupVersion::V2,
        }
    }

    /// The files a single-threaded process writes "0" into to join. On v1 that is `tasks`:
    /// moving the calling thread alone takes no threadgroup-wide lock, where a write to
    /// `cgroup.procs` waits for an RCU grace period (over 10 ms measured here, on every
    /// container start). With one thread, moving the thread moves the whole process.
    pub(crate) fn join_files(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1(hs) => hs.iter().map(|h| h.dir.join("tasks")).collect(),
            Layout::V2(d) => vec![d.join("cgroup.procs")],
        }
    }

    /// The cgroup.procs files: every process of the cgroup.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1(hs) => hs.iter().map(|h| h.dir.join("cgroup.procs")).collect(),
            Layout::V2(d) => vec![d.join("cgroup.procs")],
        }
    }

    pub(crate) fn apply(&self, res: &LinuxResources) -> Result<(), EngineError> {
        let res = &zero_is_unset(res.clone());
        match &self.layout {
            Layout::V1(hs) => v1::apply(hs, res),
            Layout::V2(d) => v2::apply(d, res),
        }
    }

    pub(crate) fn stats(&self) -> Result<CgroupStats, EngineError> {
        match &self.layout {
            Layout::V1(hs) => v1::stats(hs),
            Layout::V2(d) => v2::stats(d),
        }
    }

    pub(crate) fn oom_watcher(&self) -> Result<OomWatcher, EngineError> {
        match &self.layout {
            Layout::V1(hs) => v1::oom_watcher(hs),
            Layout::V2(d) => v2::oom_watcher(d),
        }
    }

    /// Pids of every process in the cgroup.
    pub(crate) fn pids(&self) -> Result<Vec<Pid>, EngineError> {
        let file = self
            .procs_files()
            .into_iter()
            .next()
            .expect("one procs file at least");
        Ok(read(&file)?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .map(Pid::from_raw)
            .collect())
    }

    /// SIGKILLs everything in the cgroup until it is empty (or `timeout` passes).
    pub(crate) fn kill_all(&self, timeout: Duration) -> Result<(), EngineError> {
        if let Layout::V2(d) = &self.layout {
            let kill_file = d.join("cgroup.kill");
            if kill_file.exists() {
                write(&kill_file, "1")?;
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            for p in &pids {
                let _ = kill(*p, Signal::SIGKILL);
            }
            if Instant::now() > deadline {
                return Err(EngineError::cgroup(
                    self.procs_files()[0].clone(),
                    "kill every process",
                    io::Error::new(io::ErrorKind::TimedOut, format!("{} left", pids.len())),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes the container's cgroup directories. Exited processes may take a moment to
    /// leave the cgroup, hence the retries on EBUSY.
    pub(crate) fn remove(&self) -> Result<(), EngineError> {
        let dirs: Vec<&Path> = match &self.layout {
            Layout::V1(hs) => hs.iter().map(|h| h.dir.as_path()).collect(),
            Layout::V2(d) => vec![d.as_path()],
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        for dir in dirs {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(EngineError::cgroup(dir, "rmdir", e)),
                }
            }
        }
        // Deepest first; one still used by another container stays (EBUSY / ENOTEMPTY).
        for dir in self.created_parents.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }
}

/// A zero memory limit, swap, reservation, cpu shares or quota means "not set" (runc's
/// reading, and what the validation accepts); writing it would mean something else.
fn zero_is_unset(mut res: LinuxResources) -> LinuxResources {
    if let Some(mut m) = *res.memory() {
        if m.limit() == Some(0) {
            m.set_limit(None);
        }
        if m.swap() == Some(0) {
            m.set_swap(None);
        }
        if m.reservation() == Some(0) {
            m.set_reservation(None);
        }
        res.set_memory(Some(m));
    }
    if let Some(mut c) = res.cpu().clone() {
        if c.shares() == Some(0) {
            c.set_shares(None);
        }
        if c.quota() == Some(0) {
            c.set_quota(None);
        }
        res.set_cpu(Some(c));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_values_are_dropped() {
        let r: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 0, "swap": 0, "reservation": 5},
            "cpu": {"shares": 0, "quota": 0, "period": 100000}
        }))
        .unwrap();
        let r = zero_is_unset(r);
        let m = r.memory().as_ref().unwrap();
        assert_eq!(
            (m.limit(), m.swap(), m.reservation()),
            (None, None, Some(5))
        );
        let c = r.cpu().as_ref().unwrap();
        assert_eq!(
            (c.shares(), c.quota(), c.period()),
            (None, None, Some(100000))
        );
    }

    #[test]
    fn keyed_files() {
        let t = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n";
        assert_eq!(keyed(t, "oom_kill"), Some(2));
        assert_eq!(keyed(t, "oom"), Some(1));
        assert_eq!(keyed(t, "nope"), None);
    }

    #[test]
    fn cgroup_paths_are_checked() {
        assert!(check_path("/sandbox/abc").is_ok());
        assert!(check_path("sandbox/abc").is_ok());
        assert!(check_path("/sandbox/../../etc").is_err());
    }

    #[test]
    fn resolves_absolute_and_relative_paths() {
        let m = MountInfo {
            root: "/".into(),
            mountpoint: "/sys/fs/cgroup/memory".into(),
            fstype: "cgroup".into(),
            superopts: "rw,memory".into(),
        };
        let own = Path::new("/user/1");
        assert_eq!(
            resolve(&m, Some(own), "/sandbox/c"),
            Path::new("/sys/fs/cgroup/memory/sandbox/c")
        );
        assert_eq!(
            resolve(&m, Some(own), "sandbox/c"),
            Path::new("/sys/fs/cgroup/memory/user/1/sandbox/c")
        );
        let nested = MountInfo {
            root: "/outer".into(),
            ..m
        };
        assert_eq!(
            resolve(&nested, Some(Path::new("/outer/x")), "c"),
            Path::new("/sys/fs/cgroup/memory/x/c")
        );
    }
}
