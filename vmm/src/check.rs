//! `sandbox-vmm check`: can this host run our microVMs, and how fast did guest kernel code
//! run when measured?
//!
//! The speed probe runs a `dec ecx; jnz` loop at CPL0 in a throwaway one-vCPU VM. Under
//! hardware virtualisation it retires about 1e9 iterations per second; hosts that emulate
//! guest kernel mode manage around 1e6. The probe is bounded by a time limit, so it costs
//! well under a second either way. It is one timing: a loaded host, or one that is itself a
//! nested VM, can land on either side of the threshold from one run to the next, so what a
//! host is should be decided from its KVM module, with this figure as information.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use vm_memory::{Bytes, GuestAddress};

use crate::arch::x86_64::cpu_template::{CpuTemplate, Reg};
use crate::arch::x86_64::cpuid;
use crate::arch::x86_64::layout::HIMEM_START;
use std::sync::{Arc, Mutex};

use crate::devices::bus::{Bus, BusDevice};
use crate::hypervisor::{self, KVM_PATH, REQUIRED_CAPS};
use crate::vstate::memory::{create_guest_memory, MemoryBacking};
use crate::vstate::stop::{StopHandle, VmExit};
use crate::vstate::vcpu::{self, BootSetup, Vcpu};
use crate::vstate::vm::Vm;

/// Loop iterations the probe runs.
pub const PROBE_ITERATIONS: u32 = 50_000;
/// Give up after this long: the loop did not finish.
pub const PROBE_TIME_LIMIT: Duration = Duration::from_secs(1);
/// Hardware-assisted KVM reaches this rate with room to spare; emulated kernel mode stays far
/// below it.
pub const HARDWARE_SPEED_THRESHOLD: f64 = 5.0e7;
/// Ports the probe writes to right before and right after the loop: timing between the two
/// exits leaves out VM entry and the first page faults.
const PROBE_START_PORT: u16 = 0x81;
const PROBE_DONE_PORT: u16 = 0x80;
/// Ports the probe reports CPUID.1:ECX and CPUID.7.0:EBX on, as the guest sees them.
const PROBE_LEAF1_ECX_PORT: u16 = 0x82;
const PROBE_LEAF7_EBX_PORT: u16 = 0x83;

#[derive(Debug, Serialize)]
pub struct CapabilityStatus {
    pub name: &'static str,
    pub present: bool,
}

/// One measurement of the probe loop.
#[derive(Debug, Serialize)]
pub struct SpeedProbe {
    pub iterations: u32,
    /// The loop finished within `PROBE_TIME_LIMIT`.
    pub completed: bool,
    pub elapsed_us: u64,
    /// The measured rate (0 when the loop did not finish).
    pub iterations_per_sec: f64,
    /// `HARDWARE_SPEED_THRESHOLD`, so readers compare against the VMM's own figure.
    pub hardware_rate_threshold: f64,
    /// This measurement reached `hardware_rate_threshold`.
    pub reached_hardware_rate: bool,
}

/// Whether CPUID bits cleared by a template are really hidden from guest kernel code.
#[derive(Debug, Serialize)]
pub struct CpuidMasking {
    pub complete: bool,
    /// Features the `minimal` template cleared that the guest still sees.
    pub unmasked_features: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub kvm_path: &'static str,
    pub kvm_accessible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kvm_error: Option<String>,
    pub api_version: Option<i32>,
    pub max_vcpus: Option<usize>,
    pub capabilities: Vec<CapabilityStatus>,
    pub missing_capabilities: Vec<&'static str>,
    pub kernel_mode: Option<SpeedProbe>,
    pub cpuid_masking: Option<CpuidMasking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_mode_error: Option<String>,
    /// What the measurement suggests: "hardware", "emulated" or "unknown" (not measured).
    /// A timing, so it can differ between runs on a loaded or nested host.
    pub kernel_mode_verdict: &'static str,
    /// The CPU template to boot Linux with here, going by the measurement.
    pub recommended_cpu_template: Option<CpuTemplate>,
    /// KVM is usable by `sandbox-vmm` (it may still be slow).
    pub ok: bool,
}

pub fn run_check() -> CheckReport {
    let mut report = CheckReport {
        kvm_path: KVM_PATH,
        kvm_accessible: false,
        kvm_error: None,
        api_version: None,
        max_vcpus: None,
        capabilities: Vec::new(),
        missing_capabilities: Vec::new(),
        kernel_mode: None,
        cpuid_masking: None,
        kernel_mode_error: None,
        kernel_mode_verdict: "unknown",
        recommended_cpu_template: None,
        ok: false,
    };
    let kvm = match hypervisor::open_kvm() {
        Ok(kvm) => kvm,
        Err(e) => {
            report.kvm_error = Some(e.to_string());
            return report;
        }
    };
    report.kvm_accessible = true;
    report.api_version = Some(kvm.get_api_version());
    report.max_vcpus = Some(kvm.get_max_vcpus());
    report.capabilities = REQUIRED_CAPS
        .iter()
        .map(|(cap, name)| CapabilityStatus {
            name,
            present: kvm.check_extension(*cap),
        })
        .collect();
    report.missing_capabilities = hypervisor::missing_caps(&kvm);
    report.ok = report.missing_capabilities.is_empty();
    if !report.ok {
        return report;
    }
    match probe_kernel_mode_speed(&kvm) {
        Ok((probe, masking)) => {
            report.cpuid_masking = Some(masking);
            report.kernel_mode_verdict = if probe.reached_hardware_rate {
                "hardware"
            } else {
                "emulated"
            };
            report.recommended_cpu_template = Some(if probe.reached_hardware_rate {
                CpuTemplate::None
            } else {
                CpuTemplate::Minimal
            });
            report.kernel_mode = Some(probe);
        }
        Err(e) => report.kernel_mode_error = Some(e),
    }
    report
}

/// mov eax, 1; cpuid; mov eax, ecx; out LEAF1, eax;
/// mov eax, 7; xor ecx, ecx; cpuid; mov eax, ebx; out LEAF7, eax
const CPUID_PROBE: [u8; 24] = [
    0xb8,
    1,
    0,
    0,
    0,
    0x0f,
    0xa2,
    0x89,
    0xc8,
    0xe7,
    PROBE_LEAF1_ECX_PORT as u8, //
    0xb8,
    7,
    0,
    0,
    0,
    0x31,
    0xc9,
    0x0f,
    0xa2,
    0x89,
    0xd8,
    0xe7,
    PROBE_LEAF7_EBX_PORT as u8,
];

/// out START, al; mov ecx, N; 1: dec ecx; jnz 1b; out DONE, al; hlt
fn probe_code(iterations: u32) -> Vec<u8> {
    let mut code = vec![0xe6, PROBE_START_PORT as u8, 0xb9];
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc, 0xe6, PROBE_DONE_PORT as u8, 0xf4]);
    code
}

/// Times the loop and, on the way, reads two CPUID leaves under the `minimal` template.
pub fn probe_kernel_mode_speed(
    kvm: &kvm_ioctls::Kvm,
) -> Result<(SpeedProbe, CpuidMasking), String> {
    let mem = create_guest_memory(2, MemoryBacking::Anonymous).map_err(|e| e.to_string())?;
    let vm = Vm::new(kvm).map_err(|e| e.to_string())?;
    vm.register_memory(&mem).map_err(|e| e.to_string())?;
    let mut code = CPUID_PROBE.to_vec();
    code.extend_from_slice(&probe_code(PROBE_ITERATIONS));
    mem.write_slice(&code, GuestAddress(HIMEM_START))
        .map_err(|e| e.to_string())?;
    // The first port write starts the clock, the second stops it and ends the run.
    let stop = StopHandle::new();
    let mut pio = Bus::new();
    let marks = Arc::new(Mutex::new(ProbeMarks {
        stop: stop.clone(),
        start: None,
        done: None,
        leaf1_ecx: None,
        leaf7_ebx: None,
    }));
    pio.insert(marks.clone(), u64::from(PROBE_DONE_PORT), 4)
        .map_err(|e| e.to_string())?;
    let mut vcpu = Vcpu::new(&vm, 0, pio, Bus::new()).map_err(|e| e.to_string())?;
    vcpu.configure(&BootSetup {
        kvm,
        mem: &mem,
        entry: GuestAddress(HIMEM_START),
        vcpu_count: 1,
        template: CpuTemplate::Minimal,
    })
    .map_err(|e| e.to_string())?;
    // What the VMM set (KVM_GET_CPUID2 may already report the hypervisor's additions).
    let mut set_cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    cpuid::normalize(&mut set_cpuid, 0, 1).map_err(|e| e.to_string())?;
    CpuTemplate::Minimal.apply(&mut set_cpuid);
    vcpu::install_kick_handler().map_err(|e| e.to_string())?;

    // A watchdog kicks this thread out of KVM_RUN when the limit passes.
    let (cancel, cancelled) = mpsc::channel::<()>();
    let timed_out_stop = stop.clone();
    // SAFETY: pthread_self has no preconditions.
    let this_thread = unsafe { libc::pthread_self() };
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(PROBE_TIME_LIMIT) {
            timed_out_stop.request(VmExit::GuestReset);
            // SAFETY: the probing thread is alive until it joins this watchdog.
            unsafe { libc::pthread_kill(this_thread, vcpu::kick_signal()) };
        }
    });
    let started = Instant::now();
    // Nothing pauses the probe: its request channel has no sender.
    let (_, requests) = mpsc::channel();
    let result = vcpu.run_loop(&stop, &requests);
    let ended = Instant::now();
    drop(cancel);
    let _ = watchdog.join();
    result.map_err(|e| e.to_string())?;
    let marks = marks.lock().unwrap_or_else(|e| e.into_inner());
    // Without both marks the watchdog stopped the loop: it did not finish in time.
    let (completed, elapsed) = match (marks.start, marks.done) {
        (Some(start), Some(done)) => (true, done - start),
        _ => (false, ended - started),
    };

    let iterations_per_sec = if completed {
        f64::from(PROBE_ITERATIONS) / elapsed.as_secs_f64()
    } else {
        0.0
    };
    let speed = SpeedProbe {
        iterations: PROBE_ITERATIONS,
        completed,
        elapsed_us: elapsed.as_micros() as u64,
        iterations_per_sec,
        hardware_rate_threshold: HARDWARE_SPEED_THRESHOLD,
        reached_hardware_rate: completed && iterations_per_sec >= HARDWARE_SPEED_THRESHOLD,
    };
    let seen = [(1, marks.leaf1_ecx), (7, marks.leaf7_ebx)];
    let mut unmasked = Vec::new();
    for (leaf, observed) in seen {
        let observed = observed.ok_or("the CPUID probe did not report")?;
        let set =
            cpuid::find(&set_cpuid, leaf, 0).map_or(0, |e| if leaf == 1 { e.ecx } else { e.ebx });
        unmasked.extend(leaked_features(leaf, set, observed));
    }
    Ok((
        speed,
        CpuidMasking {
            complete: unmasked.is_empty(),
            unmasked_features: unmasked,
        },
    ))
}

/// Names of `minimal`-hidden features in CPUID.`leaf` (ECX of leaf 1, EBX of leaf 7) that the
/// guest saw although the VMM cleared them.
fn leaked_features(leaf: u32, set: u32, observed: u32) -> Vec<&'static str> {
    let reg = if leaf == 1 { Reg::Ecx } else { Reg::Ebx };
    CpuTemplate::Minimal
        .hidden_features()
        .filter(|f| f.leaf == leaf && f.subleaf == 0 && f.reg == reg)
        .filter(|f| set & (1 << f.bit) == 0 && observed & (1 << f.bit) != 0)
        .map(|f| f.name)
        .collect()
}

struct ProbeMarks {
    stop: StopHandle,
    start: Option<Instant>,
    done: Option<Instant>,
    leaf1_ecx: Option<u32>,
    leaf7_ebx: Option<u32>,
}

impl BusDevice for ProbeMarks {
    fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let now = Instant::now();
        let mut raw = [0u8; 4];
        raw[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
        let value = u32::from_le_bytes(raw);
        match u16::try_from(base + offset) {
            Ok(PROBE_START_PORT) => self.start = Some(now),
            Ok(PROBE_DONE_PORT) if self.start.is_some() => {
                self.done = Some(now);
                self.stop.request(VmExit::GuestReset);
            }
            Ok(PROBE_LEAF1_ECX_PORT) => self.leaf1_ecx = Some(value),
            Ok(PROBE_LEAF7_EBX_PORT) => self.leaf7_ebx = Some(value),
            _ => {}
        }
    }
}

impl CheckReport {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match (&self.kvm_error, self.api_version) {
            (Some(e), _) => out.push_str(&format!("{}: NOT usable: {e}\n", self.kvm_path)),
            (None, Some(v)) => out.push_str(&format!(
                "{}: accessible, API version {v}, up to {} vCPUs\n",
                self.kvm_path,
                self.max_vcpus.unwrap_or(0)
            )),
            _ => {}
        }
        if !self.capabilities.is_empty() {
            let names: Vec<_> = self.capabilities.iter().map(|c| c.name).collect();
            if self.missing_capabilities.is_empty() {
                out.push_str(&format!(
                    "capabilities: all present ({})\n",
                    names.join(", ")
                ));
            } else {
                out.push_str(&format!(
                    "capabilities: MISSING {}\n",
                    self.missing_capabilities.join(", ")
                ));
            }
        }
        if let Some(p) = &self.kernel_mode {
            let rate = if p.completed {
                format!("measured {:.1} M iterations/s", p.iterations_per_sec / 1e6)
            } else {
                format!(
                    "the loop did not finish within {} ms",
                    PROBE_TIME_LIMIT.as_millis()
                )
            };
            out.push_str(&format!(
                "guest kernel mode: {rate} ({} loop iterations, {} us; hardware-assisted KVM \
                 reaches >= {:.0} M/s): suggests {}; one timing, which host load moves\n",
                p.iterations,
                p.elapsed_us,
                p.hardware_rate_threshold / 1e6,
                self.kernel_mode_verdict,
            ));
        }
        if let Some(m) = &self.cpuid_masking {
            if m.complete {
                out.push_str("CPUID masking: complete\n");
            } else {
                out.push_str(&format!(
                    "CPUID masking: incomplete, guest kernel code still sees {} (CPU templates also pass clearcpuid= to Linux)\n",
                    m.unmasked_features.join(", ")
                ));
            }
        }
        if let Some(e) = &self.kernel_mode_error {
            out.push_str(&format!("guest kernel mode: probe failed: {e}\n"));
        }
        if let Some(t) = self.recommended_cpu_template {
            out.push_str(&format!("recommended cpu template: {t}\n"));
        }
        out.push_str(if self.ok { "ok\n" } else { "NOT ok\n" });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_code_is_the_intended_loop() {
        let code = probe_code(3);
        assert_eq!(
            code,
            [0xe6, 0x81, 0xb9, 3, 0, 0, 0, 0xff, 0xc9, 0x75, 0xfc, 0xe6, 0x80, 0xf4]
        );
        // jnz's displacement lands on `dec ecx`.
        let jnz_end = 11i64;
        assert_eq!(jnz_end + i64::from(code[10] as i8), 7);
    }

    #[test]
    fn leaked_features_are_bits_cleared_but_seen() {
        // popcnt (23) and sse3 (0) cleared by the VMM; the guest sees popcnt and x2apic (21).
        let set = 1 << 21;
        let observed = (1 << 23) | (1 << 21);
        assert_eq!(leaked_features(1, set, observed), vec!["popcnt"]);
        assert!(leaked_features(1, set, set).is_empty());
        // smap is bit 20 of leaf 7 EBX.
        assert_eq!(leaked_features(7, 0, 1 << 20), vec!["smap"]);
    }

    #[test]
    fn text_report_calls_the_speed_a_measurement() {
        let report = CheckReport {
            kvm_path: KVM_PATH,
            kvm_accessible: true,
            kvm_error: None,
            api_version: Some(12),
            max_vcpus: Some(1),
            capabilities: vec![],
            missing_capabilities: vec![],
            kernel_mode: Some(SpeedProbe {
                iterations: PROBE_ITERATIONS,
                completed: true,
                elapsed_us: 25_000,
                iterations_per_sec: 2.0e6,
                hardware_rate_threshold: HARDWARE_SPEED_THRESHOLD,
                reached_hardware_rate: false,
            }),
            cpuid_masking: None,
            kernel_mode_error: None,
            kernel_mode_verdict: "emulated",
            recommended_cpu_template: Some(CpuTemplate::Minimal),
            ok: true,
        };
        let text = report.to_text();
        assert!(text.contains("measured 2.0 M iterations/s"), "{text}");
        assert!(text.contains("suggests emulated"), "{text}");
        assert!(text.contains("one timing"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["kernel_mode"]["reached_hardware_rate"], false);
        assert_eq!(
            json["kernel_mode"]["hardware_rate_threshold"],
            HARDWARE_SPEED_THRESHOLD
        );
    }

    #[test]
    fn text_report_for_missing_kvm() {
        let report = CheckReport {
            kvm_path: KVM_PATH,
            kvm_accessible: false,
            kvm_error: Some("no device".into()),
            api_version: None,
            max_vcpus: None,
            capabilities: vec![],
            missing_capabilities: vec![],
            kernel_mode: None,
            cpuid_masking: None,
            kernel_mode_error: None,
            kernel_mode_verdict: "unknown",
            recommended_cpu_template: None,
            ok: false,
        };
        let text = report.to_text();
        assert!(text.contains("NOT usable: no device"));
        assert!(text.ends_with("NOT ok\n"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["kvm_error"], "no device");
    }
}
