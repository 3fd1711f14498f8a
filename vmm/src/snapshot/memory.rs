//! Guest memory in a snapshot: every RAM region written one after the other into one file,
//! with holes where pages are zero; on restore each region is mapped MAP_PRIVATE from its
//! stretch of that file, so restored VMs share the file's pages in the page cache and only
//! copy those they write.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::arch::x86_64::boot_params::ram_ranges;
use crate::vstate::memory::GuestMemory;

const PAGE: usize = 4096;
/// How much guest memory is copied out at a time while saving.
const CHUNK: usize = 1 << 20;
const MIB: u64 = 1 << 20;

/// Where each guest RAM region is in the memory file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemoryRegionState {
    pub guest_addr: u64,
    pub len: u64,
    pub file_offset: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemoryState {
    pub regions: Vec<MemoryRegionState>,
    /// The exact length of the memory file: a shorter file is a truncated snapshot.
    pub file_len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("guest memory file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read guest memory at {addr:#x}: {source}")]
    Read {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error("guest memory file {path} is {found} bytes, the snapshot needs {expected} (truncated or not this snapshot's file)")]
    Length {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error(
        "the snapshot's memory layout {found:x?} is not the layout of {mem_mib} MiB of guest RAM"
    )]
    Layout {
        mem_mib: u64,
        found: Vec<MemoryRegionState>,
    },
    #[error("cannot map guest memory file {path} at offset {offset:#x}: {reason}")]
    Map {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// The layout `mem_mib` MiB of guest RAM has, packed into one file in address order.
pub fn layout_for(mem_mib: u64) -> MemoryState {
    packed(
        ram_ranges(mem_mib * MIB)
            .into_iter()
            .map(|(addr, len)| (addr.raw_value(), len)),
    )
}

/// Regions given as (guest address, length), one after the other in one file.
fn packed(regions: impl IntoIterator<Item = (u64, u64)>) -> MemoryState {
    let mut offset = 0;
    let regions = regions
        .into_iter()
        .map(|(guest_addr, len)| {
            let region = MemoryRegionState {
                guest_addr,
                len,
                file_offset: offset,
            };
            offset += len;
            region
        })
        .collect();
    MemoryState {
        regions,
        file_len: offset,
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> MemoryFileError + '_ {
    move |source| MemoryFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes all of `mem` to `path`, skipping zero pages (they stay holes in a sparse file).
/// The vCPUs must be paused.
pub fn save(mem: &GuestMemory, path: &Path) -> Result<MemoryState, MemoryFileError> {
    let err = io_error(path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(&err)?;
    let state = packed(mem.iter().map(|r| (r.start_addr().raw_value(), r.len())));
    let mut buf = vec![0u8; CHUNK];
    for (region, placed) in mem.iter().zip(&state.regions) {
        let start = region.start_addr();
        let mut done = 0u64;
        while done < placed.len {
            let n = CHUNK.min((placed.len - done) as usize);
            let addr = start.unchecked_add(done);
            mem.read_slice(&mut buf[..n], addr)
                .map_err(|source| MemoryFileError::Read {
                    addr: addr.raw_value(),
                    source,
                })?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let at = placed.file_offset + done + (i * PAGE) as u64;
                    file.write_all_at(page, at).map_err(&err)?;
                }
            }
            done += n as u64;
        }
    }
    // Trailing zero pages were never written: the length makes them part of the file.
    file.set_len(state.file_len).map_err(&err)?;
    file.sync_all().map_err(&err)?;
    Ok(state)
}

/// Maps guest RAM MAP_PRIVATE from the memory file at `path`, after checking that the layout
/// is the one `mem_mib` MiB has and that the file is as long as the snapshot says. The file
/// is opened read-only: the guest's writes go to private copies of the pages, never to it.
pub fn restore(
    path: &Path,
    state: &MemoryState,
    mem_mib: u64,
) -> Result<GuestMemory, MemoryFileError> {
    if *state != layout_for(mem_mib) {
        return Err(MemoryFileError::Layout {
            mem_mib,
            found: state.regions.clone(),
        });
    }
    let err = io_error(path);
    let file = Arc::new(File::open(path).map_err(&err)?);
    let found = file.metadata().map_err(&err)?.len();
    if found != state.file_len {
        return Err(MemoryFileError::Length {
            path: path.to_path_buf(),
            expected: state.file_len,
            found,
        });
    }
    let mut regions = Vec::with_capacity(state.regions.len());
    for r in &state.regions {
        let map_error = |reason: String| MemoryFileError::Map {
            path: path.to_path_buf(),
            offset: r.file_offset,
            reason,
        };
        let mapping = MmapRegionBuilder::new(r.len as usize)
            .with_file_offset(FileOffset::from_arc(file.clone(), r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_error(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
            .ok_or_else(|| map_error("the region wraps around the address space".into()))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|e| MemoryFileError::Map {
        path: path.to_path_buf(),
        offset: 0,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::{create_guest_memory, MemoryBacking};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn memory_round_trips_sparse_and_copy_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let mem = create_guest_memory(16, MemoryBacking::Anonymous).unwrap();
        mem.write_slice(b"first page", GuestAddress(0)).unwrap();
        mem.write_slice(b"last page", GuestAddress(16 * MIB - 9))
            .unwrap();
        let state = save(&mem, &path).unwrap();
        assert_eq!(state, layout_for(16));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 16 * MIB);
        // Two pages of data; the rest is holes (allow for filesystem block granularity).
        assert!(meta.blocks() * 512 < MIB, "{} blocks", meta.blocks());

        let restored = restore(&path, &state, 16).unwrap();
        let mut buf = [0u8; 10];
        restored.read_slice(&mut buf, GuestAddress(0)).unwrap();
        assert_eq!(&buf, b"first page");
        let mut last = [0u8; 9];
        restored
            .read_slice(&mut last, GuestAddress(16 * MIB - 9))
            .unwrap();
        assert_eq!(&last, b"last page");
        // A guest write stays in this VM: the file, and a second restore, still have the old data.
        restored
            .write_slice(b"changed!!!", GuestAddress(0))
            .unwrap();
        let mut on_disk = [0u8; 10];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut on_disk, 0)
            .unwrap();
        assert_eq!(&on_disk, b"first page");
        let second = restore(&path, &state, 16).unwrap();
        second.read_slice(&mut buf, GuestAddress(0)).unwrap();
        assert_eq!(&buf, b"first page");
    }

    #[test]
    fn a_truncated_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let mem = create_guest_memory(4, MemoryBacking::Anonymous).unwrap();
        let state = save(&mem, &path).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4 * MIB - 4096)
            .unwrap();
        let err = restore(&path, &state, 4).expect_err("a truncated file");
        let text = err.to_string();
        assert!(matches!(err, MemoryFileError::Length { .. }), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("truncated"), "{text}");
    }

    #[test]
    fn a_layout_that_is_not_the_ram_of_that_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let mem = create_guest_memory(4, MemoryBacking::Anonymous).unwrap();
        let mut state = save(&mem, &path).unwrap();
        let err = restore(&path, &state, 8).expect_err("another size");
        assert!(
            matches!(err, MemoryFileError::Layout { mem_mib: 8, .. }),
            "{err}"
        );
        state.regions[0].file_offset = 4096;
        let err = restore(&path, &state, 4).expect_err("a moved region");
        assert!(matches!(err, MemoryFileError::Layout { .. }), "{err}");
    }
}
