//! The shim's own process lifecycle, as containerd's runtime v2 drives it:
//!
//! - `start`: run from the container's bundle directory; answers with the ttrpc address of
//!   the shim serving the container's pod, starting that shim first when there is none.
//! - (no action): the long-lived server, started by `start` with its listening socket on fd 3.
//! - `delete`: cleans up after a shim that went away (unmounts the rootfs).
//!
//! containerd-shim's `run` speaks only the start protocol of containerd 2.x and serves only
//! `containerd.task.v3.Task`; containerd 1.x (Debian's) expects a plain address and calls
//! `containerd.task.v2.Task`. The messages of both are the same, so the server here registers
//! the crate's generated task service under both names and `start` answers with a plain
//! address, which containerd 2.x also accepts.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use containerd_shim::protos::shim::shim_ttrpc::create_task;
use containerd_shim::protos::ttrpc::Server;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Flags};

use super::events::Events;
use super::grouping;
use super::service::Service;

pub const RUNTIME_ID: &str = "io.containerd.sandbox.v2";
/// The fd on which `start` hands the listening socket to the server.
const LISTENER_FD: i32 = 3;
const TASK_V3: &str = "containerd.task.v3.Task";
const TASK_V2: &str = "containerd.task.v2.Task";

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}")]
    Args(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("shim: {0}")]
    Shim(#[from] containerd_shim::Error),
    #[error("ttrpc: {0}")]
    Ttrpc(#[from] containerd_shim::protos::ttrpc::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// `start`: prints the address of the pod's shim, starting it when needed.
pub fn start(flags: &Flags) -> Result<(), LaunchError> {
    if flags.namespace.is_empty() || flags.id.is_empty() {
        return Err(LaunchError::Args("start needs -namespace and -id".into()));
    }
    let bundle = std::env::current_dir().map_err(io_err("current directory"))?;
    let annotations = grouping::bundle_annotations(&bundle);
    let group = grouping::group_of(&flags.id, &annotations);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
    let path = socket_path(&address).to_string();
    if let Some(parent) = Path::new(&path).parent() {
        std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    }
    let listener = match UnixListener::bind(&path) {
        Ok(l) => Some(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(&path).is_ok() {
                // The pod's shim is serving already: the container joins it.
                None
            } else {
                let _ = std::fs::remove_file(&path);
                Some(UnixListener::bind(&path).map_err(io_err(format!("bind {path}")))?)
            }
        }
        Err(e) => return Err(io_err(format!("bind {path}"))(e)),
    };
    if let Some(listener) = listener {
        if let Err(e) = spawn_server(flags, &group, &address, listener.into()) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    }
    // containerd reads it back when it reconnects to a running shim.
    std::fs::write(bundle.join("address"), &address).map_err(io_err("write address file"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())
        .and_then(|_| out.flush())
        .map_err(io_err("write address"))?;
    Ok(())
}

fn spawn_server(
    flags: &Flags,
    group: &str,
    address: &str,
    listener: OwnedFd,
) -> Result<(), LaunchError> {
    let exe = std::env::current_exe().map_err(io_err("find own executable"))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &flags.namespace,
        "-id",
        group,
        "-address",
        &flags.address,
        "-publish-binary",
        &flags.publish_binary,
        "-socket",
        address,
    ]);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(
        match std::env::var_os("SANDBOX_SHIM_DEBUG") {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::null(),
        },
    );
    let fd = listener.as_raw_fd();
    // SAFETY: only the async-signal-safe helpers of `sandbox::child` between fork and exec;
    // the listener stays open until exec.
    unsafe {
        cmd.pre_exec(move || {
            crate::sandbox::child::new_session()?;
            crate::sandbox::child::pass_fd(fd, LISTENER_FD)
        });
    }
    let child = cmd.spawn().map_err(io_err("start the shim server"))?;
    // It is containerd's to reap once we exit; the server outlives us.
    drop(child);
    Ok(())
}

/// The server: ttrpc on the socket `start` handed over, until Shutdown with no task left.
pub fn serve(flags: &Flags) -> Result<(), LaunchError> {
    if flags.socket.is_empty() {
        return Err(LaunchError::Args("the shim server needs -socket".into()));
    }
    // The log fifo containerd made in the bundle; without it, log to nowhere.
    let _ = containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id);
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .map_err(|_| LaunchError::Args("TTRPC_ADDRESS is not set".into()))?;
    let publisher = RemotePublisher::new(&ttrpc_address)?;
    let exit = Arc::new(ExitSignal::default());
    let service = Service::new(
        flags.namespace.clone(),
        flags.id.clone(),
        Events::start(publisher, flags.namespace.clone()),
        exit.clone(),
    );
    let task: Arc<dyn containerd_shim::Task + Send + Sync> = Arc::new(service);
    // SAFETY: `start` put the listening socket on this fd for us alone.
    let listener = unsafe { OwnedFd::from_raw_fd(LISTENER_FD) };
    // It crossed the exec without close-on-exec; the agent, the VMM and virtiofsd must not
    // inherit it: a child holding it would accept connections meant for the shim, and keep
    // the socket answering after the shim died, so that `delete` would take the pod for
    // still served and leave its state behind.
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| io_err("close-on-exec on the listening socket")(e.into()))?;
    let mut server = Server::new()
        .add_listener(listener.into_raw_fd())?
        .register_service(create_task(task.clone()))
        .register_service(renamed(create_task(task), TASK_V3, TASK_V2));
    server.start()?;
    log::info!("shim for sandbox {} serving on {}", flags.id, flags.socket);
    exit.wait();
    server.shutdown();
    let _ = std::fs::remove_file(socket_path(&flags.socket));
    Ok(())
}

/// The same handlers under another service name (`/containerd.task.v3.Task/Create` ->
/// `/containerd.task.v2.Task/Create`).
fn renamed<V>(methods: HashMap<String, V>, from: &str, to: &str) -> HashMap<String, V> {
    methods
        .into_iter()
        .map(|(k, v)| (k.replacen(from, to, 1), v))
        .collect()
}

/// `delete`: containerd's clean-up after the shim is gone.
pub fn delete(flags: &Flags) -> Result<(), LaunchError> {
    use containerd_shim::protos::protobuf::Message;
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(io_err("current directory"))?
    } else {
        flags.bundle.clone().into()
    };
    kill_leftovers(&bundle);
    super::rootfs::unmount(&bundle);
    // The sandbox's state, unless a shim still serves the pod (another of its containers).
    let group = grouping::group_of(&flags.id, &grouping::bundle_annotations(&bundle));
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
    if UnixStream::connect(socket_path(&address)).is_err() {
        let _ = std::fs::remove_file(socket_path(&address));
        let root = super::options::ShimOptions::default().root;
        let state_dir = super::pod::state_dir(&root, &flags.namespace, &group);
        crate::sandbox::pod_share::PodShare::clear(&state_dir);
        let _ = std::fs::remove_dir_all(state_dir);
    }
    let resp = containerd_shim::api::DeleteResponse {
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(containerd_shim::util::timestamp()?).into(),
        ..Default::default()
    };
    let bytes = resp
        .write_to_bytes()
        .map_err(|e| LaunchError::Args(format!("encode delete response: {e}")))?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(io_err("write delete response"))?;
    Ok(())
}

/// After a shim died, its agent died with it (parent-death signal) but a native container's
/// processes may live on. They are found by the container's cgroup (`linux.cgroupsPath` of
/// the bundle's spec, as the agent created it), killed, and the emptied cgroups removed.
fn kill_leftovers(bundle: &Path) {
    let Some(rel) = cgroups_path(bundle) else {
        return;
    };
    let dirs = cgroup_dirs(Path::new(CGROUP_ROOT), &rel);
    for _ in 0..50 {
        let mut alive = false;
        for d in &dirs {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                alive = true;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if !alive {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for d in &dirs {
        let _ = std::fs::remove_dir(d);
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The spec's cgroupsPath, when it is a plain path (not a systemd slice:prefix:name).
fn cgroups_path(bundle: &Path) -> Option<String> {
    let text = std::fs::read(bundle.join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let p = spec["linux"]["cgroupsPath"].as_str()?;
    let p = p.trim_start_matches('/');
    (!p.is_empty() && !p.contains(':') && !p.split('/').any(|c| c == "..")).then(|| p.to_string())
}

/// The container's cgroup directory in every hierarchy: the unified one (cgroup v2) or each
/// v1 controller's.
fn cgroup_dirs(root: &Path, rel: &str) -> Vec<std::path::PathBuf> {
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(rel)];
    }
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join(rel))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_service_is_served_under_both_names() {
        let mut m = HashMap::new();
        m.insert(format!("/{TASK_V3}/Create"), 1);
        let r = renamed(m, TASK_V3, TASK_V2);
        assert_eq!(r.get("/containerd.task.v2.Task/Create"), Some(&1));
    }

    #[test]
    fn cgroups_path_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("shim-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |p: &str| {
            std::fs::write(
                dir.join("config.json"),
                format!(r#"{{"linux":{{"cgroupsPath":"{p}"}}}}"#),
            )
            .unwrap()
        };
        write("/default/c1");
        assert_eq!(cgroups_path(&dir).as_deref(), Some("default/c1"));
        write("system.slice:docker:c1");
        assert_eq!(cgroups_path(&dir), None);
        write("/a/../../etc");
        assert_eq!(cgroups_path(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn start_without_namespace_is_refused() {
        let flags = containerd_shim::parse(&["-id", "x", "start"]).unwrap();
        let err = start(&flags).unwrap_err().to_string();
        assert!(err.contains("-namespace"), "{err}");
    }
}
