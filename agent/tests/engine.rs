//! The container engine on this host, as root: every feature observed from inside the
//! container (its /proc/self/status, cgroup files, hostname, mounts, pid namespace), bad
//! specs, and clean-up after failures.
//!
//! Run: `cargo test -p agent --test engine` (as root; needs /bin/busybox from
//! busybox-static). Every test builds its own busybox bundle in a temp directory and
//! removes it, its cgroup and its processes at the end.

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use agent::engine::{Container, CreateOptions, EngineError, ExitStatus, Signal, Stdio};
use serde_json::{json, Value};

/// A bundle directory with a busybox rootfs, removed on drop.
struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    fn new(name: &str) -> Bundle {
        let dir = std::env::temp_dir().join(format!("engine-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                let _ = symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        Bundle { dir }
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn default_caps() -> Value {
    json!(["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
           "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
           "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"])
}

/// A spec like `runc spec` writes, running `sh -c script`.
fn spec(script: &str) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "hostname": "engine-test",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", script],
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": default_caps(), "effective": default_caps(),
                "permitted": default_caps()
            },
            "noNewPrivileges": true
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware",
                            "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"]
        }
    })
}

fn parse(v: Value) -> oci_spec::runtime::Spec {
    serde_json::from_value(v).expect("spec parses")
}

fn pipe() -> (fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (fs::File::from(r), w)
}

/// What a container printed and how it ended.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn opts(id: &str, b: &Bundle, v: Value, stdio: Stdio) -> CreateOptions {
    let mut o = CreateOptions::new(id, b.path(), parse(v));
    o.stdio = stdio;
    o
}

/// Creates, starts and waits for a container; destroys it.
fn run(id: &str, b: &Bundle, v: Value) -> Outcome {
    try_run(id, b, v).unwrap_or_else(|e| panic!("container {id}: {e}"))
}

fn try_run(id: &str, b: &Bundle, v: Value) -> Result<Outcome, EngineError> {
    let (mut out_r, out_w) = pipe();
    let (mut err_r, err_w) = pipe();
    let stdio = Stdio::Fds { stdin: None, stdout: out_w, stderr: err_w };
    let mut c = Container::create(opts(id, b, v, stdio))?;
    c.start()?;
    let mut stdout = String::new();
    let mut stderr = String::new();
    out_r.read_to_string(&mut stdout).unwrap();
    err_r.read_to_string(&mut stderr).unwrap();
    let status = c.wait()?;
    c.destroy()?;
    Ok(Outcome { status, stdout, stderr })
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_string()
}

#[test]
fn exit_code_pid_namespace_and_hostname() {
    let b = Bundle::new("basic");
    let o = run("engine-basic", &b, spec("echo pid=$$; hostname; cat /proc/self/status; exit 7"));
    assert_eq!(o.status, ExitStatus::Code(7), "stderr: {}", o.stderr);
    assert!(o.stdout.contains("pid=1\n"), "{}", o.stdout);
    assert!(o.stdout.contains("engine-test\n"), "{}", o.stdout);
    assert_eq!(status_field(&o.stdout, "NoNewPrivs"), "1");
}

fn caps(list: &[&str]) -> Value {
    json!(list)
}

#[test]
fn all_five_capability_sets_user_and_groups() {
    let b = Bundle::new("caps");
    let mut v = spec("cat /proc/self/status");
    v["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [10, 20]});
    v["process"]["capabilities"] = json!({
        "bounding": caps(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]),
        "effective": caps(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]),
        "permitted": caps(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]),
        "inheritable": caps(&["CAP_NET_BIND_SERVICE"]),
        "ambient": caps(&["CAP_NET_BIND_SERVICE"])
    });
    let o = run("engine-caps", &b, v);
    assert_eq!(o.status, ExitStatus::Code(0), "stderr: {}", o.stderr);
    let s = &o.stdout;
    // CHOWN=0, KILL=5, NET_BIND_SERVICE=10. A non-root user keeps only the ambient set
    // across execve.
    assert_eq!(status_field(s, "CapBnd"), "0000000000000421");
    assert_eq!(status_field(s, "CapInh"), "0000000000000400");
    assert_eq!(status_field(s, "CapAmb"), "0000000000000400");
    assert_eq!(status_field(s, "CapPrm"), "0000000000000400");
    assert_eq!(status_field(s, "CapEff"), "0000000000000400");
    assert_eq!(status_field(s, "Uid"), "1000\t1000\t1000\t1000");
    assert_eq!(status_field(s, "Gid"), "1001\t1001\t1001\t1001");
    assert_eq!(status_field(s, "Groups"), "10 20");
}

#[test]
fn root_keeps_exactly_the_listed_capabilities() {
    let b = Bundle::new("rootcaps");
    let mut v = spec("cat /proc/self/status");
    v["process"]["capabilities"] = json!({
        "bounding": caps(&["CAP_SYS_ADMIN", "CAP_KILL"]),
        "effective": caps(&["CAP_KILL"]),
        "permitted": caps(&["CAP_SYS_ADMIN", "CAP_KILL"])
    });
    v["process"]["noNewPrivileges"] = json!(false);
    let o = run("engine-rootcaps", &b, v);
    assert_eq!(o.status, ExitStatus::Code(0), "stderr: {}", o.stderr);
    // root's execve recomputes effective = permitted (no file caps), bounded.
    assert_eq!(status_field(&o.stdout, "CapBnd"), "0000000000200020");
    assert_eq!(status_field(&o.stdout, "CapPrm"), "0000000000200020");
    assert_eq!(status_field(&o.stdout, "NoNewPrivs"), "0");
}

#[test]
fn seccomp_profile_with_errno_and_argument_conditions() {
    let b = Bundle::new("seccomp");
    let mut v = spec(
        "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; \
         mkdir /tmp/x 2>&1; echo mkdir=$?; \
         ls /tmp >/dev/null; echo ls=$?; \
         nice -n 5 true 2>&1; echo nice=$?",
    );
    v["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["setpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 2, "value": 5, "op": "SCMP_CMP_GE"}]}
        ]
    });
    let o = run("engine-seccomp", &b, v);
    assert_eq!(o.status, ExitStatus::Code(0), "stderr: {}", o.stderr);
    assert!(o.stdout.contains("Seccomp:\t2"), "{}", o.stdout);
    assert!(o.stdout.contains("NoNewPrivs:\t1"), "{}", o.stdout);
    assert!(o.stdout.contains("Permission denied") && o.stdout.contains("mkdir=1"), "{}", o.stdout);
    assert!(o.stdout.contains("ls=0"), "{}", o.stdout);
    assert!(o.stdout.contains("nice=1") || o.stdout.contains("Operation not permitted"), "{}", o.stdout);
}

#[test]
fn seccomp_without_no_new_privs_and_kill_action() {
    let b = Bundle::new("seccompkill");
    let mut v = spec("grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; exec sync");
    v["process"]["noNewPrivileges"] = json!(false);
    v["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["sync"], "action": "SCMP_ACT_KILL_PROCESS"}]
    });
    let o = run("engine-seccompkill", &b, v);
    assert!(o.stdout.contains("Seccomp:\t2") && o.stdout.contains("NoNewPrivs:\t0"), "{}", o.stdout);
    assert_eq!(o.status, ExitStatus::Signal(libc::SIGSYS), "stdout {}", o.stdout);
}

#[test]
fn rlimits_umask_env_and_cwd() {
    let b = Bundle::new("procattrs");
    let mut v = spec("ulimit -n; ulimit -Hn; umask; echo $GREETING; pwd; cat /proc/self/oom_score_adj");
    v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
    v["process"]["user"]["umask"] = json!(0o027);
    v["process"]["env"] = json!(["PATH=/bin", "GREETING=hello from the container"]);
    v["process"]["cwd"] = json!("/srv/app");
    v["process"]["oomScoreAdj"] = json!(321);
    let o = run("engine-procattrs", &b, v);
    assert_eq!(o.status, ExitStatus::Code(0), "stderr: {}", o.stderr);
    assert_eq!(
        o.stdout,
        "123\n456\n0027\nhello from the container\n/srv/app\n321\n",
        "stderr: {}",
        o.stderr
    );
}

#[test]
fn domainname_and_sysctl_in_own_namespaces() {
    let b = Bundle::new("uts");
    let mut v = spec("cat /proc/sys/kernel/domainname /proc/sys/net/ipv4/ip_forward; cat /proc/net/dev | tail -n +3 | cut -d: -f1");
    v["domainname"] = json!("example.test");
    v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    let host_forward = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let o = run("engine-uts", &b, v);
    assert_eq!(o.status, ExitStatus::Code(0), "stderr: {}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().map(str::trim).collect();
    assert_eq!(lines, vec!["example.test", "1", "lo"], "{}", o.stdout);
    assert_eq!(fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(), host_forward);
}

fn mountinfo_line<'a>(mountinfo: &'a str, mountpoint: &str) -> &'a str {
    mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(mountpoint))
        .last()
        .unwrap_or_else(|| panic!("{mountpoint} not in mountinfo:\n{mountinfo}"))
}

#[test]
fn mounts_masked_and_readonly_paths_and_readonly_root() {
    let b = Bundle::new("mounts");
    let host_dir = b.path().join("shared");
    fs::create_dir_all(&host_dir).unwrap();
    fs::write(host_dir.join("file"), "from the host\n").unwrap();
    let mut v = spec(
        "cat /proc/self/mountinfo; echo ---; cat /data/file; \
         echo x > /data/new 2>/dev/null; echo data_write=$?; \
         echo x > /scratch/new; echo scratch_write=$?; \
         touch /rootfile 2>/dev/null; echo root_write=$?; \
         echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null; echo procsys_write=$?; \
         wc -c < /proc/timer_list",
    );
    v["root"]["readonly"] = json!(true);
    let mounts = v["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/data", "type": "bind", "source": host_dir,
                       "options": ["rbind", "ro", "nosuid", "rprivate"]}));
    mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nodev", "size=1m", "mode=700"]}));
    let o = run("engine-mounts", &b, v);
    assert_eq!(o.status, ExitStatus::Code(0), "stderr: {}", o.stderr);
    let (mi, rest) = o.stdout.split_once("---\n").unwrap();
    let root = mountinfo_line(mi, "/");
    assert!(root.contains(" ro,") || root.contains(" ro "), "{root}");
    let data = mountinfo_line(mi, "/data");
    assert!(data.contains(" ro,") && data.contains("nosuid"), "{data}");
    let scratch = mountinfo_line(mi, "/scratch");
    assert!(scratch.contains("nodev") && scratch.contains("tmpfs") && scratch.contains("size=1024k") && scratch.contains("mode=700"), "{scratch}");
    assert!(mountinfo_line(mi, "/proc").contains(" - proc "));
    assert!(mountinfo_line(mi, "/sys").contains(" - sysfs "));
    assert!(mountinfo_line(mi, "/dev/pts").contains(" - devpts "));
    assert!(mountinfo_line(mi, "/dev/mqueue").contains(" - mqueue "));
    assert!(mountinfo_line(mi, "/proc/sys").contains(" ro,"));
    assert!(mountinfo_line(mi, "/proc/timer_list").contains(" - tmpfs "));
    assert_eq!(
        rest,
        "from the host\ndata_write=1\nscratch_write=0\nroot_write=1\nprocsys_write=1\n0\n",
        "{}",
        o.stdout
    );
    // Nothing the container mounted shows up on the host.
    let host = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains(b.path().to_str().unwrap()), "{host}");
}

#[test]
fn default_and_spec_devices() {
    let b = Bundle::new("devices");
    let mut v = spec(
        "for d in null zero full random urandom tty mydev; do stat -c '%n %F %t:%T %a %u:%g' /dev/$d; done; \
         readlink /dev/ptmx; readlink /dev/fd; readlink /dev/stdin; ls -d /dev/pts /dev/shm; echo hi > /dev/null && echo ok",
    );
    v["linux"]["devices"] = json!([{"path": "/dev/mydev", "type": "c", "major": 1, "minor": 7,
                                    "fileMode": 0o600, "uid": 5, "gid": 6}]);
    let o = run("engine-devices", &b, v);
    assert_eq!(o.status, ExitStatus::Code(0), "stderr: {}", o.stderr);
    let want = "/dev/null character special file 1:3 666 0:0\n\
                /dev/zero character special file 1:5 666 0:0\n\
                /dev/full character special file 1:7 666 0:0\n\
                /dev/random character special file 1:8 666 0:0\n\
                /dev/urandom character special file 1:9 666 0:0\n\
                /dev/tty character special file 5:0 666 0:0\n\
                /dev/mydev character special file 1:7 600 5:6\n\
                pts/ptmx\n/proc/self/fd\n/proc/self/fd/0\n/dev/pts\n/dev/shm\nok\n";
    assert_eq!(o.stdout, want);
}

#[test]
fn rootfs_propagation_and_pivot_root_fallback() {
    let b = Bundle::new("propagation");
    let v = spec("awk '$5 == \"/\"' /proc/self/mountinfo");
    let o = run("engine-prop-default", &b, v.clone());
    // The default (rslave) receives the host's mount events where the host's / is shared.
    let host = fs::read_to_string("/proc/self/mountinfo").unwrap();
    if mountinfo_line(&host, "/").contains("shared:") {
        assert!(o.stdout.contains("master:"), "default rslave: {}", o.stdout);
    }
    assert!(!o.stdout.contains("shared:"), "default rslave: {}", o.stdout);
    let mut shared = v.clone();
    shared["linux"]["rootfsPropagation"] = json!("rshared");
    let o = run("engine-prop-shared", &b, shared);
    assert!(o.stdout.contains("shared:"), "rshared: {}", o.stdout);
    let mut private = v.clone();
    private["linux"]["rootfsPropagation"] = json!("rprivate");
    let o = run("engine-prop-private", &b, private);
    assert!(!o.stdout.contains("master:") && !o.stdout.contains("shared:"), "{}", o.stdout);

    // MS_MOVE + chroot: the container still sees its rootfs at / and runs normally.
    let (mut out_r, out_w) = pipe();
    let (_err_r, err_w) = pipe();
    let mut o = opts("engine-nopivot", &b, spec("ls /bin/busybox; echo $$"), Stdio::Fds { stdin: None, stdout: out_w, stderr: err_w });
    o.no_pivot_root = true;
    let mut c = Container::create(o).unwrap();
    c.start().unwrap();
    let mut s = String::new();
    out_r.read_to_string(&mut s).unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Code(0));
    c.destroy().unwrap();
    assert_eq!(s, "/bin/busybox\n1\n");
}
