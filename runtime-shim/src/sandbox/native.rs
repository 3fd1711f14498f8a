//! Native isolation: the sandbox's agent runs on the host as a child of the monitor and runs
//! containers with the host kernel's namespaces and cgroups.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use agent::protocol::{Endpoint, RootfsSource};

use crate::error::{Error, IoContext, Result};
use crate::sandbox::binaries;

pub const AGENT_SOCKET: &str = "agent.sock";

/// The descriptor on which the agent finds its already listening socket.
const LISTEN_FD: i32 = 3;

pub struct NativeAgent {
    pub child: Child,
    pub endpoint: Endpoint,
}

/// Starts `sandbox-agent --socket <dir>/agent.sock`. It dies with the monitor (parent-death
/// signal), so a killed monitor never leaves an agent behind.
///
/// The socket is bound and listening before the agent starts and handed to it: a client's
/// connection queues until the agent accepts it, so nobody polls for the agent to come up.
///
/// The agent reaps its containers' inits itself (containerd's shim waits through it).
pub fn start_agent(state_dir: &Path) -> Result<NativeAgent> {
    spawn_agent(state_dir, false)
}

/// Like [`start_agent`], for the `sandbox` CLI: the agent leaves each container's init to
/// whoever adopts orphans above the monitor (`--orphan-inits`), so that the caller of
/// `create` reaps the init whose pid it was given, as it would reap runc's.
pub fn start_agent_orphaning_inits(state_dir: &Path) -> Result<NativeAgent> {
    spawn_agent(state_dir, true)
}

fn spawn_agent(state_dir: &Path, orphan_inits: bool) -> Result<NativeAgent> {
    let bin = binaries::find("sandbox-agent", "SANDBOX_AGENT")?;
    let socket = state_dir.join(AGENT_SOCKET);
    let listener = UnixListener::bind(&socket).ctx("bind", &socket)?;
    // Whoever can connect can run processes as root: owner only.
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .ctx("chmod", &socket)?;
    let listen: OwnedFd = listener.into();
    let listen_fd = listen.as_raw_fd();
    let log_path = state_dir.join("agent.log");
    let log = File::create(&log_path).ctx("create", &log_path)?;
    let log2 = log.try_clone().ctx("dup", &log_path)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--listen-fd")
        .arg(LISTEN_FD.to_string())
        .arg("--root")
        .arg(state_dir.join("agent"))
        .args(orphan_inits.then_some("--orphan-inits"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: only the async-signal-safe helpers of `child` between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            super::child::reset_signals_and_die_with_parent()?;
            super::child::pass_fd(listen_fd, LISTEN_FD)
        });
    }
    let child = cmd.spawn();
    // Only the agent may hold the listener: if it dies, clients see the socket go dead.
    drop(listen);
    let child = child.map_err(|e| Error::Agent(format!("cannot start {}: {e}", bin.display())))?;
    Ok(NativeAgent {
        child,
        endpoint: Endpoint::Unix(socket),
    })
}

/// The spec the CLI's agent gets: the poststop hooks are left out, because `sandbox delete`
/// runs them (the runtime spec runs them at delete, after the container is destroyed, and
/// the agent is gone by then).
pub fn agent_spec(spec: &oci_spec::runtime::Spec) -> oci_spec::runtime::Spec {
    let mut spec = spec.clone();
    if let Some(mut hooks) = spec.hooks().clone() {
        hooks.set_poststop(None);
        spec.set_hooks(Some(hooks));
    }
    spec
}

pub fn rootfs_source(bundle_dir: &Path) -> RootfsSource {
    RootfsSource::Bundle {
        path: bundle_dir.to_path_buf(),
    }
}
