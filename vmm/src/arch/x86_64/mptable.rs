//! The Intel MultiProcessor Specification 1.4 table: how the kernel learns about the vCPUs,
//! the IOAPIC and how ISA interrupts reach it when there is no ACPI.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{APIC_ADDR, IOAPIC_ADDR, IOAPIC_PINS, MPTABLE_ADDR};

/// The table must fit in the first KiB of the EBDA, where the kernel scans for it.
const MPTABLE_MAX_SIZE: usize = 1024;
const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const SPEC_REV_1_4: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conforms to the bus" (edge, active high for ISA).
const IRQ_FLAGS_CONFORMING: u16 = 0;
/// CPUID.1 signature and feature flags (FPU, APIC) advertised for each processor entry.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ISA_BUS_ID: u8 = 0;

/// Largest vCPU count whose table fits in `MPTABLE_MAX_SIZE`.
pub const MAX_CPUS: u8 = 32;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("the MP table supports 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u8),
    #[error("cannot write the MP table to guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer structure followed by the configuration table, as bytes to
/// place at `base`. The IOAPIC gets the id after the last vCPU.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MpTableError::CpuCount(num_cpus));
    }
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    for cpu in 0..num_cpus {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION]);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    for pin in 0..IOAPIC_PINS as u8 {
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT]);
        entries.extend_from_slice(&IRQ_FLAGS_CONFORMING.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, pin, ioapic_id, pin]);
    }
    // The legacy PIC reaches every local APIC's LINT0 as ExtINT, NMIs arrive on LINT1.
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind]);
        entries.extend_from_slice(&IRQ_FLAGS_CONFORMING.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, 0, 0xff, lint]);
    }
    let entry_count = num_cpus as u16 + 1 + 1 + IOAPIC_PINS as u16 + 2;

    let table_addr = base + FLOATING_POINTER_SIZE as u64;
    let mut header = Vec::with_capacity(HEADER_SIZE);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((HEADER_SIZE + entries.len()) as u16).to_le_bytes());
    header.push(SPEC_REV_1_4);
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"SANDBOX ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&[0; 4]); // no extended table
    debug_assert_eq!(header.len(), HEADER_SIZE);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(FLOATING_POINTER_SIZE + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.push(1); // length in 16-byte units
    out.push(SPEC_REV_1_4);
    out.push(0); // checksum, filled below
    out.extend_from_slice(&[0; 5]); // feature bytes: a configuration table is present
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    debug_assert!(out.len() <= MPTABLE_MAX_SIZE);
    Ok(out)
}

pub fn write<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(num_cpus, MPTABLE_ADDR)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_counts_are_right() {
        for cpus in [1u8, 2, 4, MAX_CPUS] {
            let bytes = build(cpus, MPTABLE_ADDR).unwrap();
            assert!(bytes.len() <= MPTABLE_MAX_SIZE);
            assert_eq!(&bytes[..4], b"_MP_");
            assert_eq!(sum(&bytes[..16]), 0, "floating pointer checksum");
            let table_addr = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
            assert_eq!(table_addr, MPTABLE_ADDR + 16);
            let table = &bytes[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "configuration table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count, cpus as u16 + 28);
            // Exactly one bootstrap processor, and APIC ids 0..cpus in order.
            let cpu_entries = &table[HEADER_SIZE..HEADER_SIZE + 20 * cpus as usize];
            let bsps = cpu_entries
                .chunks(20)
                .enumerate()
                .inspect(|(i, e)| assert_eq!((e[0], e[1]), (ENTRY_PROCESSOR, *i as u8)))
                .filter(|(_, e)| e[3] & CPU_BOOTSTRAP != 0)
                .count();
            assert_eq!(bsps, 1);
        }
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(matches!(build(0, 0), Err(MpTableError::CpuCount(0))));
        assert!(matches!(build(33, 0), Err(MpTableError::CpuCount(33))));
    }

    #[test]
    fn writes_into_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_ADDR))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(write(&small, 2).is_err());
    }
}
