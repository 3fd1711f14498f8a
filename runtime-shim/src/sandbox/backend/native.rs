//! Native isolation: the sandbox's agent runs on the host as a child of the monitor or the
//! shim and runs containers with the host kernel's namespaces and cgroups.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent::protocol::{Endpoint, RootfsSource, SandboxConfig};

use super::{Backend, ProcessLogs};
use crate::error::{Error, IoContext, Result};
use crate::sandbox::binaries;
use crate::sandbox::timings::Timeline;

pub const AGENT_SOCKET: &str = "agent.sock";

/// The descriptor on which the agent finds its already listening socket.
const LISTEN_FD: i32 = 3;

/// Who reaps a container's init once it has been started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitReaper {
    /// The agent (the containerd shim waits through it).
    Agent,
    /// Whoever adopts orphans above the agent's parent (`--orphan-inits`): the caller of
    /// `sandbox create`, which reaps the init whose pid it was given, as it would reap
    /// runc's.
    Caller,
}

/// The agent as a host process: containers in the host kernel's namespaces and cgroups.
pub struct NativeBackend {
    endpoint: Endpoint,
    logs: ProcessLogs,
}

impl Backend for NativeBackend {
    fn program(&self) -> &'static str {
        "sandbox-agent"
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn answer_within(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// The socket listens before the agent runs: one attempt may wait for all of it.
    fn handshake_within(&self) -> Duration {
        self.answer_within()
    }

    fn retry_pause(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn sandbox_config(&self) -> Option<SandboxConfig> {
        None
    }

    fn logs(&self) -> &ProcessLogs {
        &self.logs
    }

    fn ends_when_destroyed(&self) -> bool {
        false
    }
}

/// Starts `sandbox-agent --socket <dir>/agent.sock`. It dies with its parent (parent-death
/// signal), so a killed monitor or shim never leaves an agent behind.
///
/// The socket is bound and listening before the agent starts and handed to it: a client's
/// connection queues until the agent accepts it, so nobody polls for the agent to come up.
pub fn start(state_dir: &Path, reaper: InitReaper) -> Result<(NativeBackend, Child)> {
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
        .args((reaper == InitReaper::Caller).then_some("--orphan-inits"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: only the async-signal-safe helpers of `child` between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            crate::sandbox::child::reset_signals_and_die_with_parent()?;
            crate::sandbox::child::pass_fd(listen_fd, LISTEN_FD)
        });
    }
    Timeline::in_dir(state_dir).record("agent exec");
    let child = cmd.spawn();
    // Only the agent may hold the listener: if it dies, clients see the socket go dead.
    drop(listen);
    let child = child.map_err(|e| Error::Agent(format!("cannot start {}: {e}", bin.display())))?;
    let backend = NativeBackend {
        endpoint: Endpoint::Unix(socket),
        logs: ProcessLogs::default().with("sandbox-agent", log_path),
    };
    Ok((backend, child))
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
