//! OCI lifecycle hooks: programs run at fixed points of the container's life with the
//! container's state as JSON on stdin. createRuntime/prestart and poststart/poststop run in
//! the engine's namespaces; createContainer and startContainer are run by the container's
//! init, inside the container's namespaces.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Spec};

/// The OCI state document handed to every hook.
pub(crate) fn state_json(spec: &Spec, id: &str, status: &str, pid: i32, bundle: &Path) -> String {
    serde_json::json!({
        "ociVersion": spec.version(),
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": spec.annotations().clone().unwrap_or_default(),
    })
    .to_string()
}

/// Runs the hooks of one stage in order; the first failure stops the rest.
pub(crate) fn run_all(stage: &str, hooks: Option<&Vec<Hook>>, state: &str) -> Result<(), String> {
    for (i, h) in hooks.into_iter().flatten().enumerate() {
        run(h, state).map_err(|e| format!("hooks.{stage}[{i}] ({}): {e}", h.path().display()))?;
    }
    Ok(())
}

fn run(h: &Hook, state: &str) -> Result<(), String> {
    let args = h.args().clone().unwrap_or_default();
    let mut cmd = Command::new(h.path());
    if let Some((arg0, rest)) = args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for e in h.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state is allowed to exit early: ignore EPIPE.
        let _ = stdin.write_all(state.as_bytes());
    }
    let deadline = h
        .timeout()
        .filter(|&t| t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait().map_err(|e| format!("wait: {e}"))? {
            Some(st) if st.success() => return Ok(()),
            Some(st) => return Err(format!("exited with {st}")),
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {} s", h.timeout().unwrap_or(0)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
