//! Docker with `sandbox` registered as a runtime: Debian's dockerd started privately (its own
//! data-root, exec-root, pidfile and socket; no bridge, no iptables), a busybox image made
//! here loaded with `docker load`, and `docker run --runtime sandbox`. Docker drives the
//! `sandbox` OCI CLI through its containerd's runc shim.
//!
//! Run: `cargo test -p sandbox-tests --test docker -- --nocapture` (as root).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sandbox_tests::containerd as harness;
use sandbox_tests::{bin, image, skip};

const DOCKER: &str = "/usr/bin/docker";
const TAG: &str = "busybox:sandbox-test";

struct Dockerd {
    dir: PathBuf,
    /// Short on purpose: the runtime's state lives under `<exec-root>/runtime-runc/moby/<64-hex
    /// id>/`, and its agent socket there must fit the 108 bytes of a unix socket address.
    exec_root: PathBuf,
    host: String,
    daemon: Child,
}

impl Dockerd {
    /// Starts the daemon with the `sandbox` under test registered, it and its children using
    /// the binaries under test.
    fn start(isolation: &str) -> Dockerd {
        let dir = PathBuf::from(format!("/tmp/sbx-docker-{}", std::process::id()));
        let exec_root = PathBuf::from(format!("/tmp/sd{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&exec_root);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("daemon.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&serde_json::json!({
                "runtimes": {"sandbox": {
                    "path": bin("sandbox"),
                    "runtimeArgs": ["--isolation", isolation]
                }}
            }))
            .unwrap(),
        )
        .unwrap();
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let daemon = sandbox_tests::bins::use_binaries(&mut Command::new("dockerd"))
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .args(["--ip-forward=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let d = Dockerd {
            host: format!("unix://{}", socket.display()),
            dir,
            exec_root,
            daemon,
        };
        let deadline = Instant::now() + sandbox_tests::patience(Duration::from_secs(60));
        while !(socket.exists() && d.docker(&["version"]).status.success()) {
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up: {}",
                harness::tail(&d.log(), 3000)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg(
                sandbox_tests::patience(Duration::from_secs(120))
                    .as_secs()
                    .to_string(),
            )
            .arg(DOCKER)
            .arg("--host")
            .arg(&self.host)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}): {}{}\n--- dockerd log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            harness::tail(&self.log(), 3000)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(out) = Command::new(DOCKER)
            .arg("--host")
            .arg(&self.host)
            .args(["ps", "-aq"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new(DOCKER)
                    .arg("--host")
                    .arg(&self.host)
                    .args(["rm", "-f", id])
                    .output();
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + sandbox_tests::patience(Duration::from_secs(20));
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.daemon.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // dockerd's own containerd and its shims, should any outlive it.
        let dir = self.dir.display().to_string();
        let exec_root = self.exec_root.display().to_string();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains(&dir) || cmdline.contains(&exec_root) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&dir) || m.starts_with(&exec_root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.exec_root);
    }
}

/// `docker run` with the runtime under test and no network (the private dockerd has no
/// bridge), then `args`.
fn sandboxed<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["run", "--runtime", "sandbox", "--network", "none"];
    all.extend_from_slice(args);
    all
}

/// `docker run`, its exit code, a detached container with `docker exec`, in `isolation`.
fn docker_run_with_sandbox_runtime(test: &str, isolation: &str) {
    if let Some(why) = harness::unavailable() {
        skip(&format!("{test}: {why}"));
        return;
    }
    if harness::which("dockerd").is_none() || !Path::new(DOCKER).is_file() {
        skip(&format!(
            "{test}: Debian's docker.io (dockerd, /usr/bin/docker) is not installed"
        ));
        return;
    }
    let d = Dockerd::start(isolation);
    let info = d.ok(&["info", "--format", "{{json .Runtimes}}"]);
    assert!(info.contains("sandbox"), "runtime not registered: {info}");

    let archive = d.dir.join("busybox-docker.tar");
    image::write_docker_archive(&archive, TAG);
    let out = d.ok(&["load", "--input", archive.to_str().unwrap()]);
    assert!(out.contains(TAG), "{out}");

    let out = d.ok(&sandboxed(&["--rm", TAG, "echo", "hi"]));
    assert_eq!(out, "hi\n");

    // The exit code comes back through docker.
    let o = d.docker(&sandboxed(&["--rm", TAG, "sh", "-c", "exit 7"]));
    assert_eq!(o.status.code(), Some(7), "{o:?}");

    // The files Docker binds in (hostname, hosts, resolv.conf) reach the container: in a VM
    // as copies the agent binds from.
    let out = d.ok(&sandboxed(&[
        "--rm",
        "--hostname",
        "boxname",
        TAG,
        "sh",
        "-c",
        "cat /etc/hostname; grep -q localhost /etc/hosts && echo hosts-ok",
    ]));
    assert_eq!(out, "boxname\nhosts-ok\n");

    // A bind-mounted directory (shared with a VM through virtio-fs): the container reads
    // what the host put there and the host sees what the container wrote; `--mount` with
    // `readonly` refuses writes.
    let shared = d.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("from-host"), "host-line\n").unwrap();
    let volume = format!("{}:/data", shared.display());
    let out = d.ok(&sandboxed(&[
        "--rm",
        "-v",
        &volume,
        TAG,
        "sh",
        "-c",
        "cat /data/from-host; echo from-container > /data/f",
    ]));
    assert_eq!(out, "host-line\n");
    assert_eq!(
        std::fs::read_to_string(shared.join("f")).unwrap(),
        "from-container\n"
    );
    let read_only = format!("type=bind,source={},target=/ro,readonly", shared.display());
    let o = d.docker(&sandboxed(&[
        "--rm",
        "--mount",
        &read_only,
        TAG,
        "sh",
        "-c",
        "cat /ro/from-host && echo nope > /ro/g",
    ]));
    assert!(!o.status.success(), "a write to a readonly mount: {o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "host-line\n", "{o:?}");
    assert!(!shared.join("g").exists());

    // What a container wrote to its rootfs is the host's (in a VM: the rootfs is shared by
    // virtio-fs): `docker diff` lists it, `docker cp` copies it out, `docker commit` keeps it.
    let name = format!("commit-{isolation}");
    d.ok(&sandboxed(&[
        "--name",
        &name,
        TAG,
        "sh",
        "-c",
        "echo committed-line > /committed-file",
    ]));
    let diff = d.ok(&["diff", &name]);
    assert!(diff.contains("A /committed-file"), "{diff}");
    let copied = d.dir.join("copied-file");
    d.ok(&[
        "cp",
        &format!("{name}:/committed-file"),
        copied.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(&copied).unwrap(),
        "committed-line\n"
    );
    let committed = format!("sandbox-e2e-committed:{isolation}");
    d.ok(&["commit", &name, &committed]);
    let out = d.ok(&sandboxed(&["--rm", &committed, "cat", "/committed-file"]));
    assert_eq!(out, "committed-line\n");
    d.ok(&["rm", &name]);
    d.ok(&["rmi", &committed]);

    // The container really ran under the sandbox runtime: docker records it.
    let id = d.ok(&sandboxed(&["-d", TAG, "sleep", "300"]));
    let id = id.trim();
    let rt = d.ok(&["inspect", "--format", "{{.HostConfig.Runtime}}", id]);
    assert_eq!(rt.trim(), "sandbox");
    let out = d.ok(&["exec", id, "echo", "exec works"]);
    assert_eq!(out, "exec works\n");
    d.ok(&["rm", "-f", id]);

    // The quick start's next steps: logs, stop, start again, exec into the restarted one.
    let id = d.ok(&sandboxed(&[
        "-d",
        TAG,
        "sh",
        "-c",
        "echo logged-line; exec sleep 300",
    ]));
    let id = id.trim();
    let logged = |times: usize| {
        let deadline = Instant::now() + sandbox_tests::patience(Duration::from_secs(10));
        loop {
            let logs = d.ok(&["logs", id]);
            if logs.matches("logged-line").count() >= times {
                return;
            }
            assert!(Instant::now() < deadline, "docker logs {id}: {logs:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let running = || d.ok(&["inspect", "--format", "{{.State.Running}}", id]);
    logged(1);
    d.ok(&["stop", "-t", "1", id]);
    assert_eq!(running().trim(), "false");
    d.ok(&["start", id]);
    assert_eq!(running().trim(), "true");
    logged(2);
    let out = d.ok(&["exec", id, "echo", "after restart"]);
    assert_eq!(out, "after restart\n");
    d.ok(&["rm", "-f", id]);
}

mod docker_run_with_sandbox_runtime {
    #[test]
    fn native() {
        super::docker_run_with_sandbox_runtime("docker_run_with_sandbox_runtime::native", "native");
    }

    #[test]
    fn vm() {
        const TEST: &str = "docker_run_with_sandbox_runtime::vm";
        if sandbox_tests::vm_or_skip(TEST) {
            super::docker_run_with_sandbox_runtime(TEST, "vm");
        }
    }
}
