//! Guest RAM: host memory split around the 32-bit MMIO gap. Private anonymous memory by
//! default; a shared memfd when a vhost-user backend (another process) must map it too.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestMemoryMmap, GuestRegionCollectionError};

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
    #[error("cannot create the shared memory file for {mib} MiB of guest memory: {source}")]
    SharedFile { mib: u64, source: std::io::Error },
}

/// What backs guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryBacking {
    /// MAP_PRIVATE anonymous memory: only this process (and KVM) sees it.
    Anonymous,
    /// MAP_SHARED from one memfd, so that a vhost-user backend can map the same pages from
    /// the fd it is handed (virtio-fs needs it: virtiofsd reads and writes guest buffers).
    SharedFile,
}

/// Total RAM of the host in MiB.
pub fn host_ram_mib() -> u64 {
    // SAFETY: an all-zero sysinfo is a valid value of this plain C struct.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo only writes into the struct we pass.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit)) / MIB
}

/// Reserves `mem_mib` MiB of guest RAM. Pages are only backed when the guest touches them.
pub fn create_guest_memory(
    mem_mib: u64,
    backing: MemoryBacking,
) -> Result<GuestMemory, MemoryError> {
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
    let ranges = ram_ranges(mem_mib * MIB);
    let file = match backing {
        MemoryBacking::Anonymous => None,
        MemoryBacking::SharedFile => {
            Some(memfd(mem_mib).map_err(|source| MemoryError::SharedFile {
                mib: mem_mib,
                source,
            })?)
        }
    };
    // Each region maps its own stretch of the one file, so the file holds RAM without gaps.
    let mut offset = 0u64;
    let mut regions = Vec::with_capacity(ranges.len());
    for (addr, len) in ranges {
        let file_offset = file
            .as_ref()
            .map(|f| FileOffset::from_arc(f.clone(), offset));
        offset += len;
        regions.push((addr, len as usize, file_offset));
    }
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(|source| MemoryError::Allocate {
        mib: mem_mib,
        source,
    })
}

/// An anonymous memory file of `mib` MiB, sparse until the guest touches it.
fn memfd(mib: u64) -> std::io::Result<std::sync::Arc<File>> {
    // SAFETY: the name is a NUL-terminated literal; the returned fd is checked and owned.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(mib * MIB)?;
    Ok(std::sync::Arc::new(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_memory_is_one_region() {
        let mem = create_guest_memory(16, MemoryBacking::Anonymous).unwrap();
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
        let mem = create_guest_memory(mib, MemoryBacking::Anonymous).unwrap();
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
    fn shared_memory_maps_one_file_without_gaps() {
        use std::os::fd::AsRawFd;
        use vm_memory::Bytes;
        let mem = create_guest_memory(16, MemoryBacking::SharedFile).unwrap();
        let region = mem.iter().next().unwrap();
        let file = region.file_offset().expect("a file-backed region");
        assert_eq!(file.start(), 0);
        assert_eq!(file.file().metadata().unwrap().len(), 16 * MIB);
        // What the guest writes is in the file another process would map.
        mem.write_slice(b"shared", GuestAddress(0x1000)).unwrap();
        let mut buf = [0u8; 6];
        // SAFETY: pread writes at most 6 bytes into the 6-byte buffer.
        let n = unsafe { libc::pread(file.file().as_raw_fd(), buf.as_mut_ptr().cast(), 6, 0x1000) };
        assert_eq!(n, 6);
        assert_eq!(&buf, b"shared");
    }

    #[test]
    fn impossible_sizes_are_errors() {
        assert!(matches!(
            create_guest_memory(1, MemoryBacking::Anonymous),
            Err(MemoryError::TooSmall(1))
        ));
        let too_much = host_ram_mib() + 1;
        let err = create_guest_memory(too_much, MemoryBacking::Anonymous).unwrap_err();
        assert!(matches!(err, MemoryError::ExceedsHost { .. }));
        assert!(err.to_string().contains("more than this host has"));
    }
}
