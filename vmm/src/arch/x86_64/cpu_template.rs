//! CPU templates: named masks of CPUID feature bits hidden from the guest.
//!
//! A template is a list of feature names; each name maps to one CPUID bit. `none` passes
//! through what KVM supports. `minimal` keeps a baseline x86-64 (SSE2, APIC, TSC, NX, ...)
//! and hides the later instruction-set extensions and the supervisor-mode protections, for
//! hypervisors that emulate guest kernel code and cannot emulate those instructions.

use kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// One CPUID feature bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u8,
}

const fn f(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> Feature {
    Feature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
    }
}

use Reg::{Eax, Ebx, Ecx, Edx};

/// The feature bits templates may refer to (names as in Linux's /proc/cpuinfo).
pub const FEATURES: &[Feature] = &[
    f("sse3", 1, 0, Ecx, 0),
    f("pclmulqdq", 1, 0, Ecx, 1),
    f("ssse3", 1, 0, Ecx, 9),
    f("fma", 1, 0, Ecx, 12),
    f("cx16", 1, 0, Ecx, 13),
    f("pcid", 1, 0, Ecx, 17),
    f("sse4_1", 1, 0, Ecx, 19),
    f("sse4_2", 1, 0, Ecx, 20),
    f("movbe", 1, 0, Ecx, 22),
    f("popcnt", 1, 0, Ecx, 23),
    f("aes", 1, 0, Ecx, 25),
    f("xsave", 1, 0, Ecx, 26),
    f("osxsave", 1, 0, Ecx, 27),
    f("avx", 1, 0, Ecx, 28),
    f("f16c", 1, 0, Ecx, 29),
    f("rdrand", 1, 0, Ecx, 30),
    f("fsgsbase", 7, 0, Ebx, 0),
    f("bmi1", 7, 0, Ebx, 3),
    f("hle", 7, 0, Ebx, 4),
    f("avx2", 7, 0, Ebx, 5),
    f("smep", 7, 0, Ebx, 7),
    f("bmi2", 7, 0, Ebx, 8),
    f("invpcid", 7, 0, Ebx, 10),
    f("rtm", 7, 0, Ebx, 11),
    f("mpx", 7, 0, Ebx, 14),
    f("avx512f", 7, 0, Ebx, 16),
    f("avx512dq", 7, 0, Ebx, 17),
    f("rdseed", 7, 0, Ebx, 18),
    f("adx", 7, 0, Ebx, 19),
    f("smap", 7, 0, Ebx, 20),
    f("avx512ifma", 7, 0, Ebx, 21),
    f("clflushopt", 7, 0, Ebx, 23),
    f("clwb", 7, 0, Ebx, 24),
    f("avx512pf", 7, 0, Ebx, 26),
    f("avx512er", 7, 0, Ebx, 27),
    f("avx512cd", 7, 0, Ebx, 28),
    f("sha_ni", 7, 0, Ebx, 29),
    f("avx512bw", 7, 0, Ebx, 30),
    f("avx512vl", 7, 0, Ebx, 31),
    f("avx512vbmi", 7, 0, Ecx, 1),
    f("umip", 7, 0, Ecx, 2),
    f("pku", 7, 0, Ecx, 3),
    f("ospke", 7, 0, Ecx, 4),
    f("waitpkg", 7, 0, Ecx, 5),
    f("avx512_vbmi2", 7, 0, Ecx, 6),
    f("gfni", 7, 0, Ecx, 8),
    f("vaes", 7, 0, Ecx, 9),
    f("vpclmulqdq", 7, 0, Ecx, 10),
    f("avx512_vnni", 7, 0, Ecx, 11),
    f("avx512_bitalg", 7, 0, Ecx, 12),
    f("avx512_vpopcntdq", 7, 0, Ecx, 14),
    f("la57", 7, 0, Ecx, 16),
    f("rdpid", 7, 0, Ecx, 22),
    f("movdiri", 7, 0, Ecx, 27),
    f("movdir64b", 7, 0, Ecx, 28),
    f("avx512_4vnniw", 7, 0, Edx, 2),
    f("avx512_4fmaps", 7, 0, Edx, 3),
    f("fsrm", 7, 0, Edx, 4),
    f("avx512_vp2intersect", 7, 0, Edx, 8),
    f("serialize", 7, 0, Edx, 14),
    f("amx_bf16", 7, 0, Edx, 22),
    f("avx512_fp16", 7, 0, Edx, 23),
    f("amx_tile", 7, 0, Edx, 24),
    f("amx_int8", 7, 0, Edx, 25),
    f("avx_vnni", 7, 1, Eax, 4),
    f("avx512_bf16", 7, 1, Eax, 5),
    f("xsaveopt", 0xd, 1, Eax, 0),
    f("xsavec", 0xd, 1, Eax, 1),
    f("xgetbv1", 0xd, 1, Eax, 2),
    f("xsaves", 0xd, 1, Eax, 3),
    f("abm", 0x8000_0001, 0, Ecx, 5),
    f("sse4a", 0x8000_0001, 0, Ecx, 6),
    f("misalignsse", 0x8000_0001, 0, Ecx, 7),
    f("3dnowprefetch", 0x8000_0001, 0, Ecx, 8),
    f("xop", 0x8000_0001, 0, Ecx, 11),
    f("fma4", 0x8000_0001, 0, Ecx, 16),
    f("tbm", 0x8000_0001, 0, Ecx, 21),
];

/// Hides the extensions newer than the x86-64 baseline: the SSE3+ and AVX families, bit
/// manipulation, crypto and random-number instructions, XSAVE and its leaf, PCID/INVPCID,
/// protection keys, SMEP/SMAP/UMIP, FSGSBASE, LA57 and the cache-line write-back hints.
const MINIMAL_HIDES: &[&str] = &[
    "sse3",
    "pclmulqdq",
    "ssse3",
    "fma",
    "cx16",
    "pcid",
    "sse4_1",
    "sse4_2",
    "movbe",
    "popcnt",
    "aes",
    "xsave",
    "osxsave",
    "avx",
    "f16c",
    "rdrand",
    "fsgsbase",
    "bmi1",
    "hle",
    "avx2",
    "smep",
    "bmi2",
    "invpcid",
    "rtm",
    "mpx",
    "avx512f",
    "avx512dq",
    "rdseed",
    "adx",
    "smap",
    "avx512ifma",
    "clflushopt",
    "clwb",
    "avx512pf",
    "avx512er",
    "avx512cd",
    "sha_ni",
    "avx512bw",
    "avx512vl",
    "avx512vbmi",
    "umip",
    "pku",
    "ospke",
    "waitpkg",
    "avx512_vbmi2",
    "gfni",
    "vaes",
    "vpclmulqdq",
    "avx512_vnni",
    "avx512_bitalg",
    "avx512_vpopcntdq",
    "la57",
    "movdiri",
    "movdir64b",
    "avx512_4vnniw",
    "avx512_4fmaps",
    "avx512_vp2intersect",
    "serialize",
    "amx_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "avx_vnni",
    "avx512_bf16",
    "xsaveopt",
    "xsavec",
    "xgetbv1",
    "xsaves",
    "abm",
    "sse4a",
    "misalignsse",
    "xop",
    "fma4",
    "tbm",
];

/// The subset of `MINIMAL_HIDES` that Linux itself executes in kernel mode, named as Linux
/// names them. Some hypervisors cannot mask every CPUID bit (the guest still sees host
/// features that KVM does not report), so the template also asks a Linux guest not to use
/// these, with `clearcpuid=`. Linux reads at most 127 characters of that option; clearing
/// xsave also clears everything that depends on it (AVX*, XSAVEOPT/C/S, PKU state).
const MINIMAL_LINUX_CLEARCPUID: &[&str] = &[
    "xsave",
    "popcnt",
    "smap",
    "smep",
    "fsgsbase",
    "rdrand",
    "rdseed",
    "pcid",
    "invpcid",
    "pku",
    "movbe",
    "cx16",
    "aes",
    "pclmulqdq",
    "sse4_2",
    "clflushopt",
    "clwb",
    "bmi1",
    "bmi2",
];

/// The XSAVE state-components leaf; meaningless once XSAVE is hidden.
const LEAF_XSAVE: u32 = 0xd;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuTemplate {
    /// Everything KVM supports.
    #[default]
    None,
    /// Baseline x86-64 only (see `MINIMAL_HIDES`).
    Minimal,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown CPU template {0:?} (known: none, minimal)")]
pub struct UnknownTemplate(pub String);

impl FromStr for CpuTemplate {
    type Err = UnknownTemplate;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" | "passthrough" => Ok(Self::None),
            "minimal" => Ok(Self::Minimal),
            other => Err(UnknownTemplate(other.to_string())),
        }
    }
}

impl fmt::Display for CpuTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Minimal => "minimal",
        })
    }
}

impl CpuTemplate {
    pub fn hidden_features(self) -> impl Iterator<Item = &'static Feature> {
        let names: &[&str] = match self {
            Self::None => &[],
            Self::Minimal => MINIMAL_HIDES,
        };
        names.iter().map(|name| {
            FEATURES
                .iter()
                .find(|f| f.name == *name)
                .expect("template names refer to FEATURES entries")
        })
    }

    /// Kernel command-line parameter telling a Linux guest not to use the hidden features it
    /// would otherwise execute in kernel mode; `None` when nothing is hidden.
    pub fn linux_cmdline(self) -> Option<String> {
        match self {
            Self::None => None,
            Self::Minimal => Some(format!("clearcpuid={}", MINIMAL_LINUX_CLEARCPUID.join(","))),
        }
    }

    /// Clears the template's bits in `cpuid`.
    pub fn apply(self, cpuid: &mut CpuId) {
        let hidden: Vec<&Feature> = self.hidden_features().collect();
        let hides_xsave = hidden.iter().any(|f| f.name == "xsave");
        for entry in cpuid.as_mut_slice().iter_mut() {
            if hides_xsave && entry.function == LEAF_XSAVE {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
                continue;
            }
            let indexed = entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0;
            for feature in &hidden {
                if feature.leaf != entry.function || (indexed && feature.subleaf != entry.index) {
                    continue;
                }
                let reg = match feature.reg {
                    Reg::Eax => &mut entry.eax,
                    Reg::Ebx => &mut entry.ebx,
                    Reg::Ecx => &mut entry.ecx,
                    Reg::Edx => &mut entry.edx,
                };
                *reg &= !(1u32 << feature.bit);
            }
        }
    }
}

/// Whether `feature` is visible in `cpuid`.
pub fn has_feature(cpuid: &CpuId, name: &str) -> Option<bool> {
    let feature = FEATURES.iter().find(|f| f.name == name)?;
    let entry = super::cpuid::find(cpuid, feature.leaf, feature.subleaf)?;
    let reg = match feature.reg {
        Reg::Eax => entry.eax,
        Reg::Ebx => entry.ebx,
        Reg::Ecx => entry.ecx,
        Reg::Edx => entry.edx,
    };
    Some(reg & (1 << feature.bit) != 0)
}

#[cfg(test)]
mod tests {
    use super::super::cpuid::{find, tests::sample};
    use super::*;

    #[test]
    fn every_template_name_is_a_known_feature() {
        for t in [CpuTemplate::None, CpuTemplate::Minimal] {
            assert_eq!(
                t.hidden_features().count(),
                match t {
                    CpuTemplate::None => 0,
                    CpuTemplate::Minimal => MINIMAL_HIDES.len(),
                }
            );
        }
        let mut names: Vec<_> = FEATURES.iter().map(|f| f.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), FEATURES.len(), "feature names are unique");
        for f in FEATURES {
            assert!(f.bit < 32);
        }
    }

    #[test]
    fn none_changes_nothing() {
        let mut cpuid = sample();
        CpuTemplate::None.apply(&mut cpuid);
        assert_eq!(cpuid, sample());
    }

    #[test]
    fn minimal_hides_extensions_and_keeps_the_baseline() {
        let mut cpuid = sample();
        for name in [
            "popcnt", "xsave", "sse4_2", "avx2", "smap", "smep", "rdseed", "abm",
        ] {
            assert_eq!(
                has_feature(&cpuid, name),
                Some(true),
                "{name} in the sample"
            );
        }
        CpuTemplate::Minimal.apply(&mut cpuid);
        for name in [
            "popcnt",
            "xsave",
            "smap",
            "smep",
            "movbe",
            "bmi1",
            "bmi2",
            "avx",
            "avx2",
            "avx512f",
            "fsgsbase",
            "rdrand",
            "rdseed",
            "adx",
            "sha_ni",
            "aes",
            "pclmulqdq",
            "fma",
            "f16c",
            "sse3",
            "ssse3",
            "sse4_1",
            "sse4_2",
            "cx16",
            "abm",
            "clwb",
            "clflushopt",
            "xsaveopt",
        ] {
            assert_eq!(has_feature(&cpuid, name), Some(false), "{name} hidden");
        }
        let leaf1 = find(&cpuid, 1, 0).unwrap();
        // Baseline EDX (FPU, TSC, MSR, APIC, CMOV, SSE, SSE2 ...) is untouched.
        assert_eq!(leaf1.edx, 0x178b_fbff);
        // x2APIC (bit 21) and the hypervisor bit stay.
        assert_ne!(leaf1.ecx & (1 << 21), 0);
        let xsave = find(&cpuid, 0xd, 0).unwrap();
        assert_eq!((xsave.eax, xsave.ecx), (0, 0));
        // Leaf 7 subleaf 0 keeps ERMS (bit 9), which is not in the mask.
        assert_ne!(find(&cpuid, 7, 0).unwrap().ebx & (1 << 9), 0);
    }

    #[test]
    fn linux_cmdline_fits_and_names_hidden_features() {
        // Longest `clearcpuid=` value Linux parses (its buffer is 128 bytes with the NUL).
        const LINUX_CLEARCPUID_MAX: usize = 127;
        assert_eq!(CpuTemplate::None.linux_cmdline(), None);
        let param = CpuTemplate::Minimal.linux_cmdline().unwrap();
        let value = param.strip_prefix("clearcpuid=").unwrap();
        assert!(value.len() <= LINUX_CLEARCPUID_MAX, "{} chars", value.len());
        for name in value.split(',') {
            assert!(
                MINIMAL_HIDES.contains(&name),
                "{name} is hidden by the template"
            );
        }
        for must in ["xsave", "popcnt", "smap", "smep"] {
            assert!(value.split(',').any(|n| n == must), "{must}");
        }
    }

    #[test]
    fn names_parse_and_print() {
        assert_eq!("minimal".parse::<CpuTemplate>(), Ok(CpuTemplate::Minimal));
        assert_eq!("none".parse::<CpuTemplate>(), Ok(CpuTemplate::None));
        assert!("T2".parse::<CpuTemplate>().is_err());
        assert_eq!(CpuTemplate::Minimal.to_string(), "minimal");
    }
}
