//! Guest RAM: anonymous host memory, split around the 32-bit MMIO gap.

use vm_memory::{GuestMemoryMmap, GuestRegionCollectionError};

use crate::arch::x86_64::boot_params::ram_ranges;

pub type GuestMemory = GuestMemoryMmap<()>;

const MIB: u64 = 1 << 20;
/// Below this the boot layout (page tables, zero page, MP table, 1 MiB kernel floor) does
/// not fit.
pub const MIN_MEM_MIB: u64 = 2;
/// 1 TiB: far beyond any sandbox, and small enough that sizes never overflow.
pub const MAX_MEM_MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {0} MiB is too small (at least {MIN_MEM_MIB} MiB)")]
    TooSmall(u64),
    #[error("guest memory of {0} MiB is more than the {MAX_MEM_MIB} MiB supported")]
    TooLarge(u64),
    #[error(
        "guest memory of {requested_mib} MiB is more than this host has ({host_mib} MiB of RAM)"
    )]
    ExceedsHost { requested_mib: u64, host_mib: u64 },
    #[error("cannot reserve {mib} MiB of guest memory: {source}")]
    Allocate {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("guest memory layout: {0}")]
    Layout(#[from] GuestRegionCollectionError),
}

/// Total RAM of the host in MiB.
pub fn host_ram_mib() -> u64 {
    // SAFETY: sysinfo only writes into the struct we pass.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit)) / MIB
}

/// Reserves `mem_mib` MiB of guest RAM. Pages are only backed when the guest touches them.
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemory, MemoryError> {
    if mem_mib < MIN_MEM_MIB {
        return Err(MemoryError::TooSmall(mem_mib));
    }
    if mem_mib > MAX_MEM_MIB {
        return Err(MemoryError::TooLarge(mem_mib));
    }
    let host_mib = host_ram_mib();
    if mem_mib > host_mib {
        return Err(MemoryError::ExceedsHost {
            requested_mib: mem_mib,
            host_mib,
        });
    }
    let ranges: Vec<_> = ram_ranges(mem_mib * MIB)
        .into_iter()
        .map(|(addr, len)| (addr, len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate {
        mib: mem_mib,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_memory_is_one_region() {
        let mem = create_guest_memory(16).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress(16 * MIB - 1));
    }

    #[test]
    fn large_memory_is_split_around_the_gap() {
        // Only reserved, never touched: cheap even on a small host.
        let mib = (MMIO_GAP_START / MIB + 64).min(host_ram_mib());
        if mib <= MMIO_GAP_START / MIB {
            return; // host too small to ask for more than 3 GiB
        }
        let mem = create_guest_memory(mib).unwrap();
        let regions: Vec<_> = mem.iter().map(|r| (r.start_addr(), r.len())).collect();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(regions[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(regions[1].1, 64 * MIB);
        assert!(mem.find_region(GuestAddress(MMIO_GAP_START)).is_none());
        assert!(mem
            .find_region(GuestAddress(MMIO_GAP_END).unchecked_add(10))
            .is_some());
    }

    #[test]
    fn impossible_sizes_are_errors() {
        assert!(matches!(
            create_guest_memory(1),
            Err(MemoryError::TooSmall(1))
        ));
        let too_much = host_ram_mib() + 1;
        let err = create_guest_memory(too_much).unwrap_err();
        assert!(matches!(err, MemoryError::ExceedsHost { .. }));
        assert!(err.to_string().contains("more than this host has"));
    }
}
