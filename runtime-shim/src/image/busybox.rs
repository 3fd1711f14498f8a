//! The built-in image: a busybox root filesystem made from Debian's busybox-static
//! (/bin/busybox), so `sandbox run -- echo hello` works on a machine with no images. It is
//! built by `sandbox image build-default`, or on first use of the default image.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::error::{Error, IoContext, Result};
use crate::image::{ImageConfig, ImageStore};

pub const DEFAULT_IMAGE: &str = "busybox";
pub const BUSYBOX_BINARY: &str = "/bin/busybox";

/// Returns the default image, building it first if the store does not have it.
pub fn ensure_default(store: &ImageStore) -> Result<ImageConfig> {
    match store.get(DEFAULT_IMAGE) {
        Ok(cfg) => Ok(cfg),
        Err(_) => build_default(store, Path::new(BUSYBOX_BINARY)),
    }
}

pub fn build_default(store: &ImageStore, busybox: &Path) -> Result<ImageConfig> {
    if !busybox.is_file() {
        return Err(Error::Image(format!(
            "{} not found: install Debian's busybox-static to build the default image",
            busybox.display()
        )));
    }
    crate::image::disk::progress(&format!(
        "building the default image {DEFAULT_IMAGE:?} from {}",
        busybox.display()
    ));
    let staging = store.staging(DEFAULT_IMAGE)?;
    let rootfs = staging.join("rootfs");
    let result = populate(&rootfs, busybox);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    let cfg = ImageConfig {
        name: DEFAULT_IMAGE.into(),
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        working_dir: "/".into(),
        user: String::new(),
        source: format!("built-in from {}", busybox.display()),
        created: crate::timefmt::now_rfc3339(),
        // Given by the store when it commits the image.
        id: String::new(),
    };
    store.commit(&staging, &cfg)
}

fn populate(rootfs: &Path, busybox: &Path) -> Result<()> {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "tmp", "root", "var",
        "run", "home",
    ] {
        let p = rootfs.join(d);
        fs::create_dir_all(&p).ctx("create", &p)?;
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))
        .ctx("chmod", rootfs.join("tmp"))?;
    let target = rootfs.join("bin/busybox");
    fs::copy(busybox, &target).ctx("copy busybox to", &target)?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).ctx("chmod", &target)?;

    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| Error::io("run", busybox, e))?;
    if !out.status.success() {
        return Err(Error::Image(format!(
            "{} --list-full failed: {}",
            busybox.display(),
            out.status
        )));
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        let link = rootfs.join(applet);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).ctx("create", parent)?;
        }
        if link.symlink_metadata().is_err() {
            symlink("/bin/busybox", &link).ctx("symlink", &link)?;
        }
    }
    let files: [(&str, &str); 4] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hostname", "sandbox\n"),
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
    ];
    for (path, text) in files {
        let p = rootfs.join(path);
        fs::write(&p, text).ctx("write", &p)?;
    }
    Ok(())
}
