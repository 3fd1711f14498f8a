//! What this host can do, as `sandbox check --json` with the binaries under test reports it.
//! Asked once per test binary, so that every test in it sees the same answer even where the
//! KVM speed measurement wavers under load.

use std::sync::OnceLock;

use serde_json::Value;

fn check() -> Result<&'static Value, &'static str> {
    static CHECK: OnceLock<Result<Value, String>> = OnceLock::new();
    CHECK
        .get_or_init(|| {
            let out = crate::sandbox()
                .args(["check", "--json"])
                .output()
                .map_err(|e| format!("cannot run sandbox check --json: {e}"))?;
            serde_json::from_slice(&out.stdout).map_err(|e| {
                format!(
                    "sandbox check --json gave no JSON ({}): {e}; stderr: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        })
        .as_ref()
        .map_err(String::as_str)
}

/// Why vm isolation cannot run here; `None` where it can.
pub fn vm_unavailable() -> Option<String> {
    let v = match check() {
        Ok(v) => v,
        Err(e) => return Some(e.to_string()),
    };
    if v["vm_ready"].as_bool() == Some(true) {
        return None;
    }
    let kvm = &v["kvm"];
    Some(format!(
        "vm isolation not ready: kvm usable={}, hardware speed={} ({}), vmm={}, kernel present={}, static guest agent={}",
        kvm["usable"], kvm["hardware_speed"], kvm["detail"].as_str().unwrap_or(""),
        v["sandbox_vmm"], v["guest_kernel_present"], v["guest_agent"]
    ))
}

/// The gate at the top of every vm test: true where vm isolation is ready. Elsewhere it
/// prints `SKIP <test>: <reason>` and returns false, or panics with the reason when
/// `SANDBOX_REQUIRE_VM=1`.
pub fn vm_or_skip(test: &str) -> bool {
    let Some(why) = vm_unavailable() else {
        return true;
    };
    if std::env::var("SANDBOX_REQUIRE_VM").as_deref() == Ok("1") {
        panic!("{test}: {why}, and SANDBOX_REQUIRE_VM=1 forbids skipping it");
    }
    crate::skip(&format!("{test}: {why}"));
    false
}

/// The KVM behind /dev/kvm as `sandbox check` names it: kvm_intel, kvm_amd, kvm_pvm, none or
/// unknown.
pub fn kvm_kind() -> String {
    let v = check().unwrap_or_else(|e| panic!("{e}"));
    v["kvm"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("sandbox check --json has no kvm.kind: {}", v["kvm"]))
        .to_string()
}

/// Whether KVM runs guest kernels at hardware speed here (where it does not, vm isolation
/// must refuse rather than fall back).
pub fn kvm_hardware_speed() -> bool {
    let v = check().unwrap_or_else(|e| panic!("{e}"));
    v["kvm"]["hardware_speed"].as_bool() == Some(true)
}
