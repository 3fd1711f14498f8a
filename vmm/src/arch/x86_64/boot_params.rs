//! The Linux "zero page" (`struct boot_params`) and its e820 memory map, filled as the x86
//! boot protocol (Documentation/arch/x86/boot.rst) asks of a 64-bit boot loader.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, ZERO_PAGE_ADDR};

pub const E820_RAM: u32 = 1;

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// "Undefined" boot loader id: we have not been assigned one.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Alignment a relocatable kernel must respect when the header does not say (CONFIG_PHYSICAL_ALIGN).
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x20_0000;
/// Size of `boot_params.e820_table`.
const E820_MAX_ENTRIES: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error(
        "guest memory of {0:#x} bytes is too small for the boot layout (need more than 1 MiB)"
    )]
    MemoryTooSmall(u64),
    #[error("too many e820 entries ({0})")]
    TooManyE820Entries(usize),
    #[error("cannot write boot_params to guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Guest RAM ranges, split around the 32-bit MMIO gap. These are the regions to back with
/// host memory and to register with KVM.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), mem_size - MMIO_GAP_START),
        ]
    }
}

/// The e820 map: low RAM up to the EBDA, then RAM from 1 MiB on. The EBDA (where the MP
/// table lives) and the legacy ROM area are left out, which the kernel treats as reserved.
pub fn e820_map(mem_size: u64) -> Result<Vec<E820Entry>, BootParamsError> {
    if mem_size <= HIMEM_START {
        return Err(BootParamsError::MemoryTooSmall(mem_size));
    }
    let ram = |addr, end: u64| E820Entry {
        addr,
        size: end - addr,
        kind: E820_RAM,
    };
    let mut map = vec![ram(0, EBDA_START)];
    for (start, len) in ram_ranges(mem_size) {
        let end = start.raw_value() + len;
        map.push(ram(start.raw_value().max(HIMEM_START), end));
    }
    Ok(map)
}

/// What the zero page needs to know about the loaded pieces.
#[derive(Clone, Debug, Default)]
pub struct BootInfo {
    /// The setup header from a bzImage; `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
    pub cmdline_addr: u64,
    /// Command line length including its NUL.
    pub cmdline_size: u32,
    pub initrd: Option<(GuestAddress, u64)>,
    pub mem_size: u64,
}

pub fn build_boot_params(info: &BootInfo) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = info.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
    }
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = info.cmdline_addr as u32;
    params.ext_cmd_line_ptr = (info.cmdline_addr >> 32) as u32;
    params.hdr.cmdline_size = info.cmdline_size;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.ext_ramdisk_image = (addr.raw_value() >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    let map = e820_map(info.mem_size)?;
    if map.len() > E820_MAX_ENTRIES {
        return Err(BootParamsError::TooManyE820Entries(map.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

pub fn write_boot_params<M: GuestMemory>(
    mem: &M,
    params: &boot_params,
) -> Result<GuestAddress, BootParamsError> {
    let addr = GuestAddress(ZERO_PAGE_ADDR);
    mem.write_obj(*params, addr)?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_guest_has_low_and_high_ram() {
        let map = e820_map(128 * MIB).unwrap();
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: 127 * MIB,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let map = e820_map(4096 * MIB).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(map[2].addr, MMIO_GAP_END);
        let ram: u64 = map.iter().map(|e| e.size).sum();
        // Everything but the EBDA/ROM hole between 0x9fc00 and 1 MiB is RAM.
        assert_eq!(ram, 4096 * MIB - (HIMEM_START - EBDA_START));
        for e in &map {
            assert!(e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END);
        }
        assert_eq!(
            ram_ranges(4096 * MIB),
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(MMIO_GAP_END), 1024 * MIB)
            ]
        );
    }

    #[test]
    fn tiny_memory_is_an_error() {
        assert!(matches!(
            e820_map(MIB),
            Err(BootParamsError::MemoryTooSmall(_))
        ));
    }

    #[test]
    fn boot_params_carry_cmdline_initrd_and_e820() {
        let info = BootInfo {
            setup_header: None,
            cmdline_addr: 0x20000,
            cmdline_size: 12,
            initrd: Some((GuestAddress(0x7f0_0000), 0x1234)),
            mem_size: 128 * MIB,
        };
        let params = build_boot_params(&info).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 12);
        assert_eq!({ hdr.ramdisk_image }, 0x7f0_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ hdr.kernel_alignment }, DEFAULT_KERNEL_ALIGNMENT);
        assert_eq!(params.e820_entries, 2);
        let second = params.e820_table[1];
        assert_eq!(
            ({ second.addr }, { second.size }, { second.r#type }),
            (HIMEM_START, 127 * MIB, E820_RAM)
        );

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let at = write_boot_params(&mem, &params).unwrap();
        let back: boot_params = mem.read_obj(at).unwrap();
        assert_eq!({ back.hdr.cmd_line_ptr }, 0x20000);
        // The kernel finds the e820 count at offset 0x1e8 and the table at 0x2d0.
        let count: u8 = mem.read_obj(at.unchecked_add(0x1e8)).unwrap();
        assert_eq!(count, 2);
        let first_size: u64 = mem.read_obj(at.unchecked_add(0x2d0 + 8)).unwrap();
        assert_eq!(first_size, EBDA_START);
    }

    #[test]
    fn bzimage_header_is_kept() {
        let hdr = setup_header {
            version: 0x020f,
            kernel_alignment: 0x100_0000,
            ..Default::default()
        };
        let params = build_boot_params(&BootInfo {
            setup_header: Some(hdr),
            mem_size: 64 * MIB,
            ..Default::default()
        })
        .unwrap();
        assert_eq!({ params.hdr.version }, 0x020f);
        assert_eq!({ params.hdr.kernel_alignment }, 0x100_0000);
        assert_eq!({ params.hdr.boot_flag }, 0xaa55);
    }
}
