//! The spec's `mounts`: option strings to mount flags, and each entry mounted inside the
//! new root (bind mounts with their flags and propagation, proc, sysfs, tmpfs, devpts,
//! mqueue, cgroup, ...).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Mount;

use super::cgroups::{Cgroup, Layout};
use crate::confined::ConfinedRoot;

/// A mount entry's options split into what mount(2) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Flags explicitly cleared (`rw`, `suid`, ...), which matter for bind remounts.
    pub cleared: MsFlags,
    /// Propagation changes applied after the mount, in order.
    pub propagation: Vec<MsFlags>,
    /// Everything else, passed as the filesystem's data string.
    pub data: Vec<String>,
    pub bind: bool,
    pub recursive: bool,
}

/// Parses mount options; unknown words become filesystem data (`mode=755`, `size=64m`).
pub fn parse_options(opts: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        cleared: MsFlags::empty(),
        propagation: Vec::new(),
        data: Vec::new(),
        bind: false,
        recursive: false,
    };
    for opt in opts {
        let (set, clear): (MsFlags, MsFlags) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "lazytime" => (MsFlags::MS_LAZYTIME, MsFlags::empty()),
            "nolazytime" => (MsFlags::empty(), MsFlags::MS_LAZYTIME),
            "iversion" => (MsFlags::MS_I_VERSION, MsFlags::empty()),
            "noiversion" => (MsFlags::empty(), MsFlags::MS_I_VERSION),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                continue;
            }
            p @ ("private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
            | "unbindable" | "runbindable") => {
                o.propagation.push(propagation(p).expect("listed above"));
                continue;
            }
            // runc extensions that need nothing from us here, and mount(8)'s placeholder.
            "tmpcopyup" | "nosymfollow" | "defaults" => continue,
            other => {
                o.data.push(other.to_string());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
        o.cleared.insert(clear);
    }
    o
}

/// The mount flags of a propagation word (`rslave`, `private`, ...).
pub(crate) fn propagation(word: &str) -> Option<MsFlags> {
    Some(match word {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// `root` joined with `path` as the container will see it: symlinks inside the rootfs are
/// followed relative to the rootfs, never out of it. The resolution is the confined one the
/// image importer uses too ([`crate::confined`]).
pub(crate) fn secure_join(root: &Path, path: &Path) -> Result<PathBuf, String> {
    ConfinedRoot::open(root)
        .and_then(|r| r.host_path(path))
        .map_err(|e| format!("{} in {}: {e}", path.display(), root.display()))
}

fn mkdir_all(p: &Path) -> Result<(), String> {
    fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

/// Whether the engine binds this mount from its source: type `bind`, or `bind`/`rbind` among
/// its options, as runc decides.
pub fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

/// Creates the mount point: a directory, or an empty file when a file is bind-mounted.
fn make_target(dest: &Path, file: bool) -> Result<(), String> {
    if dest.exists() {
        return Ok(());
    }
    if file {
        if let Some(parent) = dest.parent() {
            mkdir_all(parent)?;
        }
        fs::File::create(dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
        Ok(())
    } else {
        mkdir_all(dest)
    }
}

fn do_mount(
    src: Option<&Path>,
    dest: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(src, dest, fstype, flags, data).map_err(|e| {
        format!(
            "mount {} on {} (type {}, flags {:?}, data {:?}): {e}",
            src.map(|s| s.display().to_string()).unwrap_or_default(),
            dest.display(),
            fstype.unwrap_or("none"),
            flags,
            data.unwrap_or("")
        )
    })
}

/// Mounts one spec entry under `rootfs`. `bundle` anchors relative bind sources; `cgroup`
/// and `cgroupns` decide how a `cgroup` mount shows the container's own cgroup.
pub(crate) fn mount_entry(
    m: &Mount,
    rootfs: &Path,
    bundle: &Path,
    cgroup: Option<&Cgroup>,
    cgroupns: bool,
) -> Result<(), String> {
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if opts.bind { "bind" } else { "none" });
    let dest = secure_join(rootfs, m.destination())?;
    let data = (!opts.data.is_empty()).then(|| opts.data.join(","));
    if opts.bind || typ == "bind" {
        let src = m.source().clone().unwrap_or_default();
        let src = if src.is_relative() {
            bundle.join(src)
        } else {
            src
        };
        let meta = fs::metadata(&src).map_err(|e| format!("bind source {}: {e}", src.display()))?;
        make_target(&dest, !meta.is_dir())?;
        let mut f = MsFlags::MS_BIND;
        if opts.recursive {
            f |= MsFlags::MS_REC;
        }
        do_mount(Some(&src), &dest, None, f, None)?;
        // Bind mounts ignore every other flag on the first call: remount to apply them.
        let extra = opts.flags & !(MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            let kept = inherited_flags(&dest) & !opts.cleared;
            do_mount(
                None,
                &dest,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | kept,
                None,
            )?;
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        mount_cgroup(&dest, cgroup, cgroupns, opts.flags)?;
    } else {
        make_target(&dest, false)?;
        let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        do_mount(Some(&src), &dest, Some(typ), opts.flags, data.as_deref())?;
    }
    for p in &opts.propagation {
        do_mount(None, &dest, None, *p, None)?;
    }
    Ok(())
}

/// The flags a bind mount took over from its source. A remount that drops one of them is
/// refused in a user namespace (the kernel locks them), so they are carried along.
fn inherited_flags(dest: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let Ok(st) = statvfs(dest) else {
        return MsFlags::empty();
    };
    let mut f = MsFlags::empty();
    for (fs_flag, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(fs_flag) {
            f |= ms;
        }
    }
    f
}

/// The container's view of its cgroup. With a cgroup namespace a fresh cgroup mount shows
/// the container's cgroup as its root; without one the container's directories are
/// bind-mounted, so that it never sees its neighbours.
fn mount_cgroup(
    dest: &Path,
    cgroup: Option<&Cgroup>,
    cgroupns: bool,
    flags: MsFlags,
) -> Result<(), String> {
    mkdir_all(dest)?;
    let cg = cgroup.ok_or("a cgroup mount needs the container's cgroup")?;
    let base = flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    match &cg.layout {
        Layout::V2(dir) => {
            if cgroupns {
                do_mount(
                    Some(Path::new("cgroup2")),
                    dest,
                    Some("cgroup2"),
                    flags,
                    None,
                )?;
            } else {
                do_mount(
                    Some(dir),
                    dest,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )?;
                do_mount(
                    None,
                    dest,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | inherited_flags(dest),
                    None,
                )?;
            }
        }
        Layout::V1(hs) => {
            do_mount(
                Some(Path::new("tmpfs")),
                dest,
                Some("tmpfs"),
                base,
                Some("mode=755"),
            )?;
            for h in hs {
                let name = h
                    .mountpoint
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_default();
                let sub = dest.join(&name);
                mkdir_all(&sub)?;
                if cgroupns {
                    let opts = h.controllers.join(",");
                    do_mount(
                        Some(Path::new("cgroup")),
                        &sub,
                        Some("cgroup"),
                        flags,
                        Some(&opts),
                    )?;
                } else {
                    do_mount(
                        Some(&h.dir),
                        &sub,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None,
                    )?;
                    do_mount(
                        None,
                        &sub,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | inherited_flags(&sub),
                        None,
                    )?;
                }
                // cpu,cpuacct style names get the usual per-controller symlinks.
                if h.controllers.len() > 1 {
                    for c in &h.controllers {
                        let link = dest.join(c);
                        if !link.exists() && Path::new(c) != name {
                            let _ = symlink(&name, &link);
                        }
                    }
                }
            }
            if flags.contains(MsFlags::MS_RDONLY) {
                do_mount(
                    None,
                    dest,
                    None,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base,
                    Some("mode=755"),
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_to_flags_and_data() {
        let o = parse_options(&s(&[
            "nosuid",
            "noexec",
            "mode=755",
            "size=65536k",
            "ro",
            "rw",
        ]));
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        assert!(!o.bind);
        let o = parse_options(&s(&["rbind", "ro", "rslave"]));
        assert!(o.bind && o.recursive);
        assert_eq!(o.flags, MsFlags::MS_RDONLY);
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        // Every option the runtime spec says a Linux runtime MUST know becomes a flag, a
        // propagation or nothing, never filesystem data.
        for word in [
            "async",
            "atime",
            "bind",
            "defaults",
            "dev",
            "diratime",
            "dirsync",
            "exec",
            "iversion",
            "lazytime",
            "loud",
            "noatime",
            "nodev",
            "nodiratime",
            "noexec",
            "noiversion",
            "nolazytime",
            "norelatime",
            "nostrictatime",
            "nosuid",
            "private",
            "rbind",
            "relatime",
            "remount",
            "ro",
            "rprivate",
            "rshared",
            "rslave",
            "runbindable",
            "rw",
            "shared",
            "silent",
            "slave",
            "strictatime",
            "suid",
            "sync",
            "unbindable",
        ] {
            assert!(parse_options(&s(&[word])).data.is_empty(), "{word}");
        }
        assert_eq!(
            parse_options(&s(&["iversion"])).flags,
            MsFlags::MS_I_VERSION
        );
    }

    #[test]
    fn secure_join_stays_inside_the_root() {
        let dir = std::env::temp_dir().join(format!("engine-sj-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("etc")).unwrap();
        symlink("/etc", dir.join("abs")).unwrap();
        symlink("../../../../..", dir.join("etc/up")).unwrap();
        let real = fs::canonicalize(&dir).unwrap();
        let join = |p: &str| secure_join(&dir, Path::new(p)).unwrap();
        assert_eq!(join("/abs/passwd"), real.join("etc/passwd"));
        assert_eq!(join("/etc/up/x"), real.join("x"));
        assert_eq!(join("../../x"), real.join("x"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
