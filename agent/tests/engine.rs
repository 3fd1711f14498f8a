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
    json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ])
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
    let stdio = Stdio::Fds {
        stdin: None,
        stdout: out_w,
        stderr: err_w,
    };
    let mut c = Container::create(opts(id, b, v, stdio))?;
    c.start()?;
    let mut stdout = String::new();
    let mut stderr = String::new();
    out_r.read_to_string(&mut stdout).unwrap();
    err_r.read_to_string(&mut stderr).unwrap();
    let status = c.wait()?;
    c.destroy()?;
    Ok(Outcome {
        status,
        stdout,
        stderr,
    })
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
    let o = run(
        "engine-basic",
        &b,
        spec("echo pid=$$; echo home=$HOME; hostname; cat /proc/self/status; exit 7"),
    );
    assert_eq!(o.status, ExitStatus::exited(7), "stderr: {}", o.stderr);
    assert!(o.stdout.contains("pid=1\n"), "{}", o.stdout);
    assert!(o.stdout.contains("engine-test\n"), "{}", o.stdout);
    assert!(
        o.stdout.contains("home=/root\n"),
        "HOME from the rootfs' /etc/passwd: {}",
        o.stdout
    );
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
    assert_eq!(o.status, ExitStatus::exited(0), "stderr: {}", o.stderr);
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
    assert_eq!(o.status, ExitStatus::exited(0), "stderr: {}", o.stderr);
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
    assert_eq!(o.status, ExitStatus::exited(0), "stderr: {}", o.stderr);
    assert!(o.stdout.contains("Seccomp:\t2"), "{}", o.stdout);
    assert!(o.stdout.contains("NoNewPrivs:\t1"), "{}", o.stdout);
    assert!(
        o.stdout.contains("Permission denied") && o.stdout.contains("mkdir=1"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("ls=0"), "{}", o.stdout);
    assert!(
        o.stdout.contains("nice=1") || o.stdout.contains("Operation not permitted"),
        "{}",
        o.stdout
    );
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
    assert!(
        o.stdout.contains("Seccomp:\t2") && o.stdout.contains("NoNewPrivs:\t0"),
        "{}",
        o.stdout
    );
    assert_eq!(
        o.status,
        ExitStatus::signaled(libc::SIGSYS),
        "stdout {}",
        o.stdout
    );
}

#[test]
fn rlimits_umask_env_and_cwd() {
    let b = Bundle::new("procattrs");
    let mut v =
        spec("ulimit -n; ulimit -Hn; umask; echo $GREETING; pwd; cat /proc/self/oom_score_adj");
    v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
    v["process"]["user"]["umask"] = json!(0o027);
    v["process"]["env"] = json!(["PATH=/bin", "GREETING=hello from the container"]);
    v["process"]["cwd"] = json!("/srv/app");
    v["process"]["oomScoreAdj"] = json!(321);
    let o = run("engine-procattrs", &b, v);
    assert_eq!(o.status, ExitStatus::exited(0), "stderr: {}", o.stderr);
    assert_eq!(
        o.stdout, "123\n456\n0027\nhello from the container\n/srv/app\n321\n",
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
    assert_eq!(o.status, ExitStatus::exited(0), "stderr: {}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().map(str::trim).collect();
    assert_eq!(lines, vec!["example.test", "1", "lo"], "{}", o.stdout);
    assert_eq!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_forward
    );
}

fn mountinfo_line<'a>(mountinfo: &'a str, mountpoint: &str) -> &'a str {
    mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(mountpoint))
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
    mounts.push(
        json!({"destination": "/data", "type": "bind", "source": host_dir,
                       "options": ["rbind", "ro", "nosuid", "rprivate"]}),
    );
    mounts.push(
        json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nodev", "size=1m", "mode=700"]}),
    );
    let o = run("engine-mounts", &b, v);
    assert_eq!(o.status, ExitStatus::exited(0), "stderr: {}", o.stderr);
    let (mi, rest) = o.stdout.split_once("---\n").unwrap();
    let root = mountinfo_line(mi, "/");
    assert!(root.contains(" ro,") || root.contains(" ro "), "{root}");
    let data = mountinfo_line(mi, "/data");
    assert!(data.contains(" ro,") && data.contains("nosuid"), "{data}");
    let scratch = mountinfo_line(mi, "/scratch");
    assert!(
        scratch.contains("nodev")
            && scratch.contains("tmpfs")
            && scratch.contains("size=1024k")
            && scratch.contains("mode=700"),
        "{scratch}"
    );
    assert!(mountinfo_line(mi, "/proc").contains(" - proc "));
    assert!(mountinfo_line(mi, "/sys").contains(" - sysfs "));
    assert!(mountinfo_line(mi, "/dev/pts").contains(" - devpts "));
    assert!(mountinfo_line(mi, "/dev/mqueue").contains(" - mqueue "));
    assert!(mountinfo_line(mi, "/proc/sys").contains(" ro,"));
    assert!(mountinfo_line(mi, "/proc/timer_list").contains(" - tmpfs "));
    assert_eq!(
        rest, "from the host\ndata_write=1\nscratch_write=0\nroot_write=1\nprocsys_write=1\n0\n",
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
    assert_eq!(o.status, ExitStatus::exited(0), "stderr: {}", o.stderr);
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
    assert!(
        !o.stdout.contains("shared:"),
        "default rslave: {}",
        o.stdout
    );
    let mut shared = v.clone();
    shared["linux"]["rootfsPropagation"] = json!("rshared");
    let o = run("engine-prop-shared", &b, shared);
    assert!(o.stdout.contains("shared:"), "rshared: {}", o.stdout);
    let mut private = v.clone();
    private["linux"]["rootfsPropagation"] = json!("rprivate");
    let o = run("engine-prop-private", &b, private);
    assert!(
        !o.stdout.contains("master:") && !o.stdout.contains("shared:"),
        "{}",
        o.stdout
    );
    // Unbindable is set on the new root, after the rootfs bind it would have refused.
    let mut unbindable = v.clone();
    unbindable["linux"]["rootfsPropagation"] = json!("unbindable");
    let o = run("engine-prop-unbindable", &b, unbindable);
    assert!(o.stdout.contains("unbindable"), "unbindable: {}", o.stdout);

    // MS_MOVE + chroot: the container still sees its rootfs at / and runs normally.
    let (mut out_r, out_w) = pipe();
    let (_err_r, err_w) = pipe();
    let mut o = opts(
        "engine-nopivot",
        &b,
        spec("ls /bin/busybox; echo $$"),
        Stdio::Fds {
            stdin: None,
            stdout: out_w,
            stderr: err_w,
        },
    );
    o.no_pivot_root = true;
    let mut c = Container::create(o).unwrap();
    c.start().unwrap();
    let mut s = String::new();
    out_r.read_to_string(&mut s).unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::exited(0));
    c.destroy().unwrap();
    assert_eq!(s, "/bin/busybox\n1\n");

    // exec into a MS_MOVE + chroot container lands in its root too (setns finds the
    // rootfs mounted over the namespace's root).
    let mut o = opts("engine-nopivot-exec", &b, spec(""), Stdio::Null);
    o.spec
        .process_mut()
        .as_mut()
        .unwrap()
        .set_args(Some(vec!["sleep".into(), "1000".into()]));
    o.no_pivot_root = true;
    let mut c = Container::create(o).unwrap();
    c.start().unwrap();
    let (status, out) = exec_output(
        &c,
        json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["sh", "-c", "ls /bin/busybox; hostname"]}),
    );
    assert_eq!(
        (status, out.as_str()),
        (ExitStatus::exited(0), "/bin/busybox\nengine-test\n")
    );
    c.destroy().unwrap();
}

fn cgroup_v2() -> bool {
    agent::engine::CgroupVersion::detect().unwrap() == agent::engine::CgroupVersion::V2
}

#[test]
fn cgroup_resources_seen_from_inside() {
    let b = Bundle::new("cgroup");
    let script = if cgroup_v2() {
        "cd /sys/fs/cgroup; cat memory.max memory.swap.max pids.max cpu.max cpu.weight cpuset.cpus; cat /proc/self/cgroup"
    } else {
        "cd /sys/fs/cgroup; cat memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes \
         pids/pids.max cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us cpu/cpu.shares cpuset/cpuset.cpus; \
         grep -E ':(memory|pids):' /proc/self/cgroup"
    };
    let mut v = spec(script);
    v["linux"]["resources"] = json!({
        "memory": {"limit": 67108864, "swap": 134217728},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        "pids": {"limit": 20}
    });
    let o = run("engine-cgroup", &b, v);
    assert_eq!(o.status, ExitStatus::exited(0), "stderr: {}", o.stderr);
    let want = if cgroup_v2() {
        // swap.max is the swap alone; weight converted from 512 shares.
        "67108864\n67108864\n20\n50000 100000\n20\n0\n0::/\n"
    } else {
        // With a cgroup namespace the container's cgroup is its root.
        "67108864\n134217728\n20\n50000\n100000\n512\n0\n8:pids:/\n4:memory:/\n"
    };
    assert_eq!(o.stdout, want);
}

#[test]
fn cgroup_without_namespace_shows_only_its_own_directory() {
    let b = Bundle::new("cgroupbind");
    let mut v = spec(if cgroup_v2() {
        "cat /sys/fs/cgroup/pids.max"
    } else {
        "cat /sys/fs/cgroup/pids/pids.max; ls /sys/fs/cgroup/pids | grep -c sandbox"
    });
    v["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "network"}]);
    v["linux"]["resources"] = json!({"pids": {"limit": 33}});
    let o = run("engine-cgroupbind", &b, v);
    assert!(o.stdout.starts_with("33\n"), "{} {}", o.stdout, o.stderr);
}

/// A container running `sleep`, with its output discarded.
/// `orphan_init`: the init is not the engine's child; its end comes through the pidfd.
#[test]
fn an_orphaned_init_is_left_to_another_reaper_and_watched_through_its_pidfd() {
    use agent::engine::ContainerState;
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let b = Bundle::new("orphan");
    let mut o = opts("engine-orphan", &b, spec("sleep 0.2; exit 3"), Stdio::Null);
    o.orphan_init = true;
    let mut c = Container::create(o).unwrap();
    assert!(c.init_orphaned());
    assert_eq!(
        waitpid(c.pid(), Some(WaitPidFlag::WNOHANG)),
        Err(nix::errno::Errno::ECHILD),
        "the init is still our child"
    );
    c.start().unwrap();
    // Signals go through the pidfd while it runs.
    c.signal(Signal::SIGCONT, false).unwrap();
    assert_eq!(c.wait_ended().unwrap(), None);
    assert_eq!(c.state(), ContainerState::Stopped);
    assert!(c.signal(Signal::SIGKILL, false).is_err());
    // The status is not ours to know: wait says so instead of blocking.
    assert!(c.wait().is_err());
    c.destroy().unwrap();
    assert_nothing_left("engine-orphan", &b);
}

fn sleeper(id: &str, b: &Bundle, mut v: Value) -> Container {
    v["process"]["args"] = json!(["sleep", "1000"]);
    let mut c = Container::create(opts(id, b, v, Stdio::Null)).unwrap();
    c.start().unwrap();
    c
}

fn exec_output(c: &Container, p: Value) -> (ExitStatus, String) {
    let process: oci_spec::runtime::Process = serde_json::from_value(p).unwrap();
    let (mut out_r, out_w) = pipe();
    let (_e, err_w) = pipe();
    let e = c
        .exec(
            &process,
            Stdio::Fds {
                stdin: None,
                stdout: out_w,
                stderr: err_w,
            },
        )
        .unwrap();
    let mut s = String::new();
    out_r.read_to_string(&mut s).unwrap();
    (e.wait().unwrap(), s)
}

#[test]
fn exec_joins_namespaces_cgroup_and_applies_its_own_process() {
    let b = Bundle::new("exec");
    let mut v = spec("");
    v["linux"]["resources"] = json!({"pids": {"limit": 50}});
    let c = sleeper("engine-exec", &b, v);
    let init_ns: Vec<String> = ["pid", "mnt", "net", "uts", "ipc", "cgroup"]
        .iter()
        .map(|n| {
            fs::read_link(format!("/proc/{}/ns/{n}", c.pid()))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let (status, out) = exec_output(
        &c,
        json!({
            "user": {"uid": 1234, "gid": 1234},
            "args": ["sh", "-c", "for n in pid mnt net uts ipc cgroup; do readlink /proc/self/ns/$n; done; \
                      hostname; grep -E '^(Uid|CapEff|NoNewPrivs):' /proc/self/status; echo $X; pwd; \
                      ps -o pid,comm | grep -c sleep"],
            "env": ["PATH=/bin", "X=exec-env"],
            "cwd": "/tmp",
            "noNewPrivileges": true,
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
                             "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]}
        }),
    );
    assert_eq!(status, ExitStatus::exited(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..6],
        init_ns
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
    );
    assert_eq!(
        &lines[6..],
        &[
            "engine-test",
            "Uid:\t1234\t1234\t1234\t1234",
            "CapEff:\t0000000000000020",
            "NoNewPrivs:\t1",
            "exec-env",
            "/tmp",
            "1"
        ]
    );
    // The exec'd process was counted in the container's cgroup while it ran.
    assert_eq!(c.stats().unwrap().pids_limit, Some(50));
    c.destroy().unwrap();
}

#[test]
fn exec_exit_codes_signals_and_missing_programs() {
    let b = Bundle::new("execstatus");
    let c = sleeper("engine-execstatus", &b, spec(""));
    let (status, _) = exec_output(
        &c,
        json!({"user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "exit 42"], "cwd": "/"}),
    );
    assert_eq!(status, ExitStatus::exited(42));
    let process: oci_spec::runtime::Process = serde_json::from_value(
        json!({"user": {"uid": 0, "gid": 0}, "args": ["sleep", "100"], "cwd": "/"}),
    )
    .unwrap();
    let e = c.exec(&process, Stdio::Null).unwrap();
    nix::sys::signal::kill(e.pid(), Signal::SIGTERM).unwrap();
    assert_eq!(e.wait().unwrap(), ExitStatus::signaled(libc::SIGTERM));
    let missing: oci_spec::runtime::Process = serde_json::from_value(
        json!({"user": {"uid": 0, "gid": 0}, "args": ["no-such-program"], "cwd": "/"}),
    )
    .unwrap();
    let err = c.exec(&missing, Stdio::Null).unwrap_err().to_string();
    assert!(
        err.contains("process.args[0]") && err.contains("no-such-program"),
        "{err}"
    );
    c.destroy().unwrap();
}

#[test]
fn signals_reach_the_init_and_all_processes() {
    let b = Bundle::new("signal");
    let mut c = sleeper("engine-signal", &b, spec(""));
    assert_eq!(c.state(), agent::engine::ContainerState::Running);
    c.signal(Signal::SIGKILL, false).unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::signaled(libc::SIGKILL));
    // Once reaped, the pid is not ours to signal any more.
    assert!(c.signal(Signal::SIGTERM, false).is_err());
    c.destroy().unwrap();

    let mut v = spec("trap 'exit 3' TERM; sleep 1000 & wait");
    v["process"]["args"] = json!(["sh", "-c", "trap 'exit 3' TERM; sleep 1000 & wait"]);
    let mut c = Container::create(opts("engine-signal-all", &b, v, Stdio::Null)).unwrap();
    c.start().unwrap();
    // Give the shell time to install its trap and fork sleep.
    for _ in 0..200 {
        if c.stats().unwrap().pids_current >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(c.stats().unwrap().pids_current, 2);
    c.signal(Signal::SIGTERM, true).unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::exited(3));
    c.destroy().unwrap();
}

/// The runtime spec still allows relative mount destinations (deprecated), taken from "/".
#[test]
fn a_relative_mount_destination_is_taken_from_the_root() {
    let b = Bundle::new("reldest");
    let mut v = spec("grep -c ' /scratch ' /proc/self/mountinfo");
    v["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "scratch", "type": "tmpfs", "source": "tmpfs"}));
    let o = run("engine-reldest", &b, v);
    assert_eq!(o.status, ExitStatus::exited(0), "stderr: {}", o.stderr);
    assert_eq!(o.stdout, "1\n");
}

#[test]
fn terminal_from_the_containers_devpts_with_console_size() {
    let b = Bundle::new("tty");
    let mut v = spec("tty; stty size; ls -l /dev/console | cut -c1");
    v["process"]["terminal"] = json!(true);
    v["process"]["consoleSize"] = json!({"height": 40, "width": 100});
    let mut c = Container::create(opts("engine-tty", &b, v, Stdio::Pty)).unwrap();
    let master = fs::File::from(c.pty_master().expect("a pty master"));
    c.start().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let mut m = &master;
    // The master reads EIO once the last slave holder exits.
    while let Ok(n) = m.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(c.wait().unwrap(), ExitStatus::exited(0));
    c.destroy().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "/dev/pts/0\r\n40 100\r\nc\r\n"
    );
}

#[test]
fn exec_with_a_terminal() {
    let b = Bundle::new("exectty");
    let c = sleeper("engine-exectty", &b, spec(""));
    let process: oci_spec::runtime::Process = serde_json::from_value(json!({
        "terminal": true, "consoleSize": {"height": 24, "width": 80},
        "user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "tty; stty size; grep -c ' /dev/console ' /proc/self/mountinfo || true"], "cwd": "/"
    }))
    .unwrap();
    let mut e = c.exec(&process, Stdio::Pty).unwrap();
    let master = fs::File::from(e.pty_master().unwrap());
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let mut m = &master;
    while let Ok(n) = m.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(e.wait().unwrap(), ExitStatus::exited(0));
    c.destroy().unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("/dev/pts/") && out.ends_with("\r\n24 80\r\n0\r\n"),
        "{out}"
    );
}

#[test]
fn stats_update_and_oom_events() {
    let b = Bundle::new("oom");
    let mut v = spec("");
    v["linux"]["resources"] =
        json!({"memory": {"limit": 33554432, "swap": 33554432}, "pids": {"limit": 10}});
    let c = sleeper("engine-oom", &b, v);
    let s = c.stats().unwrap();
    assert_eq!(s.memory_limit, Some(33554432));
    assert_eq!(s.pids_limit, Some(10));
    assert_eq!(s.pids_current, 1);
    assert!(s.memory_usage > 0);
    assert_eq!(s.oom_kills, 0);

    let r: oci_spec::runtime::LinuxResources =
        serde_json::from_value(json!({"pids": {"limit": 15}})).unwrap();
    c.update(&r).unwrap();
    let (_, out) = exec_output(
        &c,
        json!({"user": {"uid": 0, "gid": 0}, "cwd": "/",
        "args": ["sh", "-c", if cgroup_v2() { "cat /sys/fs/cgroup/pids.max" } else { "cat /sys/fs/cgroup/pids/pids.max" }]}),
    );
    assert_eq!(out, "15\n");
    let bad: oci_spec::runtime::LinuxResources =
        serde_json::from_value(json!({"memory": {"limit": -5}})).unwrap();
    assert_eq!(
        c.update(&bad).unwrap_err().to_string(),
        "invalid spec: linux.resources.memory.limit: must be -1 (unlimited) or positive, got -5"
    );
    // checkBeforeUpdate refuses a limit under the current usage (4 KiB is), and the old
    // limit stays.
    let below: oci_spec::runtime::LinuxResources = serde_json::from_value(
        json!({"memory": {"limit": 4096, "swap": 4096, "checkBeforeUpdate": true}}),
    )
    .unwrap();
    let err = c.update(&below).unwrap_err().to_string();
    assert!(err.contains("below the container's current usage"), "{err}");
    assert_eq!(c.stats().unwrap().memory_limit, Some(33554432));

    let watcher = c.oom_events().unwrap();
    // 64 MiB of buffer in a 32 MiB cgroup without swap: the OOM killer ends it.
    let (status, _) = exec_output(
        &c,
        json!({"user": {"uid": 0, "gid": 0}, "cwd": "/",
        "args": ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]}),
    );
    assert_eq!(status, ExitStatus::signaled(libc::SIGKILL));
    let mut fds = [nix::poll::PollFd::new(
        watcher.fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap();
    assert_eq!(n, 1, "OOM event delivered");
    watcher.drain();
    assert!(watcher.oom_kills().unwrap() >= 1);
    assert!(c.stats().unwrap().oom_kills >= 1);
    c.destroy().unwrap();
}

/// Processes whose cgroup path names `id`, from every /proc/PID/cgroup.
fn processes_in_cgroups_named(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cg) = fs::read_to_string(e.path().join("cgroup")) {
            if cg.contains(&format!("/{id}\n")) {
                found.push(name);
            }
        }
    }
    found
}

fn cgroup_dirs_named(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name() == id {
                    found.push(e.path());
                }
                stack.push(e.path());
            }
        }
    }
    found
}

fn assert_nothing_left(id: &str, b: &Bundle) {
    assert_eq!(
        cgroup_dirs_named(id),
        Vec::<PathBuf>::new(),
        "cgroup left behind"
    );
    assert_eq!(
        processes_in_cgroups_named(id),
        Vec::<String>::new(),
        "processes left behind"
    );
    let host = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host.contains(b.path().to_str().unwrap()),
        "mounts left behind: {host}"
    );
}

fn create_err(id: &str, b: &Bundle, v: Value) -> String {
    match Container::create(opts(id, b, v, Stdio::Null)) {
        Ok(_) => panic!("{id}: create succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_specs_name_the_field_and_leave_nothing() {
    let b = Bundle::new("badspec");
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "memory",
            Box::new(|v| v["linux"]["resources"] = json!({"memory": {"limit": -5}})),
            "linux.resources.memory.limit: must be -1 (unlimited) or positive, got -5",
        ),
        (
            "period",
            Box::new(|v| v["linux"]["resources"] = json!({"cpu": {"period": 10}})),
            "linux.resources.cpu.period: must be 1000-1000000",
        ),
        (
            "shares",
            Box::new(|v| v["linux"]["resources"] = json!({"cpu": {"shares": 1}})),
            "linux.resources.cpu.shares: must be 2-262144, got 1",
        ),
        (
            "cpus",
            Box::new(|v| v["linux"]["resources"] = json!({"cpu": {"cpus": "3-1"}})),
            "linux.resources.cpu.cpus: bad range",
        ),
        (
            "pids",
            Box::new(|v| v["linux"]["resources"] = json!({"pids": {"limit": -7}})),
            "linux.resources.pids.limit: must be -1 (unlimited) or positive, got -7",
        ),
        (
            "propagation-without-mountns",
            Box::new(|v| {
                v["linux"]["namespaces"] = json!([{"type": "pid"}]);
                v["linux"]["rootfsPropagation"] = json!("private");
            }),
            "linux.rootfsPropagation: needs a mount namespace",
        ),
        (
            "hookpath",
            Box::new(|v| v["hooks"] = json!({"prestart": [{"path": "bin/true"}]})),
            "hooks.prestart[0].path: must be absolute",
        ),
        (
            "hooktimeout",
            Box::new(|v| v["hooks"] = json!({"poststop": [{"path": "/bin/true", "timeout": 0}]})),
            "hooks.poststop[0].timeout: must be positive, got 0",
        ),
        (
            "annotationkey",
            Box::new(|v| v["annotations"] = json!({"": "x"})),
            "annotations: keys must not be empty",
        ),
        (
            "dupns",
            Box::new(|v| v["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "mount"}])),
            "linux.namespaces[1].type: mnt namespace listed twice",
        ),
        (
            "nspath",
            Box::new(
                |v| v["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "network", "path": "/nonexistent/netns"}, {"type": "uts"}]),
            ),
            "linux.namespaces[1].path: cannot open /nonexistent/netns",
        ),
        (
            "hostname",
            Box::new(|v| v["linux"]["namespaces"] = json!([{"type": "mount"}])),
            "hostname: needs a UTS namespace",
        ),
        (
            "root",
            Box::new(|v| v["root"]["path"] = json!("no-such-rootfs")),
            "root.path:",
        ),
        (
            "args",
            Box::new(|v| v["process"]["args"] = json!([])),
            "process.args: must name the program to run",
        ),
        (
            "cwd",
            Box::new(|v| v["process"]["cwd"] = json!("relative")),
            "process.cwd: must be absolute",
        ),
        (
            "rlimit",
            Box::new(|v| {
                v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}])
            }),
            "process.rlimits[0].soft: must not exceed hard (10 > 5)",
        ),
        (
            "oomscore",
            Box::new(|v| v["process"]["oomScoreAdj"] = json!(5000)),
            "process.oomScoreAdj: must be between -1000 and 1000, got 5000",
        ),
        (
            "sysctl",
            Box::new(|v| v["linux"]["sysctl"] = json!({"vm.swappiness": "10"})),
            "linux.sysctl.vm.swappiness: is not namespaced",
        ),
        (
            "seccomp",
            Box::new(|v| {
                v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]})
            }),
            "linux.seccomp.syscalls[0].action: errnoRet is only valid with SCMP_ACT_ERRNO",
        ),
        (
            "device",
            Box::new(|v| {
                v["linux"]["devices"] =
                    json!([{"path": "dev/x", "type": "c", "major": 1, "minor": 3}])
            }),
            "linux.devices[0].path: must be absolute",
        ),
        (
            "mountdest",
            Box::new(|v| v["mounts"] = json!([{"destination": "", "type": "tmpfs"}])),
            "mounts[0].destination: must not be empty",
        ),
        (
            "propagation",
            Box::new(|v| v["linux"]["rootfsPropagation"] = json!("sideways")),
            "linux.rootfsPropagation: unknown propagation",
        ),
        (
            "cgpath",
            Box::new(|v| v["linux"]["cgroupsPath"] = json!("/sandbox/../../escape")),
            "linux.cgroupsPath: must not contain `..`",
        ),
        (
            "apparmor",
            Box::new(|v| v["process"]["apparmorProfile"] = json!("docker-default")),
            "process.apparmorProfile: is not supported by this engine",
        ),
        (
            "personality",
            Box::new(|v| v["linux"]["personality"] = json!({"domain": "LINUX32"})),
            "linux.personality: is not supported by this engine",
        ),
        (
            "uidmap",
            Box::new(|v| {
                v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1}])
            }),
            "linux.uidMappings: id mappings need a new user namespace",
        ),
    ];
    for (name, edit, want) in cases {
        let mut v = spec("true");
        edit(&mut v);
        let id = format!("engine-bad-{name}");
        let err = create_err(&id, &b, v);
        assert!(err.contains(want), "{name}: got {err:?}, want {want:?}");
        assert_nothing_left(&id, &b);
    }
}

#[test]
fn failures_inside_the_container_leave_nothing_behind() {
    let b = Bundle::new("latefail");
    // Fails while the init builds the rootfs: after the cgroup and namespaces exist.
    let mut v = spec("true");
    v["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/x", "type": "nosuchfs", "source": "none"}));
    v["linux"]["resources"] = json!({"memory": {"limit": 67108864}});
    let err = create_err("engine-latefail", &b, v);
    assert!(
        err.contains("mounts[7] (/x)") && err.contains("nosuchfs"),
        "{err}"
    );
    assert_nothing_left("engine-latefail", &b);

    // Fails in the intermediate process: a bind source that vanished.
    let mut v = spec("true");
    v["mounts"].as_array_mut().unwrap().push(json!({"destination": "/x", "type": "bind", "source": "/nonexistent/src", "options": ["bind"]}));
    let err = create_err("engine-latefail2", &b, v);
    assert!(err.contains("/nonexistent/src"), "{err}");
    assert_nothing_left("engine-latefail2", &b);

    // Fails at start: the program does not exist. The init exits 127 and destroy cleans up.
    let mut c = Container::create(opts(
        "engine-nostart",
        &b,
        {
            let mut v = spec("true");
            v["process"]["args"] = json!(["/bin/no-such-program"]);
            v
        },
        Stdio::Null,
    ))
    .unwrap();
    let err = c.start().unwrap_err().to_string();
    assert!(
        err.contains("process.args[0]: /bin/no-such-program"),
        "{err}"
    );
    assert_eq!(c.wait().unwrap(), ExitStatus::exited(127));
    c.destroy().unwrap();
    assert_nothing_left("engine-nostart", &b);
}

#[test]
fn destroy_kills_everything_and_removes_the_cgroup() {
    let b = Bundle::new("destroy");
    let mut v = spec("");
    v["process"]["args"] = json!(["sh", "-c", "sleep 1000 & sleep 1000 & sleep 1000"]);
    let mut c = Container::create(opts("engine-destroy", &b, v, Stdio::Null)).unwrap();
    let dirs = c.cgroup_dirs();
    assert!(dirs.iter().all(|d| d.is_dir()));
    // A created container (not started) is destroyed the same way.
    c.start().unwrap();
    for _ in 0..200 {
        if c.stats().unwrap().pids_current == 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(processes_in_cgroups_named("engine-destroy").len(), 3);
    c.destroy().unwrap();
    assert!(dirs.iter().all(|d| !d.exists()));
    assert_nothing_left("engine-destroy", &b);

    let c = Container::create(opts(
        "engine-destroy-created",
        &b,
        spec("true"),
        Stdio::Null,
    ))
    .unwrap();
    assert_eq!(c.state(), agent::engine::ContainerState::Created);
    c.destroy().unwrap();
    assert_nothing_left("engine-destroy-created", &b);

    // Dropping without destroy cleans up too.
    drop(Container::create(opts("engine-destroy-drop", &b, spec("true"), Stdio::Null)).unwrap());
    assert_nothing_left("engine-destroy-drop", &b);
}

#[test]
fn joins_a_network_namespace_by_path() {
    let name = format!("engine-test-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(ok.success());
    let path = format!("/var/run/netns/{name}");
    let want = format!(
        "net:[{}]",
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap())
    );
    let b = Bundle::new("netns");
    let mut v = spec("readlink /proc/self/ns/net");
    v["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}, {"type": "uts"},
                                      {"type": "network", "path": path}]);
    let o = try_run("engine-netns", &b, v);
    Command::new("ip")
        .args(["netns", "del", &name])
        .status()
        .unwrap();
    let o = o.unwrap();
    assert_eq!(o.stdout.trim(), want, "{}", o.stderr);
}

#[test]
fn user_namespace_with_id_mappings() {
    let b = Bundle::new("userns");
    // The rootfs must be reachable by the mapped root.
    let mut v = spec("cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c '%u' /bin/busybox");
    v["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}, {"containerID": 1, "hostID": 100000, "size": 65535}]);
    v["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}, {"containerID": 1, "hostID": 100000, "size": 65535}]);
    // A read-only bind of a nosuid,nodev,noexec mount: in a user namespace those flags are
    // locked and must be kept by the remount.
    let src = b.path().join("locked");
    fs::create_dir_all(&src).unwrap();
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), &src, Some("tmpfs"), locked, Some("size=1m")).unwrap();
    fs::write(src.join("f"), "locked\n").unwrap();
    v["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/locked", "type": "bind", "source": src, "options": ["bind", "ro"]}),
    );
    v["process"]["args"][2] = json!(format!(
        "{} cat /locked/f; touch /locked/g 2>/dev/null || echo ro",
        v["process"]["args"][2].as_str().unwrap().to_string() + ";"
    ));
    let o = try_run("engine-userns", &b, v);
    umount2(&src, MntFlags::MNT_DETACH).unwrap();
    let o = o.unwrap();
    assert_eq!(o.status, ExitStatus::exited(0), "stderr: {}", o.stderr);
    let words: Vec<&str> = o.stdout.split_whitespace().collect();
    assert_eq!(
        words,
        vec![
            "0", "0", "1", "1", "100000", "65535", "0", "0", "1", "1", "100000", "65535", "0", "0",
            "locked", "ro"
        ]
    );
}

#[test]
fn device_cgroup_denies_what_the_spec_does_not_allow() {
    if cgroup_v2() {
        // The v2 device controller is eBPF-only; this engine enforces device rules on v1.
        return;
    }
    let b = Bundle::new("devcgroup");
    let mut v = spec(
        "mknod /dev/sda b 8 0 && head -c1 /dev/sda >/dev/null 2>&1; echo sda=$?; \
         head -c1 /dev/mydev | wc -c; echo hi > /dev/null; echo null=$?",
    );
    v["linux"]["devices"] = json!([{"path": "/dev/mydev", "type": "c", "major": 1, "minor": 7}]);
    v["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let o = run("engine-devcgroup", &b, v);
    assert_eq!(o.status, ExitStatus::exited(0), "stderr: {}", o.stderr);
    assert_eq!(o.stdout, "sda=1\n1\nnull=0\n", "stderr: {}", o.stderr);
}

#[test]
fn ambient_capabilities_outside_inheritable_are_skipped_like_runc() {
    let b = Bundle::new("ambient");
    let mut v = spec("grep -E '^Cap(Amb|Eff):' /proc/self/status");
    v["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    v["process"]["capabilities"] = json!({
        "bounding": caps(&["CAP_KILL", "CAP_CHOWN"]), "effective": caps(&["CAP_KILL", "CAP_CHOWN"]),
        "permitted": caps(&["CAP_KILL", "CAP_CHOWN"]), "inheritable": caps(&["CAP_CHOWN"]),
        "ambient": caps(&["CAP_KILL", "CAP_CHOWN"])
    });
    let o = run("engine-ambient", &b, v);
    assert_eq!(
        o.stdout, "CapEff:\t0000000000000001\nCapAmb:\t0000000000000001\n",
        "{}",
        o.stderr
    );
}

#[test]
fn the_program_starts_with_default_signal_state() {
    // The test harness (like any Rust program) ignores SIGPIPE; block SIGCHLD here as an
    // event loop with a signalfd would. Neither may reach the container's program.
    let b = Bundle::new("signals");
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(Signal::SIGCHLD);
    let mut old = nix::sys::signal::SigSet::empty();
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&set),
        Some(&mut old),
    )
    .unwrap();
    let mut v = spec("");
    v["process"]["args"] = json!(["grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"]);
    let o = run("engine-signals", &b, v);
    nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&old), None)
        .unwrap();
    assert_eq!(
        o.stdout, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n",
        "{}",
        o.stderr
    );
}

#[test]
fn lifecycle_hooks_run_in_order_with_the_state() {
    let b = Bundle::new("hooks");
    let out = b.path().join("hooks-out");
    fs::create_dir_all(&out).unwrap();
    let o = out.display().to_string();
    let hook =
        |script: String| json!({"path": "/bin/sh", "args": ["sh", "-c", script], "timeout": 10});
    let mut v = spec("true");
    v["hooks"] = json!({
        "createRuntime": [hook(format!("cat > {o}/createRuntime; hostname > {o}/createRuntime.host"))],
        "createContainer": [hook(format!("cat > {o}/createContainer; hostname > {o}/createContainer.host"))],
        // Runs inside the container's root: its path and files are the container's.
        "startContainer": [hook("cat > /tmp/startContainer".to_string())],
        "poststart": [hook(format!("cat > {o}/poststart"))],
        "poststop": [hook(format!("cat > {o}/poststop"))]
    });
    let outcome = run("engine-hooks", &b, v);
    assert_eq!(outcome.status, ExitStatus::exited(0), "{}", outcome.stderr);
    let state =
        |p: PathBuf| -> Value { serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap() };
    let cr = state(out.join("createRuntime"));
    assert_eq!(
        (cr["id"].as_str(), cr["status"].as_str()),
        (Some("engine-hooks"), Some("created"))
    );
    assert!(cr["pid"].as_i64().unwrap() > 1);
    let host_name = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        fs::read_to_string(out.join("createRuntime.host")).unwrap(),
        host_name
    );
    assert_eq!(
        fs::read_to_string(out.join("createContainer.host")).unwrap(),
        "engine-test\n"
    );
    assert_eq!(
        state(b.path().join("rootfs/tmp/startContainer"))["id"],
        "engine-hooks"
    );
    assert_eq!(state(out.join("poststart"))["status"], "running");
    assert_eq!(state(out.join("poststop"))["status"], "stopped");
}

#[test]
fn a_failing_hook_fails_create_and_leaves_nothing() {
    let b = Bundle::new("badhook");
    let mut v = spec("true");
    v["hooks"] = json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]});
    let err = create_err("engine-badhook", &b, v);
    assert!(
        err.contains("hooks.prestart[0] (/bin/sh): exited with code 3"),
        "{err}"
    );
    assert_nothing_left("engine-badhook", &b);
    let mut v = spec("true");
    v["hooks"] =
        json!({"createContainer": [{"path": "/bin/sleep", "args": ["sleep", "10"], "timeout": 1}]});
    let err = create_err("engine-slowhook", &b, v);
    assert!(
        err.contains("hooks.createContainer[0] (/bin/sleep): timed out after 1 s"),
        "{err}"
    );
    assert_nothing_left("engine-slowhook", &b);
}

/// This host has cgroup v1 with an empty unified (v2) hierarchy beside it. Mounting that
/// hierarchy on /sys/fs/cgroup in a private mount namespace gives the engine a v2 layout
/// (without controllers, which v1 holds): enough to run the v2 create / join / cgroup
/// namespace / kill / remove path for real. The inner test runs in that namespace.
#[test]
fn cgroup_v2_lifecycle_in_a_private_mount_namespace() {
    if cgroup_v2() || !Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t cgroup2 none /sys/fs/cgroup && exec {} --exact inner_cgroup_v2_lifecycle --ignored --nocapture",
            exe.display()
        ))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
    assert_eq!(cgroup_dirs_named("engine-v2"), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "run by cgroup_v2_lifecycle_in_a_private_mount_namespace"]
fn inner_cgroup_v2_lifecycle() {
    assert!(cgroup_v2(), "needs /sys/fs/cgroup to be cgroup2");
    let b = Bundle::new("v2");
    let mut c = sleeper("engine-v2", &b, spec(""));
    assert_eq!(
        c.cgroup_dirs(),
        vec![PathBuf::from("/sys/fs/cgroup/sandbox/engine-v2")]
    );
    let procs = fs::read_to_string("/sys/fs/cgroup/sandbox/engine-v2/cgroup.procs").unwrap();
    assert_eq!(procs.trim(), c.pid().to_string());
    let (status, out) = exec_output(
        &c,
        json!({"user": {"uid": 0, "gid": 0}, "cwd": "/",
        "args": ["sh", "-c", "cat /proc/self/cgroup; grep -c . /sys/fs/cgroup/cgroup.procs; grep ' /sys/fs/cgroup ' /proc/self/mountinfo | cut -d' ' -f9"]}),
    );
    assert_eq!(status, ExitStatus::exited(0));
    // The cgroup namespace's root is the container's cgroup (v1 controllers stay where the
    // host has them); it holds sleep, the shell and grep.
    assert!(out.ends_with("\n0::/\n3\ncgroup2\n"), "{out}");
    assert!(c.stats().is_ok());
    c.signal(Signal::SIGKILL, true).unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::signaled(libc::SIGKILL));
    c.destroy().unwrap();
    assert!(!Path::new("/sys/fs/cgroup/sandbox/engine-v2").exists());
}

#[test]
fn the_program_gets_only_its_three_standard_descriptors() {
    let b = Bundle::new("fds");
    // Pipes without close-on-exec, as a caller might hand them over.
    let o = run("engine-fds", &b, spec("ls /proc/self/fd"));
    // ls itself holds one more for reading the directory.
    assert_eq!(o.stdout, "0\n1\n2\n3\n", "{}", o.stderr);
}

#[test]
fn time_and_ipc_namespaces_are_new() {
    let b = Bundle::new("timens");
    let mut v = spec("readlink /proc/self/ns/time; readlink /proc/self/ns/ipc");
    v["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "time"}));
    let o = run("engine-timens", &b, v);
    let host_time = fs::read_link("/proc/self/ns/time")
        .unwrap()
        .display()
        .to_string();
    let host_ipc = fs::read_link("/proc/self/ns/ipc")
        .unwrap()
        .display()
        .to_string();
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{} {}", o.stdout, o.stderr);
    assert!(
        lines[0].starts_with("time:[") && lines[0] != host_time,
        "{}",
        o.stdout
    );
    assert!(
        lines[1].starts_with("ipc:[") && lines[1] != host_ipc,
        "{}",
        o.stdout
    );
}

#[test]
fn block_io_throttle_seen_from_inside() {
    let dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata("/").unwrap());
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let b = Bundle::new("blkio");
    let file = if cgroup_v2() {
        "io.max"
    } else {
        "blkio/blkio.throttle.read_bps_device"
    };
    let mut v = spec(&format!("cat /sys/fs/cgroup/{file}"));
    v["linux"]["resources"] = json!({"blockIO": {"throttleReadBpsDevice": [
        {"major": major, "minor": minor, "rate": 1048576}]}});
    let o = run("engine-blkio", &b, v);
    assert_eq!(o.status, ExitStatus::exited(0), "stderr: {}", o.stderr);
    let want = if cgroup_v2() {
        format!("{major}:{minor} rbps=1048576 wbps=max riops=max wiops=max\n")
    } else {
        format!("{major}:{minor} 1048576\n")
    };
    assert_eq!(o.stdout, want);
}

#[test]
fn default_deny_profile_with_hundreds_of_rules() {
    // An allow-list profile shaped like Docker's default: every x86_64 system call allowed
    // except a few, clone only without namespace flags, clone3 answered with ENOSYS so
    // that the C library falls back to clone.
    let header = fs::read_to_string("/usr/include/x86_64-linux-gnu/asm/unistd_64.h").unwrap();
    let denied = ["mkdir", "mkdirat", "unshare", "clone", "clone3", "setns"];
    let names: Vec<&str> = header
        .lines()
        .filter_map(|l| l.strip_prefix("#define __NR_"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| !denied.contains(n))
        .collect();
    assert!(names.len() > 300);
    let b = Bundle::new("bigseccomp");
    let mut v = spec(
        "echo piped | cat; mkdir /tmp/d 2>&1; unshare -n true 2>&1; echo rc=$?; \
         grep '^Seccomp:' /proc/self/status",
    );
    v["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": names, "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
        ]
    });
    let o = run("engine-bigseccomp", &b, v);
    assert_eq!(o.status, ExitStatus::exited(0), "{} {}", o.stdout, o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], "piped");
    assert!(lines[1].contains("Operation not permitted"), "{}", o.stdout);
    assert!(lines[2].contains("Operation not permitted"), "{}", o.stdout);
    assert_eq!(&lines[3..], &["rc=1", "Seccomp:\t2"]);
}

#[test]
fn stdin_pipe_reaches_the_program() {
    use std::io::Write;
    let b = Bundle::new("stdin");
    let (in_r, in_w) = nix::unistd::pipe().unwrap();
    let (mut out_r, out_w) = pipe();
    let (_err_r, err_w) = pipe();
    let stdio = Stdio::Fds {
        stdin: Some(in_r),
        stdout: out_w,
        stderr: err_w,
    };
    let mut c = Container::create(opts("engine-stdin", &b, spec("tr a-z A-Z"), stdio)).unwrap();
    c.start().unwrap();
    let mut w = fs::File::from(in_w);
    w.write_all(b"hello through stdin\n").unwrap();
    drop(w);
    let mut s = String::new();
    out_r.read_to_string(&mut s).unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::exited(0));
    c.destroy().unwrap();
    assert_eq!(s, "HELLO THROUGH STDIN\n");
}

#[test]
fn exec_into_a_user_namespace_container() {
    let b = Bundle::new("userns-exec");
    let mut v = spec("");
    v["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}, {"containerID": 1, "hostID": 200000, "size": 1000}]);
    v["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}, {"containerID": 1, "hostID": 200000, "size": 1000}]);
    let c = sleeper("engine-userns-exec", &b, v);
    let init_user = fs::read_link(format!("/proc/{}/ns/user", c.pid())).unwrap();
    let (status, out) = exec_output(
        &c,
        json!({"user": {"uid": 5, "gid": 5}, "cwd": "/",
        "args": ["sh", "-c", "readlink /proc/self/ns/user; id -u; grep -E '^Uid:' /proc/self/status"]}),
    );
    assert_eq!(status, ExitStatus::exited(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], init_user.display().to_string());
    assert_eq!(&lines[1..], &["5", "Uid:\t5\t5\t5\t5"]);
    c.destroy().unwrap();
}
