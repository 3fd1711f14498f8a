//! Checks a spec before anything is created, so that a bad field is reported by name
//! (`linux.resources.memory.limit: must be -1 (unlimited) or positive, got -5`) instead of
//! surfacing as an errno from deep inside the container's setup.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    Linux, LinuxDeviceType, LinuxNamespaceType, LinuxResources, Process, Spec,
};

use super::cgroups::check_path;
use super::error::SpecError;
use super::mounts::propagation;
use super::seccomp;

fn err<T>(field: impl Into<String>, problem: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError::new(field, problem))
}

/// Validates the whole spec; `bundle` anchors the relative root path.
pub fn validate_spec(spec: &Spec, bundle: &Path) -> Result<(), SpecError> {
    let root = match spec.root() {
        Some(r) => r,
        None => return err("root", "is required"),
    };
    if root.path().as_os_str().is_empty() {
        return err("root.path", "must not be empty");
    }
    let rootfs = bundle.join(root.path());
    if !rootfs.is_dir() {
        return err(
            "root.path",
            format!("{} is not a directory", rootfs.display()),
        );
    }
    let process = match spec.process() {
        Some(p) => p,
        None => return err("process", "is required"),
    };
    validate_process(process, "process")?;
    let linux = match spec.linux() {
        Some(l) => l,
        None => return err("linux", "is required on Linux"),
    };
    validate_hooks(spec)?;
    for key in spec.annotations().iter().flatten().map(|(k, _)| k) {
        if key.is_empty() {
            return err("annotations", "keys must not be empty");
        }
    }
    let ns = validate_namespaces(linux)?;
    if spec.hostname().is_some() && !ns.contains(&LinuxNamespaceType::Uts) {
        return err("hostname", "needs a UTS namespace in linux.namespaces");
    }
    if spec.domainname().is_some() && !ns.contains(&LinuxNamespaceType::Uts) {
        return err("domainname", "needs a UTS namespace in linux.namespaces");
    }
    // A relative mount destination is deprecated but allowed: it is taken from "/".
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let f = format!("mounts[{i}]");
        if m.destination().as_os_str().is_empty() {
            return err(format!("{f}.destination"), "must not be empty");
        }
        if super::mounts::is_bind(m) && m.source().is_none() {
            return err(format!("{f}.source"), "a bind mount needs a source");
        }
    }
    if let Some(r) = linux.resources() {
        validate_resources(r, "linux.resources")?;
    }
    if let Some(p) = linux.cgroups_path() {
        check_path(&p.to_string_lossy()).or_else(|e| err("linux.cgroupsPath", e))?;
    }
    if let Some(p) = linux.rootfs_propagation() {
        if propagation(p).is_none() {
            return err(
                "linux.rootfsPropagation",
                format!("unknown propagation {p:?}"),
            );
        }
    }
    for (name, list) in [
        ("maskedPaths", linux.masked_paths()),
        ("readonlyPaths", linux.readonly_paths()),
    ] {
        for (i, p) in list.iter().flatten().enumerate() {
            if !p.starts_with('/') {
                return err(
                    format!("linux.{name}[{i}]"),
                    format!("must be absolute, got {p:?}"),
                );
            }
        }
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        let f = format!("linux.devices[{i}]");
        if !d.path().is_absolute() {
            return err(
                format!("{f}.path"),
                format!("must be absolute, got {:?}", d.path()),
            );
        }
        match d.typ() {
            LinuxDeviceType::A => return err(format!("{f}.type"), "must be c, b, u or p, got a"),
            LinuxDeviceType::P => {}
            _ if d.major() < 0 || d.minor() < 0 => {
                return err(
                    format!("{f}.major"),
                    "a character or block device needs major and minor >= 0",
                )
            }
            _ => {}
        }
        if let Some(m) = d.file_mode() {
            if m > 0o7777 {
                return err(
                    format!("{f}.fileMode"),
                    format!("must be a permission mode, got {m:#o}"),
                );
            }
        }
    }
    for (key, _) in linux.sysctl().iter().flatten() {
        validate_sysctl(key, &ns)?;
    }
    if let Some(s) = linux.seccomp() {
        seccomp::compile(s)?;
    }
    reject_unsupported(spec, linux)?;
    Ok(())
}

/// Features this engine does not apply. Running without them would quietly weaken or
/// change what the spec asks for, so they are refused by name.
fn reject_unsupported(spec: &Spec, linux: &Linux) -> Result<(), SpecError> {
    let unsupported = |field: &str| err(field, "is not supported by this engine");
    if linux.personality().is_some() {
        return unsupported("linux.personality");
    }
    if linux.intel_rdt().is_some() {
        return unsupported("linux.intelRdt");
    }
    if linux.memory_policy().is_some() {
        return unsupported("linux.memoryPolicy");
    }
    if linux.time_offsets().as_ref().is_some_and(|t| !t.is_empty()) {
        return unsupported("linux.timeOffsets");
    }
    if linux.net_devices().as_ref().is_some_and(|t| !t.is_empty()) {
        return unsupported("linux.netDevices");
    }
    if linux.mount_label().as_ref().is_some_and(|l| !l.is_empty()) {
        return unsupported("linux.mountLabel (SELinux)");
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
            return unsupported(&format!("mounts[{i}].uidMappings (id-mapped mounts)"));
        }
    }
    Ok(())
}

pub(crate) fn unsupported_in_process(p: &Process, f: &str) -> Result<(), SpecError> {
    let unsupported = |field: &str| err(format!("{f}.{field}"), "is not supported by this engine");
    if p.apparmor_profile().as_ref().is_some_and(|s| !s.is_empty()) {
        return unsupported("apparmorProfile");
    }
    if p.selinux_label().as_ref().is_some_and(|s| !s.is_empty()) {
        return unsupported("selinuxLabel");
    }
    if p.scheduler().is_some() {
        return unsupported("scheduler");
    }
    if p.io_priority().is_some() {
        return unsupported("ioPriority");
    }
    if p.exec_cpu_affinity().is_some() {
        return unsupported("execCPUAffinity");
    }
    Ok(())
}

/// Every hook: an absolute path, and a timeout greater than zero where one is set.
fn validate_hooks(spec: &Spec) -> Result<(), SpecError> {
    let Some(h) = spec.hooks() else {
        return Ok(());
    };
    let stages = [
        ("prestart", h.prestart()),
        ("createRuntime", h.create_runtime()),
        ("createContainer", h.create_container()),
        ("startContainer", h.start_container()),
        ("poststart", h.poststart()),
        ("poststop", h.poststop()),
    ];
    for (stage, hooks) in stages {
        for (i, hook) in hooks.iter().flatten().enumerate() {
            let f = format!("hooks.{stage}[{i}]");
            if !hook.path().is_absolute() {
                return err(
                    format!("{f}.path"),
                    format!("must be absolute, got {:?}", hook.path()),
                );
            }
            if let Some(t) = hook.timeout() {
                if t <= 0 {
                    return err(format!("{f}.timeout"), format!("must be positive, got {t}"));
                }
            }
        }
    }
    Ok(())
}

fn validate_namespaces(linux: &Linux) -> Result<HashSet<LinuxNamespaceType>, SpecError> {
    let mut seen = HashSet::new();
    let mut new_user = false;
    for (i, n) in linux.namespaces().iter().flatten().enumerate() {
        if !seen.insert(n.typ()) {
            return err(
                format!("linux.namespaces[{i}].type"),
                format!("{} namespace listed twice", n.typ()),
            );
        }
        if let Some(p) = n.path() {
            if !p.is_absolute() {
                return err(
                    format!("linux.namespaces[{i}].path"),
                    format!("must be absolute, got {p:?}"),
                );
            }
        } else if n.typ() == LinuxNamespaceType::User {
            new_user = true;
        }
    }
    // Without a mount namespace the container shares the runtime's (the runtime spec: a
    // namespace not listed is inherited), and its root is a chroot there. The propagation
    // of a mount namespace's root then has nothing to apply to.
    if !seen.contains(&LinuxNamespaceType::Mount) && linux.rootfs_propagation().is_some() {
        return err(
            "linux.rootfsPropagation",
            "needs a mount namespace in linux.namespaces (without one the runtime's is shared)",
        );
    }
    let maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if maps && !new_user {
        return err(
            "linux.uidMappings",
            "id mappings need a new user namespace in linux.namespaces",
        );
    }
    if new_user {
        for (name, m) in [
            ("uidMappings", linux.uid_mappings()),
            ("gidMappings", linux.gid_mappings()),
        ] {
            let m = m.as_deref().unwrap_or(&[]);
            if m.is_empty() {
                return err(
                    format!("linux.{name}"),
                    "a new user namespace needs id mappings",
                );
            }
            for (i, e) in m.iter().enumerate() {
                if e.size() == 0 {
                    return err(format!("linux.{name}[{i}].size"), "must be positive");
                }
            }
        }
    }
    Ok(seen)
}

pub(crate) fn validate_process(p: &Process, f: &str) -> Result<(), SpecError> {
    match p.args() {
        Some(a) if !a.is_empty() && !a[0].is_empty() => {}
        _ => return err(format!("{f}.args"), "must name the program to run"),
    }
    if !p.cwd().is_absolute() {
        return err(
            format!("{f}.cwd"),
            format!("must be absolute, got {:?}", p.cwd()),
        );
    }
    for (i, e) in p.env().iter().flatten().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            return err(
                format!("{f}.env[{i}]"),
                format!("must be NAME=value, got {e:?}"),
            );
        }
    }
    // consoleSize without a terminal is ignored, as the runtime spec asks.
    unsupported_in_process(p, f)?;
    if let Some(u) = p.user().umask() {
        if u > 0o777 {
            return err(
                format!("{f}.user.umask"),
                format!("must be at most 0777, got {u:#o}"),
            );
        }
    }
    if let Some(v) = p.oom_score_adj() {
        if !(-1000..=1000).contains(&v) {
            return err(
                format!("{f}.oomScoreAdj"),
                format!("must be between -1000 and 1000, got {v}"),
            );
        }
    }
    let mut seen = Vec::new();
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        if seen.contains(&r.typ()) {
            return err(
                format!("{f}.rlimits[{i}].type"),
                format!("{} listed twice", r.typ()),
            );
        }
        if r.soft() > r.hard() {
            return err(
                format!("{f}.rlimits[{i}].soft"),
                format!("must not exceed hard ({} > {})", r.soft(), r.hard()),
            );
        }
        seen.push(r.typ());
    }
    if let Some(c) = p.capabilities() {
        let perm = c.permitted().clone().unwrap_or_default();
        let eff = c.effective().clone().unwrap_or_default();
        for cap in &eff {
            if !perm.contains(cap) {
                return err(
                    format!("{f}.capabilities.effective"),
                    format!("CAP_{cap} must also be in permitted"),
                );
            }
        }
    }
    Ok(())
}

/// `-1` means unlimited; `0` means unset, as runc reads it.
fn limit(field: String, v: Option<i64>) -> Result<(), SpecError> {
    match v {
        Some(v) if v < -1 => err(
            field,
            format!("must be -1 (unlimited) or positive, got {v}"),
        ),
        _ => Ok(()),
    }
}

/// A cpuset list like `0-3,5`.
pub(crate) fn parse_cpu_list(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: u32 = a.parse().map_err(|_| format!("bad range {part:?}"))?;
        let b: u32 = b.parse().map_err(|_| format!("bad range {part:?}"))?;
        if a > b {
            return Err(format!("bad range {part:?}"));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// Resource values, also checked on `update`.
pub(crate) fn validate_resources(r: &LinuxResources, f: &str) -> Result<(), SpecError> {
    if let Some(m) = r.memory() {
        limit(format!("{f}.memory.limit"), m.limit())?;
        limit(format!("{f}.memory.reservation"), m.reservation())?;
        limit(format!("{f}.memory.swap"), m.swap())?;
        if let (Some(l), Some(s)) = (m.limit(), m.swap()) {
            if l > 0 && s > 0 && s < l {
                return err(
                    format!("{f}.memory.swap"),
                    format!("is memory+swap and must be at least memory.limit ({s} < {l})"),
                );
            }
        }
        if let Some(s) = m.swappiness() {
            if s > 100 {
                return err(
                    format!("{f}.memory.swappiness"),
                    format!("must be 0-100, got {s}"),
                );
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares() {
            if s != 0 && !(2..=262_144).contains(&s) {
                return err(
                    format!("{f}.cpu.shares"),
                    format!("must be 2-262144, got {s}"),
                );
            }
        }
        if let Some(q) = c.quota() {
            if q != -1 && q != 0 && q < 1000 {
                return err(
                    format!("{f}.cpu.quota"),
                    format!("must be -1 or at least 1000 (µs), got {q}"),
                );
            }
        }
        if let Some(p) = c.period() {
            if !(1000..=1_000_000).contains(&p) {
                return err(
                    format!("{f}.cpu.period"),
                    format!("must be 1000-1000000 (µs), got {p}"),
                );
            }
        }
        if let Some(i) = c.idle() {
            if i != 0 && i != 1 {
                return err(format!("{f}.cpu.idle"), format!("must be 0 or 1, got {i}"));
            }
        }
        for (name, v) in [("cpus", c.cpus()), ("mems", c.mems())] {
            if let Some(v) = v {
                parse_cpu_list(v).or_else(|e| err(format!("{f}.cpu.{name}"), e))?;
            }
        }
    }
    if let Some(p) = r.pids() {
        limit(format!("{f}.pids.limit"), Some(p.limit()))?;
    }
    for (i, d) in r.devices().iter().flatten().enumerate() {
        if let Some(a) = d.access() {
            if a.is_empty() || !a.chars().all(|c| "rwm".contains(c)) {
                return err(
                    format!("{f}.devices[{i}].access"),
                    format!("must be letters of rwm, got {a:?}"),
                );
            }
        }
    }
    if let Some(b) = r.block_io() {
        for (name, w) in [("weight", b.weight()), ("leafWeight", b.leaf_weight())] {
            // 0 means "not set" (Docker sends it for every container), as runc reads it.
            if let Some(w) = w.filter(|w| *w != 0) {
                if !(10..=1000).contains(&w) {
                    return err(
                        format!("{f}.blockIO.{name}"),
                        format!("must be 10-1000, got {w}"),
                    );
                }
            }
        }
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        return err(format!("{f}.rdma"), "is not supported by this engine");
    }
    for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
        let size = h.page_size();
        if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
            return err(
                format!("{f}.hugepageLimits[{i}].pageSize"),
                format!("must be like 2MB, got {size:?}"),
            );
        }
    }
    for (k, _) in r.unified().iter().flatten() {
        if k.contains('/') || k.starts_with('.') || !k.contains('.') {
            return err(
                format!("{f}.unified"),
                format!("{k:?} is not a cgroup interface file name"),
            );
        }
    }
    Ok(())
}

/// Only namespaced sysctls may be set, and only with their namespace.
fn validate_sysctl(key: &str, ns: &HashSet<LinuxNamespaceType>) -> Result<(), SpecError> {
    let f = format!("linux.sysctl.{key}");
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let needs = if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        LinuxNamespaceType::Ipc
    } else if key.starts_with("net.") {
        LinuxNamespaceType::Network
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        LinuxNamespaceType::Uts
    } else {
        return err(f, "is not namespaced and cannot be set for one container");
    };
    if !ns.contains(&needs) {
        return err(f, format!("needs a {needs} namespace in linux.namespaces"));
    }
    if key.contains("..") || key.contains('/') {
        return err(f, "is not a sysctl name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    #[test]
    fn resources_name_the_field() {
        let r: LinuxResources =
            serde_json::from_value(serde_json::json!({"memory": {"limit": -5}})).unwrap();
        let e = validate_resources(&r, "linux.resources").unwrap_err();
        assert_eq!(
            e.to_string(),
            "linux.resources.memory.limit: must be -1 (unlimited) or positive, got -5"
        );
        let r: LinuxResources =
            serde_json::from_value(serde_json::json!({"cpu": {"period": 10}})).unwrap();
        assert_eq!(
            validate_resources(&r, "r").unwrap_err().field,
            "r.cpu.period"
        );
        let r: LinuxResources = serde_json::from_value(
            serde_json::json!({"memory": {"limit": 100000000, "swap": 1000}}),
        )
        .unwrap();
        assert_eq!(
            validate_resources(&r, "r").unwrap_err().field,
            "r.memory.swap"
        );
    }

    #[test]
    fn sysctls_must_be_namespaced() {
        let ns: HashSet<_> = [LinuxNamespaceType::Network].into_iter().collect();
        assert!(validate_sysctl("net.ipv4.ip_forward", &ns).is_ok());
        assert!(validate_sysctl("kernel.shmmax", &ns).is_err());
        assert!(validate_sysctl("vm.overcommit_memory", &ns).is_err());
    }
}
