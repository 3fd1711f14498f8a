//! `sandbox check [--json]`: what this host can do: KVM and whether guest kernels run at
//! hardware speed there, TUN, cgroups v2, the tools and binaries the runtime uses.

use std::path::Path;
use std::process::Command;

use clap::Args;
use serde::Serialize;

use crate::cli::GlobalOpts;
use crate::error::Result;
use crate::sandbox::{binaries, vm};

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct KvmReport {
    /// /dev/kvm can be opened.
    pub usable: bool,
    /// Guest kernel code runs on the hardware (not emulated or paravirtualised in software).
    pub hardware_speed: bool,
    /// How that was decided.
    pub detail: String,
    /// `sandbox-vmm check --json`, when the VMM could be asked.
    pub vmm_check: Option<serde_json::Value>,
}

/// Decides KVM usability and speed. The VMM's own measurement wins when it gives one; else
/// the kernel modules say which KVM this is (PVM runs guest kernels in software).
pub fn kvm_report() -> KvmReport {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let vmm_check = binaries::find("sandbox-vmm", "SANDBOX_VMM")
        .ok()
        .and_then(|vmm| {
            let out = Command::new(vmm).args(["check", "--json"]).output().ok()?;
            serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
        });
    if !usable {
        return KvmReport {
            usable,
            hardware_speed: false,
            detail: "/dev/kvm cannot be opened".into(),
            vmm_check,
        };
    }
    if let Some(v) = &vmm_check {
        let verdict = match v["kernel_mode_verdict"].as_str() {
            Some("hardware") => Some(true),
            Some("emulated") => Some(false),
            _ => find_bool(v, &["hardware_speed"]),
        };
        if let Some(fast) = verdict {
            return KvmReport {
                usable,
                hardware_speed: fast,
                detail: format!(
                    "sandbox-vmm check: guest kernel mode {}",
                    if fast {
                        "runs at hardware speed"
                    } else {
                        "is emulated (slow)"
                    }
                ),
                vmm_check,
            };
        }
    }
    let (hardware_speed, detail) = if Path::new("/sys/module/kvm_pvm").exists() {
        (
            false,
            "KVM is kvm-pvm (software nested virtualisation): guest kernel mode is emulated"
                .to_string(),
        )
    } else if Path::new("/sys/module/kvm_intel").exists()
        || Path::new("/sys/module/kvm_amd").exists()
    {
        (
            true,
            "KVM with hardware virtualisation (kvm_intel/kvm_amd)".to_string(),
        )
    } else {
        (
            false,
            "unknown KVM implementation: cannot tell whether guest kernels run at hardware speed"
                .to_string(),
        )
    };
    KvmReport {
        usable,
        hardware_speed,
        detail,
        vmm_check,
    }
}

fn find_bool(v: &serde_json::Value, keys: &[&str]) -> Option<bool> {
    match v {
        serde_json::Value::Object(m) => {
            for k in keys {
                if let Some(b) = m.get(*k).and_then(|b| b.as_bool()) {
                    return Some(b);
                }
            }
            m.values().find_map(|x| find_bool(x, keys))
        }
        _ => None,
    }
}

fn have_tool(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

pub fn run(g: &GlobalOpts, a: CheckArgs) -> Result<i32> {
    let kvm = kvm_report();
    let tun = Path::new("/dev/net/tun").exists();
    let cgroup2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    // cgroup v1 hierarchies (the engine drives either version).
    let cgroup1 = !cgroup2 && Path::new("/sys/fs/cgroup/memory").is_dir();
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .unwrap_or_default()
        .trim()
        .to_string();
    let tools: Vec<(&str, bool)> = ["mkfs.ext4", "cpio", "ip", "tc", "ps"]
        .iter()
        .map(|t| (*t, have_tool(t)))
        .collect();
    let agent = binaries::find("sandbox-agent", "SANDBOX_AGENT").ok();
    let guest_agent = binaries::find_guest_agent().ok();
    let vmm = binaries::find("sandbox-vmm", "SANDBOX_VMM").ok();
    let kernel = vm::kernel_path();
    let kernel_ok = kernel.is_file();
    let native_ready = (cgroup2 || cgroup1) && agent.is_some();
    let vm_ready = kvm.usable
        && kvm.hardware_speed
        && vmm.is_some()
        && kernel_ok
        && guest_agent.is_some()
        && have_tool("mkfs.ext4")
        && have_tool("cpio");
    let default_isolation = g.isolation();
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
            "default_isolation": default_isolation.to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    let yn = |b: bool| if b { "yes" } else { "no" };
    println!("KVM usable:              {}", yn(kvm.usable));
    println!(
        "guest kernel at hardware speed: {} ({})",
        yn(kvm.hardware_speed),
        kvm.detail
    );
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
    if kvm.usable && !kvm.hardware_speed {
        println!("note: vm isolation refuses to start here unless --allow-slow-kvm is given");
    }
    Ok(0)
}
