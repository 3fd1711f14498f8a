//! Where things live in the guest's physical address space.
//!
//! ```text
//! 0x0000_0500  GDT            0x0000_0540  IDT (empty)
//! 0x0000_7000  boot_params    0x0000_8ff0  boot stack (grows down)
//! 0x0000_9000  PML4           0x0000_a000  PDPT     0x0000_b000..0x0000_efff  4 PDs
//! 0x0002_0000  command line   0x0009_fc00  MP table (start of the EBDA)
//! 0x0010_0000  high memory: kernel, then RAM up to the MMIO gap
//! 0xc000_0000  32-bit MMIO gap: virtio-mmio slots from 0xd000_0000, IOAPIC, LAPIC, KVM TSS
//! 0x1_0000_0000  RAM that did not fit below the gap
//! ```

/// Global descriptor table used for the 64-bit entry.
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const IDT_ADDR: u64 = 0x540;
/// The Linux "zero page" (`struct boot_params`), passed to the kernel in RSI.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer; the kernel switches to its own stack almost at once.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: one PML4, one PDPT and enough 2 MiB-page PDs for the low 4 GiB.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const PD_COUNT: u64 = 4;
/// Kernel command line, NUL terminated.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line we write, NUL included (x86 Linux's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The Extended BIOS Data Area starts here; low RAM in the e820 map ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// MultiProcessor table; Linux scans the first KiB of the EBDA for it.
pub const MPTABLE_ADDR: u64 = EBDA_START;
/// Start of high memory: kernels and initrds must not be below this.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO gap below 4 GiB: no RAM is mapped here.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Where virtio-mmio device windows are handed out, one page each.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_END: u64 = 0xfe00_0000;
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// Default IOAPIC and local APIC addresses (emulated in KVM).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// KVM needs three pages for a TSS and one for an identity map on some hosts; both sit in the
/// gap, above the APIC.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;

/// IOAPIC pins (GSIs). 0..=15 are the ISA interrupts; the in-kernel PIT owns 0.
pub const IOAPIC_PINS: u32 = 24;
pub const IRQ_SERIAL_COM1: u32 = 4;
/// Interrupt lines handed to virtio-mmio devices.
pub const IRQ_DEVICE_FIRST: u32 = 5;
pub const IRQ_DEVICE_LAST: u32 = IOAPIC_PINS - 1;

/// Port the guest writes to when it reaches a milestone (see `devices::legacy::BootComplete`).
pub const BOOT_COMPLETE_PORT: u16 = 0x0510;
