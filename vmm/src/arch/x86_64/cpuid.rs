//! Per-vCPU CPUID: KVM's supported set, normalised so that each vCPU sees its own APIC id, a
//! topology of `count` single-threaded cores in one package, and the KVM hypervisor leaf.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
pub const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE_PARAMS: u32 = 0x8000_001d;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const HYPERVISOR_BIT: u32 = 1 << 31; // leaf 1 ECX
const HTT_BIT: u32 = 1 << 28; // leaf 1 EDX
const CLFLUSH_LINE_QWORDS: u32 = 8;
const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";

const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;
/// SMT level, core level, terminator.
const TOPOLOGY_SUBLEAVES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("cannot add CPUID leaf {0:#x}: {1}")]
    AddLeaf(u32, vmm_sys_util::fam::Error),
}

/// Bits needed to hold `count` distinct ids.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Rewrites the entries that describe "which CPU am I" and "how many are there".
pub fn normalize(cpuid: &mut CpuId, vcpu_id: u8, vcpu_count: u8) -> Result<(), CpuidError> {
    let apic_id = u32::from(vcpu_id);
    let count = u32::from(vcpu_count).max(1);
    let core_shift = id_bits(count);
    let mut has_hypervisor_leaf = false;

    for entry in cpuid.as_mut_slice().iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (apic_id << 24) | (count << 16) | (CLFLUSH_LINE_QWORDS << 8);
                entry.ecx |= HYPERVISOR_BIT;
                if count > 1 {
                    entry.edx |= HTT_BIT;
                } else {
                    entry.edx &= !HTT_BIT;
                }
            }
            LEAF_CACHE_PARAMS => {
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                let cores = (count - 1).min(63);
                entry.eax = (entry.eax & 0x3fff) | (sharing.min(0xfff) << 14) | (cores << 26);
            }
            LEAF_PMU => {
                // No virtual PMU is offered: the guest should not program counters.
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                fill_topology_level(entry, apic_id, count, core_shift);
            }
            LEAF_HYPERVISOR => {
                has_hypervisor_leaf = true;
                fill_hypervisor_leaf(entry);
            }
            LEAF_AMD_SIZES => {
                // NC: cores per package minus one; ApicIdCoreIdSize.
                entry.ecx = (core_shift << 12) | (count - 1);
            }
            LEAF_AMD_CACHE_PARAMS => {
                // Threads sharing the cache: only the last level is shared by all vCPUs.
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                entry.eax = (entry.eax & !(0xfff << 14)) | (sharing.min(0xfff) << 14);
            }
            LEAF_AMD_TOPOLOGY => {
                entry.eax = apic_id;
                entry.ebx = apic_id & 0xff; // compute unit id, one thread per unit
                entry.ecx = 0; // one node
            }
            _ => {}
        }
    }

    // KVM may list a topology leaf with only some of its levels (or none filled in); the
    // kernel walks subleaves until it finds the terminating one, so all three must exist.
    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        if !cpuid.as_slice().iter().any(|e| e.function == leaf) {
            continue;
        }
        for index in 0..TOPOLOGY_SUBLEAVES {
            let present = cpuid
                .as_slice()
                .iter()
                .any(|e| e.function == leaf && e.index == index);
            if !present {
                let mut entry = kvm_cpuid_entry2 {
                    function: leaf,
                    index,
                    flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                    ..Default::default()
                };
                fill_topology_level(&mut entry, apic_id, count, core_shift);
                cpuid
                    .push(entry)
                    .map_err(|e| CpuidError::AddLeaf(leaf, e))?;
            }
        }
    }

    if !has_hypervisor_leaf {
        let mut entry = kvm_cpuid_entry2 {
            function: LEAF_HYPERVISOR,
            ..Default::default()
        };
        fill_hypervisor_leaf(&mut entry);
        cpuid
            .push(entry)
            .map_err(|e| CpuidError::AddLeaf(LEAF_HYPERVISOR, e))?;
    }
    Ok(())
}

/// Subleaf 0: SMT level (one thread per core), 1: core level (`count` cores per package),
/// 2 and above: the terminating "invalid" level. EDX holds the x2APIC id at every level.
fn fill_topology_level(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, core_shift: u32) {
    entry.edx = apic_id;
    match entry.index {
        0 => {
            entry.eax = 0;
            entry.ebx = 1;
            entry.ecx = TOPOLOGY_LEVEL_SMT << 8;
        }
        1 => {
            entry.eax = core_shift;
            entry.ebx = count;
            entry.ecx = (TOPOLOGY_LEVEL_CORE << 8) | 1;
        }
        index => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = index;
        }
    }
}

fn fill_hypervisor_leaf(entry: &mut kvm_cpuid_entry2) {
    let word = |i: usize| u32::from_le_bytes(KVM_SIGNATURE[i..i + 4].try_into().unwrap());
    // The highest hypervisor leaf is the KVM features leaf that follows.
    entry.eax = LEAF_HYPERVISOR + 1;
    entry.ebx = word(0);
    entry.ecx = word(4);
    entry.edx = word(8);
    entry.flags &= !KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
}

/// Finds the entry for `function`/`index` (index only matters for leaves that have subleaves).
pub fn find(cpuid: &CpuId, function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    cpuid.as_slice().iter().find(|e| {
        e.function == function
            && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if matches!(function, 0x4 | 0x7 | 0xb | 0xd | 0x1f | 0x8000_001d) {
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// A plausible host set as KVM_GET_SUPPORTED_CPUID returns it.
    pub(crate) fn sample() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(1, 0, [0x806f8, 0xff08_0800, 0xfff8_3203, 0x178b_fbff]),
            entry(4, 0, [0x0400_0121, 0, 0, 0]),
            entry(4, 3, [0xfc00_4163, 0, 0, 0]),
            entry(7, 0, [0, 0xf1bf_27ab, 0x1b40_5f4e, 0xac00_0010]),
            entry(0xa, 0, [0x0704_1003, 0, 0, 0]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
            entry(0xb, 1, [4, 8, 0x201, 7]),
            entry(0xb, 2, [0, 0, 2, 7]),
            entry(0xd, 0, [0x7, 0, 0x340, 0]),
            entry(0xd, 1, [0xf, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, 0x121, 0x2c10_0800]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x7, 0]),
            entry(0x8000_001d, 0, [0x121, 0x1c0_003f, 0x3f, 0]),
            entry(0x8000_001d, 3, [0x4163, 0x3c0_003f, 0x7fff, 1]),
        ])
        .unwrap()
    }

    #[test]
    fn each_vcpu_sees_its_own_apic_id() {
        for id in 0..4u8 {
            let mut cpuid = sample();
            normalize(&mut cpuid, id, 4).unwrap();
            let leaf1 = find(&cpuid, 1, 0).unwrap();
            assert_eq!(leaf1.ebx >> 24, u32::from(id));
            assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
            assert_eq!((leaf1.ebx >> 8) & 0xff, 8);
            assert_ne!(leaf1.ecx & HYPERVISOR_BIT, 0);
            assert_ne!(leaf1.edx & HTT_BIT, 0);
            for sub in 0..3 {
                assert_eq!(find(&cpuid, 0xb, sub).unwrap().edx, u32::from(id));
            }
        }
    }

    #[test]
    fn topology_describes_one_package_of_single_thread_cores() {
        let mut cpuid = sample();
        normalize(&mut cpuid, 2, 3).unwrap();
        let smt = find(&cpuid, 0xb, 0).unwrap();
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 0x100));
        let core = find(&cpuid, 0xb, 1).unwrap();
        // 3 cores need 2 bits of APIC id.
        assert_eq!((core.eax, core.ebx, core.ecx), (2, 3, 0x201));
        let end = find(&cpuid, 0xb, 2).unwrap();
        assert_eq!((end.eax, end.ebx, end.ecx & 0xff00), (0, 0, 0));
        let l1 = find(&cpuid, 4, 0).unwrap();
        assert_eq!((l1.eax >> 26, (l1.eax >> 14) & 0xfff), (2, 0));
        assert_eq!(l1.eax & 0x3fff, 0x121, "cache type and level are kept");
        let l3 = find(&cpuid, 4, 3).unwrap();
        assert_eq!((l3.eax >> 14) & 0xfff, 2);
        assert_eq!(find(&cpuid, 0x8000_0008, 0).unwrap().ecx, (2 << 12) | 2);
        let amd_l3 = find(&cpuid, 0x8000_001d, 3).unwrap();
        assert_eq!((amd_l3.eax >> 14) & 0xfff, 2);
        assert_eq!(amd_l3.eax & 0x3fff, 0x163, "cache type and level are kept");
        assert_eq!((find(&cpuid, 0x8000_001d, 0).unwrap().eax >> 14) & 0xfff, 0);
        assert_eq!(find(&cpuid, 0xa, 0).unwrap().eax, 0);
    }

    #[test]
    fn missing_topology_subleaves_are_added() {
        // As some hosts report it: leaf 0xb with only subleaf 0, all zero.
        let mut cpuid = CpuId::from_entries(&[entry(1, 0, [0; 4]), entry(0xb, 0, [0; 4])]).unwrap();
        normalize(&mut cpuid, 1, 2).unwrap();
        let levels: Vec<_> = (0..3)
            .map(|i| {
                let e = cpuid
                    .as_slice()
                    .iter()
                    .find(|e| e.function == 0xb && e.index == i)
                    .unwrap();
                (
                    e.eax,
                    e.ebx,
                    e.ecx,
                    e.edx,
                    e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                )
            })
            .collect();
        assert_eq!(
            levels,
            vec![(0, 1, 0x100, 1, 1), (1, 2, 0x201, 1, 1), (0, 0, 2, 1, 1)]
        );
        // No topology leaf at all: none is invented.
        let mut plain = CpuId::from_entries(&[entry(1, 0, [0; 4])]).unwrap();
        normalize(&mut plain, 0, 2).unwrap();
        assert!(plain.as_slice().iter().all(|e| e.function != 0xb));
    }

    #[test]
    fn single_vcpu_clears_htt() {
        let mut cpuid = sample();
        normalize(&mut cpuid, 0, 1).unwrap();
        let leaf1 = find(&cpuid, 1, 0).unwrap();
        assert_eq!(leaf1.edx & HTT_BIT, 0);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 1);
        assert_eq!(find(&cpuid, 0xb, 1).unwrap().eax, 0);
    }

    #[test]
    fn hypervisor_leaf_is_added_with_kvm_signature() {
        let mut cpuid = sample();
        assert!(find(&cpuid, LEAF_HYPERVISOR, 0).is_none());
        normalize(&mut cpuid, 0, 1).unwrap();
        let hv = find(&cpuid, LEAF_HYPERVISOR, 0).unwrap();
        let mut sig = Vec::new();
        for r in [hv.ebx, hv.ecx, hv.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig, KVM_SIGNATURE);
        assert_eq!(hv.eax, LEAF_HYPERVISOR + 1);
        // Normalising twice does not add a second one.
        normalize(&mut cpuid, 0, 1).unwrap();
        let n = cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function == LEAF_HYPERVISOR)
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 32].map(id_bits),
            [0, 1, 2, 2, 3, 3, 4, 5]
        );
    }
}
