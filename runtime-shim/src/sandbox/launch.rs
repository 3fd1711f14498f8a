//! The OCI lifecycle operations on the host side: create (start a monitor and wait until it
//! reports the container created), start, kill and delete, with the spec's state rules.

use std::ffi::OsString;
use std::io::{BufRead, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agent::protocol::ProcessRef;

use crate::bundle::Bundle;
use crate::config::RuntimeConfig;
use crate::error::{Error, Result};
use crate::sandbox::backend::{native, vm};
use crate::sandbox::host_hooks::HostHooks;
use crate::sandbox::link;
use crate::sandbox::timings::Timeline;
use crate::state::{
    validate_id, write_atomic, ContainerRecord, HostProcess, Isolation, SharedRootfs, StateStore,
    Status,
};

/// The fd on which a monitor reports "ok" or the reason it failed.
pub const READY_FD: i32 = 3;

pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    /// Keep the monitor as a child of this process (`run`) instead of letting it go.
    pub foreground: bool,
    /// Give the container /dev/null as stdin instead of ours.
    pub stdin_null: bool,
    /// Host resources made for this container before it existed, released on delete.
    pub cleanup: crate::state::Cleanup,
}

/// Creates the container and returns the pid it reports (see
/// [`ContainerRecord::reported_pid`]) and its monitor (as a child when `foreground`).
pub fn create_container(g: &RuntimeConfig, o: &CreateOptions) -> Result<(i32, Option<Child>)> {
    validate_id(&o.id)?;
    let store = StateStore::new(&g.root);
    if store.exists(&o.id) {
        return Err(Error::AlreadyExists(o.id.clone()));
    }
    // Check everything the caller can get wrong before anything is created.
    let bundle = Bundle::load(&o.bundle)?;
    let isolation = g.isolation;
    if isolation == Isolation::Vm {
        vm::preflight(g)?;
    }
    if let Some(sock) = &o.console_socket {
        if !sock.exists() {
            return Err(Error::Usage(format!(
                "console socket {} does not exist",
                sock.display()
            )));
        }
    }
    let dir = store.claim(&o.id)?;
    let annotations = bundle
        .spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut rec = ContainerRecord {
        id: o.id.clone(),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        status: Status::Creating,
        isolation,
        created: crate::timefmt::now_rfc3339(),
        annotations,
        monitor: None,
        backend: None,
        container_pid: None,
        container_process: None,
        agent_socket: match isolation {
            Isolation::Native => dir.join(native::AGENT_SOCKET),
            Isolation::Vm => vm::vsock_socket(&dir),
        },
        exit_code: None,
        cleanup: o.cleanup.clone(),
        poststop: bundle
            .spec
            .hooks()
            .as_ref()
            .and_then(|h| h.poststop().clone())
            .unwrap_or_default(),
        poststart: match isolation {
            // Natively the engine runs poststart when it starts the process.
            Isolation::Native => Vec::new(),
            Isolation::Vm => bundle
                .spec
                .hooks()
                .as_ref()
                .and_then(|h| h.poststart().clone())
                .unwrap_or_default(),
        },
        shared_mount_ns_rootfs: None,
    };
    if isolation == Isolation::Native && !has_mount_namespace(&bundle.spec) {
        match agent::engine::mount_id(&bundle.rootfs) {
            Ok(id) => {
                rec.shared_mount_ns_rootfs = Some(SharedRootfs {
                    path: bundle.rootfs.clone(),
                    mount_id_before: id,
                })
            }
            Err(e) => {
                let _ = store.remove(&o.id);
                return Err(Error::Other(format!(
                    "rootfs {}: {e}",
                    bundle.rootfs.display()
                )));
            }
        }
    }
    if let Err(e) = store.save(&rec) {
        let _ = store.remove(&o.id);
        return Err(e);
    }

    let mut args: Vec<OsString> = vec!["__monitor".into(), "create".into(), o.id.clone().into()];
    if let Some(sock) = &o.console_socket {
        args.push("--console-socket".into());
        args.push(sock.clone().into());
    }
    let (monitor_pid, child) = match spawn_monitor(g, &args, o.stdin_null) {
        Ok(v) => v,
        Err(e) => {
            teardown(&store, &o.id);
            return Err(e);
        }
    };
    let pid = match isolation {
        Isolation::Vm => monitor_pid,
        Isolation::Native => match store.load(&o.id).map(|r| r.reported_pid()) {
            Ok(Some(pid)) => pid,
            other => {
                teardown(&store, &o.id);
                return Err(match other {
                    Err(e) => e,
                    _ => Error::Other(format!(
                        "container {}: the monitor recorded no container process",
                        o.id
                    )),
                });
            }
        },
    };
    if let Some(pid_file) = &o.pid_file {
        if let Err(e) = write_atomic(pid_file, pid.to_string().as_bytes()) {
            teardown(&store, &o.id);
            return Err(e);
        }
    }
    Ok((pid, o.foreground.then_some(child)))
}

/// Whether the spec gives the container a mount namespace of its own (new or joined).
fn has_mount_namespace(spec: &oci_spec::runtime::Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Mount)
        })
}

/// Starts `sandbox __monitor ARGS` in its own session and waits for its verdict on fd 3.
pub fn spawn_monitor(
    g: &RuntimeConfig,
    args: &[OsString],
    stdin_null: bool,
) -> Result<(i32, Child)> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("find own executable", "/proc/self/exe", e))?;
    let (rd, wr): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
    let mut cmd = Command::new(exe);
    cmd.args(g.to_args());
    cmd.args(args);
    if stdin_null {
        cmd.stdin(std::process::Stdio::null());
    }
    let wr_fd = wr.as_raw_fd();
    // SAFETY: only the async-signal-safe helpers of `child` between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            super::child::unblock_signals();
            super::child::new_session()?;
            super::child::pass_fd(wr_fd, READY_FD)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Other(format!("cannot start the monitor process: {e}")))?;
    drop(wr);
    // "ok" on one line, or the reason. Read only that line, not to end of file: whatever the
    // monitor starts later must not be able to hold us here. A reason may take more lines
    // (a VM's last words): the monitor exits after writing it, so reading on is bounded.
    let mut verdict = String::new();
    let mut ready = std::io::BufReader::new(std::fs::File::from(rd));
    let _ = ready.read_line(&mut verdict);
    if verdict.trim_end() != "ok" {
        let _ = ready.read_to_string(&mut verdict);
    }
    let pid = child.id() as i32;
    match verdict.trim_end() {
        "ok" => Ok((pid, child)),
        "" => {
            let status = child.wait().ok();
            Err(Error::Other(format!(
                "the monitor process exited before the container was created ({})",
                status.map(|s| s.to_string()).unwrap_or_default()
            )))
        }
        msg => {
            let _ = child.wait();
            Err(Error::Other(msg.to_string()))
        }
    }
}

pub fn start_container(g: &RuntimeConfig, id: &str) -> Result<()> {
    let store = StateStore::new(&g.root);
    let _lock = store.lock(id)?;
    let mut rec = store.load(id)?;
    store.require_status(&rec, "start", &[Status::Created], "created")?;
    let started = link::connect(&rec).and_then(|mut client| {
        client
            .start_container(id)
            .map_err(link::agent_err("start container"))?;
        Ok(client)
    });
    let mut client = match started {
        Ok(client) => client,
        Err(e) => {
            // The back end may have ended just now, its monitor still recording why: that
            // reason, not a broken connection, is what the caller needs to hear.
            if rec.backend.is_some_and(|b| !b.alive()) {
                wait_gone(rec.monitor, Duration::from_secs(2));
            }
            return Err(store.sandbox_ended(id, "start").unwrap_or(e));
        }
    };
    Timeline::in_dir(&store.dir(id)).record("container started");
    rec.status = Status::Running;
    store.save(&rec)?;
    if !rec.poststart.is_empty() {
        let hooks = HostHooks {
            poststart: rec.poststart.clone(),
            ..Default::default()
        };
        if let Err(e) = hooks.run_poststart(&rec.oci_state()) {
            // The process runs already: a failed start leaves it stopped, as natively.
            let _ = client.signal(ProcessRef::init(id), libc::SIGKILL, true);
            return Err(e);
        }
    }
    Ok(())
}

pub fn kill_container(g: &RuntimeConfig, id: &str, signal: i32, all: bool) -> Result<()> {
    let store = StateStore::new(&g.root);
    let rec = store.load(id)?;
    store.require_live(&rec, "kill")?;
    let mut client = link::connect(&rec)?;
    client
        .signal(ProcessRef::init(id), signal, all)
        .map_err(link::agent_err("signal container"))
}

pub fn delete_container(g: &RuntimeConfig, id: &str, force: bool) -> Result<()> {
    validate_id(id)?;
    let store = StateStore::new(&g.root);
    if !store.exists(id) {
        return Err(Error::NotFound(id.to_string()));
    }
    match store.load(id) {
        Ok(rec) => {
            let status = rec.live_status();
            // runc deletes created containers too (callers clean up failed starts that way).
            if matches!(status, Status::Running | Status::Creating) && !force {
                return Err(store.wrong_state(id, status, "delete", "stopped (or pass --force)"));
            }
        }
        Err(Error::CorruptState { .. }) if force => {}
        Err(e) => return Err(e),
    }
    destroy(&store, id);
    Ok(())
}

/// Removes a container that `delete` (or `run`, at its end) is done with: everything it
/// holds, then its poststop hooks (the runtime spec's lifecycle steps 12 and 13).
pub fn destroy(store: &StateStore, id: &str) {
    let rec = store.load(id).ok();
    teardown(store, id);
    if let Some(rec) = rec {
        run_poststop(&rec);
    }
}

/// Runs a container's poststop hooks (on the host, in either isolation) with its state (`stopped`) on their stdin. A
/// failing hook is a warning (on stderr and in the log): the others run and the operation
/// succeeds, as the runtime spec asks.
pub fn run_poststop(rec: &ContainerRecord) {
    if rec.poststop.is_empty() {
        return;
    }
    let mut state = rec.oci_state();
    state["status"] = "stopped".into();
    state["pid"] = 0.into();
    for failure in agent::engine::run_hook_stage("poststop", &rec.poststop, &state.to_string()) {
        log::warn!("container {}: {failure}", rec.id);
        eprintln!("sandbox: warning: container {}: {failure}", rec.id);
    }
}

/// Releases everything the container holds, whatever state it got to: asks the agent to kill
/// the container, stops the monitor and back end, removes per-container files and TAPs, then
/// the state directory. Each step tolerates what earlier failures left.
pub fn teardown(store: &StateStore, id: &str) {
    if let Ok(rec) = store.load(id) {
        let alive = |p: &Option<HostProcess>| p.map(|p| p.alive()).unwrap_or(false);
        if alive(&rec.backend) {
            if let Ok(mut c) = link::connect(&rec) {
                let _ = c.stream().set_read_timeout(Some(Duration::from_secs(2)));
                let _ = c.signal(ProcessRef::init(id), libc::SIGKILL, true);
            }
        }
        // The monitor exits once the container has; give it a moment to record that.
        wait_gone(rec.monitor, Duration::from_secs(3));
        for p in [rec.monitor, rec.backend, rec.container_process]
            .into_iter()
            .flatten()
        {
            if p.alive() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        wait_gone(rec.backend, Duration::from_secs(3));
        // The agent detaches these itself; not if it was killed under the container.
        if let Some(shared) = &rec.shared_mount_ns_rootfs {
            if let Err(e) =
                agent::engine::detach_shared_rootfs(&shared.path, shared.mount_id_before)
            {
                log::warn!("container {id}: {e}");
            }
        }
        vm::release(&rec.cleanup);
    }
    // Named after the state directory: found even where the monitor died before recording
    // them.
    crate::sandbox::vmm_jail::release(
        &store.dir(id),
        std::path::Path::new(crate::sandbox::vmm_jail::CGROUP_ROOT),
    );
    let _ = store.remove(id);
}

fn wait_gone(p: Option<HostProcess>, limit: Duration) {
    let Some(p) = p else { return };
    let deadline = Instant::now() + limit;
    while p.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::vmm_jail;
    use std::fs;

    #[test]
    fn teardown_removes_a_jail_no_record_names() {
        // Deep enough that the jail lives outside the state directory, under
        // SHORT_JAIL_DIR, where removing the state directory would not reach it.
        let root = std::env::temp_dir().join(format!(
            "teardown-{}-{}/root",
            std::process::id(),
            "d".repeat(90)
        ));
        let store = StateStore::new(&root);
        let dir = store.claim("c1").unwrap();
        let jail = vmm_jail::jail_dir(&dir);
        assert!(
            jail.starts_with(vmm_jail::SHORT_JAIL_DIR),
            "{}",
            jail.display()
        );
        // What a monitor that died after making the jail, before saving the record, leaves.
        fs::create_dir_all(&jail).unwrap();
        fs::write(jail.join(vmm_jail::VSOCK_NAME), b"").unwrap();
        teardown(&store, "c1");
        assert!(!jail.exists(), "{}", jail.display());
        assert!(!store.exists("c1"));
        fs::remove_dir_all(root.parent().unwrap()).unwrap();
    }
}
