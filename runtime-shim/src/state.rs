//! Runtime state: one directory per container under the runtime root, each holding a
//! `state.json` that is only ever replaced whole (write a temporary file, fsync, rename), so a
//! runtime that dies mid-update leaves either the old or the new record, never half of one.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

pub const STATE_FILE: &str = "state.json";
/// Where a monitor records why the sandbox ended under its container (a VMM that died, a
/// killed agent): the reason every later refusal of the stopped container names.
const LOSS_FILE: &str = "error";
pub const OCI_VERSION: &str = "1.2.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Vm,
    Native,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::Vm => "vm",
            Isolation::Native => "native",
        })
    }
}

/// A host process named by pid and its start time, so a recycled pid is never mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostProcess {
    pub pid: i32,
    pub start_time: u64,
}

impl HostProcess {
    pub fn of(pid: i32) -> Option<Self> {
        proc_start_time(pid).map(|start_time| HostProcess { pid, start_time })
    }

    /// True while the process exists, is not a zombie, and is the one we recorded.
    pub fn alive(&self) -> bool {
        match read_proc_stat(self.pid) {
            Some((state, start)) => state != 'Z' && state != 'X' && start == self.start_time,
            None => false,
        }
    }
}

/// Everything the runtime keeps about one container between invocations.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub status: Status,
    pub isolation: Isolation,
    pub created: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The host process that watches the container, records its end and shuts its back end
    /// down; it lives as long as the container. Its pid is what `create` reports in vm
    /// isolation (native reports the container's init, `container_process`).
    pub monitor: Option<HostProcess>,
    /// The per-sandbox `sandbox-agent` (native) or `sandbox-vmm` (vm) process.
    pub backend: Option<HostProcess>,
    /// The container's init pid as the agent sees it (a guest pid under vm isolation).
    pub container_pid: Option<i32>,
    /// Native isolation: the container's init on the host, the pid `create`, `state` and
    /// `list` report (as runc does); killed on teardown should the agent have died and left
    /// it behind.
    #[serde(default)]
    pub container_process: Option<HostProcess>,
    /// Unix socket that reaches the agent (native: the agent's socket; vm: the vsock socket).
    pub agent_socket: PathBuf,
    /// Set once the container's init has exited: the wait status in shell form (128+n for a
    /// signal).
    pub exit_code: Option<i32>,
    /// Files and resources to release on delete beyond the state directory itself.
    #[serde(default)]
    pub cleanup: Cleanup,
    /// The spec's poststop hooks, run on the host by `delete` once the container is gone
    /// (the runtime spec's lifecycle steps 12 and 13), from the config as it was at create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststop: Vec<oci_spec::runtime::Hook>,
    /// VM isolation: the spec's poststart hooks, run on the host by `start` (natively the
    /// engine runs them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststart: Vec<oci_spec::runtime::Hook>,
    /// Native isolation, a spec without a mount namespace: the container's mounts are made
    /// on its rootfs in the host's mount namespace. The agent detaches them at destroy; the
    /// teardown does too, should the agent be gone, down to this mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_mount_ns_rootfs: Option<SharedRootfs>,
}

/// A rootfs and the id of the mount it was on before the container (statx STX_MNT_ID).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedRootfs {
    pub path: PathBuf,
    pub mount_id_before: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cleanup {
    /// Per-container writable disk images (vm isolation).
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// TAP devices created for the VM, deleted in the namespace they live in.
    #[serde(default)]
    pub taps: Vec<TapRecord>,
    /// Host mounts made for the container (the overlay rootfs of `sandbox run --image`).
    #[serde(default)]
    pub mounts: Vec<PathBuf>,
    /// Directories made for the container (generated bundles, the VMM's jail).
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// cgroups made for the VMM; what is left in them is killed before they are removed.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TapRecord {
    pub name: String,
    pub netns: Option<PathBuf>,
    /// The interface whose ingress redirect to the TAP must go too.
    #[serde(default)]
    pub veth: Option<String>,
}

/// An id for a container or exec the caller did not name: `<prefix>-<pid>-<nanoseconds>`.
pub fn generated_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

impl ContainerRecord {
    /// The status as it really is now: a created/running container whose monitor is gone has
    /// stopped, whatever the file says (the monitor may have been killed before it could record
    /// that).
    pub fn live_status(&self) -> Status {
        match self.status {
            Status::Created | Status::Running | Status::Creating => match &self.monitor {
                // A native container's init is reaped by whoever adopted it, not by the
                // monitor, which may take a moment to notice its end: the init decides.
                Some(_) if self.container_process.is_some_and(|p| !p.alive()) => Status::Stopped,
                Some(m) if m.alive() => self.status,
                Some(_) => Status::Stopped,
                None if self.status == Status::Creating => Status::Creating,
                None => Status::Stopped,
            },
            Status::Stopped => Status::Stopped,
        }
    }

    /// The host pid that stands for the container while it is created or running: the
    /// container's init in native isolation (its /proc entry shows the container's
    /// namespaces and cgroup, as runc's does), the monitor in vm isolation (the container's
    /// init is a guest process; see docs/sandbox-cli.md).
    pub fn reported_pid(&self) -> Option<i32> {
        match self.isolation {
            Isolation::Native => self.container_process.map(|p| p.pid),
            Isolation::Vm => self.monitor.map(|m| m.pid),
        }
    }

    /// The OCI runtime-spec state document, with runc's extra fields.
    pub fn oci_state(&self) -> serde_json::Value {
        let status = self.live_status();
        let pid = match status {
            Status::Created | Status::Running => self.reported_pid().unwrap_or(0),
            _ => 0,
        };
        serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": status.to_string(),
            "pid": pid,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
            "annotations": self.annotations,
        })
    }
}

/// The runtime root: `<root>/<id>/state.json`.
#[derive(Clone, Debug)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Claims the id: the directory is created exclusively, so two concurrent creates of one id
    /// cannot both succeed.
    pub fn claim(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        fs::create_dir_all(&self.root).ctx("create runtime root", &self.root)?;
        let dir = self.dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::AlreadyExists(id.to_string()))
            }
            Err(e) => Err(Error::io("create state directory", dir, e)),
        }
    }

    pub fn exists(&self, id: &str) -> bool {
        self.dir(id).is_dir()
    }

    pub fn load(&self, id: &str) -> Result<ContainerRecord> {
        validate_id(id)?;
        let path = self.dir(id).join(STATE_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.dir(id).is_dir() {
                    return Err(Error::CorruptState {
                        id: id.to_string(),
                        path,
                        reason: "state.json is missing (a create was interrupted); `delete --force` removes it".into(),
                    });
                }
                return Err(Error::NotFound(id.to_string()));
            }
            Err(e) => return Err(Error::io("read state", path, e)),
        };
        serde_json::from_slice(&text).map_err(|e| Error::CorruptState {
            id: id.to_string(),
            path,
            reason: e.to_string(),
        })
    }

    /// Records why the back end ended under the container, for [`StateStore::loss`].
    pub fn record_loss(&self, id: &str, why: &str) -> Result<()> {
        let path = self.dir(id).join(LOSS_FILE);
        fs::write(&path, format!("{why}\n")).ctx("record the sandbox's loss", path)
    }

    /// Why the back end ended under the container, when it did.
    pub fn loss(&self, id: &str) -> Option<String> {
        let why = fs::read_to_string(self.dir(id).join(LOSS_FILE)).ok()?;
        let why = why.trim();
        (!why.is_empty()).then(|| why.to_string())
    }

    /// The refusal of `action` on a container that is `status` instead of `needed`: one that
    /// stopped because its sandbox ended says why (a start after the VM died names the VMM's
    /// last words, not only "stopped").
    pub fn wrong_state(
        &self,
        id: &str,
        status: Status,
        action: &'static str,
        needed: &'static str,
    ) -> Error {
        let ended = (status == Status::Stopped)
            .then(|| self.sandbox_ended(id, action))
            .flatten();
        ended.unwrap_or_else(|| Error::WrongState {
            id: id.to_string(),
            status: status.to_string(),
            action,
            needed,
        })
    }

    /// The refusal of `action` because the container's sandbox ended, when one did.
    pub fn sandbox_ended(&self, id: &str, action: &'static str) -> Option<Error> {
        self.loss(id).map(|why| Error::SandboxEnded {
            id: id.to_string(),
            action,
            why,
        })
    }

    /// Refuses `action` unless the container's status now is one of `allowed`, which
    /// `needed` names in words.
    pub fn require_status(
        &self,
        rec: &ContainerRecord,
        action: &'static str,
        allowed: &[Status],
        needed: &'static str,
    ) -> Result<()> {
        let status = rec.live_status();
        if allowed.contains(&status) {
            return Ok(());
        }
        Err(self.wrong_state(&rec.id, status, action, needed))
    }

    /// Refuses `action` unless the container is created or running now.
    pub fn require_live(&self, rec: &ContainerRecord, action: &'static str) -> Result<()> {
        self.require_status(
            rec,
            action,
            &[Status::Created, Status::Running],
            "created or running",
        )
    }

    pub fn save(&self, rec: &ContainerRecord) -> Result<()> {
        let dir = self.dir(&rec.id);
        let data = serde_json::to_vec_pretty(rec).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&dir.join(STATE_FILE), &data)
    }

    /// Ids of every container directory under the root, sorted.
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(Error::io("list runtime root", &self.root, e)),
        };
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if let Some(name) = entry.file_name().to_str() {
                    if validate_id(name).is_ok() {
                        ids.push(name.to_string());
                    }
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove state directory", dir, e)),
        }
    }
}

/// An exclusive lock on one container's state, held while a command reads, checks and
/// rewrites it, so `start` and the monitor's exit record cannot overwrite each other.
pub struct StateLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

impl StateStore {
    pub fn lock(&self, id: &str) -> Result<StateLock> {
        validate_id(id)?;
        let dir = self.dir(id);
        if !dir.is_dir() {
            return Err(Error::NotFound(id.to_string()));
        }
        let path = dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx("open lock", &path)?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::sys("lock container state", e))?;
        Ok(StateLock { _lock: lock })
    }
}

/// Writes `data` to `path` so that readers see the old or the new contents, never a mix.
///
/// No fsync: the state describes processes that a reboot ends anyway (the root is normally
/// under /run), and rename already makes the switch atomic for any process that crashes
/// mid-update; an fsync per state change cost milliseconds on every container start.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        drop(f);
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("write", path, e)
    })
}

pub fn validate_id(id: &str) -> Result<()> {
    match agent::engine::id_problem(id) {
        None => Ok(()),
        Some(_) => Err(Error::InvalidId(id.to_string())),
    }
}

fn read_proc_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // starttime is field 22 of the whole line, i.e. index 19 after pid and comm.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

pub fn proc_start_time(pid: i32) -> Option<u64> {
    read_proc_stat(pid).map(|(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("abc-1.2_3").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "-flag", "sp ace"] {
            assert!(
                matches!(validate_id(bad), Err(Error::InvalidId(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn own_process_is_alive_and_recycled_pid_is_not() {
        let me = HostProcess::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let fake = HostProcess {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!fake.alive());
    }

    #[test]
    fn claim_is_exclusive_and_save_roundtrips() {
        let tmp = std::env::temp_dir().join(format!("sandbox-state-test-{}", std::process::id()));
        let store = StateStore::new(&tmp);
        store.claim("c1").unwrap();
        assert!(matches!(store.claim("c1"), Err(Error::AlreadyExists(_))));
        assert!(matches!(store.load("c1"), Err(Error::CorruptState { .. })));
        let rec = ContainerRecord {
            id: "c1".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            status: Status::Created,
            isolation: Isolation::Native,
            created: "now".into(),
            annotations: Default::default(),
            monitor: None,
            backend: None,
            container_pid: None,
            container_process: None,
            agent_socket: "/s".into(),
            exit_code: None,
            cleanup: Default::default(),
            poststop: Vec::new(),
            poststart: Vec::new(),
            shared_mount_ns_rootfs: None,
        };
        store.save(&rec).unwrap();
        let back = store.load("c1").unwrap();
        assert_eq!(back.status, Status::Created);
        // No monitor recorded for a created container: it cannot be running any more.
        assert_eq!(back.live_status(), Status::Stopped);
        assert_eq!(store.ids().unwrap(), vec!["c1".to_string()]);
        store.remove("c1").unwrap();
        assert!(matches!(store.load("c1"), Err(Error::NotFound(_))));
        fs::remove_dir_all(&tmp).unwrap();
    }

    fn record(isolation: Isolation, monitor: HostProcess, init: HostProcess) -> ContainerRecord {
        ContainerRecord {
            id: "c1".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            status: Status::Running,
            isolation,
            created: "now".into(),
            annotations: Default::default(),
            monitor: Some(monitor),
            backend: None,
            container_pid: Some(1),
            container_process: (isolation == Isolation::Native).then_some(init),
            agent_socket: "/s".into(),
            exit_code: None,
            cleanup: Default::default(),
            poststop: Vec::new(),
            poststart: Vec::new(),
            shared_mount_ns_rootfs: None,
        }
    }

    #[test]
    fn native_reports_the_init_and_stops_with_it_vm_reports_the_monitor() {
        let me = HostProcess::of(std::process::id() as i32).unwrap();
        let parent = HostProcess::of(nix::unistd::getppid().as_raw()).unwrap();
        let gone = HostProcess {
            pid: parent.pid,
            start_time: parent.start_time + 1,
        };

        let native = record(Isolation::Native, me, parent);
        assert_eq!(native.live_status(), Status::Running);
        assert_eq!(native.oci_state()["pid"], parent.pid);

        // The init has ended (its adopter may not have told the monitor yet): stopped.
        let native = record(Isolation::Native, me, gone);
        assert_eq!(native.live_status(), Status::Stopped);
        assert_eq!(native.oci_state()["pid"], 0);

        let vm = record(Isolation::Vm, me, parent);
        assert_eq!(vm.live_status(), Status::Running);
        assert_eq!(vm.oci_state()["pid"], me.pid);
    }

    #[test]
    fn a_stopped_container_whose_sandbox_ended_is_refused_with_the_reason() {
        let tmp = std::env::temp_dir().join(format!("sandbox-state-loss-{}", std::process::id()));
        let store = StateStore::new(&tmp);
        store.claim("c1").unwrap();
        let me = HostProcess::of(std::process::id() as i32).unwrap();
        let gone = HostProcess {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        // The monitor is gone: stopped, and nothing says why.
        let rec = record(Isolation::Vm, gone, gone);
        let plain = store.require_live(&rec, "kill").unwrap_err().to_string();
        assert!(plain.contains("is stopped: cannot kill"), "{plain}");
        assert!(!plain.contains("sandbox ended"), "{plain}");

        store
            .record_loss(
                "c1",
                "sandbox-vmm exited with status 3\n--- vmm.log: triple fault",
            )
            .unwrap();
        assert_eq!(
            store.loss("c1").as_deref(),
            Some("sandbox-vmm exited with status 3\n--- vmm.log: triple fault")
        );
        let e = store.wrong_state("c1", Status::Stopped, "start", "created");
        assert!(matches!(e, Error::SandboxEnded { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("cannot start"), "{text}");
        assert!(text.contains("triple fault"), "{text}");
        // A live container in the wrong state is refused for its state, not an old loss.
        let e = store.wrong_state("c1", Status::Running, "start", "created");
        assert!(matches!(e, Error::WrongState { .. }), "{e}");
        fs::remove_dir_all(&tmp).unwrap();
    }
}
