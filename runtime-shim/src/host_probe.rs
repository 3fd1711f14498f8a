//! What this host's KVM is, and so whether vm isolation may start here: the KVM module behind
//! /dev/kvm, read once per process into a typed report. `sandbox check` prints it, and every
//! VM launch (CLI, monitor, shim, compare) decides from it.
//!
//! Whether vm isolation may start is decided from what the host is (the KVM module behind
//! /dev/kvm), never from a timing: a timing moves with load, and a launch that works once must
//! not be refused the next time on the same host. `sandbox check` still measures guest
//! kernel-mode speed with `sandbox-vmm check` and reports it, as information.

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde::{Serialize, Serializer};

use vmm::arch::x86_64::cpu_template::CpuTemplate;

use crate::sandbox::binaries;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuVendor {
    Intel,
    Amd,
}

/// Which KVM serves /dev/kvm here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmKind {
    /// kvm_intel or kvm_amd: guest kernels run on the CPU (nested, if this host is a VM).
    HardwareAssisted { vendor: CpuVendor },
    /// kvm_pvm: software nested virtualisation for kernels built as PVM guests. An ordinary
    /// guest kernel's kernel-mode code is emulated and its first user-mode syscall faults.
    Pvm,
    /// /dev/kvm is missing or cannot be opened.
    NoKvm { reason: String },
    /// /dev/kvm opens, but none of the KVM modules above is loaded.
    Unknown,
}

impl KvmKind {
    /// The name `sandbox check --json` gives this kind (`kvm.kind`).
    pub fn name(&self) -> &'static str {
        match self {
            KvmKind::HardwareAssisted {
                vendor: CpuVendor::Intel,
            } => "kvm_intel",
            KvmKind::HardwareAssisted {
                vendor: CpuVendor::Amd,
            } => "kvm_amd",
            KvmKind::Pvm => "kvm_pvm",
            KvmKind::NoKvm { .. } => "none",
            KvmKind::Unknown => "unknown",
        }
    }

    /// The CPU model to boot guests with on this kind of KVM: `minimal` where the KVM is not
    /// known to run guest kernel code on the CPU, since an emulator may not know newer
    /// instructions; else whatever KVM supports.
    pub fn cpu_template(&self) -> CpuTemplate {
        match self {
            KvmKind::Unknown => CpuTemplate::Minimal,
            _ => CpuTemplate::None,
        }
    }
}

impl fmt::Display for KvmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for KvmKind {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What the host kind is decided from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvmFacts {
    /// /sys/module/kvm_pvm exists.
    pub kvm_pvm: bool,
    /// /sys/module/kvm_intel exists.
    pub kvm_intel: bool,
    /// /sys/module/kvm_amd exists.
    pub kvm_amd: bool,
    /// Why /dev/kvm cannot be opened read-write; `None` when it can.
    pub dev_kvm_error: Option<String>,
}

impl KvmFacts {
    fn of_this_host() -> KvmFacts {
        let module = |name: &str| Path::new("/sys/module").join(name).exists();
        KvmFacts {
            kvm_pvm: module("kvm_pvm"),
            kvm_intel: module("kvm_intel"),
            kvm_amd: module("kvm_amd"),
            dev_kvm_error: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .err()
                .map(|e| format!("/dev/kvm: {e}")),
        }
    }

    fn hardware_vendor(&self) -> Option<CpuVendor> {
        if self.kvm_intel {
            Some(CpuVendor::Intel)
        } else if self.kvm_amd {
            Some(CpuVendor::Amd)
        } else {
            None
        }
    }
}

/// The host kind. kvm_pvm comes first, even over an unopenable /dev/kvm or a hardware module
/// loaded beside it: nothing tells which of two loaded modules serves /dev/kvm, and taking
/// PVM for hardware costs a minute-long boot that ends in a faulting PID 1, while the other
/// mistake only refuses early. An unopenable /dev/kvm then rules out everything else.
pub fn decide(facts: &KvmFacts) -> KvmKind {
    if facts.kvm_pvm {
        return KvmKind::Pvm;
    }
    if let Some(err) = &facts.dev_kvm_error {
        let reason = if facts.hardware_vendor().is_none() {
            format!("{err} (no KVM module is loaded)")
        } else {
            err.clone()
        };
        return KvmKind::NoKvm { reason };
    }
    match facts.hardware_vendor() {
        Some(vendor) => KvmKind::HardwareAssisted { vendor },
        None => KvmKind::Unknown,
    }
}

/// One line on what `kind` is, for people.
fn describe(kind: &KvmKind, facts: &KvmFacts) -> String {
    match kind {
        KvmKind::HardwareAssisted { vendor } => format!(
            "hardware-assisted virtualisation ({}, {kind}): guest kernels run on the CPU",
            match vendor {
                CpuVendor::Intel => "Intel VT-x",
                CpuVendor::Amd => "AMD-V",
            }
        ),
        KvmKind::Pvm => {
            let mut d = String::from(
                "PVM (kvm_pvm), software nested virtualisation: an ordinary guest kernel's \
                 kernel-mode code is emulated and its first user-mode syscall faults",
            );
            if let Some(vendor) = facts.hardware_vendor() {
                let other = KvmKind::HardwareAssisted { vendor };
                d.push_str(&format!(
                    " ({other} is loaded too; /dev/kvm is taken to be kvm_pvm's)"
                ));
            }
            if let Some(err) = &facts.dev_kvm_error {
                d.push_str(&format!("; {err}"));
            }
            d
        }
        KvmKind::NoKvm { reason } => format!("no usable KVM: {reason}"),
        KvmKind::Unknown => "/dev/kvm opens, but none of kvm_intel, kvm_amd, kvm_pvm is loaded: \
             its implementation cannot be identified"
            .to_string(),
    }
}

/// Whether vm isolation may start on a KVM of `kind`; a refusal says why and what works
/// instead. Only a KVM that cannot be identified is left to `allow_slow_kvm`: on kvm-pvm or
/// without KVM no guest can run, so allowing it would only delay the failure.
pub fn vm_isolation_policy(
    kind: &KvmKind,
    allow_slow_kvm: bool,
) -> std::result::Result<(), String> {
    match kind {
        KvmKind::HardwareAssisted { .. } => Ok(()),
        KvmKind::Pvm => Err(format!(
            "cannot work on this host: its KVM is kvm-pvm (software nested virtualisation), \
             which emulates an ordinary guest kernel's kernel-mode code, and the guest's first \
             user-mode syscall faults, so its PID 1 dies{}. Use --isolation native to run \
             without a VM",
            if allow_slow_kvm {
                " (allowing slow KVM does not change this)"
            } else {
                ""
            }
        )),
        KvmKind::NoKvm { reason } => Err(format!(
            "KVM is not usable on this host ({reason}); use --isolation native to run without \
             a VM"
        )),
        KvmKind::Unknown if allow_slow_kvm => Ok(()),
        KvmKind::Unknown => Err(
            "this host's KVM cannot be identified (none of kvm_intel, kvm_amd, kvm_pvm is \
             loaded), so guest kernels may be emulated: very slow, or failing. Pass \
             --allow-slow-kvm (or set SANDBOX_ALLOW_SLOW_KVM=1) to try it anyway, or use \
             --isolation native"
                .to_string(),
        ),
    }
}

/// Guest kernel-mode speed as `sandbox-vmm check` measured it once.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelModeTiming {
    /// The probe loop finished within its time limit.
    pub completed: bool,
    pub iterations_per_sec: f64,
    /// The rate hardware-assisted KVM reaches with room to spare.
    pub hardware_rate_threshold: f64,
    /// This one measurement stayed below `hardware_rate_threshold`.
    pub below_hardware_rate: bool,
}

impl KernelModeTiming {
    pub fn from_vmm_check(v: &serde_json::Value) -> Option<KernelModeTiming> {
        let k = v.get("kernel_mode")?;
        let completed = k.get("completed")?.as_bool()?;
        let iterations_per_sec = k.get("iterations_per_sec")?.as_f64()?;
        let hardware_rate_threshold = k
            .get("hardware_rate_threshold")
            .and_then(|t| t.as_f64())
            .unwrap_or(5.0e7);
        Some(KernelModeTiming {
            completed,
            iterations_per_sec,
            hardware_rate_threshold,
            below_hardware_rate: !completed || iterations_per_sec < hardware_rate_threshold,
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct KvmReport {
    /// /dev/kvm can be opened.
    pub usable: bool,
    /// Which KVM serves /dev/kvm: what vm isolation may do follows from this alone.
    pub kind: KvmKind,
    /// The KVM is hardware-assisted (kvm_intel / kvm_amd), so guest kernels run on the CPU.
    pub hardware_speed: bool,
    /// This host is itself a VM (the `hypervisor` CPU flag): guests run nested, often slower.
    pub host_is_vm: bool,
    /// What the kind means, for people.
    pub detail: String,
    /// Guest kernel-mode speed measured by `sandbox-vmm check`; information only, and
    /// measured by `sandbox check` alone, not on the way to starting a VM.
    pub kernel_mode_timing: Option<KernelModeTiming>,
    /// `sandbox-vmm check --json`, where `sandbox check` asked the VMM.
    pub vmm_check: Option<serde_json::Value>,
}

impl KvmReport {
    pub fn from_facts(facts: &KvmFacts, host_is_vm: bool) -> KvmReport {
        let kind = decide(facts);
        KvmReport {
            usable: facts.dev_kvm_error.is_none(),
            hardware_speed: matches!(kind, KvmKind::HardwareAssisted { .. }),
            host_is_vm,
            detail: describe(&kind, facts),
            kind,
            kernel_mode_timing: None,
            vmm_check: None,
        }
    }

    /// Adds `sandbox-vmm check`'s kernel-mode timing (a throwaway VM, up to a second or so).
    pub fn with_timing(mut self) -> KvmReport {
        self.vmm_check = binaries::find("sandbox-vmm", "SANDBOX_VMM")
            .ok()
            .and_then(|vmm| {
                let out = Command::new(vmm).args(["check", "--json"]).output().ok()?;
                serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
            });
        self.kernel_mode_timing = self
            .vmm_check
            .as_ref()
            .and_then(KernelModeTiming::from_vmm_check);
        self
    }
}

/// This host's KVM: module and /dev/kvm checks, made once per process (launching a sandbox
/// asks more than once). Runs no VM; `sandbox check` adds the timing with `with_timing`.
pub fn kvm_report() -> KvmReport {
    static REPORT: OnceLock<KvmReport> = OnceLock::new();
    REPORT
        .get_or_init(|| {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            KvmReport::from_facts(&KvmFacts::of_this_host(), cpuinfo_has_hypervisor(&cpuinfo))
        })
        .clone()
}

/// The `hypervisor` flag: set by every common hypervisor for its guests' CPUs.
fn cpuinfo_has_hypervisor(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "hypervisor"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(pvm: bool, intel: bool, amd: bool, open: Option<&str>) -> KvmFacts {
        KvmFacts {
            kvm_pvm: pvm,
            kvm_intel: intel,
            kvm_amd: amd,
            dev_kvm_error: open.map(str::to_string),
        }
    }

    const DENIED: Option<&str> = Some("/dev/kvm: Permission denied (os error 13)");

    #[test]
    fn hardware_modules_make_hardware_assisted_kvm() {
        assert_eq!(
            decide(&facts(false, true, false, None)),
            KvmKind::HardwareAssisted {
                vendor: CpuVendor::Intel
            }
        );
        assert_eq!(
            decide(&facts(false, false, true, None)),
            KvmKind::HardwareAssisted {
                vendor: CpuVendor::Amd
            }
        );
    }

    #[test]
    fn kvm_pvm_wins_over_everything_else() {
        for (intel, amd, open) in [
            (false, false, None),
            (true, false, None),
            (false, true, None),
            (false, false, DENIED),
        ] {
            assert_eq!(decide(&facts(true, intel, amd, open)), KvmKind::Pvm);
        }
        let d = describe(&KvmKind::Pvm, &facts(true, false, true, DENIED));
        assert!(d.contains("kvm_amd is loaded too"), "{d}");
        assert!(d.contains("Permission denied"), "{d}");
    }

    #[test]
    fn an_unopenable_dev_kvm_is_no_kvm_naming_why() {
        match decide(&facts(false, true, false, DENIED)) {
            KvmKind::NoKvm { reason } => assert!(reason.contains("Permission denied"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match decide(&facts(false, false, false, Some("/dev/kvm: No such file"))) {
            KvmKind::NoKvm { reason } => {
                assert!(reason.contains("No such file"), "{reason}");
                assert!(reason.contains("no KVM module"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_openable_dev_kvm_without_known_modules_is_unknown() {
        assert_eq!(decide(&facts(false, false, false, None)), KvmKind::Unknown);
    }

    #[test]
    fn kinds_have_the_json_names() {
        let names: Vec<_> = [
            KvmKind::HardwareAssisted {
                vendor: CpuVendor::Intel,
            },
            KvmKind::HardwareAssisted {
                vendor: CpuVendor::Amd,
            },
            KvmKind::Pvm,
            KvmKind::NoKvm { reason: "x".into() },
            KvmKind::Unknown,
        ]
        .iter()
        .map(|k| serde_json::to_value(k).unwrap())
        .collect();
        assert_eq!(
            names,
            ["kvm_intel", "kvm_amd", "kvm_pvm", "none", "unknown"].map(serde_json::Value::from)
        );
    }

    #[test]
    fn report_keys_follow_the_kind() {
        let r = KvmReport::from_facts(&facts(true, false, false, None), true);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "kvm_pvm");
        assert_eq!(v["usable"], true);
        assert_eq!(v["hardware_speed"], false);
        assert_eq!(v["host_is_vm"], true);
        assert!(v["detail"].as_str().unwrap().contains("kvm_pvm"));
        let r = KvmReport::from_facts(&facts(false, false, true, None), false);
        assert!(r.usable && r.hardware_speed && !r.host_is_vm);
        let r = KvmReport::from_facts(&facts(false, true, false, DENIED), false);
        assert!(!r.usable && !r.hardware_speed);
    }

    #[test]
    fn hardware_assisted_kvm_is_always_allowed() {
        let k = KvmKind::HardwareAssisted {
            vendor: CpuVendor::Amd,
        };
        assert_eq!(vm_isolation_policy(&k, false), Ok(()));
        assert_eq!(vm_isolation_policy(&k, true), Ok(()));
    }

    #[test]
    fn pvm_is_refused_even_when_slow_kvm_is_allowed() {
        for allow in [false, true] {
            let why = vm_isolation_policy(&KvmKind::Pvm, allow).unwrap_err();
            assert!(why.contains("kvm-pvm"), "{why}");
            assert!(why.contains("user-mode syscall faults"), "{why}");
            assert!(why.contains("--isolation native"), "{why}");
            assert!(!why.contains("--allow-slow-kvm"), "{why}");
        }
    }

    #[test]
    fn no_kvm_is_refused_naming_the_reason() {
        let k = KvmKind::NoKvm {
            reason: "/dev/kvm: Permission denied".into(),
        };
        for allow in [false, true] {
            let why = vm_isolation_policy(&k, allow).unwrap_err();
            assert!(why.contains("KVM is not usable"), "{why}");
            assert!(why.contains("Permission denied"), "{why}");
            assert!(why.contains("--isolation native"), "{why}");
            assert!(!why.contains("--allow-slow-kvm"), "{why}");
        }
    }

    #[test]
    fn unknown_kvm_is_refused_unless_slow_kvm_is_allowed() {
        let why = vm_isolation_policy(&KvmKind::Unknown, false).unwrap_err();
        assert!(why.contains("cannot be identified"), "{why}");
        assert!(why.contains("--allow-slow-kvm"), "{why}");
        assert!(why.contains("SANDBOX_ALLOW_SLOW_KVM"), "{why}");
        assert!(why.contains("--isolation native"), "{why}");
        assert_eq!(vm_isolation_policy(&KvmKind::Unknown, true), Ok(()));
    }

    #[test]
    fn timing_is_read_from_the_vmm_check() {
        let v = serde_json::json!({"kernel_mode": {
            "completed": true, "iterations_per_sec": 2.0e6, "hardware_rate_threshold": 5.0e7,
            "reached_hardware_rate": false, "iterations": 50000, "elapsed_us": 25000}});
        let t = KernelModeTiming::from_vmm_check(&v).unwrap();
        assert!(t.completed && t.below_hardware_rate);
        assert_eq!(t.iterations_per_sec, 2.0e6);
        let v = serde_json::json!({"kernel_mode": {"completed": false, "iterations_per_sec": 0.0}});
        assert!(
            KernelModeTiming::from_vmm_check(&v)
                .unwrap()
                .below_hardware_rate
        );
        assert_eq!(
            KernelModeTiming::from_vmm_check(&serde_json::json!({"ok": false})),
            None
        );
    }

    #[test]
    fn the_hypervisor_flag_marks_a_vm() {
        let vm = "processor\t: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n";
        let metal = "processor\t: 0\nflags\t\t: fpu vme lahf_lm\nbugs\t\t: hypervisor_thing\n";
        assert!(cpuinfo_has_hypervisor(vm));
        assert!(!cpuinfo_has_hypervisor(metal));
        assert!(!cpuinfo_has_hypervisor(""));
    }

    #[test]
    fn only_unknown_kvm_boots_the_minimal_cpu_model() {
        assert_eq!(KvmKind::Unknown.cpu_template(), CpuTemplate::Minimal);
        assert_eq!(
            KvmKind::HardwareAssisted {
                vendor: CpuVendor::Intel
            }
            .cpu_template(),
            CpuTemplate::None
        );
    }
}
