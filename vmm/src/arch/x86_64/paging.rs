//! Identity page tables covering the low 4 GiB with 2 MiB pages, enough for the kernel's
//! 64-bit entry (it builds its own tables right away).

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{PDPT_ADDR, PD_ADDR, PD_COUNT, PML4_ADDR};

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the boot page tables to guest memory: {0}")]
pub struct PagingError(#[from] vm_memory::GuestMemoryError);

/// Writes PML4 -> PDPT -> PDs and returns the value for CR3.
pub fn write_identity_tables<M: GuestMemory>(mem: &M) -> Result<u64, PagingError> {
    mem.write_obj(PDPT_ADDR | PRESENT_RW, GuestAddress(PML4_ADDR))?;
    for pd in 0..PD_COUNT {
        let pd_addr = PD_ADDR + pd * 0x1000;
        mem.write_obj(pd_addr | PRESENT_RW, GuestAddress(PDPT_ADDR + pd * 8))?;
        let mut table = [0u64; 512];
        for (i, entry) in table.iter_mut().enumerate() {
            let frame = ((pd << 9) + i as u64) << 21;
            *entry = frame | PAGE_SIZE_2M | PRESENT_RW;
        }
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(pd_addr))?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Walks the tables as the MMU would for a 2 MiB mapping.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((va >> 39) & 511) * 8))
            .ok()?;
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 511) * 8))
            .ok()?;
        if pdpte & 1 == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 511) * 8))
            .ok()?;
        if pde & 1 == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn low_4gib_is_identity_mapped() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let cr3 = write_identity_tables(&mem).unwrap();
        assert_eq!(cr3, PML4_ADDR);
        for va in [
            0,
            0x1000,
            0x100_0000,
            0x3fff_ffff,
            0x4000_0000,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 1 << 32), None);
    }

    #[test]
    fn fails_cleanly_without_room_for_the_tables() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(write_identity_tables(&mem).is_err());
    }
}
