//! cgroup v1: one directory per hierarchy, resources written to each controller's files.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, LinuxResources};

use super::{keyed, read, write, CgroupStats, Hierarchy, OomWatcher};
use crate::engine::error::EngineError;

const KNOWN: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "blkio",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// The controllers a v1 mount carries, from its super options (sorted).
pub(super) fn controllers(superopts: &str) -> Vec<String> {
    let mut c: Vec<String> = superopts
        .split(',')
        .filter(|o| KNOWN.contains(o) || o.starts_with("name="))
        .map(str::to_string)
        .collect();
    c.sort_unstable();
    c
}

fn has(h: &Hierarchy, c: &str) -> bool {
    h.controllers.iter().any(|x| x == c)
}

fn find<'a>(hs: &'a [Hierarchy], c: &str) -> Option<&'a Hierarchy> {
    hs.iter().find(|h| has(h, c))
}

fn need<'a>(hs: &'a [Hierarchy], c: &str) -> Result<&'a Hierarchy, EngineError> {
    find(hs, c).ok_or_else(|| EngineError::CgroupUnsupported(format!("no {c} hierarchy mounted")))
}

/// mkdir -p; a new cpuset cgroup starts with empty cpus and mems, which would refuse any
/// process, so they are copied from the parent on the way down.
pub(super) fn create(h: &Hierarchy) -> Result<Vec<PathBuf>, EngineError> {
    let mut created = Vec::new();
    let rel = h.dir.strip_prefix(&h.mountpoint).unwrap_or(Path::new(""));
    let mut cur = h.mountpoint.clone();
    for comp in rel.components() {
        let parent = cur.clone();
        cur.push(comp);
        match fs::create_dir(&cur) {
            Ok(()) => {
                if cur != h.dir {
                    created.push(cur.clone());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(EngineError::cgroup(&cur, "mkdir", e)),
        }
        if has(h, "cpuset") {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if read(&cur.join(f))?.trim().is_empty() {
                    let v = read(&parent.join(f))?;
                    write(&cur.join(f), v.trim())?;
                }
            }
        }
    }
    Ok(created)
}

fn limit(v: i64) -> String {
    if v < 0 {
        "-1".into()
    } else {
        v.to_string()
    }
}

pub(super) fn apply(hs: &[Hierarchy], res: &LinuxResources) -> Result<(), EngineError> {
    if let Some(mem) = res.memory() {
        let d = &need(hs, "memory")?.dir;
        if let Some(l) = mem.limit() {
            let lim = d.join("memory.limit_in_bytes");
            let sw = d.join("memory.memsw.limit_in_bytes");
            match mem.swap() {
                // memory+swap must stay >= memory: order the two writes accordingly.
                Some(s) => {
                    if write(&lim, &limit(l)).is_err() {
                        write(&sw, &limit(s))?;
                        write(&lim, &limit(l))?;
                    } else {
                        write(&sw, &limit(s))?;
                    }
                }
                None => write(&lim, &limit(l))?,
            }
        } else if let Some(s) = mem.swap() {
            write(&d.join("memory.memsw.limit_in_bytes"), &limit(s))?;
        }
        if let Some(r) = mem.reservation() {
            write(&d.join("memory.soft_limit_in_bytes"), &limit(r))?;
        }
        if let Some(s) = mem.swappiness() {
            write(&d.join("memory.swappiness"), &s.to_string())?;
        }
        if let Some(true) = mem.disable_oom_killer() {
            write(&d.join("memory.oom_control"), "1")?;
        }
    }
    if let Some(cpu) = res.cpu() {
        if cpu.shares().is_some() || cpu.quota().is_some() || cpu.period().is_some() {
            let d = &need(hs, "cpu")?.dir;
            if let Some(s) = cpu.shares() {
                write(&d.join("cpu.shares"), &s.to_string())?;
            }
            if let Some(p) = cpu.period() {
                write(&d.join("cpu.cfs_period_us"), &p.to_string())?;
            }
            if let Some(q) = cpu.quota() {
                write(&d.join("cpu.cfs_quota_us"), &limit(q))?;
            }
            if let Some(b) = cpu.burst() {
                write(&d.join("cpu.cfs_burst_us"), &b.to_string())?;
            }
        }
        if cpu.cpus().is_some() || cpu.mems().is_some() {
            let d = &need(hs, "cpuset")?.dir;
            if let Some(c) = cpu.cpus() {
                write(&d.join("cpuset.cpus"), c)?;
            }
            if let Some(m) = cpu.mems() {
                write(&d.join("cpuset.mems"), m)?;
            }
        }
    }
    if let Some(cpu) = res.cpu() {
        if cpu.realtime_period().is_some() || cpu.realtime_runtime().is_some() {
            let d = &need(hs, "cpu")?.dir;
            if let Some(p) = cpu.realtime_period() {
                write(&d.join("cpu.rt_period_us"), &p.to_string())?;
            }
            if let Some(r) = cpu.realtime_runtime() {
                write(&d.join("cpu.rt_runtime_us"), &r.to_string())?;
            }
        }
    }
    if let Some(b) = res.block_io() {
        let d = &need(hs, "blkio")?.dir;
        // CFQ's file, or BFQ's where CFQ is gone.
        let weight_file = |name: &str| {
            let cfq = d.join(format!("blkio.{name}"));
            if cfq.exists() {
                cfq
            } else {
                d.join(format!("blkio.bfq.{name}"))
            }
        };
        if let Some(w) = b.weight().filter(|w| *w != 0) {
            write(&weight_file("weight"), &w.to_string())?;
        }
        if let Some(w) = b.leaf_weight().filter(|w| *w != 0) {
            write(&weight_file("leaf_weight"), &w.to_string())?;
        }
        for wd in b.weight_device().iter().flatten() {
            if let Some(w) = wd.weight() {
                write(
                    &weight_file("weight_device"),
                    &format!("{}:{} {w}", wd.major(), wd.minor()),
                )?;
            }
        }
        for (file, list) in [
            (
                "blkio.throttle.read_bps_device",
                b.throttle_read_bps_device(),
            ),
            (
                "blkio.throttle.write_bps_device",
                b.throttle_write_bps_device(),
            ),
            (
                "blkio.throttle.read_iops_device",
                b.throttle_read_iops_device(),
            ),
            (
                "blkio.throttle.write_iops_device",
                b.throttle_write_iops_device(),
            ),
        ] {
            for t in list.iter().flatten() {
                write(
                    &d.join(file),
                    &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
                )?;
            }
        }
    }
    for h in res.hugepage_limits().iter().flatten() {
        let d = &need(hs, "hugetlb")?.dir;
        write(
            &d.join(format!("hugetlb.{}.limit_in_bytes", h.page_size())),
            &limit(h.limit()),
        )?;
    }
    if let Some(n) = res.network() {
        if let Some(id) = n.class_id() {
            write(
                &need(hs, "net_cls")?.dir.join("net_cls.classid"),
                &id.to_string(),
            )?;
        }
        for p in n.priorities().iter().flatten() {
            write(
                &need(hs, "net_prio")?.dir.join("net_prio.ifpriomap"),
                &format!("{} {}", p.name(), p.priority()),
            )?;
        }
    }
    if let Some(p) = res.pids() {
        let d = &need(hs, "pids")?.dir;
        let v = if p.limit() <= 0 {
            "max".to_string()
        } else {
            p.limit().to_string()
        };
        write(&d.join("pids.max"), &v)?;
    }
    if let Some(devs) = res.devices() {
        let d = &need(hs, "devices")?.dir;
        for dev in devs {
            let typ = match dev.typ().unwrap_or(LinuxDeviceType::A) {
                LinuxDeviceType::A => 'a',
                LinuxDeviceType::B => 'b',
                LinuxDeviceType::C | LinuxDeviceType::U => 'c',
                LinuxDeviceType::P => 'p',
            };
            let num = |n: Option<i64>| n.map(|v| v.to_string()).unwrap_or_else(|| "*".into());
            let rule = format!(
                "{typ} {}:{} {}",
                num(dev.major()),
                num(dev.minor()),
                dev.access().clone().unwrap_or_else(|| "rwm".into())
            );
            let file = if dev.allow() {
                "devices.allow"
            } else {
                "devices.deny"
            };
            write(&d.join(file), &rule)?;
        }
    }
    if let Some(u) = res.unified() {
        if !u.is_empty() {
            return Err(EngineError::CgroupUnsupported(
                "linux.resources.unified needs cgroup v2, this host has v1".into(),
            ));
        }
    }
    Ok(())
}

fn num(path: PathBuf) -> Result<u64, EngineError> {
    let t = read(&path)?;
    t.trim().parse().map_err(|_| {
        EngineError::CgroupUnsupported(format!("{}: not a number: {t:?}", path.display()))
    })
}

pub(super) fn stats(hs: &[Hierarchy]) -> Result<CgroupStats, EngineError> {
    let mut s = CgroupStats::default();
    if let Some(h) = find(hs, "memory") {
        s.memory_usage = num(h.dir.join("memory.usage_in_bytes"))?;
        let lim = num(h.dir.join("memory.limit_in_bytes"))?;
        // v1 writes "unlimited" as the largest page-aligned i64.
        s.memory_limit = (lim < 0x7fff_ffff_ffff_0000).then_some(lim);
        s.memory_max_usage = Some(num(h.dir.join("memory.max_usage_in_bytes"))?);
        if let Ok(sw) = num(h.dir.join("memory.memsw.usage_in_bytes")) {
            s.swap_usage = Some(sw.saturating_sub(s.memory_usage));
        }
        s.oom_kills = keyed(&read(&h.dir.join("memory.oom_control"))?, "oom_kill").unwrap_or(0);
    }
    if let Some(h) = find(hs, "cpuacct") {
        s.cpu_usage_ns = num(h.dir.join("cpuacct.usage"))?;
        let st = read(&h.dir.join("cpuacct.stat"))?;
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        s.cpu_user_ns = keyed(&st, "user").unwrap_or(0) * 1_000_000_000 / hz;
        s.cpu_system_ns = keyed(&st, "system").unwrap_or(0) * 1_000_000_000 / hz;
    }
    if let Some(h) = find(hs, "pids") {
        s.pids_current = num(h.dir.join("pids.current"))?;
        s.pids_limit = read(&h.dir.join("pids.max"))?.trim().parse().ok();
    }
    Ok(s)
}

/// eventfd + cgroup.event_control: the kernel signals the eventfd on every OOM event.
pub(super) fn oom_watcher(hs: &[Hierarchy]) -> Result<OomWatcher, EngineError> {
    let h = need(hs, "memory")?;
    let control = h.dir.join("memory.oom_control");
    let file = fs::File::open(&control).map_err(|e| EngineError::cgroup(&control, "open", e))?;
    // SAFETY: eventfd creates a new descriptor, owned right below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(EngineError::sys("eventfd", std::io::Error::last_os_error()));
    }
    // SAFETY: efd is a fresh descriptor nobody else owns.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    write(
        &h.dir.join("cgroup.event_control"),
        &format!("{} {}", efd.as_raw_fd(), file.as_raw_fd()),
    )?;
    Ok(OomWatcher {
        fd: efd,
        file: control,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_from_superopts() {
        assert_eq!(controllers("rw,cpu,cpuacct"), vec!["cpu", "cpuacct"]);
        assert_eq!(controllers("rw,name=systemd"), vec!["name=systemd"]);
        assert!(controllers("rw,relatime").is_empty());
    }
}
