//! A private runtime root and image store per test, and `sandbox` commands run against them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Env {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub images: PathBuf,
    pub isolation: &'static str,
}

impl Env {
    pub fn new(name: &str, isolation: &'static str) -> Env {
        let dir = std::env::temp_dir().join(format!(
            "sandbox-e2e-{name}-{isolation}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let env = Env {
            root: dir.join("root"),
            images: dir.join("images"),
            dir,
            isolation,
        };
        // Images are shared with every test through a build of the default image per Env, so
        // each test starts from a fresh store.
        env
    }

    /// `sandbox` under test on this Env's root, image store and isolation.
    pub fn cmd(&self) -> Command {
        let mut c = crate::sandbox();
        c.env("SANDBOX_ROOT", &self.root)
            .env("SANDBOX_IMAGE_STORE", &self.images)
            .env("SANDBOX_ISOLATION", self.isolation);
        c
    }

    /// Runs `sandbox ARGS` with stdin closed and returns its output.
    pub fn sandbox(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run sandbox")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.sandbox(args);
        assert!(
            out.status.success(),
            "sandbox {args:?} failed ({}): stdout {:?} stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `sandbox ARGS` whose process outlives it holding stdout/stderr (create, a
    /// detached exec): they go to files, as a runc caller would give fifos.
    pub fn ok_bg(&self, args: &[&str]) -> String {
        let n = self.dir.read_dir().map(|d| d.count()).unwrap_or(0);
        let out = self.dir.join(format!("bg-{n}.out"));
        let err = self.dir.join(format!("bg-{n}.err"));
        let status = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .expect("run sandbox");
        assert!(
            status.success(),
            "sandbox {args:?} failed ({status}): {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        out.display().to_string()
    }

    /// Runs a command expected to fail and returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.sandbox(args);
        assert!(
            !out.status.success(),
            "sandbox {args:?} unexpectedly succeeded: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn state(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["state", id])).expect("state is JSON")
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    pub fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + crate::patience(Duration::from_secs(10));
        loop {
            let st = self.status(id);
            if st == want {
                return;
            }
            assert!(Instant::now() < deadline, "{id} stayed {st}, wanted {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A bundle whose rootfs is a copy of the default busybox image.
    pub fn bundle(&self, name: &str, args: &[&str]) -> PathBuf {
        self.ok(&["image", "build-default"]);
        let b = self.dir.join(name);
        std::fs::create_dir_all(&b).unwrap();
        let src = self.images.join("images/busybox/rootfs");
        let st = Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(b.join("rootfs"))
            .status()
            .unwrap();
        assert!(st.success());
        self.write_config(&b, args, |_| {});
        b
    }

    pub fn write_config(&self, b: &Path, args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) {
        let _ = std::fs::remove_file(b.join("config.json"));
        self.ok(&["spec", "--bundle", b.to_str().unwrap()]);
        let mut c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
        c["process"]["args"] = serde_json::json!(args);
        c["process"]["terminal"] = serde_json::json!(false);
        c["root"]["path"] = serde_json::json!("rootfs");
        c["root"]["readonly"] = serde_json::json!(false);
        edit(&mut c);
        std::fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(&c).unwrap(),
        )
        .unwrap();
    }

    /// No state directories left under the root.
    pub fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "state left behind: {left:?}");
        let bundles = self.root.join(".bundles");
        if let Ok(rd) = std::fs::read_dir(&bundles) {
            let left: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            assert!(left.is_empty(), "generated bundles left behind: {left:?}");
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(self.dir.to_str().unwrap()),
            "mounts left behind under {}",
            self.dir.display()
        );
        // The Env's directory, not only the root: a volume's virtiofsd names the volume.
        assert!(
            processes_mentioning(self.dir.to_str().unwrap()).is_empty(),
            "processes left behind"
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Best effort: force-delete whatever a failed test left, then the files.
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') {
                    let _ = self.sandbox(&["delete", "--force", &name]);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Pids of processes whose command line mentions `needle` (our monitors and agents carry the
/// runtime root in theirs).
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let me = std::process::id() as i32;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true);
            if text.contains(needle) && !zombie {
                out.push(pid);
            }
        }
    }
    out
}
