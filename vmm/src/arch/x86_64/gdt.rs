//! The GDT the kernel is entered with and the segment registers derived from it.
//!
//! The 64-bit boot protocol wants flat segments at selectors 0x10 (`__BOOT_CS`) and 0x18
//! (`__BOOT_DS`); the kernel replaces the table soon after entry.

use kvm_bindings::kvm_segment;

/// Flags and access byte of a descriptor, laid out as in bits 40..56 of the descriptor.
const CODE64: u16 = 0xa09b; // G, L, present, DPL0, code, exec/read, accessed
const DATA: u16 = 0xc093; // G, D/B, present, DPL0, data, read/write, accessed
const TSS64: u16 = 0x808b; // G, present, busy 64-bit TSS

pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
pub const BOOT_TSS: u16 = 0x20;

/// Encodes a segment descriptor from its flags/access word, base and 20-bit limit.
pub fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The table as written to guest memory. The TSS descriptor is 16 bytes in long mode; its
/// upper half (base bits 32..63) is zero.
pub fn boot_gdt() -> [u64; 6] {
    [
        0,
        0,
        descriptor(CODE64, 0, 0xfffff),
        descriptor(DATA, 0, 0xfffff),
        descriptor(TSS64, 0, 0xfffff),
        0,
    ]
}

/// Decodes a descriptor into the form KVM loads into a segment register's hidden part.
pub fn kvm_segment_from(selector: u16, desc: u64) -> kvm_segment {
    let base = ((desc >> 16) & 0x00ff_ffff) | ((desc >> 32) & 0xff00_0000);
    let raw_limit = (desc & 0xffff) | ((desc >> 32) & 0x000f_0000);
    let granularity = ((desc >> 55) & 1) as u8;
    let limit = if granularity == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((desc >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit: limit as u32,
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        present,
        dpl: ((desc >> 45) & 3) as u8,
        db: ((desc >> 54) & 1) as u8,
        s: ((desc >> 44) & 1) as u8,
        l: ((desc >> 53) & 1) as u8,
        g: granularity,
        avl: ((desc >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_architectural_encoding() {
        // Known-good values: a flat 64-bit code segment and a flat data segment.
        assert_eq!(descriptor(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(
            descriptor(DATA, 0x1234_5678, 0xabcde),
            0x12ca_9334_5678_bcde
        );
    }

    #[test]
    fn boot_gdt_has_code_and_data_at_protocol_selectors() {
        let gdt = boot_gdt();
        let cs = kvm_segment_from(BOOT_CS, gdt[usize::from(BOOT_CS / 8)]);
        assert_eq!((cs.l, cs.db, cs.s, cs.present, cs.dpl), (1, 0, 1, 1, 0));
        assert_eq!(cs.type_ & 0x8, 0x8, "code segment");
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = kvm_segment_from(BOOT_DS, gdt[usize::from(BOOT_DS / 8)]);
        assert_eq!((ds.l, ds.db, ds.s, ds.type_), (0, 1, 1, 3));
        assert_eq!(ds.base, 0);
        let tss = kvm_segment_from(BOOT_TSS, gdt[usize::from(BOOT_TSS / 8)]);
        assert_eq!((tss.s, tss.type_, tss.present), (0, 0xb, 1));
        assert_eq!(kvm_segment_from(0, 0).unusable, 1);
    }
}
