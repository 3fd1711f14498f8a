//! The host side of a disk: a raw image file accessed with positional, vectored I/O straight
//! between the file and guest memory (no bounce buffer).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use vm_memory::{GuestMemory, GuestMemoryMmap, Permissions, VolatileSlice};

use crate::devices::virtio::chain::Segment;

pub const SECTOR_SIZE: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {0} is neither a regular file nor a block device")]
    NotAFile(PathBuf),
    #[error("disk image {0} is already in use (locked by another VM, or given twice)")]
    Locked(PathBuf),
    #[error("cannot determine the size of disk image {path}: {source}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why a transfer between the image and guest memory failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("guest buffer {addr:#x}+{len:#x} is not in guest memory")]
    GuestMemory { addr: u64, len: u32 },
    #[error("image ended early: {done} of {want} bytes transferred")]
    Short { done: u64, want: u64 },
    #[error(transparent)]
    Host(#[from] io::Error),
}

#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

impl DiskImage {
    /// Opens the image and takes an advisory lock on it: shared for a read-only disk,
    /// exclusive for a writable one, so that two VMs never write the same image.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let ft = meta.file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(DiskError::NotAFile(path.to_path_buf()));
        }
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(DiskError::Locked(path.to_path_buf()));
            }
            return Err(DiskError::Open {
                path: path.to_path_buf(),
                source: err,
            });
        }
        // The size of a block device is only visible by seeking to its end.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
            read_only,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whole sectors; a trailing partial sector is not exposed to the guest.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Reads `len` bytes at `offset` of the image into the guest buffers `segs`.
    pub fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        segs: &[Segment],
        offset: u64,
        len: u64,
    ) -> Result<(), IoError> {
        self.transfer(mem, segs, offset, len, false)
    }

    /// Writes the guest buffers `segs` (`len` bytes) to the image at `offset`.
    pub fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        segs: &[Segment],
        offset: u64,
        len: u64,
    ) -> Result<(), IoError> {
        self.transfer(mem, segs, offset, len, true)
    }

    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        segs: &[Segment],
        offset: u64,
        len: u64,
        to_file: bool,
    ) -> Result<(), IoError> {
        let perm = if to_file {
            Permissions::Read
        } else {
            Permissions::Write
        };
        // Guest buffers may straddle memory regions; get_slices splits them.
        let mut slices: Vec<VolatileSlice<'_, ()>> = Vec::with_capacity(segs.len());
        for seg in segs {
            let bad = || IoError::GuestMemory {
                addr: seg.addr.0,
                len: seg.len,
            };
            let iter = mem
                .get_slices(seg.addr, seg.len as usize, perm)
                .map_err(|_| bad())?;
            for s in iter {
                slices.push(s.map_err(|_| bad())?);
            }
        }
        let mut iovecs: Vec<libc::iovec> = slices
            .iter()
            .map(|s| libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        let mut done = 0u64;
        let mut first = 0usize;
        while done < len {
            let iov = &iovecs[first..];
            let count = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            let pos = (offset + done) as libc::off_t;
            // SAFETY: every iovec points into guest memory that `slices` (borrowing `mem`)
            // keeps mapped for the duration of the call, with the length get_slices checked.
            let n = unsafe {
                if to_file {
                    libc::pwritev(self.file.as_raw_fd(), iov.as_ptr(), count, pos)
                } else {
                    libc::preadv(self.file.as_raw_fd(), iov.as_ptr(), count, pos)
                }
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err.into());
            }
            if n == 0 {
                return Err(IoError::Short { done, want: len });
            }
            done += n as u64;
            // Drop the iovecs fully transferred and trim the one cut short.
            let mut n = n as usize;
            while n > 0 && first < iovecs.len() {
                let v = &mut iovecs[first];
                if n >= v.iov_len {
                    n -= v.iov_len;
                    first += 1;
                } else {
                    // SAFETY: advancing within the same guest buffer by less than its length.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                    v.iov_len -= n;
                    n = 0;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::test_memory;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress};

    pub(crate) fn temp_image(name: &str, contents: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-blk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let mut f = File::create(&path).unwrap();
        f.write_all(contents).unwrap();
        path
    }

    #[test]
    fn reads_and_writes_scattered_guest_buffers() {
        let img: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let path = temp_image("rw.img", &img);
        let disk = DiskImage::open(&path, false).unwrap();
        assert_eq!(disk.sectors(), 8);
        let mem = test_memory(0x10000);
        let segs = [
            Segment {
                addr: GuestAddress(0x1000),
                len: 100,
            },
            Segment {
                addr: GuestAddress(0x3000),
                len: 924,
            },
        ];
        disk.read_to_guest(&mem, &segs, 512, 1024).unwrap();
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got[..100], GuestAddress(0x1000))
            .unwrap();
        mem.read_slice(&mut got[100..], GuestAddress(0x3000))
            .unwrap();
        assert_eq!(got, img[512..1536]);

        mem.write_slice(&[0xab; 100], GuestAddress(0x1000)).unwrap();
        disk.write_from_guest(&mem, &segs, 0, 1024).unwrap();
        disk.flush().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[..100], &[0xab; 100][..]);
        assert_eq!(&back[100..1024], &img[612..1536]);
        drop(disk);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn short_image_is_reported() {
        let path = temp_image("short.img", &[0u8; 600]);
        let disk = DiskImage::open(&path, true).unwrap();
        assert_eq!(disk.sectors(), 1);
        let mem = test_memory(0x10000);
        let segs = [Segment {
            addr: GuestAddress(0x1000),
            len: 1024,
        }];
        assert!(matches!(
            disk.read_to_guest(&mem, &segs, 0, 1024),
            Err(IoError::Short { done: 600, .. })
        ));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn open_errors_name_the_problem() {
        let missing = Path::new("/nonexistent/disk.img");
        assert!(matches!(
            DiskImage::open(missing, true),
            Err(DiskError::Open { .. })
        ));
        assert!(matches!(
            DiskImage::open(Path::new("/dev/null"), true),
            Err(DiskError::NotAFile(_))
        ));
        let path = temp_image("locked.img", &[0u8; 512]);
        let _writer = DiskImage::open(&path, false).unwrap();
        assert!(matches!(
            DiskImage::open(&path, false),
            Err(DiskError::Locked(_))
        ));
        assert!(matches!(
            DiskImage::open(&path, true),
            Err(DiskError::Locked(_))
        ));
        std::fs::remove_file(path).unwrap();
    }
}
