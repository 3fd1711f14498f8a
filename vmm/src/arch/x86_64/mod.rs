//! x86_64 guest setup: memory layout, boot protocol structures, CPU state.

pub mod boot_params;
pub mod cpu_template;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod regs;
