//! Native isolation: the sandbox's agent runs on the host as a child of the monitor and runs
//! containers with the host kernel's namespaces and cgroups.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use agent::protocol::{Endpoint, RootfsSource};

use crate::error::{Error, IoContext, Result};
use crate::sandbox::binaries;

pub const AGENT_SOCKET: &str = "agent.sock";

pub struct NativeAgent {
    pub child: Child,
    pub endpoint: Endpoint,
}

/// Starts `sandbox-agent --socket <dir>/agent.sock`. It dies with the monitor (parent-death
/// signal), so a killed monitor never leaves an agent behind.
pub fn start_agent(state_dir: &Path) -> Result<NativeAgent> {
    let bin = binaries::find("sandbox-agent", "SANDBOX_AGENT")?;
    let socket = state_dir.join(AGENT_SOCKET);
    let log_path = state_dir.join("agent.log");
    let log = File::create(&log_path).ctx("create", &log_path)?;
    let log2 = log.try_clone().ctx("dup", &log_path)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--root")
        .arg(state_dir.join("agent"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Signals we block for our own use must not stay blocked in the child.
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::Agent(format!("cannot start {}: {e}", bin.display())))?;
    Ok(NativeAgent {
        child,
        endpoint: Endpoint::Unix(socket),
    })
}

pub fn rootfs_source(bundle_dir: &Path) -> RootfsSource {
    RootfsSource::Bundle {
        path: bundle_dir.to_path_buf(),
    }
}
