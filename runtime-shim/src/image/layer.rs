//! One image layer applied to a root filesystem, every step confined to it.
//!
//! Each entry's directory is resolved inside the rootfs by [`agent::confined::ConfinedRoot`]
//! (the engine's mechanism too), then the entry's one final name is created, replaced,
//! linked, chowned or chmodded through that directory's descriptor with `*at` calls that
//! follow no symlink. So a symlink that an earlier layer (or an earlier entry) planted is
//! followed, if at all, the way the container would follow it: inside the rootfs.
//!
//! What each hostile entry gets (docs/security.md has the table):
//! - names are taken relative to the rootfs (a leading `/` is dropped); a name or hard-link
//!   target whose `..` climbs above the rootfs fails the import, as Docker refuses a breakout;
//! - a hard link's target is resolved inside the rootfs and must already be there;
//! - character and block devices are skipped: a container gets its /dev from the runtime,
//!   and a device node in a store on the host would be a door to a host device;
//! - setuid/setgid bits and owners are kept (images need them, as with containerd), and the
//!   image store is readable by root alone so no host user can run them;
//! - runs of zeros are written as holes, so a sparse (or merely zero-filled) file costs the
//!   host only its data; a header whose size the stream does not hold fails as truncated;
//! - a later entry of the same name replaces the earlier one, except that a directory over a
//!   directory keeps its contents (tar's and containerd's order).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use agent::confined::{split_last, ConfinedRoot};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The prefix of aufs's own bookkeeping names (`.wh..wh.plnk`, ...), never image content.
const AUFS_META_PREFIX: &str = ".wh..wh.";

/// How much of a file is read at a time; a chunk of zeros becomes a hole.
const COPY_CHUNK: usize = 64 << 10;

/// What applying a layer did that the caller may want to report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub entries: u64,
    /// Device nodes that were not created, by name.
    pub skipped_devices: Vec<PathBuf>,
}

/// Applies the tar stream `layer` to `root`: whiteouts hide what lower layers made, the rest
/// is created. Errors name the entry.
pub fn apply(layer: impl Read, root: &ConfinedRoot) -> Result<Applied, String> {
    let mut archive = tar::Archive::new(layer);
    let mut done = Applied::default();
    // What this layer made: a whiteout in the same layer hides only lower layers' files.
    let mut made: HashSet<PathBuf> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar stream: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("bad tar entry: {e}"))?;
        let raw = entry
            .path()
            .map_err(|e| format!("bad entry name: {e}"))?
            .into_owned();
        let name = clean_name(&raw)?;
        let Some((parent, base)) = split_last(&name) else {
            // The rootfs itself: its mode and owner stay the store's.
            continue;
        };
        let at = |e: String| format!("{}: {e}", raw.display());
        let base_str = base.to_string_lossy();
        if base_str == OPAQUE_MARKER {
            clear_opaque(root, parent, &made).map_err(at)?;
            continue;
        }
        if base_str.starts_with(AUFS_META_PREFIX) {
            continue;
        }
        if let Some(hidden) = base_str.strip_prefix(WHITEOUT_PREFIX) {
            let victim = parent.join(hidden);
            if !made.contains(&victim) {
                root.remove_all(&victim).map_err(|e| at(e.to_string()))?;
            }
            continue;
        }
        done.entries += 1;
        if unpack_entry(&mut entry, root, parent, base)
            .map_err(at)?
            .is_skipped()
        {
            done.skipped_devices.push(name.clone());
            continue;
        }
        made.insert(name);
    }
    Ok(done)
}

/// A layer's entry name as a path relative to the rootfs: root and `.` components dropped,
/// `..` folded, and refused where it would climb above the rootfs.
pub fn clean_name(raw: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(format!(
                        "{}: the name climbs out of the rootfs",
                        raw.display()
                    ));
                }
            }
            Component::Prefix(_) => {
                return Err(format!("{}: not a unix path", raw.display()));
            }
        }
    }
    Ok(out)
}

enum Unpacked {
    Made,
    SkippedDevice,
}

impl Unpacked {
    fn is_skipped(&self) -> bool {
        matches!(self, Unpacked::SkippedDevice)
    }
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<R>,
    root: &ConfinedRoot,
    parent: &Path,
    base: &OsStr,
) -> Result<Unpacked, String> {
    use tar::EntryType as T;
    let header = entry.header();
    let kind = header.entry_type();
    let mode = Mode::from_bits_truncate(header.mode().map_err(|e| format!("mode: {e}"))? & 0o7777);
    let owner = (
        Uid::from_raw(header.uid().map_err(|e| format!("uid: {e}"))? as u32),
        Gid::from_raw(header.gid().map_err(|e| format!("gid: {e}"))? as u32),
    );
    let mtime = TimeSpec::new(header.mtime().unwrap_or(0) as i64, 0);
    if matches!(kind, T::Char | T::Block) {
        log::warn!(
            "image layer: device node {} skipped (containers get /dev from the runtime)",
            parent.join(base).display()
        );
        return Ok(Unpacked::SkippedDevice);
    }
    let dir = root
        .dir(parent, true)
        .map_err(|e| format!("parent directory: {e}"))?;
    let existing = fstatat(&dir, base, AtFlags::AT_SYMLINK_NOFOLLOW).ok();
    let existing_is_dir = existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
    match kind {
        T::Directory => {
            if existing.is_some() && !existing_is_dir {
                remove_name(root, &dir, parent, base)?;
            }
            if !existing_is_dir {
                mkdirat(&dir, base, Mode::from_bits_truncate(0o700))
                    .map_err(|e| format!("mkdir: {e}"))?;
            }
            let fd = openat(
                &dir,
                base,
                OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| format!("open the directory: {e}"))?;
            own_and_mode(&fd, owner, mode, mtime)?;
        }
        T::Regular | T::Continuous | T::GNUSparse => {
            if existing.is_some() {
                remove_name(root, &dir, parent, base)?;
            }
            let fd = openat(
                &dir,
                base,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| format!("create: {e}"))?;
            let mut file = File::from(fd);
            copy_with_holes(entry, &mut file).map_err(|e| format!("write: {e}"))?;
            own_and_mode(&file.into(), owner, mode, mtime)?;
        }
        T::Symlink => {
            let target = entry
                .link_name()
                .map_err(|e| format!("symlink target: {e}"))?
                .ok_or("symlink without a target")?
                .into_owned();
            if existing.is_some() {
                remove_name(root, &dir, parent, base)?;
            }
            symlinkat(&target, &dir, base).map_err(|e| format!("symlink: {e}"))?;
            chown_name(&dir, base, owner)?;
            utimensat(&dir, base, &mtime, &mtime, UtimensatFlags::NoFollowSymlink)
                .map_err(|e| format!("set the symlink's time: {e}"))?;
        }
        T::Link => {
            let target = entry
                .link_name()
                .map_err(|e| format!("hard link target: {e}"))?
                .ok_or("hard link without a target")?;
            let target = clean_name(&target).map_err(|e| format!("hard link to {e}"))?;
            let (tparent, tbase) =
                split_last(&target).ok_or_else(|| "hard link to the rootfs itself".to_string())?;
            let tdir = root
                .dir(tparent, false)
                .map_err(|e| format!("hard link target {}: {e}", target.display()))?;
            let tstat = fstatat(&tdir, tbase, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| {
                format!(
                    "hard link target {} (not in the layers so far): {e}",
                    target.display()
                )
            })?;
            if tstat.st_mode & libc::S_IFMT == libc::S_IFDIR {
                return Err(format!("hard link to the directory {}", target.display()));
            }
            if let Some(st) = existing {
                if (st.st_dev, st.st_ino) == (tstat.st_dev, tstat.st_ino) {
                    return Ok(Unpacked::Made);
                }
                remove_name(root, &dir, parent, base)?;
            }
            // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink, not where it points.
            linkat(&tdir, tbase, &dir, base, AtFlags::empty())
                .map_err(|e| format!("hard link to {}: {e}", target.display()))?;
        }
        T::Fifo => {
            if existing.is_some() {
                remove_name(root, &dir, parent, base)?;
            }
            mknodat(
                &dir,
                base,
                SFlag::S_IFIFO,
                mode & Mode::from_bits_truncate(0o777),
                0,
            )
            .map_err(|e| format!("mkfifo: {e}"))?;
            chown_name(&dir, base, owner)?;
            // mknod's mode passed through the umask.
            fchmodat(&dir, base, mode, FchmodatFlags::NoFollowSymlink)
                .map_err(|e| format!("chmod: {e}"))?;
        }
        // PAX and GNU long-name headers are folded into their entries by the tar reader;
        // anything else (volume labels, multi-volume pieces) carries no file.
        other => {
            log::debug!(
                "image layer: entry type {other:?} of {} ignored",
                parent.join(base).display()
            );
        }
    }
    Ok(Unpacked::Made)
}

/// Owner first: chown clears setuid bits, the chmod after it sets them back.
fn own_and_mode(
    fd: &OwnedFd,
    owner: (Uid, Gid),
    mode: Mode,
    mtime: TimeSpec,
) -> Result<(), String> {
    match fchown(fd, Some(owner.0), Some(owner.1)) {
        Ok(()) => {}
        // Unprivileged imports keep the importer's ownership, as tar does.
        Err(Errno::EPERM) if !nix::unistd::geteuid().is_root() => {}
        Err(e) => return Err(format!("chown {}:{}: {e}", owner.0, owner.1)),
    }
    fchmod(fd, mode).map_err(|e| format!("chmod {:o}: {e}", mode.bits()))?;
    futimens(fd, &mtime, &mtime).map_err(|e| format!("set the time: {e}"))
}

fn chown_name(dir: &OwnedFd, base: &OsStr, owner: (Uid, Gid)) -> Result<(), String> {
    match fchownat(
        dir,
        base,
        Some(owner.0),
        Some(owner.1),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(()) => Ok(()),
        Err(Errno::EPERM) if !nix::unistd::geteuid().is_root() => Ok(()),
        Err(e) => Err(format!("chown {}:{}: {e}", owner.0, owner.1)),
    }
}

/// Removes what a new entry replaces: a file or link by its name in `dir`, a directory tree
/// through the confined root (which never follows a symlink out).
fn remove_name(
    root: &ConfinedRoot,
    dir: &OwnedFd,
    parent: &Path,
    base: &OsStr,
) -> Result<(), String> {
    match unlinkat(dir, base, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => root
            .remove_all(&parent.join(base))
            .map_err(|e| format!("replace the directory: {e}")),
        Err(e) => Err(format!("replace: {e}")),
    }
}

/// `.wh..wh..opq` in `dir`: everything lower layers put there goes, what this layer made stays.
fn clear_opaque(root: &ConfinedRoot, dir: &Path, made: &HashSet<PathBuf>) -> Result<(), String> {
    let fd = match root.dir(dir, false) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("opaque directory: {e}")),
    };
    let mut listing =
        nix::dir::Dir::from_fd(fd).map_err(|e| format!("list the opaque directory: {e}"))?;
    let mut children = Vec::new();
    for child in listing.iter() {
        let child = child.map_err(|e| format!("list the opaque directory: {e}"))?;
        let name = OsStr::from_bytes(child.file_name().to_bytes());
        if name != "." && name != ".." {
            children.push(dir.join(name));
        }
    }
    for child in children {
        if !made.contains(&child) {
            root.remove_all(&child)
                .map_err(|e| format!("clear the opaque directory: {e}"))?;
        }
    }
    Ok(())
}

/// Copies a file's data, seeking over zero chunks so they stay holes; the length is set at
/// the end so a file that ends in a hole keeps its size.
fn copy_with_holes(from: &mut impl Read, to: &mut File) -> io::Result<u64> {
    let total = for_each_chunk(from, |chunk| {
        if chunk.iter().all(|&b| b == 0) {
            to.seek(SeekFrom::Current(chunk.len() as i64)).map(|_| ())
        } else {
            to.write_all(chunk)
        }
    })?;
    to.set_len(total)?;
    Ok(total)
}

/// Reads `from` to its end in chunks of [`COPY_CHUNK`], handing each to `each`; returns the
/// bytes read.
pub(crate) fn for_each_chunk(
    from: &mut impl Read,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        each(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_taken_inside_the_rootfs() {
        let ok = |s: &str| clean_name(Path::new(s)).unwrap();
        assert_eq!(ok("/etc/passwd"), PathBuf::from("etc/passwd"));
        assert_eq!(ok("./a/./b/"), PathBuf::from("a/b"));
        assert_eq!(ok("a/../b"), PathBuf::from("b"));
        assert_eq!(ok("./"), PathBuf::new());
        for bad in ["../x", "a/../../x", "/../etc"] {
            let e = clean_name(Path::new(bad)).unwrap_err();
            assert!(e.contains("climbs out"), "{bad}: {e}");
        }
    }
}
