//! Paths confined to a root directory: the one mechanism by which the engine (mount targets,
//! device nodes, the working directory) and the image importer (every create, remove, link and
//! chown of a layer) reach into a root filesystem that someone else wrote.
//!
//! Resolution is libpathrs's in-root resolver (openat2 with `RESOLVE_IN_ROOT` where the kernel
//! has it, a checked userspace walk otherwise): symlinks and `..` are followed as the
//! container would see them, with the root as `/`, so an absolute symlink or a chain of `..`
//! lands inside the root, never outside it. Callers then act on the one final name through
//! the directory descriptor this returns (`*at` system calls, no symlink followed), so nothing
//! is looked up again by path after the check.

use std::ffi::{OsStr, OsString};
use std::fs::Permissions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use pathrs::flags::OpenFlags;
use pathrs::procfs::{ProcfsBase, ProcfsHandle};
use pathrs::Root;

/// Most symlinks followed in one lookup of a path's missing tail (the kernel's own limit).
const MAX_SYMLINK_HOPS: u32 = 40;

/// A directory that paths are resolved inside of.
pub struct ConfinedRoot {
    root: Root,
}

impl ConfinedRoot {
    /// Opens `host` (a path the caller trusts) as the root that later paths stay inside.
    pub fn open(host: &Path) -> io::Result<Self> {
        let root = Root::open(host).map_err(|e| to_io(e, "open the root", host))?;
        Ok(ConfinedRoot { root })
    }

    /// The directory `path` names inside the root, as an `O_DIRECTORY` descriptor. With
    /// `create`, missing directories are made (mode 0755, like tar's implicit parents), each
    /// of them inside the root too.
    pub fn dir(&self, path: &Path, create: bool) -> io::Result<OwnedFd> {
        let handle = if create {
            let perm = Permissions::from_mode(0o755);
            match self.root.mkdir_all(path, &perm) {
                Ok(handle) => handle,
                // libpathrs will not create through a dangling symlink; tar (and containerd)
                // make its target, which here means its target inside the root.
                Err(e) if errno_of(&e) == Some(libc::ENOTDIR) => {
                    let (resolved, tail) = self.split_missing(path)?;
                    let inside = tail.iter().fold(resolved, |p, n| p.join(n));
                    self.root
                        .mkdir_all(&inside, &perm)
                        .map_err(|e| to_io(e, "create directory", path))?
                }
                Err(e) => return Err(to_io(e, "create directory", path)),
            }
        } else {
            self.root
                .resolve(path)
                .map_err(|e| to_io(e, "resolve directory", path))?
        };
        let file = handle
            .reopen(OpenFlags::O_DIRECTORY | OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC)
            .map_err(|e| to_io(e, "open directory", path))?;
        Ok(file.into())
    }

    /// Removes `path` and, if it is a directory, everything below it. A final symlink is
    /// removed itself, never followed; a path that is not there is not an error.
    pub fn remove_all(&self, path: &Path) -> io::Result<()> {
        match self.root.remove_all(path) {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(to_io(e, "remove", path)),
        }
    }

    /// Where `path`, resolved inside the root, lies on the host: for system calls that take
    /// only a path (mount). The part of `path` that exists is resolved by the confined
    /// resolver; a missing tail (a mount point still to be made) is appended to it.
    pub fn host_path(&self, path: &Path) -> io::Result<PathBuf> {
        let (resolved, tail) = self.split_missing(path)?;
        let handle = self
            .root
            .resolve(&resolved)
            .map_err(|e| to_io(e, "resolve", path))?;
        let fd = handle.as_fd().as_raw_fd();
        let on_host = ProcfsHandle::new()
            .and_then(|proc| proc.readlink(ProcfsBase::ProcThreadSelf, format!("fd/{fd}")))
            .map_err(|e| to_io(e, "find the host path of", path))?;
        Ok(tail.iter().fold(on_host, |p, n| p.join(n)))
    }

    /// `path` as the part that exists (a path inside the root that the confined resolver
    /// accepts) and the missing names after it. Dangling symlinks on the way are followed
    /// inside the root, as the container would follow them once their target exists; `..`
    /// in the missing tail never climbs above the part that exists.
    fn split_missing(&self, path: &Path) -> io::Result<(PathBuf, Vec<OsString>)> {
        let mut pending: Vec<OsString> = Vec::new();
        push_components(&mut pending, path);
        let mut resolved = PathBuf::from("/");
        let mut tail: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(name) = pending.pop() {
            if !tail.is_empty() {
                if name == ".." {
                    tail.pop();
                } else {
                    tail.push(name);
                }
                continue;
            }
            let candidate = resolved.join(&name);
            match self.root.resolve(&candidate) {
                Ok(_) => resolved = candidate,
                Err(e) if errno_of(&e) == Some(libc::ENOENT) => {
                    match self.root.readlink(&candidate) {
                        Ok(target) => {
                            hops += 1;
                            if hops > MAX_SYMLINK_HOPS {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidInput,
                                    format!("{}: too many symlinks", path.display()),
                                ));
                            }
                            if target.is_absolute() {
                                resolved = PathBuf::from("/");
                            }
                            push_components(&mut pending, &target);
                        }
                        Err(_) => tail.push(name),
                    }
                }
                Err(e) => return Err(to_io(e, "resolve", path)),
            }
        }
        Ok((resolved, tail))
    }
}

/// The name that `path` gives its final component, checked to be one plain name: the
/// directory it lives in comes from [`ConfinedRoot::dir`] on the rest.
pub fn split_last(path: &Path) -> Option<(&Path, &OsStr)> {
    match path.components().next_back()? {
        Component::Normal(name) => Some((path.parent().unwrap_or(Path::new("")), name)),
        _ => None,
    }
}

/// `path`'s components onto a stack, last first, so that popping walks it in order. Root and
/// `.` components carry nothing in a path that is already inside the root.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    for c in path.components().rev() {
        match c {
            Component::Normal(n) => stack.push(n.to_os_string()),
            Component::ParentDir => stack.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// The errno behind a libpathrs error: a refused escape (libpathrs's safety violation) reads
/// as EXDEV, as the kernel's own `RESOLVE_BENEATH` answers.
fn errno_of(e: &pathrs::error::Error) -> Option<i32> {
    use pathrs::error::ErrorKind;
    match e.kind() {
        ErrorKind::OsError(errno) => errno,
        ErrorKind::SafetyViolation => Some(libc::EXDEV),
        ErrorKind::InvalidArgument => Some(libc::EINVAL),
        ErrorKind::NotSupported | ErrorKind::NotImplemented => Some(libc::ENOSYS),
        _ => None,
    }
}

fn to_io(e: pathrs::error::Error, what: &str, path: &Path) -> io::Error {
    let kind = errno_of(&e)
        .map(|n| io::Error::from_raw_os_error(n).kind())
        .unwrap_or(io::ErrorKind::Other);
    io::Error::new(kind, format!("{what} {} in the root: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("confined-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn host_paths_stay_inside_the_root() {
        let top = scratch("host-path");
        let dir = top.join("root");
        let outside = top.join("outside");
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink("/etc", dir.join("abs")).unwrap();
        symlink("../../../../..", dir.join("etc/up")).unwrap();
        symlink(&outside, dir.join("away")).unwrap();
        symlink("/nowhere/yet", dir.join("dangling")).unwrap();
        let root = ConfinedRoot::open(&dir).unwrap();
        let real = fs::canonicalize(&dir).unwrap();
        let p = |s: &str| root.host_path(Path::new(s)).unwrap();
        assert_eq!(p("/abs/passwd"), real.join("etc/passwd"));
        assert_eq!(p("/etc/up/x"), real.join("x"));
        assert_eq!(p("../../x"), real.join("x"));
        // An absolute symlink to a host directory means that path inside the root.
        assert_eq!(
            p("/away/file"),
            real.join(outside.strip_prefix("/").unwrap()).join("file")
        );
        assert_eq!(p("/dangling/a/../b"), real.join("nowhere/yet/b"));
        fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn remove_all_never_follows_a_symlink_out() {
        let top = scratch("remove");
        let dir = top.join("root");
        let canary = top.join("canary");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&canary).unwrap();
        fs::write(canary.join("keep"), b"x").unwrap();
        symlink(&canary, dir.join("link")).unwrap();
        let root = ConfinedRoot::open(&dir).unwrap();
        // Through the link: resolved inside the root, where nothing is.
        root.remove_all(&Path::new("link").join("keep")).unwrap();
        // The link itself: removed, not its target.
        root.remove_all(Path::new("link")).unwrap();
        assert!(canary.join("keep").exists());
        assert!(fs::symlink_metadata(dir.join("link")).is_err());
        fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn dir_creates_parents_inside_the_root() {
        let top = scratch("dir");
        let dir = top.join("root");
        let outside = top.join("outside");
        fs::create_dir_all(&dir).unwrap();
        symlink(&outside, dir.join("away")).unwrap();
        let root = ConfinedRoot::open(&dir).unwrap();
        root.dir(Path::new("away/sub"), true).unwrap();
        assert!(!outside.exists());
        assert!(dir
            .join(outside.strip_prefix("/").unwrap())
            .join("sub")
            .is_dir());
        fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn split_last_takes_only_plain_names() {
        assert_eq!(
            split_last(Path::new("a/b")),
            Some((Path::new("a"), OsStr::new("b")))
        );
        assert_eq!(split_last(Path::new("a/..")), None);
        assert_eq!(split_last(Path::new("/")), None);
    }
}
