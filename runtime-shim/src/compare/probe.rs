//! Running one probe: a bundle whose process is a probe script, run through `sandbox run`
//! (this same binary, so the native and vm columns go through the runtime's own create, start,
//! wait and teardown), with host-side watchers alongside.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use crate::config::RuntimeConfig;
use crate::error::{Error, IoContext, Result};
use crate::state::{Isolation, StateStore};

/// How a probe's container is set up beyond the runtime's default spec.
#[derive(Clone, Debug, Default)]
pub struct Shape {
    /// All capabilities, no masked or read-only paths, and `block_devices` exposed.
    pub privileged: bool,
    pub net_admin: bool,
    pub pids_limit: Option<i64>,
    pub memory_limit: Option<i64>,
    /// (name, major, minor) of host block devices to create in a privileged container, with
    /// read-only access in its device cgroup.
    pub block_devices: Vec<(String, i64, i64)>,
    pub env: Vec<String>,
}

/// What one run of a probe gave.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Outcome {
    pub values: BTreeMap<String, String>,
    pub exit_code: Option<i32>,
    pub wall_ms: f64,
    /// Largest RSS seen of the sandbox's back end (agent or VMM) and monitor, in KiB.
    pub backend_rss_kib: Option<u64>,
    pub monitor_rss_kib: Option<u64>,
    pub stderr: String,
}

const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
];

/// The capabilities in our own bounding set, by name.
fn held_capabilities() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1u64 << i) != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// The spec `sandbox run --image` starts from, with the probe's process and shape applied.
pub fn spec_for(rootfs: &Path, hostname: &str, script: &str, shape: &Shape) -> Result<Value> {
    let mut spec = Spec::default();
    spec.set_hostname(Some(hostname.to_string()));
    let mut v = serde_json::to_value(&spec).map_err(|e| Error::Other(e.to_string()))?;
    v["root"] = json!({"path": rootfs, "readonly": false});
    let p = &mut v["process"];
    p["args"] = json!(["sh", "-c", script]);
    p["terminal"] = json!(false);
    let mut env: Vec<String> = p["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    env.extend(shape.env.iter().cloned());
    p["env"] = json!(env);
    let caps = &mut p["capabilities"];
    if shape.privileged {
        // Every capability the runtime itself holds, as a privileged container gets.
        let held = held_capabilities();
        for set in ["bounding", "effective", "permitted"] {
            caps[set] = json!(held);
        }
    } else if shape.net_admin {
        for set in ["bounding", "effective", "permitted"] {
            if let Some(list) = caps[set].as_array_mut() {
                list.push(json!("CAP_NET_ADMIN"));
            }
        }
    }
    let linux = &mut v["linux"];
    if shape.privileged {
        linux["maskedPaths"] = json!([]);
        linux["readonlyPaths"] = json!([]);
        let devices: Vec<Value> = shape
            .block_devices
            .iter()
            .map(|(name, major, minor)| {
                json!({"path": format!("/dev/{name}"), "type": "b", "major": major,
                       "minor": minor, "fileMode": 0o440, "uid": 0, "gid": 0})
            })
            .collect();
        linux["devices"] = json!(devices);
    }
    let res = &mut linux["resources"];
    if res.is_null() {
        *res = json!({});
    }
    if shape.privileged {
        let mut rules = res["devices"].as_array().cloned().unwrap_or_default();
        for (_, major, minor) in &shape.block_devices {
            rules.push(
                json!({"allow": true, "type": "b", "major": major, "minor": minor,
                              "access": "r"}),
            );
        }
        res["devices"] = json!(rules);
    }
    if let Some(n) = shape.pids_limit {
        res["pids"] = json!({ "limit": n });
    }
    if let Some(m) = shape.memory_limit {
        // Swap at the same figure: the hog meets the OOM killer, not the swap device.
        res["memory"] = json!({"limit": m, "swap": m});
    }
    Ok(v)
}

/// Runs `sandbox run --bundle DIR ID` for a probe and watches its host processes.
pub fn run(
    g: &RuntimeConfig,
    isolation: Isolation,
    work: &Path,
    id: &str,
    spec: &Value,
    timeout: Duration,
) -> Result<Outcome> {
    let bundle = work.join(id);
    std::fs::create_dir_all(&bundle).ctx("create", &bundle)?;
    let text = serde_json::to_vec_pretty(spec).map_err(|e| Error::Other(e.to_string()))?;
    crate::state::write_atomic(&bundle.join("config.json"), &text)?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("find own executable", "/proc/self/exe", e))?;
    let mut cmd = Command::new(exe);
    cmd.args(g.with_isolation(isolation).to_args());
    cmd.arg("run")
        .arg("--bundle")
        .arg(&bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Other(format!("cannot start `sandbox run` for {id}: {e}")))?;
    let store = StateStore::new(&g.root);
    let mut outcome = Outcome::default();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || read_all(stdout));
    let err_reader = std::thread::spawn(move || read_all(stderr));
    let status = loop {
        if let Some(st) = child.try_wait().ok().flatten() {
            break Some(st);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            crate::sandbox::launch::teardown(&store, id);
            break None;
        }
        if let Ok(rec) = store.load(id) {
            let rss = |p: Option<crate::state::HostProcess>| p.and_then(|p| rss_kib(p.pid));
            outcome.backend_rss_kib = max_opt(outcome.backend_rss_kib, rss(rec.backend));
            outcome.monitor_rss_kib = max_opt(outcome.monitor_rss_kib, rss(rec.monitor));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    outcome.wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let out = out_reader.join().unwrap_or_default();
    outcome.stderr = err_reader.join().unwrap_or_default();
    outcome.values = parse(&out);
    outcome.exit_code = status.and_then(|s| s.code());
    if status.is_none() {
        return Err(Error::Other(format!(
            "probe {id} did not finish within {} s",
            timeout.as_secs()
        )));
    }
    Ok(outcome)
}

fn read_all(r: Option<impl std::io::Read>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        let _ = r.read_to_string(&mut s);
    }
    s
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// VmRSS of a host process, in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `key=value` lines; anything else (a program's stray output) is ignored.
pub fn parse(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Records the host kernel log appends after it is opened (from /dev/kmsg, positioned at its
/// end), so a drill's effect on the host's log can be read back.
pub struct KmsgMark {
    file: Option<std::fs::File>,
    pub error: Option<String>,
}

impl KmsgMark {
    pub fn now() -> KmsgMark {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
        {
            Ok(mut f) => {
                // SEEK_END on /dev/kmsg moves to the end of the ring: only new records follow.
                let _ = f.seek(SeekFrom::End(0));
                KmsgMark {
                    file: Some(f),
                    error: None,
                }
            }
            Err(e) => KmsgMark {
                file: None,
                error: Some(format!("cannot open /dev/kmsg: {e}")),
            },
        }
    }

    /// The messages logged since the mark (one record per read on /dev/kmsg).
    pub fn since(&mut self) -> Vec<String> {
        use std::io::Read;
        let mut out = Vec::new();
        let Some(f) = self.file.as_mut() else {
            return out;
        };
        let mut buf = vec![0u8; 8192];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    // "prio,seq,usec,flags;message"
                    let msg = rec.split_once(';').map(|x| x.1).unwrap_or(&rec);
                    out.push(msg.lines().next().unwrap_or("").to_string());
                }
                // EPIPE: records were overwritten; keep reading from the next one.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// Times a host fork+exec+wait of `true` every 50 ms while a drill runs: the host's
/// responsiveness seen from outside the sandbox.
pub struct Responsiveness {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<f64>>>,
}

impl Responsiveness {
    pub fn start() -> Responsiveness {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = Command::new("true")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()
                    .map(|st| st.success())
                    .unwrap_or(false);
                if ok {
                    samples.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        Responsiveness {
            stop,
            thread: Some(thread),
        }
    }

    /// (samples, max ms) of the host-side probe.
    pub fn finish(mut self) -> (usize, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let v = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let max = v.iter().copied().fold(0.0, f64::max);
        (v.len(), max)
    }
}

/// Host block devices that hold a mounted filesystem, as (name, major, minor): the ones the
/// privileged drill may try to mount read-only. A mounted filesystem's superblock is live, so
/// a second read-only mount either shares it or is refused; it never replays a journal.
pub fn mounted_block_devices() -> Vec<(String, i64, i64)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted: std::collections::BTreeSet<(i64, i64)> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter_map(|mm| mm.split_once(':'))
        .filter_map(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .collect();
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/block") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(dev) = std::fs::read_to_string(e.path().join("dev")) else {
                continue;
            };
            let Some((a, b)) = dev.trim().split_once(':') else {
                continue;
            };
            let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) else {
                continue;
            };
            if mounted.contains(&(a, b)) {
                out.push((name, a, b));
            }
        }
    }
    out.sort();
    out
}

/// Copies the image's rootfs into the compare's work directory.
pub fn copy_rootfs(src: &Path, dst: &Path) -> Result<PathBuf> {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .map_err(|e| Error::Other(format!("cannot run cp: {e}")))?;
    if !st.success() {
        return Err(Error::Other(format!(
            "copying {} to {} failed ({st})",
            src.display(),
            dst.display()
        )));
    }
    Ok(dst.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_value_lines_only() {
        let v = parse("kernel_release=6.1.0\nnoise\n=x\nbad key=1\ndev=null zero \n");
        assert_eq!(v.get("kernel_release").unwrap(), "6.1.0");
        assert_eq!(v.get("dev").unwrap(), "null zero");
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn privileged_spec_opens_what_a_privileged_container_has() {
        let shape = Shape {
            privileged: true,
            pids_limit: Some(64),
            block_devices: vec![("vda".into(), 254, 0)],
            ..Default::default()
        };
        let v = spec_for(Path::new("/r"), "h", "true", &shape).unwrap();
        assert_eq!(v["linux"]["maskedPaths"], json!([]));
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 64);
        assert_eq!(v["linux"]["devices"][0]["path"], "/dev/vda");
        let caps = v["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap();
        assert!(caps.contains(&json!("CAP_SYS_MODULE")));
        let plain = spec_for(Path::new("/r"), "h", "true", &Shape::default()).unwrap();
        let caps = plain["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap();
        assert!(!caps.contains(&json!("CAP_SYS_ADMIN")));
        assert_eq!(plain["process"]["args"], json!(["sh", "-c", "true"]));
    }
}
