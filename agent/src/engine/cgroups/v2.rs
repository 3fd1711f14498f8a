//! cgroup v2: one directory in the unified hierarchy; controllers are enabled in every
//! ancestor's cgroup.subtree_control on the way down.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::{keyed, read, write, CgroupStats, OomWatcher};
use crate::engine::error::EngineError;

const WANTED: &[&str] = &["cpu", "cpuset", "memory", "pids", "io"];

pub(super) fn create(
    mountpoint: &Path,
    dir: &Path,
) -> Result<Vec<std::path::PathBuf>, EngineError> {
    let mut created = Vec::new();
    let rel = dir.strip_prefix(mountpoint).unwrap_or(Path::new(""));
    let mut cur = mountpoint.to_path_buf();
    for comp in rel.components() {
        // Delegate the controllers from the parent to the level we are about to create.
        let available = read(&cur.join("cgroup.controllers")).unwrap_or_default();
        let enabled = read(&cur.join("cgroup.subtree_control")).unwrap_or_default();
        for c in available.split_whitespace().filter(|c| WANTED.contains(c)) {
            if !enabled.split_whitespace().any(|e| e == c) {
                // A controller that cannot be delegated shows up later as a missing
                // interface file, with its name.
                let _ = fs::write(cur.join("cgroup.subtree_control"), format!("+{c}"));
            }
        }
        cur.push(comp);
        match fs::create_dir(&cur) {
            Ok(()) => {
                if cur != dir {
                    created.push(cur.clone());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(EngineError::cgroup(&cur, "mkdir", e)),
        }
    }
    Ok(created)
}

/// cpu.shares (2..=262144) to cpu.weight (1..=10000), the conversion runc and crun use.
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

pub(super) fn apply(d: &Path, res: &LinuxResources) -> Result<(), EngineError> {
    if let Some(mem) = res.memory() {
        if let Some(l) = mem.limit() {
            write(&d.join("memory.max"), &max_or(l))?;
        }
        if let Some(s) = mem.swap() {
            // The spec's swap is memory+swap (the v1 meaning); v2 limits swap alone.
            let v = match (s, mem.limit()) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l > 0 => (s - l).max(0).to_string(),
                (s, _) => s.to_string(),
            };
            let swap_max = d.join("memory.swap.max");
            // A kernel without swap accounting has no memory.swap.max: "no swap" and "no
            // limit" then already hold (runc's rule); any other limit cannot be kept.
            if swap_max.exists() || !(v == "0" || v == "max") {
                write(&swap_max, &v)?;
            }
        }
        if let Some(r) = mem.reservation() {
            write(&d.join("memory.low"), &max_or(r))?;
        }
    }
    if let Some(cpu) = res.cpu() {
        if let Some(s) = cpu.shares() {
            write(&d.join("cpu.weight"), &shares_to_weight(s).to_string())?;
        }
        if cpu.quota().is_some() || cpu.period().is_some() {
            let cur = read(&d.join("cpu.max")).unwrap_or_else(|_| "max 100000".into());
            let mut it = cur.split_whitespace();
            let cur_quota = it.next().unwrap_or("max").to_string();
            let cur_period = it.next().unwrap_or("100000").to_string();
            let quota = cpu.quota().map(max_or).unwrap_or(cur_quota);
            let period = cpu.period().map(|p| p.to_string()).unwrap_or(cur_period);
            write(&d.join("cpu.max"), &format!("{quota} {period}"))?;
        }
        if let Some(i) = cpu.idle() {
            write(&d.join("cpu.idle"), &i.to_string())?;
        }
        if let Some(c) = cpu.cpus() {
            write(&d.join("cpuset.cpus"), c)?;
        }
        if let Some(m) = cpu.mems() {
            write(&d.join("cpuset.mems"), m)?;
        }
    }
    if let Some(cpu) = res.cpu() {
        if cpu.realtime_period().is_some() || cpu.realtime_runtime().is_some() {
            return Err(EngineError::CgroupUnsupported(
                "linux.resources.cpu.realtimePeriod/realtimeRuntime: cgroup v2 has no real-time \
                 bandwidth control"
                    .into(),
            ));
        }
    }
    if let Some(b) = res.block_io() {
        // blkio weights (10-1000) onto io.weight (1-10000), as runc converts them.
        let conv = |w: u16| 1 + (u64::from(w).clamp(10, 1000) - 10) * 9999 / 990;
        if let Some(w) = b.weight().filter(|w| *w != 0) {
            write(&d.join("io.weight"), &format!("default {}", conv(w)))?;
        }
        for wd in b.weight_device().iter().flatten() {
            if let Some(w) = wd.weight() {
                write(
                    &d.join("io.weight"),
                    &format!("{}:{} {}", wd.major(), wd.minor(), conv(w)),
                )?;
            }
        }
        for (key, list) in [
            ("rbps", b.throttle_read_bps_device()),
            ("wbps", b.throttle_write_bps_device()),
            ("riops", b.throttle_read_iops_device()),
            ("wiops", b.throttle_write_iops_device()),
        ] {
            for t in list.iter().flatten() {
                write(
                    &d.join("io.max"),
                    &format!("{}:{} {key}={}", t.major(), t.minor(), t.rate()),
                )?;
            }
        }
    }
    for h in res.hugepage_limits().iter().flatten() {
        write(
            &d.join(format!("hugetlb.{}.max", h.page_size())),
            &max_or(h.limit()),
        )?;
    }
    if res.network().is_some() {
        return Err(EngineError::CgroupUnsupported(
            "linux.resources.network: net_cls / net_prio do not exist in cgroup v2".into(),
        ));
    }
    if let Some(p) = res.pids() {
        let v = if p.limit() <= 0 {
            "max".to_string()
        } else {
            p.limit().to_string()
        };
        write(&d.join("pids.max"), &v)?;
    }
    if let Some(u) = res.unified() {
        for (k, v) in u {
            write(&d.join(k), v)?;
        }
    }
    Ok(())
}

fn num_or_max(path: &Path) -> Result<Option<u64>, EngineError> {
    let t = read(path)?;
    Ok(t.trim().parse().ok())
}

pub(super) fn stats(d: &Path) -> Result<CgroupStats, EngineError> {
    let mut s = CgroupStats::default();
    if d.join("memory.current").exists() {
        s.memory_usage = num_or_max(&d.join("memory.current"))?.unwrap_or(0);
        s.memory_limit = num_or_max(&d.join("memory.max"))?;
        s.memory_max_usage = num_or_max(&d.join("memory.peak")).ok().flatten();
        s.swap_usage = num_or_max(&d.join("memory.swap.current")).ok().flatten();
        s.oom_kills = keyed(&read(&d.join("memory.events"))?, "oom_kill").unwrap_or(0);
    }
    let st = read(&d.join("cpu.stat"))?;
    s.cpu_usage_ns = keyed(&st, "usage_usec").unwrap_or(0) * 1000;
    s.cpu_user_ns = keyed(&st, "user_usec").unwrap_or(0) * 1000;
    s.cpu_system_ns = keyed(&st, "system_usec").unwrap_or(0) * 1000;
    if d.join("pids.current").exists() {
        s.pids_current = num_or_max(&d.join("pids.current"))?.unwrap_or(0);
        s.pids_limit = num_or_max(&d.join("pids.max"))?;
    }
    Ok(s)
}

/// inotify on memory.events: the kernel reports a modification whenever a counter moves.
pub(super) fn oom_watcher(d: &Path) -> Result<OomWatcher, EngineError> {
    let file = d.join("memory.events");
    // SAFETY: inotify_init1 creates a new descriptor, owned right below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(EngineError::sys(
            "inotify_init1",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is fresh.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes())
        .map_err(|_| EngineError::CgroupUnsupported("NUL in cgroup path".into()))?;
    // SAFETY: valid descriptor and NUL-terminated path.
    let r = unsafe {
        libc::inotify_add_watch(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            c.as_ptr(),
            libc::IN_MODIFY,
        )
    };
    if r < 0 {
        return Err(EngineError::cgroup(
            &file,
            "inotify_add_watch",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(OomWatcher { fd, file })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    /// The v2 interface files written into a scratch directory (this host runs v1, so the
    /// real hierarchy is exercised in the guest; the values are checked here).
    #[test]
    fn writes_the_v2_interface_files() {
        let d = std::env::temp_dir().join(format!("engine-v2-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("cpu.max"), "max 100000\n").unwrap();
        fs::write(d.join("memory.swap.max"), "max\n").unwrap();
        apply(
            &d,
            &resources(serde_json::json!({
                "memory": {"limit": 67108864, "swap": 100663296, "reservation": 1048576},
                "cpu": {"shares": 1024, "quota": 25000, "cpus": "0-1", "mems": "0"},
                "pids": {"limit": 64},
                "blockIO": {"weight": 500, "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}]},
                "unified": {"memory.high": "50000000"}
            })),
        )
        .unwrap();
        let r = |f: &str| fs::read_to_string(d.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(r("memory.max"), "67108864");
        assert_eq!(r("memory.swap.max"), "33554432");
        assert_eq!(r("memory.low"), "1048576");
        assert_eq!(r("cpu.weight"), "39");
        assert_eq!(r("cpu.max"), "25000 100000");
        assert_eq!(r("cpuset.cpus"), "0-1");
        assert_eq!(r("cpuset.mems"), "0");
        assert_eq!(r("pids.max"), "64");
        assert_eq!(r("memory.high"), "50000000");
        assert_eq!(r("io.weight"), "default 4950");
        assert_eq!(r("io.max"), "8:0 wiops=100");
        apply(
            &d,
            &resources(serde_json::json!({
                "memory": {"limit": -1, "swap": -1}, "cpu": {"quota": -1, "period": 50000},
                "pids": {"limit": -1}
            })),
        )
        .unwrap();
        assert_eq!(r("memory.max"), "max");
        assert_eq!(r("memory.swap.max"), "max");
        assert_eq!(r("cpu.max"), "max 50000");
        assert_eq!(r("pids.max"), "max");
        fs::remove_dir_all(&d).unwrap();
    }

    /// Without swap accounting (no memory.swap.max), "no swap" and "unlimited" need no
    /// write (in cgroupfs a write to the missing file fails).
    #[test]
    fn swap_without_swap_accounting() {
        let d = std::env::temp_dir().join(format!("engine-v2-noswap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        for swap in [67108864, -1] {
            let res = resources(serde_json::json!({
                "memory": {"limit": 67108864, "swap": swap}
            }));
            apply(&d, &res).unwrap();
            assert!(!d.join("memory.swap.max").exists(), "swap {swap}");
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reads_v2_stats() {
        let d = std::env::temp_dir().join(format!("engine-v2-stats-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        for (f, v) in [
            ("memory.current", "4096\n"),
            ("memory.max", "max\n"),
            ("memory.peak", "8192\n"),
            ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
            (
                "cpu.stat",
                "usage_usec 150\nuser_usec 100\nsystem_usec 50\n",
            ),
            ("pids.current", "3\n"),
            ("pids.max", "20\n"),
        ] {
            fs::write(d.join(f), v).unwrap();
        }
        let s = stats(&d).unwrap();
        assert_eq!(s.memory_usage, 4096);
        assert_eq!(s.memory_limit, None);
        assert_eq!(s.memory_max_usage, Some(8192));
        assert_eq!(s.oom_kills, 1);
        assert_eq!(
            (s.cpu_usage_ns, s.cpu_user_ns, s.cpu_system_ns),
            (150_000, 100_000, 50_000)
        );
        assert_eq!((s.pids_current, s.pids_limit), (3, Some(20)));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn shares_convert_to_weight() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }
}
