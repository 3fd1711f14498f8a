//! Loading the guest: kernel (ELF vmlinux or bzImage), initrd and command line.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE, HIMEM_START, MMIO_GAP_START};
use crate::vstate::memory::GuestMemory;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// xloadflags bit: the kernel has a 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;
/// Boot protocol 2.12 introduced xloadflags.
const MIN_BZIMAGE_PROTOCOL: u16 = 0x020c;
const PAGE_SIZE: u64 = 0x1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

impl std::fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelFormat::Elf => "ELF",
            KernelFormat::BzImage => "bzImage",
        })
    }
}

/// ELF identification: 64-bit class, and the machine field for x86_64.
const ELFCLASS64: u8 = 2;
const EM_X86_64: u16 = 62;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("kernel {path}: not an x86_64 ELF (class {class}, machine {machine})")]
    WrongElfMachine {
        path: PathBuf,
        class: u8,
        machine: u16,
    },
    #[error("kernel {path}: {source}")]
    KernelOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {path}: unknown format (neither an ELF vmlinux nor a bzImage)")]
    UnknownFormat { path: PathBuf },
    #[error("kernel {path}: corrupt {format} image: {source}")]
    Corrupt {
        path: PathBuf,
        format: KernelFormat,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path}: bzImage without a 64-bit entry point (boot protocol {version:#x}, xloadflags {xloadflags:#x})")]
    NotBootable64 {
        path: PathBuf,
        version: u16,
        xloadflags: u16,
    },
    #[error("initrd {path}: {source}")]
    InitrdOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} is too large: {size} bytes, but only {room} bytes fit between the kernel and the end of low memory")]
    InitrdTooLarge { path: PathBuf, size: u64, room: u64 },
    #[error("initrd {path}: cannot copy into guest memory: {source}")]
    InitrdCopy {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
    #[error("command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("command line: cannot write to guest memory: {0}")]
    CmdlineWrite(linux_loader::loader::Error),
}

/// Where the kernel went and how to enter it.
#[derive(Clone, Debug)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    pub entry: GuestAddress,
    /// First byte after the loaded image.
    pub end: u64,
    pub setup_header: Option<setup_header>,
}

fn open(path: &Path) -> Result<File, LoaderError> {
    File::open(path).map_err(|source| LoaderError::KernelOpen {
        path: path.to_path_buf(),
        source,
    })
}

/// The ELF loader checks the header's layout but not which CPU the image is for.
fn check_elf_machine(file: &mut File, path: &Path) -> Result<(), LoaderError> {
    let mut ident = [0u8; 20];
    let read = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut ident));
    if read.is_err() {
        // Too short to hold a header: the loader reports it as corrupt.
        return Ok(());
    }
    let class = ident[4];
    let machine = u16::from_le_bytes([ident[18], ident[19]]);
    if class != ELFCLASS64 || machine != EM_X86_64 {
        return Err(LoaderError::WrongElfMachine {
            path: path.to_path_buf(),
            class,
            machine,
        });
    }
    Ok(())
}

/// Tells the format from the magic numbers.
pub fn detect_format(file: &mut File, path: &Path) -> Result<KernelFormat, LoaderError> {
    let io = |source| LoaderError::KernelOpen {
        path: path.to_path_buf(),
        source,
    };
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    if file.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC {
        return Ok(KernelFormat::Elf);
    }
    file.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET))
        .map_err(io)?;
    if file.read_exact(&mut magic).is_ok() && &magic == BZIMAGE_MAGIC {
        return Ok(KernelFormat::BzImage);
    }
    Err(LoaderError::UnknownFormat {
        path: path.to_path_buf(),
    })
}

pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let mut file = open(path)?;
    let format = detect_format(&mut file, path)?;
    let corrupt = |source| LoaderError::Corrupt {
        path: path.to_path_buf(),
        format,
        source,
    };
    let highmem = Some(GuestAddress(HIMEM_START));
    match format {
        KernelFormat::Elf => {
            check_elf_machine(&mut file, path)?;
            let result = Elf::load(mem, None, &mut file, highmem).map_err(corrupt)?;
            Ok(LoadedKernel {
                format,
                entry: result.kernel_load,
                end: result.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let result = BzImage::load(mem, None, &mut file, highmem).map_err(corrupt)?;
            let hdr = result
                .setup_header
                .expect("the bzImage loader always returns the setup header");
            if hdr.version < MIN_BZIMAGE_PROTOCOL || hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoaderError::NotBootable64 {
                    path: path.to_path_buf(),
                    version: hdr.version,
                    xloadflags: hdr.xloadflags,
                });
            }
            Ok(LoadedKernel {
                format,
                entry: result.kernel_load.unchecked_add(BZIMAGE_ENTRY_64_OFFSET),
                end: result.kernel_end,
                setup_header: Some(hdr),
            })
        }
    }
}

/// End of the RAM region that starts at 0 (RAM below the MMIO gap).
fn low_memory_end(mem: &GuestMemory) -> u64 {
    mem.iter()
        .find(|r| r.start_addr().raw_value() == 0)
        .map(|r| r.len())
        .unwrap_or(0)
        .min(MMIO_GAP_START)
}

/// Places the initrd as high as the boot protocol allows (below `initrd_addr_max` and the end
/// of low RAM), page aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<(GuestAddress, u64), LoaderError> {
    let io = |source| LoaderError::InitrdOpen {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut top = low_memory_end(mem);
    if let Some(hdr) = kernel.setup_header {
        if hdr.initrd_addr_max != 0 {
            top = top.min(u64::from(hdr.initrd_addr_max) + 1);
        }
    }
    let floor = kernel.end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let room = top.saturating_sub(floor);
    if size > room {
        return Err(LoaderError::InitrdTooLarge {
            path: path.to_path_buf(),
            size,
            room,
        });
    }
    let addr = GuestAddress((top - size) & !(PAGE_SIZE - 1));
    mem.read_exact_volatile_from(addr, &mut file, size as usize)
        .map_err(|source| LoaderError::InitrdCopy {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((addr, size))
}

/// Builds the command line from the base string plus device fragments.
pub fn build_cmdline(base: &str, extra: &[String]) -> Result<Cmdline, LoaderError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(LoaderError::Cmdline)?;
    if !base.trim().is_empty() {
        cmdline
            .insert_str(base.trim())
            .map_err(LoaderError::Cmdline)?;
    }
    for fragment in extra {
        cmdline.insert_str(fragment).map_err(LoaderError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Writes the command line; returns its address and size including the NUL.
pub fn write_cmdline(mem: &GuestMemory, cmdline: &Cmdline) -> Result<(u64, u32), LoaderError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(LoaderError::CmdlineWrite)?;
    let len = cmdline
        .as_cstring()
        .map_err(LoaderError::Cmdline)?
        .as_bytes_with_nul()
        .len();
    Ok((CMDLINE_ADDR, len as u32))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vstate::memory::{create_guest_memory, MemoryBacking};
    use std::io::Write;

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-loader-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        path
    }

    /// A minimal 64-bit ELF executable with one PT_LOAD segment of `code` at `addr`.
    pub(crate) fn tiny_elf(addr: u64, code: &[u8]) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little endian
        elf[6] = 1; // version
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..32].copy_from_slice(&addr.to_le_bytes()); // entry
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 64;
        let offset = 0x1000u64;
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        elf[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
        elf[ph + 16..ph + 24].copy_from_slice(&addr.to_le_bytes()); // vaddr
        elf[ph + 24..ph + 32].copy_from_slice(&addr.to_le_bytes()); // paddr
        elf[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        elf[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
        elf[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        elf.resize(offset as usize, 0);
        elf.extend_from_slice(code);
        elf
    }

    #[test]
    fn loads_an_elf_at_its_physical_address() {
        let mem = create_guest_memory(4, MemoryBacking::Anonymous).unwrap();
        let path = temp_file("ok.elf", &tiny_elf(0x20_0000, &[0xf4, 0x90]));
        let kernel = load_kernel(&mem, &path).unwrap();
        assert_eq!(kernel.format, KernelFormat::Elf);
        assert_eq!(kernel.entry, GuestAddress(0x20_0000));
        assert_eq!(kernel.end, 0x20_0002);
        let b: u8 = mem.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!(b, 0xf4);
    }

    #[test]
    fn missing_kernel_is_named() {
        let mem = create_guest_memory(4, MemoryBacking::Anonymous).unwrap();
        let err = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(err, LoaderError::KernelOpen { .. }));
        assert!(err.to_string().contains("/nonexistent/vmlinux"));
    }

    #[test]
    fn unknown_and_corrupt_formats_are_told_apart() {
        let mem = create_guest_memory(4, MemoryBacking::Anonymous).unwrap();
        let text = temp_file("text", b"this is not a kernel at all, just some text");
        assert!(matches!(
            load_kernel(&mem, &text),
            Err(LoaderError::UnknownFormat { .. })
        ));
        let empty = temp_file("empty", b"");
        assert!(matches!(
            load_kernel(&mem, &empty),
            Err(LoaderError::UnknownFormat { .. })
        ));
        // An ELF header truncated after the magic.
        let truncated = temp_file("trunc.elf", b"\x7fELF\x02\x01\x01");
        let err = load_kernel(&mem, &truncated).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::Corrupt {
                    format: KernelFormat::Elf,
                    ..
                }
            ),
            "{err}"
        );
        // An ELF for another machine.
        let mut arm = tiny_elf(0x20_0000, &[0]);
        arm[18] = 183;
        let arm = temp_file("arm.elf", &arm);
        assert!(matches!(
            load_kernel(&mem, &arm),
            Err(LoaderError::WrongElfMachine { machine: 183, .. })
        ));
        let mut elf32 = tiny_elf(0x20_0000, &[0]);
        elf32[4] = 1;
        let elf32 = temp_file("elf32", &elf32);
        assert!(matches!(
            load_kernel(&mem, &elf32),
            Err(LoaderError::WrongElfMachine { class: 1, .. })
        ));
        // A segment that does not fit in guest memory.
        let far = temp_file("far.elf", &tiny_elf(0x100_0000, &[0; 16]));
        assert!(matches!(
            load_kernel(&mem, &far),
            Err(LoaderError::Corrupt { .. })
        ));
        // A bzImage signature with a truncated header.
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(BZIMAGE_MAGIC);
        let bz = temp_file("bz", &bz);
        let err = load_kernel(&mem, &bz).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::Corrupt {
                    format: KernelFormat::BzImage,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let mem = create_guest_memory(8, MemoryBacking::Anonymous).unwrap();
        let kernel = LoadedKernel {
            format: KernelFormat::Elf,
            entry: GuestAddress(0x20_0000),
            end: 0x20_1000,
            setup_header: None,
        };
        let path = temp_file("initrd", &[0xab; 5000]);
        let (addr, size) = load_initrd(&mem, &path, &kernel).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr.raw_value() % PAGE_SIZE, 0);
        assert!(addr.raw_value() + size <= 8 << 20);
        assert!(addr.raw_value() + size > (8 << 20) - PAGE_SIZE);
        let b: u8 = mem.read_obj(addr.unchecked_add(4999)).unwrap();
        assert_eq!(b, 0xab);

        let hdr = setup_header {
            initrd_addr_max: 0x3f_ffff,
            ..Default::default()
        };
        let capped = LoadedKernel {
            setup_header: Some(hdr),
            ..kernel.clone()
        };
        let (addr, _) = load_initrd(&mem, &path, &capped).unwrap();
        assert!(addr.raw_value() + 5000 <= 0x40_0000);
    }

    #[test]
    fn initrd_too_large_is_an_error() {
        let mem = create_guest_memory(2, MemoryBacking::Anonymous).unwrap();
        let kernel = LoadedKernel {
            format: KernelFormat::Elf,
            entry: GuestAddress(0x10_0000),
            end: 0x1f_0000,
            setup_header: None,
        };
        let path = temp_file("big-initrd", &vec![0; 0x2_0000]);
        let err = load_initrd(&mem, &path, &kernel).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::InitrdTooLarge {
                    size: 0x2_0000,
                    room: 0x1_0000,
                    ..
                }
            ),
            "{err}"
        );
        let missing = load_initrd(&mem, Path::new("/nonexistent/initrd"), &kernel).unwrap_err();
        assert!(matches!(missing, LoaderError::InitrdOpen { .. }));
    }

    #[test]
    fn cmdline_is_written_with_its_nul() {
        let mem = create_guest_memory(2, MemoryBacking::Anonymous).unwrap();
        let cmdline = build_cmdline(
            " console=ttyS0 ",
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
        )
        .unwrap();
        let (addr, size) = write_cmdline(&mem, &cmdline).unwrap();
        let expected = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5";
        assert_eq!(size as usize, expected.len() + 1);
        let mut buf = vec![0u8; size as usize];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        assert_eq!(&buf[..expected.len()], expected.as_bytes());
        assert_eq!(buf[expected.len()], 0);
        assert!(build_cmdline(&"x".repeat(CMDLINE_MAX_SIZE), &[]).is_err());
    }
}
