//! The jail (`vmm::jail`) applied to a forked child, checked from the child (what it can
//! open) and from the parent (its credentials, no_new_privs and cgroup in /proc); a running
//! `sandbox-vmm --jail` seen from /proc; and the `sandbox-vmm --jail` errors that come
//! before any VM is made.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use vmm::jail::{self, CgroupSpec, JailSpec};

mod test_guest_support;

const UID: u32 = 65534;
const GID: u32 = 65533;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-jail-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `/proc/PID/status` field, its values joined by single spaces.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// What every jailed process shows in `/proc/PID/status`: the jail's uid and gid in all four
/// slots, no_new_privs, no effective capability.
fn assert_jailed_credentials(status: &str) {
    let field = |name: &str| status_field(status, name);
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
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
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
    let field = |name: &str| status_field(&status, name);
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
    assert_jailed_credentials(&status);
    assert_eq!(field("Groups:"), "", "{status}");
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

/// Whether the cgroup v2 at `mount` hands memory and cpu to its children, so that a jail's
/// limits can be written there.
fn delegates_memory_and_cpu(mount: &Path) -> bool {
    let enabled = fs::read_to_string(mount.join("cgroup.subtree_control")).unwrap_or_default();
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    enabled.contains(&"memory") && enabled.contains(&"cpu")
}

#[test]
fn a_running_jailed_vmm_sees_only_its_jail() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let (code, err) = vmm(&["--kernel", "k", "--jail", "dir=/tmp,uid=65534,gid=65534"]);
        assert_eq!(code, 1, "{err}");
        return;
    }
    let root = scratch("vmm");
    let jail_dir = root.join("jail");
    fs::create_dir_all(&jail_dir).unwrap();
    std::os::unix::fs::chown(&jail_dir, Some(UID), Some(GID)).unwrap();
    let kernel = root.join("spin.elf");
    test_guest_support::spinning_kernel(&kernel);
    let disk = root.join("disk.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let serial = root.join("serial.log");
    let cgroup = cgroup2_mount()
        .filter(|m| delegates_memory_and_cpu(m))
        .map(|m| m.join(format!("vmm-jail-run-{}", std::process::id())));
    if let Some(cg) = &cgroup {
        let _ = fs::remove_dir(cg);
        fs::create_dir(cg).unwrap();
    }
    let mut jail_arg = format!("dir={},uid={UID},gid={GID}", jail_dir.display());
    if let Some(cg) = &cgroup {
        jail_arg.push_str(&format!(",cgroup={}", cg.display()));
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .args(["--vcpus", "2", "--mem-mib", "32", "--rng"])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .arg("--disk")
        .arg(format!("path={}", disk.display()))
        .args(["--vsock", "cid=3,path=vsock.sock", "--jail", &jail_arg])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Running once both vCPU threads exist: the jail came before them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let threads = || {
        fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    while threads() < 4 && std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("sandbox-vmm ended ({status}): {err}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let in_root: Vec<String> = fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // Every user thread (main, device loop, vCPUs) shares the jail's root; KVM's kernel
    // workers in the process run no user code.
    let mut thread_roots = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = fs::read_to_string(task.join("comm")).unwrap_or_default();
        let comm = comm.trim().to_string();
        if comm.starts_with("kvm") {
            continue;
        }
        let names: Vec<String> = fs::read_dir(task.join("root"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        thread_roots.push((comm, names));
    }
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory_max = cgroup
        .as_ref()
        .map(|cg| fs::read_to_string(cg.join("memory.max")).unwrap());
    // The host side of the vsock device, through the socket in the jail.
    let connected = std::os::unix::net::UnixStream::connect(jail_dir.join("vsock.sock"));
    let _ = child.kill();
    let _ = child.wait();
    if let Some(cg) = &cgroup {
        let _ = fs::remove_dir(cg);
    }
    fs::remove_dir_all(&root).unwrap();

    assert_jailed_credentials(&status);
    assert_eq!(in_root, ["vsock.sock"], "the VMM's root must be its jail");
    assert!(thread_roots.len() >= 4, "{thread_roots:?}");
    for (comm, names) in &thread_roots {
        assert_eq!(names, &["vsock.sock"], "thread {comm}: {thread_roots:?}");
    }
    assert!(connected.is_ok(), "vsock socket: {connected:?}");
    if let (Some(cg), Some(max)) = (&cgroup, memory_max) {
        let name = cg.file_name().unwrap().to_string_lossy();
        assert!(
            cgroups.lines().any(|l| l == format!("0::/{name}")),
            "{cgroups}"
        );
        assert_eq!(max.trim(), ((32u64 + 128) << 20).to_string());
    }
}
