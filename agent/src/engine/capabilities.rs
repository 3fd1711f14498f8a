//! Linux capabilities of the container process: bounding set via prctl, effective /
//! permitted / inheritable via capset, ambient via prctl.

use std::collections::HashSet;

use nix::errno::Errno;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// The kernel's number for a capability (linux/capability.h).
pub(crate) fn cap_number(cap: Capability) -> u32 {
    use Capability::*;
    match cap {
        Chown => 0,
        DacOverride => 1,
        DacReadSearch => 2,
        Fowner => 3,
        Fsetid => 4,
        Kill => 5,
        Setgid => 6,
        Setuid => 7,
        Setpcap => 8,
        LinuxImmutable => 9,
        NetBindService => 10,
        NetBroadcast => 11,
        NetAdmin => 12,
        NetRaw => 13,
        IpcLock => 14,
        IpcOwner => 15,
        SysModule => 16,
        SysRawio => 17,
        SysChroot => 18,
        SysPtrace => 19,
        SysPacct => 20,
        SysAdmin => 21,
        SysBoot => 22,
        SysNice => 23,
        SysResource => 24,
        SysTime => 25,
        SysTtyConfig => 26,
        Mknod => 27,
        Lease => 28,
        AuditWrite => 29,
        AuditControl => 30,
        Setfcap => 31,
        MacOverride => 32,
        MacAdmin => 33,
        Syslog => 34,
        WakeAlarm => 35,
        BlockSuspend => 36,
        AuditRead => 37,
        Perfmon => 38,
        Bpf => 39,
        CheckpointRestore => 40,
    }
}

/// Highest capability number this kernel knows, from /proc/sys/kernel/cap_last_cap.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The set as a bit mask, without the capabilities this kernel does not know (capset would
/// refuse them; [`ungrantable`] names them for a warning).
fn mask(set: &Option<Capabilities>) -> u64 {
    let last = last_cap();
    set.as_ref()
        .map(|caps| {
            caps.iter()
                .map(|&c| cap_number(c))
                .filter(|&n| n <= last)
                .fold(0u64, |m, n| m | (1u64 << n))
        })
        .unwrap_or(0)
}

/// What of the spec's capabilities cannot be granted, one message each: those this kernel
/// does not know (left out of every set), and ambient ones that are not both permitted and
/// inheritable (the kernel raises no others; skipped). The runtime spec asks for a warning
/// about each, not a failure.
pub(crate) fn ungrantable(caps: &LinuxCapabilities) -> Vec<String> {
    let last = last_cap();
    let mut out = Vec::new();
    let sets = [
        ("bounding", caps.bounding()),
        ("effective", caps.effective()),
        ("permitted", caps.permitted()),
        ("inheritable", caps.inheritable()),
        ("ambient", caps.ambient()),
    ];
    for (name, set) in sets {
        for &c in set.iter().flatten() {
            if cap_number(c) > last {
                out.push(format!(
                    "process.capabilities.{name}: CAP_{c} is unknown to this kernel (cap_last_cap {last}), left out"
                ));
            }
        }
    }
    let (perm, inh) = (mask(caps.permitted()), mask(caps.inheritable()));
    for &c in caps.ambient().iter().flatten() {
        let n = cap_number(c);
        if n <= last && ((perm >> n) & 1 == 0 || (inh >> n) & 1 == 0) {
            out.push(format!(
                "process.capabilities.ambient: CAP_{c} is not both permitted and inheritable, not raised"
            ));
        }
    }
    out
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and two data words as capset(2) expects for version 3.
    Errno::result(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) }).map(drop)
}

/// Drops every capability not in the bounding set. Needs CAP_SETPCAP, so it runs before
/// the user switch.
pub(crate) fn apply_bounding(caps: &LinuxCapabilities) -> Result<(), String> {
    let keep: HashSet<u32> = caps
        .bounding()
        .as_ref()
        .map(|b| b.iter().map(|&c| cap_number(c)).collect())
        .unwrap_or_default();
    for cap in 0..=last_cap() {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 {
            let e = Errno::last();
            // A capability newer than this kernel: nothing to drop.
            if e != Errno::EINVAL {
                return Err(format!("prctl(PR_CAPBSET_DROP, {cap}): {e}"));
            }
        }
    }
    Ok(())
}

/// Sets effective, permitted and inheritable, then raises the ambient set (which must be a
/// subset of permitted and inheritable, as the kernel demands).
pub(crate) fn apply_sets(caps: &LinuxCapabilities) -> Result<(), String> {
    let eff = mask(caps.effective());
    let perm = mask(caps.permitted());
    let inh = mask(caps.inheritable());
    capset(eff, perm, inh).map_err(|e| {
        format!("capset(effective={eff:#x}, permitted={perm:#x}, inheritable={inh:#x}): {e}")
    })?;
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // The kernel only raises ambient capabilities that are permitted and inheritable. Specs
    // from `runc spec` list ambient ones without inheritable; like runc, skip those.
    if let Some(ambient) = caps.ambient() {
        for &c in ambient {
            let n = cap_number(c);
            if (perm >> n) & 1 == 0 || (inh >> n) & 1 == 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments.
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    n as libc::c_ulong,
                    0,
                    0,
                )
            };
            if r != 0 {
                return Err(format!(
                    "raising ambient capability CAP_{c}: {}",
                    Errno::last()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambient_capabilities_that_cannot_be_raised_are_named() {
        let caps: LinuxCapabilities = serde_json::from_value(serde_json::json!({
            "permitted": ["CAP_CHOWN", "CAP_KILL"],
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_CHOWN", "CAP_KILL"]
        }))
        .unwrap();
        assert_eq!(
            ungrantable(&caps),
            vec![
                "process.capabilities.ambient: CAP_CHOWN is not both permitted and inheritable, not raised"
                    .to_string()
            ]
        );
    }

    #[test]
    fn numbers_match_the_kernel_header() {
        assert_eq!(cap_number(Capability::Chown), 0);
        assert_eq!(cap_number(Capability::NetBindService), 10);
        assert_eq!(cap_number(Capability::SysAdmin), 21);
        assert_eq!(cap_number(Capability::AuditRead), 37);
        assert_eq!(cap_number(Capability::CheckpointRestore), 40);
    }

    #[test]
    fn mask_sets_bits() {
        let set: Capabilities = [Capability::Chown, Capability::Kill].into_iter().collect();
        assert_eq!(mask(&Some(set)), 0b100001);
        assert_eq!(mask(&None), 0);
    }
}
