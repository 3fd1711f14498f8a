//! Disk images for vm isolation, cached under the image store: `ext4/id-<image id>.img` for
//! an image of the store and `ext4/<tree-hash>.img` for any other rootfs (each shared
//! read-only by every container of that rootfs), and `initramfs/<agent-hash>.cpio` (the
//! guest's /init). The ext4 images are made by the host's mkfs.ext4, the initramfs in
//! process. Each is built under a temporary name and renamed into place, so a crash never
//! leaves a half image in the cache.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cpio::newc;

use crate::error::{Error, IoContext, Result};
use crate::image::store::{ImageStore, EXT4_DIR};
use crate::image::tree_hash::{hash_file, hash_tree};

/// Says what is happening on anything slow: on the terminal when there is one, else in the
/// log (stderr may be the container's own).
pub fn progress(msg: &str) {
    if nix::unistd::isatty(std::io::stderr()).unwrap_or(false) {
        eprintln!("{msg}");
    } else {
        log::info!("{msg}");
    }
}

/// The cached read-only ext4 image of `rootfs`, built on first use. An image of the store is
/// found by its id, which changes with every import, so nothing per start grows with the
/// image; any other directory is hashed, since it may have changed since its image was built.
pub fn rootfs_image(store: &Path, rootfs: &Path) -> Result<PathBuf> {
    let images = ImageStore::new(store);
    let img = match images.id_of_rootfs(rootfs) {
        Some(id) => images.ext4_of_id(&id),
        None => {
            progress(&format!("hashing rootfs {}", rootfs.display()));
            let hash = hash_tree(rootfs)?;
            store.join(EXT4_DIR).join(format!("{hash}.img"))
        }
    };
    let dir = img.parent().expect("a file in the ext4 cache");
    fs::create_dir_all(dir).ctx("create", dir)?;
    if img.is_file() {
        return Ok(img);
    }
    let size_mib = tree_bytes(rootfs) / (1 << 20) * 13 / 10 + 64;
    progress(&format!(
        "building rootfs image {} ({size_mib} MiB) from {}",
        img.display(),
        rootfs.display()
    ));
    into_cache(&img, |tmp| mkfs_ext4(tmp, size_mib, Some(rootfs)))?;
    Ok(img)
}

/// Builds `img` of a cache with `build`, under a temporary name beside it that is renamed into
/// place, so a crash or a failure never leaves a half-built file under the name the cache
/// trusts.
fn into_cache(img: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = img.parent().expect("a file in a cache directory");
    let name = img.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let built = build(&tmp).and_then(|()| fs::rename(&tmp, img).ctx("move into cache", img));
    if built.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    built
}

/// A fresh sparse ext4 disk holding empty `upper/` and `work/` directories: the container's
/// own writes, on top of the shared rootfs image. Formatted once per size into a template in
/// the store's ext4 cache, then copied extent by extent: a start costs a copy of the few
/// megabytes of metadata, not a run of mkfs.
pub fn writable_layer(store: &Path, path: &Path, size_mib: u64) -> Result<()> {
    let template = writable_template(store, size_mib)?;
    copy_sparse(&template, path)
}

fn writable_template(store: &Path, size_mib: u64) -> Result<PathBuf> {
    let dir = store.join(EXT4_DIR);
    // The name says how it was made: a new recipe must not reuse an old template.
    let img = dir.join(format!("writable-{size_mib}mib-v1.img"));
    if img.is_file() {
        return Ok(img);
    }
    fs::create_dir_all(&dir).ctx("create", &dir)?;
    let pid = std::process::id();
    let content = dir.join(format!(".writable-{size_mib}mib.{pid}.d"));
    let _ = fs::remove_dir_all(&content);
    let built = into_cache(&img, |tmp| {
        fs::create_dir_all(content.join("upper"))
            .and_then(|()| fs::create_dir_all(content.join("work")))
            .ctx("create", &content)?;
        mkfs_ext4(tmp, size_mib, Some(&content))
    });
    let _ = fs::remove_dir_all(&content);
    built.map(|()| img)
}

/// Copies `[start, end)` of `src` to the same place in `dst`. The standard library's copy
/// of a file into a file uses copy_file_range, and a buffer where the kernel cannot.
fn copy_range(src: &fs::File, dst: &fs::File, start: u64, end: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let (mut src, mut dst) = (src, dst);
    src.seek(SeekFrom::Start(start))?;
    dst.seek(SeekFrom::Start(start))?;
    let copied = io::copy(&mut src.take(end - start), &mut dst)?;
    if copied != end - start {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(())
}

/// Copies `from` to a new file `to` of the same size, only the extents that hold data: the
/// holes stay holes.
fn copy_sparse(from: &Path, to: &Path) -> Result<()> {
    use nix::unistd::{lseek, Whence};
    let src = fs::File::open(from).ctx("open", from)?;
    let len = src.metadata().ctx("stat", from)?.len();
    let dst = fs::File::create(to).ctx("create", to)?;
    dst.set_len(len).ctx("size", to)?;
    let mut pos = 0i64;
    while (pos as u64) < len {
        let data = match lseek(&src, pos, Whence::SeekData) {
            Ok(at) => at,
            // No data after `pos`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(Error::sys("find the data of a disk template", e)),
        };
        let hole = lseek(&src, data, Whence::SeekHole)
            .map_err(|e| Error::sys("find the holes of a disk template", e))?;
        copy_range(&src, &dst, data as u64, hole as u64)
            .map_err(|e| Error::io("copy a disk template", from, e))?;
        pos = hole;
    }
    Ok(())
}

fn mkfs_ext4(path: &Path, size_mib: u64, content: Option<&Path>) -> Result<()> {
    let f = fs::File::create(path).ctx("create", path)?;
    f.set_len(size_mib << 20).ctx("size", path)?;
    drop(f);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-E", "root_owner=0:0"]);
    if let Some(dir) = content {
        cmd.arg("-d").arg(dir);
    }
    cmd.arg(path).stdout(Stdio::null());
    let out = cmd
        .output()
        .map_err(|e| Error::Image(format!("cannot run mkfs.ext4 (install e2fsprogs): {e}")))?;
    if !out.status.success() {
        return Err(Error::Image(format!(
            "mkfs.ext4 {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn tree_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if let Ok(rd) = fs::read_dir(&p) {
            for e in rd.flatten() {
                if let Ok(m) = e.path().symlink_metadata() {
                    if m.is_dir() {
                        stack.push(e.path());
                    }
                    total += m.len().max(4096);
                }
            }
        }
    }
    total
}

/// The content hash of `file`, remembered under `dir` by the file's identity (device, inode,
/// size, modification and change times), so that a start does not read the whole agent
/// again: any write to the file, or a new file in its place, changes its identity.
fn remembered_hash(dir: &Path, file: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(file).ctx("stat", file)?;
    let identity = format!(
        "{}-{}-{}-{}.{}-{}.{}",
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    );
    let memo_dir = dir.join("by-identity");
    let memo = memo_dir.join(&identity);
    if let Ok(hash) = fs::read_to_string(&memo) {
        if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(hash);
        }
    }
    let hash = hash_file(file)?;
    fs::create_dir_all(&memo_dir).ctx("create", &memo_dir)?;
    crate::state::write_atomic(&memo, hash.as_bytes())?;
    Ok(hash)
}

/// The guest initramfs: a newc cpio whose /init is `agent`, a statically linked
/// `sandbox-agent` (`binaries::find_guest_agent` finds one), cached by the agent's hash.
pub fn initramfs_from(store: &Path, agent: &Path) -> Result<PathBuf> {
    let dir = store.join("initramfs");
    fs::create_dir_all(&dir).ctx("create", &dir)?;
    let hash = remembered_hash(&dir, agent)?;
    let out = dir.join(format!("{hash}.cpio"));
    if out.is_file() {
        return Ok(out);
    }
    progress(&format!(
        "building the guest initramfs from {}",
        agent.display()
    ));
    into_cache(&out, |tmp| write_initramfs(tmp, agent))?;
    Ok(out)
}

/// Mount points the agent needs before it can create anything itself.
const INITRAMFS_DIRS: [&str; 6] = ["dev", "proc", "sys", "run", "tmp", "mnt"];

/// Writes the newc archive of the initramfs to `path`. Nothing in it comes from the host
/// but the agent's bytes (times are 0, owners root, inodes numbered in order), so an agent
/// always gives the same archive, whoever builds it and when.
fn write_initramfs(path: &Path, agent: &Path) -> Result<()> {
    let mut init = fs::File::open(agent).ctx("open", agent)?;
    let init_len = init.metadata().ctx("stat", agent)?.len();
    let init_len = u32::try_from(init_len).map_err(|_| {
        Error::Image(format!(
            "{} is too large for a newc initramfs ({init_len} bytes)",
            agent.display()
        ))
    })?;
    let file = fs::File::create(path).ctx("create", path)?;
    let mut archive = io::BufWriter::new(file);
    let mut ino = 0;
    let mut header = |name: &str, mode: u32, nlink: u32| {
        ino += 1;
        newc::Builder::new(name)
            .ino(ino)
            .mode(mode)
            .uid(0)
            .gid(0)
            .nlink(nlink)
            .mtime(0)
    };
    for name in INITRAMFS_DIRS {
        archive = header(name, libc::S_IFDIR | 0o755, 2)
            .write(archive, 0)
            .finish()
            .ctx("write", path)?;
    }
    let mut entry = header("init", libc::S_IFREG | 0o755, 1).write(archive, init_len);
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    loop {
        let n = init.read(&mut buf).ctx("read", agent)?;
        copied += n as u64;
        if n == 0 || copied > u64::from(init_len) {
            break;
        }
        entry.write_all(&buf[..n]).ctx("write", path)?;
    }
    // An agent whose length is no longer the one in the header is not the binary that was
    // hashed, and a short entry would go unpadded and misplace the trailer.
    if copied != u64::from(init_len) {
        return Err(Error::Image(format!(
            "{} changed while the initramfs was built from it",
            agent.display()
        )));
    }
    let archive = entry.finish().ctx("write", path)?;
    let archive = newc::trailer(archive).ctx("write", path)?;
    let file = archive
        .into_inner()
        .map_err(io::IntoInnerError::into_error)
        .ctx("write", path)?;
    // The cache trusts any file under the final name: it must be on disk before the rename.
    file.sync_all().ctx("sync", path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::store::ImageConfig;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sandbox-disk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn debugfs(img: &Path, request: &str) -> String {
        let out = Command::new("debugfs")
            .args(["-R", request])
            .arg(img)
            .output()
            .expect("debugfs (e2fsprogs)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn rootfs_image_holds_the_tree_and_is_cached_by_content() {
        let d = scratch("rootfs");
        let rootfs = d.join("rootfs");
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        fs::write(rootfs.join("etc/hello"), b"from the host\n").unwrap();
        let store = d.join("store");
        let img = rootfs_image(&store, &rootfs).unwrap();
        assert!(img.starts_with(store.join("ext4")));
        assert_eq!(debugfs(&img, "cat /etc/hello"), "from the host\n");
        // Same content, same image; other content, another image.
        assert_eq!(rootfs_image(&store, &rootfs).unwrap(), img);
        fs::write(rootfs.join("etc/hello"), b"changed\n").unwrap();
        let img2 = rootfs_image(&store, &rootfs).unwrap();
        assert_ne!(img2, img);
        assert_eq!(debugfs(&img, "cat /etc/hello"), "from the host\n");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_stored_image_is_cached_by_its_id_and_uncached_when_replaced() {
        let d = scratch("by-id");
        let store_root = d.join("store");
        let store = ImageStore::new(&store_root);
        let import = |text: &[u8]| {
            let staging = store.staging("img").unwrap();
            fs::write(staging.join("rootfs/hello"), text).unwrap();
            let cfg = ImageConfig {
                name: "img".into(),
                ..Default::default()
            };
            store.commit(&staging, &cfg).unwrap()
        };
        let first = import(b"one\n");
        let rootfs = store.rootfs("img").unwrap();
        let img = rootfs_image(&store_root, &rootfs).unwrap();
        assert_eq!(img, store.ext4_of_id(&first.id));
        assert_eq!(debugfs(&img, "cat /hello"), "one\n");
        // Found by id, not by reading the tree: a changed tree (which a stored image never
        // is) still gets the image of its id.
        fs::write(rootfs.join("hello"), b"changed\n").unwrap();
        assert_eq!(rootfs_image(&store_root, &rootfs).unwrap(), img);
        // Imported again: a new id, a new image, and the old one gone from the cache.
        let second = import(b"two\n");
        assert_ne!(second.id, first.id);
        assert!(!img.exists());
        let img2 = rootfs_image(&store_root, &rootfs).unwrap();
        assert_eq!(debugfs(&img2, "cat /hello"), "two\n");
        store.remove("img").unwrap();
        assert!(!img2.exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn writable_layer_has_overlay_directories_and_is_sparse() {
        use std::os::unix::fs::MetadataExt;
        let d = scratch("upper");
        let store = d.join("store");
        let img = d.join("upper.img");
        writable_layer(&store, &img, 256).unwrap();
        // The second comes from the template, the same bytes.
        let again = d.join("again.img");
        writable_layer(&store, &again, 256).unwrap();
        assert_eq!(fs::read(&img).unwrap(), fs::read(&again).unwrap());
        let template = store.join(EXT4_DIR).join("writable-256mib-v1.img");
        assert_eq!(fs::read(&template).unwrap(), fs::read(&again).unwrap());
        // Writes to one container's disk stay in it.
        fs::write(&again, b"scribble").unwrap();
        assert_ne!(fs::read(&template).unwrap()[..8], *b"scribble");
        let listing = debugfs(&img, "ls -l /");
        assert!(
            listing.contains("upper") && listing.contains("work"),
            "{listing}"
        );
        let m = fs::metadata(&img).unwrap();
        assert_eq!(m.len(), 256 << 20);
        assert!(
            m.blocks() * 512 < m.len() / 4,
            "not sparse: {} blocks",
            m.blocks()
        );
        let copied = fs::metadata(d.join("upper.img")).unwrap();
        let original = fs::metadata(&template).unwrap();
        assert!(
            copied.blocks() <= original.blocks() + 8,
            "holes filled in the copy"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_sparse_copy_keeps_data_and_holes() {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let d = scratch("sparse");
        let from = d.join("from");
        let mut f = fs::File::create(&from).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 4096)).unwrap();
        f.write_all(&[9u8; 4096]).unwrap();
        drop(f);
        let to = d.join("to");
        copy_sparse(&from, &to).unwrap();
        assert_eq!(fs::read(&from).unwrap(), fs::read(&to).unwrap());
        assert!(fs::metadata(&to).unwrap().blocks() * 512 < 1 << 20);
        assert!(copy_sparse(&d.join("missing"), &d.join("x")).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    /// One newc header, read by hand rather than with the crate that wrote it, so a layout
    /// mistake its writer and reader share cannot hide.
    #[derive(Debug, PartialEq)]
    struct NewcHeader {
        name: String,
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        mtime: u32,
        size: usize,
        dev: (u32, u32),
        rdev: (u32, u32),
    }

    /// Every entry of `archive` up to and including the trailer, with its data, checking the
    /// layout the kernel's unpacker relies on: each header at a multiple of 4 from the start,
    /// name and data zero-padded to the next one, nothing after the trailer but its padding.
    fn parse_newc(archive: &[u8]) -> Vec<(NewcHeader, &[u8])> {
        const HEADER_LEN: usize = 110;
        let zeros = |range: std::ops::Range<usize>| archive[range].iter().all(|b| *b == 0);
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            let header = &archive[at..at + HEADER_LEN];
            assert_eq!(&header[..6], b"070701", "no newc magic at offset {at}");
            let field = |i: usize| {
                let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(hex, 16).unwrap()
            };
            assert_eq!(field(12), 0, "a newc checksum field is 0");
            let name_at = at + HEADER_LEN;
            let name_end = name_at + field(11) as usize;
            let (name, nul) = archive[name_at..name_end].split_at(name_end - name_at - 1);
            assert_eq!(nul, [0], "name at offset {name_at} is not NUL-terminated");
            let data_at = name_end.next_multiple_of(4);
            assert!(zeros(name_end..data_at), "name padding at {name_end}");
            let size = field(6) as usize;
            let data_end = data_at + size;
            let next = data_end.next_multiple_of(4);
            assert!(zeros(data_end..next), "data padding at {data_end}");
            let header = NewcHeader {
                name: String::from_utf8(name.to_vec()).unwrap(),
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                size,
                dev: (field(7), field(8)),
                rdev: (field(9), field(10)),
            };
            let is_trailer = header.name == "TRAILER!!!";
            entries.push((header, &archive[data_at..data_end]));
            at = next;
            if is_trailer {
                assert_eq!(at, archive.len(), "bytes after the trailer");
                return entries;
            }
        }
    }

    #[test]
    fn the_agent_is_hashed_once_per_identity() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("agent");
        fs::write(&file, b"first build").unwrap();
        let first = remembered_hash(d.path(), &file).unwrap();
        assert_eq!(first, hash_file(&file).unwrap());
        // The memo answers while the file is the same file...
        let memo_dir = d.path().join("by-identity");
        let memo = fs::read_dir(&memo_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        fs::write(&memo, "f".repeat(64)).unwrap();
        assert_eq!(remembered_hash(d.path(), &file).unwrap(), "f".repeat(64));
        // ...and a rebuilt agent (same size, a new write) is hashed again. File times tick
        // with the kernel's coarse clock: the rewrite comes a few ticks later.
        std::thread::sleep(std::time::Duration::from_millis(50));
        fs::write(&file, b"other build").unwrap();
        assert_eq!(
            remembered_hash(d.path(), &file).unwrap(),
            hash_file(&file).unwrap()
        );
        // A memo that is not a hash is not believed.
        for entry in fs::read_dir(&memo_dir).unwrap() {
            fs::write(entry.unwrap().path(), "junk").unwrap();
        }
        assert_eq!(
            remembered_hash(d.path(), &file).unwrap(),
            hash_file(&file).unwrap()
        );
    }

    #[test]
    fn initramfs_is_a_deterministic_newc_archive() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("initramfs-newc");
        let agent = Path::new("/bin/busybox");
        let agent_bytes = fs::read(agent).unwrap();
        let path = initramfs_from(&d.join("one"), agent).unwrap();
        let archive = fs::read(&path).unwrap();
        let rebuilt = fs::read(initramfs_from(&d.join("two"), agent).unwrap()).unwrap();
        assert!(archive == rebuilt, "two builds from one agent differ");

        let entries = parse_newc(&archive);
        let header = |name: &str, ino, mode, nlink, size| NewcHeader {
            name: name.into(),
            ino,
            mode,
            uid: 0,
            gid: 0,
            nlink,
            mtime: 0,
            size,
            dev: (0, 0),
            rdev: (0, 0),
        };
        let mut expected: Vec<NewcHeader> = ["dev", "proc", "sys", "run", "tmp", "mnt"]
            .into_iter()
            .zip(1..)
            .map(|(name, ino)| header(name, ino, 0o040755, 2, 0))
            .collect();
        expected.push(header("init", 7, 0o100755, 1, agent_bytes.len()));
        expected.push(header("TRAILER!!!", 0, 0, 1, 0));
        let headers: Vec<&NewcHeader> = entries.iter().map(|(h, _)| h).collect();
        assert_eq!(headers, expected.iter().collect::<Vec<_>>());
        let (_, init) = entries.iter().find(|(h, _)| h.name == "init").unwrap();
        assert!(*init == agent_bytes, "/init is not the agent");

        // Where Debian's cpio is installed it is a second, independent reader of the archive;
        // the checks above hold either way.
        let names: Vec<&str> = expected[..expected.len() - 1]
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        let cpio = |args: &[&str], dir: &Path| {
            Command::new("cpio")
                .args(args)
                .current_dir(dir)
                .stdin(fs::File::open(&path).unwrap())
                .output()
        };
        match cpio(&["-it", "--quiet"], &d) {
            Ok(listing) => {
                // cpio skips junk it cannot parse with only a warning, so silence counts too.
                assert!(
                    listing.status.success() && listing.stderr.is_empty(),
                    "cpio -it: {listing:?}"
                );
                let listed = String::from_utf8(listing.stdout).unwrap();
                assert_eq!(listed.lines().collect::<Vec<_>>(), names);
                let unpacked = d.join("unpacked");
                fs::create_dir(&unpacked).unwrap();
                let extract = cpio(&["-id", "--quiet"], &unpacked).unwrap();
                assert!(
                    extract.status.success() && extract.stderr.is_empty(),
                    "cpio -id: {extract:?}"
                );
                let init_path = unpacked.join("init");
                assert!(fs::read(&init_path).unwrap() == agent_bytes);
                let init_mode = fs::metadata(&init_path).unwrap().permissions().mode();
                assert_eq!(init_mode, 0o100755);
                for dir in expected.iter().filter(|h| h.mode == 0o040755) {
                    let unpacked_dir = unpacked.join(&dir.name);
                    assert!(unpacked_dir.is_dir(), "{} not unpacked", dir.name);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                eprintln!("cpio is not installed: checked the archive by parsing it only");
            }
            Err(e) => panic!("cannot run cpio: {e}"),
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn initramfs_has_the_static_agent_as_init() {
        let d = scratch("initramfs");
        // Debian's busybox-static is a static ELF binary like the guest agent must be.
        let cpio = initramfs_from(&d, Path::new("/bin/busybox")).unwrap();
        let archive = fs::read(&cpio).unwrap();
        let names: Vec<String> = parse_newc(&archive)
            .into_iter()
            .map(|(h, _)| h.name)
            .collect();
        for n in ["init", "dev", "proc", "sys"] {
            assert!(names.iter().any(|l| l == n), "{n} missing: {names:?}");
        }
        assert_eq!(initramfs_from(&d, Path::new("/bin/busybox")).unwrap(), cpio);
        fs::remove_dir_all(&d).unwrap();
    }
}
