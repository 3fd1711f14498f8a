//! `sandbox check [--json]`: what this host can do: which KVM serves /dev/kvm and so what vm
//! isolation can do here, TUN, cgroups, the tools and binaries the runtime uses.
//!
//! The KVM part comes from [`crate::host_probe`]; this adds `sandbox-vmm check`'s timing and
//! the rest of the host.

use std::path::Path;

use clap::Args;

use crate::config::RuntimeConfig;
use crate::error::Result;
use crate::host_probe::{kvm_report, vm_isolation_policy, KvmReport};
use crate::sandbox::backend::vm;
use crate::sandbox::binaries;

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[arg(long)]
    pub json: bool,
}

fn have_tool(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// What vm isolation does on this host, for the closing lines of `sandbox check`.
fn vm_isolation_summary(kvm: &KvmReport, allow_slow_kvm: bool) -> String {
    match vm_isolation_policy(&kvm.kind, allow_slow_kvm) {
        Err(why) => format!("refused: {why}"),
        Ok(()) if !kvm.hardware_speed => {
            "allowed (--allow-slow-kvm / SANDBOX_ALLOW_SLOW_KVM), but guests may be very slow \
             or fail"
                .to_string()
        }
        Ok(()) => {
            let slow = kvm
                .kernel_mode_timing
                .as_ref()
                .is_some_and(|t| t.below_hardware_rate);
            match (slow, kvm.host_is_vm) {
                (true, true) => "allowed; guests will be slow here: this host is itself a VM \
                                 and the timing above is below hardware rate"
                    .to_string(),
                (true, false) => {
                    "allowed; guests may be slow: the timing above is below hardware rate"
                        .to_string()
                }
                (false, _) => "allowed".to_string(),
            }
        }
    }
}

pub fn run(g: &RuntimeConfig, a: CheckArgs) -> Result<i32> {
    let kvm = kvm_report().with_timing();
    let tun = Path::new("/dev/net/tun").exists();
    let cgroup2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    // cgroup v1 hierarchies (the engine drives either version).
    let cgroup1 = !cgroup2 && Path::new("/sys/fs/cgroup/memory").is_dir();
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .unwrap_or_default()
        .trim()
        .to_string();
    let tools: Vec<(&str, bool)> = ["mkfs.ext4", "ip", "tc", "ps"]
        .iter()
        .map(|t| (*t, have_tool(t)))
        .collect();
    let agent = binaries::find("sandbox-agent", "SANDBOX_AGENT").ok();
    let guest_agent = binaries::find_guest_agent().ok();
    let vmm = binaries::find("sandbox-vmm", "SANDBOX_VMM").ok();
    let kernel = vm::kernel_path();
    let kernel_ok = kernel.is_file();
    let native_ready = (cgroup2 || cgroup1) && agent.is_some();
    let vm_refusal = vm_isolation_policy(&kvm.kind, g.allow_slow_kvm).err();
    let vm_ready = vm_refusal.is_none()
        && kvm.usable
        && vmm.is_some()
        && kernel_ok
        && guest_agent.is_some()
        && have_tool("mkfs.ext4");
    let default_isolation = g.isolation;
    if a.json {
        let v = serde_json::json!({
            "kvm": kvm,
            "tun": tun,
            "cgroup2": cgroup2,
            "cgroup1": cgroup1,
            "cgroup_controllers": controllers,
            "tools": tools.iter().map(|(t, ok)| (t.to_string(), *ok)).collect::<std::collections::BTreeMap<_, _>>(),
            "sandbox_agent": agent,
            "guest_agent": guest_agent,
            "sandbox_vmm": vmm,
            "guest_kernel": kernel,
            "guest_kernel_present": kernel_ok,
            "native_ready": native_ready,
            "vm_ready": vm_ready,
            "vm_isolation_refusal": vm_refusal,
            "allow_slow_kvm": g.allow_slow_kvm,
            "default_isolation": default_isolation.to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    let yn = |b: bool| if b { "yes" } else { "no" };
    println!("KVM kind:                {}", kvm.kind);
    println!("KVM:                     {}", kvm.detail);
    println!("KVM usable:              {}", yn(kvm.usable));
    println!(
        "host is a VM:            {}",
        if kvm.host_is_vm {
            "yes (hypervisor CPU flag): guests run nested"
        } else {
            "no"
        }
    );
    println!(
        "guest kernel at hardware speed: {} (decided by the KVM kind)",
        yn(kvm.hardware_speed)
    );
    match &kvm.kernel_mode_timing {
        Some(t) if t.completed => println!(
            "guest kernel-mode timing: {:.1} M loop iterations/s measured by sandbox-vmm check \
             (hardware rate >= {:.0} M/s; one measurement, moved by load: information only)",
            t.iterations_per_sec / 1e6,
            t.hardware_rate_threshold / 1e6
        ),
        Some(_) => println!(
            "guest kernel-mode timing: the sandbox-vmm check loop did not finish in its time \
             limit (information only)"
        ),
        None => println!("guest kernel-mode timing: not measured (sandbox-vmm check gave none)"),
    }
    println!("TUN (/dev/net/tun):      {}", yn(tun));
    println!("cgroup v2:               {} [{}]", yn(cgroup2), controllers);
    if !cgroup2 {
        println!("cgroup v1:               {}", yn(cgroup1));
    }
    for (t, ok) in &tools {
        println!("tool {t:<19} {}", yn(*ok));
    }
    let show = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "not found".into())
    };
    println!("sandbox-agent:           {}", show(&agent));
    println!("static guest agent:      {}", show(&guest_agent));
    println!("sandbox-vmm:             {}", show(&vmm));
    println!(
        "guest kernel:            {} ({})",
        kernel.display(),
        if kernel_ok { "present" } else { "missing" }
    );
    println!("native isolation ready:  {}", yn(native_ready));
    println!("vm isolation ready:      {}", yn(vm_ready));
    println!("on this {} host:", kvm.kind);
    println!(
        "  native isolation:      {}",
        if native_ready {
            "works"
        } else {
            "not ready (needs cgroups and sandbox-agent)"
        }
    );
    println!(
        "  vm isolation:          {}",
        vm_isolation_summary(&kvm, g.allow_slow_kvm)
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_probe::{KernelModeTiming, KvmFacts};

    #[test]
    fn a_slow_timing_never_refuses_hardware_assisted_kvm() {
        let mut r = KvmReport::from_facts(
            &KvmFacts {
                kvm_amd: true,
                ..KvmFacts::default()
            },
            true,
        );
        r.kernel_mode_timing = Some(KernelModeTiming {
            completed: true,
            iterations_per_sec: 1.0e6,
            hardware_rate_threshold: 5.0e7,
            below_hardware_rate: true,
        });
        let s = vm_isolation_summary(&r, false);
        assert!(s.starts_with("allowed"), "{s}");
        assert!(s.contains("slow"), "{s}");
    }
}
