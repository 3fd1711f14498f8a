//! The jail (`vmm::jail`) applied to a forked child, checked from the child (what it can
//! open) and from the parent (its credentials, no_new_privs and cgroup in /proc), and the
//! `sandbox-vmm --jail` errors that come before any VM is made.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use vmm::jail::{self, CgroupSpec, JailSpec};

const UID: u32 = 65534;
const GID: u32 = 65533;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-jail-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The cgroup v2 mount, wherever this host has it (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host).
fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split(' ').next() != Some("cgroup2") {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn can_open(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => format!("read {text:?}"),
        Err(e) => format!("error {}", e.raw_os_error().unwrap_or(0)),
    }
}

/// Runs in the forked child: jails itself, then reports what it can still reach.
fn child(spec: &JailSpec, outside: &Path, report: OwnedFd, go: OwnedFd) -> ! {
    // Opened before the jail, as the VMM opens its disks: it must stay usable.
    let mut kept = fs::File::open(outside).ok();
    let mut out = fs::File::from(report);
    let mut line = |s: String| {
        let _ = writeln!(out, "{s}");
    };
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    match jail::enter(spec) {
        Ok(()) => line("enter ok".into()),
        Err(e) => line(format!("enter failed: {e}")),
    }
    line(format!("outside {}", can_open(outside)));
    let up = Path::new("/../../../..").join(outside.strip_prefix("/").unwrap());
    line(format!("outside-by-dotdot {}", can_open(&up)));
    line(format!("inside {}", can_open(Path::new("/inside"))));
    let mut text = String::new();
    let kept_ok = kept
        .as_mut()
        .is_some_and(|f| f.read_to_string(&mut text).is_ok());
    line(format!("kept-descriptor {kept_ok} {text:?}"));
    // SAFETY: plain syscalls.
    let (setuid0, nnp) = unsafe {
        (
            libc::setuid(0),
            libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
        )
    };
    let mut pdeathsig: libc::c_int = 0;
    // SAFETY: the pointer is to a live c_int.
    unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeathsig as *mut libc::c_int) };
    line(format!("pdeathsig {pdeathsig}"));
    line(format!("setuid0 {setuid0}"));
    line(format!("no_new_privs {nnp}"));
    drop(out);
    let mut buf = [0u8; 1];
    let _ = fs::File::from(go).read(&mut buf);
    // SAFETY: ends the forked child without running the parent's destructors or harness.
    unsafe { libc::_exit(0) }
}

#[test]
fn a_jailed_process_cannot_open_host_paths_and_has_dropped_root() {
    let root = scratch("fork");
    let jail_dir = root.join("jail");
    fs::create_dir_all(&jail_dir).unwrap();
    fs::write(jail_dir.join("inside"), "in the jail").unwrap();
    let outside = root.join("outside-secret");
    fs::write(&outside, "host file").unwrap();

    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let cgroup = cgroup2_mount()
        .filter(|_| is_root)
        .map(|m| m.join(format!("vmm-jail-test-{}", std::process::id())));
    if let Some(cg) = &cgroup {
        let _ = fs::remove_dir(cg);
        fs::create_dir(cg).unwrap();
    }
    let spec = JailSpec {
        dir: jail_dir.clone(),
        uid: UID,
        gid: GID,
        // Limits are covered by the unit tests: a hybrid host's cgroup v2 has no
        // controllers to write them to.
        cgroup: cgroup.as_ref().map(|path| CgroupSpec {
            path: path.clone(),
            memory_max: None,
            cpu_max_us: None,
        }),
    };

    let (report_rd, report_wr) = pipe();
    let (go_rd, go_wr) = pipe();
    // SAFETY: the child runs only `child`, which ends in _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        drop((report_rd, go_wr));
        child(&spec, &outside, report_wr, go_rd);
    }
    drop((report_wr, go_rd));
    let mut report = String::new();
    fs::File::from(report_rd)
        .read_to_string(&mut report)
        .unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    drop(go_wr);
    let mut wstatus = 0;
    // SAFETY: pid is our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut wstatus, 0) }, pid);
    if let Some(cg) = &cgroup {
        fs::remove_dir(cg).unwrap();
    }
    fs::remove_dir_all(&root).unwrap();
    eprintln!("child report:\n{report}\nchild's mounts:\n{mounts}\nchild's cgroups:\n{cgroups}");

    if !is_root {
        assert!(
            report.contains("enter failed") && report.contains("must start as root"),
            "{report}"
        );
        return;
    }
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(report.contains("enter ok"), "{report}");
    let enoent = format!("error {}", libc::ENOENT);
    assert!(
        report.contains(&format!("\noutside {enoent}\n")),
        "{report}"
    );
    assert!(
        report.contains(&format!("\noutside-by-dotdot {enoent}\n")),
        "{report}"
    );
    assert!(report.contains("inside read \"in the jail\""), "{report}");
    assert!(
        report.contains("kept-descriptor true \"host file\""),
        "{report}"
    );
    assert!(report.contains("setuid0 -1"), "{report}");
    assert!(report.contains("no_new_privs 1"), "{report}");
    assert!(
        report.contains(&format!("pdeathsig {}", libc::SIGKILL)),
        "the VMM must still die with its monitor: {report}"
    );
    assert_eq!(
        field("Uid:"),
        format!("{UID} {UID} {UID} {UID}"),
        "{status}"
    );
    assert_eq!(
        field("Gid:"),
        format!("{GID} {GID} {GID} {GID}"),
        "{status}"
    );
    assert_eq!(field("Groups:"), "", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    // After pivot_root the child's namespace holds the jail alone; after the chroot
    // fallback (an initramfs root) it still lists the host's mounts, out of reach.
    if mounts.lines().count() == 1 {
        assert!(mounts.split(' ').nth(4) == Some("/"), "{mounts}");
    }
    if let Some(cg) = &cgroup {
        let name = cg.file_name().unwrap().to_string_lossy();
        assert!(
            cgroups
                .lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&*name)),
            "{cgroups}"
        );
    }
}

fn vmm(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sandbox-vmm"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn jail_errors_name_the_problem_before_any_vm_is_made() {
    let missing = std::env::temp_dir().join(format!("vmm-no-jail-{}", std::process::id()));
    let jail_arg = format!("dir={},uid=65534,gid=65534", missing.display());
    let (code, err) = vmm(&["--kernel", "/nonexistent-kernel", "--jail", &jail_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("jail directory {}", missing.display()))
            && err.contains("No such file"),
        "{err}"
    );

    let (code, err) = vmm(&["--kernel", "k", "--jail", "dir=/tmp,uid=0,gid=65534"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("uid 0 is not an unprivileged id"), "{err}");

    let (code, err) = vmm(&["--kernel", "k", "--jail", "dir=/tmp,uid=nobody,gid=1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`uid=nobody` is not a number"), "{err}");

    let (code, err) = vmm(&[
        "--kernel",
        "k",
        "--jail",
        "dir=/tmp,uid=65534,gid=65534",
        "--vsock",
        "cid=3,path=/tmp/v.sock",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("relative to the jail directory"), "{err}");
}
