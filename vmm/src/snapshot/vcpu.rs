//! What a vCPU's state is made of in a snapshot, and which MSRs are part of it.
//!
//! The KVM structures are kept as kvm-bindings defines them (its `serde` feature stores each
//! as its raw bytes); `kvm_fpu` has no serde support there, so it has a mirror here.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Cap, Kvm};
use serde::{Deserialize, Serialize};

use crate::arch::x86_64::regs::{self, MSR_IA32_TSC};

/// One vCPU, everything KVM keeps for it that the guest can observe.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    /// What KVM_SET_CPUID2 was given at boot: restored first, since KVM checks MSRs and
    /// XSAVE state against it.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    /// None where KVM has no KVM_CAP_XSAVE; the FPU state above then holds x87/SSE.
    pub xsave: Option<kvm_xsave>,
    /// None where KVM has no KVM_CAP_XCRS.
    pub xcrs: Option<kvm_xcrs>,
    pub lapic: kvm_lapic_state,
    /// Every MSR of `msr_candidates` that KVM could read, MSR_IA32_TSC first.
    pub msrs: Vec<kvm_msr_entry>,
    pub mp_state: kvm_mp_state,
    pub vcpu_events: kvm_vcpu_events,
    pub debugregs: kvm_debugregs,
    /// The guest's TSC frequency; None where KVM_GET_TSC_KHZ is not offered.
    pub tsc_khz: Option<u32>,
}

impl VcpuState {
    /// The guest TSC at the time of the snapshot.
    pub fn tsc(&self) -> Option<u64> {
        self.msrs
            .iter()
            .find(|e| e.index == MSR_IA32_TSC)
            .map(|e| e.data)
    }
}

/// `kvm_fpu` field by field (its padding left out).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FpuState {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// What this KVM lets a snapshot read, asked once per VM.
#[derive(Debug, Clone)]
pub struct VcpuStateSupport {
    /// The MSRs to try, see `msr_candidates`.
    pub msrs: Vec<u32>,
    /// KVM_CAP_XSAVE: KVM_GET_XSAVE/KVM_SET_XSAVE exist.
    pub xsave: bool,
    /// KVM_CAP_XCRS: KVM_GET_XCRS/KVM_SET_XCRS exist.
    pub xcrs: bool,
}

impl VcpuStateSupport {
    pub fn probe(kvm: &Kvm) -> Result<Self, kvm_ioctls::Error> {
        Ok(VcpuStateSupport {
            msrs: msr_candidates(kvm)?,
            xsave: kvm.check_extension(Cap::Xsave),
            xcrs: kvm.check_extension(Cap::Xcrs),
        })
    }
}

/// The MSRs a snapshot tries to read: those the VMM sets at boot and those KVM lists with
/// KVM_GET_MSR_INDEX_LIST (the ones it says a VMM must save), MSR_IA32_TSC first so that a
/// restore sets the TSC before MSRs that are relative to it (the TSC deadline). Which of them
/// this KVM can actually read is found per vCPU when the state is read.
pub fn msr_candidates(kvm: &Kvm) -> Result<Vec<u32>, kvm_ioctls::Error> {
    let listed = kvm.get_msr_index_list()?;
    let mut all = vec![MSR_IA32_TSC];
    for index in regs::boot_msrs()
        .iter()
        .map(|e| e.index)
        .chain(listed.as_slice().iter().copied())
    {
        if !all.contains(&index) {
            all.push(index);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fpu_state_round_trips_every_field() {
        let mut fpu = kvm_fpu {
            fcw: 0x37f,
            fsw: 0x1234,
            ftwx: 0x5a,
            last_opcode: 0x7ff,
            last_ip: 0xdead_beef,
            last_dp: 0xfeed_f00d,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fpu.fpr[3][7] = 9;
        fpu.xmm[15][0] = 0xaa;
        let state = FpuState::from(&fpu);
        let json = serde_json::to_string(&state).unwrap();
        let back: FpuState = serde_json::from_str(&json).unwrap();
        assert_eq!(kvm_fpu::from(&back), fpu);
    }

    #[test]
    fn the_tsc_is_found_among_the_msrs() {
        let state = VcpuState {
            id: 0,
            cpuid: Vec::new(),
            regs: Default::default(),
            sregs: Default::default(),
            fpu: FpuState::from(&kvm_fpu::default()),
            xsave: None,
            xcrs: None,
            lapic: Default::default(),
            msrs: vec![
                kvm_msr_entry {
                    index: 0x174,
                    data: 8,
                    ..Default::default()
                },
                kvm_msr_entry {
                    index: MSR_IA32_TSC,
                    data: 12345,
                    ..Default::default()
                },
            ],
            mp_state: Default::default(),
            vcpu_events: Default::default(),
            debugregs: Default::default(),
            tsc_khz: None,
        };
        assert_eq!(state.tsc(), Some(12345));
        // The KVM structures survive JSON as their bytes.
        let json = serde_json::to_string(&state).unwrap();
        let back: VcpuState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.tsc(), Some(12345));
        assert_eq!(back.msrs[0].index, 0x174);
    }
}
