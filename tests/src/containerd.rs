//! A private containerd for the tests: its own config, root, state and socket under a
//! temporary directory, with the shim under test first on its PATH. Everything it made is
//! removed when the harness is dropped: tasks, shims, mounts, the daemon and the directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const RUNTIME: &str = "io.containerd.sandbox.v2";
pub const IMAGE: &str = "docker.io/library/busybox:sandbox-test";
pub const NAMESPACE: &str = "sandbox-test";

pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub shim_root: PathBuf,
    daemon: Child,
}

/// Why the tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root".into());
    }
    for tool in ["containerd", "ctr"] {
        if which(tool).is_none() {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new(crate::image::BUSYBOX).is_file() {
        return Some("busybox-static is not installed".into());
    }
    None
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

impl Containerd {
    /// Starts the daemon; the shim, and the sandboxes it launches, use the binaries under
    /// test.
    pub fn start(name: &str) -> Containerd {
        let dir = PathBuf::from(format!("/tmp/sbx-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(
            crate::bin("containerd-shim-sandbox-v2"),
            bin.join("containerd-shim-sandbox-v2"),
        )
        .unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let secs = |s: u64| crate::patience(Duration::from_secs(s)).as_secs();
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
[timeouts]
  "io.containerd.timeout.shim.cleanup" = "{cleanup}s"
  "io.containerd.timeout.shim.load" = "{load}s"
  "io.containerd.timeout.shim.shutdown" = "{shutdown}s"
  "io.containerd.timeout.task.state" = "{state_timeout}s"
[grpc]
  address = "{socket}"
[debug]
  address = "{debug}"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                debug = dir.join("debug.sock").display(),
                // containerd's own defaults, stretched where the test machine is slow (a
                // shim's clean-up there stops a VM under emulation).
                cleanup = secs(5),
                load = secs(5),
                shutdown = secs(3),
                state_timeout = secs(2),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let shim_root = dir.join("shim");
        let daemon = crate::bins::use_binaries(&mut Command::new("containerd"))
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("SANDBOX_SHIM_ROOT", &shim_root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            dir,
            socket,
            shim_root,
            daemon,
        };
        let deadline = Instant::now() + crate::patience(Duration::from_secs(30));
        loop {
            if c.socket.exists() && c.ctr(&["version"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in(args, None)
    }

    /// Runs ctr (bounded by `timeout`, so a hang fails the test instead of blocking it).
    /// `stdin` is the task `id` that ctr creates and the bytes to feed it.
    pub fn ctr_in(&self, args: &[&str], stdin: Option<(&str, &[u8])>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new("timeout");
        cmd.arg(
            crate::patience(Duration::from_secs(60))
                .as_secs()
                .to_string(),
        )
        .arg("ctr")
        .arg("--address")
        .arg(&self.socket)
        .arg("--namespace")
        .arg(NAMESPACE)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("run ctr");
        if let Some((id, data)) = stdin {
            // ctr sends CloseIO at the end of its stdin only if the task exists by then
            // (ctr's stdinCloser has no closer before NewTask returns): feed it once
            // containerd lists the task, and a moment later for ctr's own step after that.
            let deadline = Instant::now() + crate::patience(Duration::from_secs(20));
            while self.task_status(id).is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(500));
            let mut w = child.stdin.take().unwrap();
            w.write_all(data).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// ctr that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}): {}{}\n--- containerd log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 3000)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn import_image(&self) {
        self.import_image_named(IMAGE);
    }

    /// Imports a busybox image named `name` (a full reference), whose /etc/image-name says
    /// that name.
    pub fn import_image_named(&self, name: &str) {
        let archive = self
            .dir
            .join(format!("{}.tar", crate::image::sha256_hex(name.as_bytes())));
        crate::image::write_oci_archive(&archive, name);
        self.ok(&["images", "import", archive.to_str().unwrap()]);
        let list = self.ok(&["images", "ls", "-q"]);
        assert!(list.contains(name), "image not imported: {list}");
    }

    /// `ctr events`, written to `<dir>/events.log` until the child is killed.
    pub fn events(&self) -> Child {
        let log = std::fs::File::create(self.dir.join("events.log")).unwrap();
        let child = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE, "events"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("run ctr events");
        // Subscribed before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        child
    }

    /// The status column of `ctr task ls` for `id` (RUNNING, STOPPED, ...).
    pub fn task_status(&self, id: &str) -> Option<(u32, String)> {
        let out = self.ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| (f[1].parse().unwrap_or(0), f[2].to_string()))
        })
    }

    pub fn wait_task_status(&self, id: &str, want: &str) -> u32 {
        let deadline = Instant::now() + crate::patience(Duration::from_secs(20));
        loop {
            if let Some((pid, s)) = self.task_status(id) {
                if s == want {
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never became {want}: {:?}",
                self.task_status(id)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills, deletes and removes a container started with `ctr run -d`.
    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        if self.task_status(id).is_some() {
            self.wait_task_status(id, "STOPPED");
            self.ok(&["task", "delete", id]);
        }
        self.ok(&["container", "delete", id]);
    }

    /// Host processes whose command line contains every one of `needles`.
    pub fn processes_with(&self, needles: &[&str]) -> Vec<i32> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if needles.iter().all(|n| cmdline.contains(n)) {
                found.push(pid);
            }
        }
        found
    }

    /// Every mount point under the harness directory.
    pub fn mounts(&self) -> Vec<String> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = self.dir.display().to_string();
        text.lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&dir))
            .map(str::to_owned)
            .collect()
    }
}

pub fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    &s[start..]
}

pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The nearest ancestor of `pid` whose name is `name`.
pub fn ancestor_named(pid: i32, name: &str) -> Option<i32> {
    let mut p = pid;
    for _ in 0..32 {
        p = parent_of(p)?;
        if p <= 1 {
            return None;
        }
        if comm(p) == name {
            return Some(p);
        }
    }
    None
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Whatever a failed test left: tasks, containers, then the shims they ran in.
        if let Ok(out) = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE, "containers", "ls", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("ctr")
                    .arg("--address")
                    .arg(&self.socket)
                    .args(["--namespace", NAMESPACE, "task", "delete", "-f", id])
                    .output();
                let _ = Command::new("ctr")
                    .arg("--address")
                    .arg(&self.socket)
                    .args(["--namespace", NAMESPACE, "containers", "delete", id])
                    .output();
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + crate::patience(Duration::from_secs(10));
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.daemon.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let addr = self.socket.display().to_string();
        for pid in self.processes_with(&["containerd-shim", &addr]) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The cgroup parent named after the containerd namespace (containerd puts containers
        // at /<namespace>/<id>); rmdir only succeeds once it is empty.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join(NAMESPACE));
            }
        }
    }
}
