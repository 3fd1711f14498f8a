//! The register state a vCPU starts in: 64-bit long mode with paging on, as the Linux 64-bit
//! boot protocol asks (RSI points at boot_params, flat segments, interrupts off).

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::gdt::{boot_gdt, kvm_segment_from, BOOT_CS, BOOT_DS, BOOT_TSS};
use super::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, ZERO_PAGE_ADDR};
use super::paging::{write_identity_tables, PagingError};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;

const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// Local APIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT/IDT to guest memory: {0}")]
    WriteTables(#[from] vm_memory::GuestMemoryError),
    #[error(transparent)]
    Paging(#[from] PagingError),
}

/// General-purpose registers at the kernel's 64-bit entry point.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    }
}

/// Writes the GDT, an empty IDT and the identity page tables, and sets segment and control
/// registers for long mode on top of the vCPU's current `sregs`.
pub fn setup_boot_sregs<M: GuestMemory>(mem: &M, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    let gdt = boot_gdt();
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&gdt_bytes, GuestAddress(GDT_ADDR))?;
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;

    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt_bytes.len() - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;

    let code = kvm_segment_from(BOOT_CS, gdt[usize::from(BOOT_CS / 8)]);
    let data = kvm_segment_from(BOOT_DS, gdt[usize::from(BOOT_DS / 8)]);
    let tss = kvm_segment_from(BOOT_TSS, gdt[usize::from(BOOT_TSS / 8)]);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr3 = write_identity_tables(mem)?;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

/// MSR values at boot: syscall entry points cleared, fast strings and write-back MTRRs on.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

/// Routes the legacy PIC to LINT0 (ExtINT) and NMIs to LINT1, as the MP table says.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let with_mode = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lint0 = lapic_reg(lapic, APIC_LVT_LINT0);
    set_lapic_reg(lapic, APIC_LVT_LINT0, with_mode(lint0, APIC_MODE_EXTINT));
    let lint1 = lapic_reg(lapic, APIC_LVT_LINT1);
    set_lapic_reg(lapic, APIC_LVT_LINT1, with_mode(lint1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn entry_registers_follow_the_64bit_protocol() {
        let regs = boot_regs(GuestAddress(0x100_0000));
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rsi, ZERO_PAGE_ADDR);
        assert_eq!(regs.rflags & (1 << 9), 0, "interrupts disabled");
        assert_eq!(regs.rflags, 2);
    }

    #[test]
    fn sregs_enter_long_mode_with_paging() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_boot_sregs(&mem, &mut sregs).unwrap();
        assert_eq!(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_ne!(sregs.cr4 & CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cs.selector, BOOT_CS);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.ss.selector, BOOT_DS);
        assert_eq!(sregs.gdt.base, GDT_ADDR);
        assert_eq!(sregs.gdt.limit, 47);
        assert!(GDT_ADDR + u64::from(sregs.gdt.limit) < IDT_ADDR);
        let code: u64 = mem
            .read_obj(GuestAddress(GDT_ADDR + u64::from(BOOT_CS)))
            .unwrap();
        assert_eq!(code, 0x00af_9b00_0000_ffff);
        let pml4e: u64 = mem.read_obj(GuestAddress(sregs.cr3)).unwrap();
        assert_eq!(pml4e & 1, 1);
    }

    #[test]
    fn fpu_and_msrs_defaults() {
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(MSR_LSTAR), Some(0));
    }

    #[test]
    fn lint_pins_get_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT_LINT0, 0x1_0700);
        set_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT0), 0x1_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT1), 0x400);
    }
}
