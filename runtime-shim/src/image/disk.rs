//! Disk images for vm isolation, built with the host's tools and cached under the image
//! store: `ext4/id-<image id>.img` for an image of the store and `ext4/<tree-hash>.img` for any
//! other rootfs (each shared read-only by every container of that rootfs), and
//! `initramfs/<agent-hash>.cpio` (the guest's /init). Each is built under a
//! temporary name and renamed into place, so a crash never leaves a half image in the cache.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, IoContext, Result};
use crate::image::store::{ImageStore, EXT4_DIR};
use crate::image::tree_hash::{hash_file, hash_tree};
use crate::sandbox::binaries;

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
    let name = img.file_stem().unwrap_or_default().to_string_lossy();
    let size_mib = tree_bytes(rootfs) / (1 << 20) * 13 / 10 + 64;
    progress(&format!(
        "building rootfs image {} ({size_mib} MiB) from {}",
        img.display(),
        rootfs.display()
    ));
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let built = mkfs_ext4(&tmp, size_mib, Some(rootfs));
    if let Err(e) = built {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &img).ctx("move into cache", &img)?;
    Ok(img)
}

/// A fresh sparse ext4 disk holding empty `upper/` and `work/` directories: the container's
/// own writes, on top of the shared rootfs image.
pub fn writable_layer(path: &Path, size_mib: u64) -> Result<()> {
    let template = path.with_extension("template");
    let _ = fs::remove_dir_all(&template);
    fs::create_dir_all(template.join("upper")).ctx("create", &template)?;
    fs::create_dir_all(template.join("work")).ctx("create", &template)?;
    let r = mkfs_ext4(path, size_mib, Some(&template));
    let _ = fs::remove_dir_all(&template);
    r
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

/// The guest initramfs: a newc cpio whose /init is a statically linked `sandbox-agent`.
pub fn agent_initramfs(store: &Path) -> Result<PathBuf> {
    let agent = binaries::find_guest_agent()?;
    initramfs_from(store, &agent)
}

/// The initramfs with `agent` as /init, cached by the agent's hash.
pub fn initramfs_from(store: &Path, agent: &Path) -> Result<PathBuf> {
    let agent = agent.to_path_buf();
    ensure_static(&agent)?;
    let hash = hash_file(&agent)?;
    let dir = store.join("initramfs");
    fs::create_dir_all(&dir).ctx("create", &dir)?;
    let out = dir.join(format!("{hash}.cpio"));
    if out.is_file() {
        return Ok(out);
    }
    progress(&format!(
        "building the guest initramfs from {}",
        agent.display()
    ));
    let staging = dir.join(format!(".{hash}.{}.d", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    for d in ["dev", "proc", "sys", "run", "tmp", "mnt"] {
        fs::create_dir_all(staging.join(d)).ctx("create", &staging)?;
    }
    fs::copy(&agent, staging.join("init")).ctx("copy agent", &agent)?;
    let tmp = dir.join(format!(".{hash}.{}.tmp", std::process::id()));
    let result = (|| -> Result<()> {
        let file = fs::File::create(&tmp).ctx("create", &tmp)?;
        let list = "init\ndev\nproc\nsys\nrun\ntmp\nmnt\n";
        let mut child = Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
            .current_dir(&staging)
            .stdin(Stdio::piped())
            .stdout(file)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Image(format!("cannot run cpio: {e}")))?;
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(list.as_bytes())
            .ctx("write to cpio", &tmp)?;
        let out = child.wait_with_output().ctx("wait for cpio", &tmp)?;
        if !out.status.success() {
            return Err(Error::Image(format!(
                "cpio failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        fs::rename(&tmp, out_path(&dir, &hash)).ctx("move into cache", &tmp)
    })();
    let _ = fs::remove_dir_all(&staging);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|_| out)
}

fn out_path(dir: &Path, hash: &str) -> PathBuf {
    dir.join(format!("{hash}.cpio"))
}

/// A dynamically linked agent cannot run as the guest's /init (there is no libc there).
pub fn ensure_static(path: &Path) -> Result<()> {
    let mut head = vec![0u8; 64 * 1024];
    let n = fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .ctx("read", path)?;
    let head = &head[..n];
    if !head.starts_with(b"\x7fELF") {
        return Err(Error::Image(format!(
            "{} is not an ELF binary",
            path.display()
        )));
    }
    if head.windows(10).any(|w| w == b"ld-linux-x") {
        return Err(Error::Image(format!(
            "{} is dynamically linked; build the guest agent with \
             RUSTFLAGS='-C target-feature=+crt-static' cargo build -p agent --target x86_64-unknown-linux-gnu",
            path.display()
        )));
    }
    Ok(())
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
        let img = d.join("upper.img");
        writable_layer(&img, 256).unwrap();
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
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn initramfs_has_the_static_agent_as_init() {
        let d = scratch("initramfs");
        // Debian's busybox-static is a static ELF binary like the guest agent must be.
        let cpio = initramfs_from(&d, Path::new("/bin/busybox")).unwrap();
        let out = Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(fs::File::open(&cpio).unwrap())
            .output()
            .unwrap();
        let names = String::from_utf8_lossy(&out.stdout);
        for n in ["init", "dev", "proc", "sys"] {
            assert!(names.lines().any(|l| l == n), "{n} missing: {names}");
        }
        assert_eq!(initramfs_from(&d, Path::new("/bin/busybox")).unwrap(), cpio);
        // A dynamically linked binary cannot be /init in a guest without libc.
        let err = initramfs_from(&d, Path::new("/bin/ls"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }
}
