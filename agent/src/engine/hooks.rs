//! OCI lifecycle hooks: programs run at fixed points of the container's life with the
//! container's state as JSON on stdin. createRuntime/prestart and poststart/poststop run in
//! the engine's namespaces; createContainer and startContainer are run by the container's
//! init, inside the container's namespaces.
//!
//! The exit status of each hook comes through a [`ChildWaiter`], because the caller may
//! reap every child of the engine's process on its own (see `children`).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use oci_spec::runtime::{Hook, Spec};

use super::children::{ChildWaiter, DirectWait};

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
pub(crate) fn run_all(
    stage: &str,
    hooks: Option<&Vec<Hook>>,
    state: &str,
    children: &dyn ChildWaiter,
) -> Result<(), String> {
    for (i, h) in hooks.into_iter().flatten().enumerate() {
        run(h, state, children)
            .map_err(|e| format!("hooks.{stage}[{i}] ({}): {e}", h.path().display()))?;
    }
    Ok(())
}

/// Runs every hook of one stage whatever the others did, and returns what failed: for
/// poststart and poststop, whose failures the runtime spec has logged as warnings while the
/// remaining hooks and the lifecycle go on.
pub(crate) fn run_each(
    stage: &str,
    hooks: Option<&Vec<Hook>>,
    state: &str,
    children: &dyn ChildWaiter,
) -> Vec<String> {
    hooks
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, h)| {
            run(h, state, children)
                .err()
                .map(|e| format!("hooks.{stage}[{i}] ({}): {e}", h.path().display()))
        })
        .collect()
}

/// Runs every hook of one stage, from a process that reaps no children of its own (plain
/// waitpid), for callers outside the engine: `sandbox delete` runs the poststop hooks this
/// way. Returns one message per failed hook.
pub fn run_stage(stage: &str, hooks: &[Hook], state: &str) -> Vec<String> {
    run_each(stage, Some(&hooks.to_vec()), state, &DirectWait)
}

/// Runs the hooks of one stage in order from a process that reaps no children of its own,
/// stopping at the first failure, which it returns: for callers outside the engine that run
/// prestart and createRuntime hooks (a VM's host side).
pub fn run_stage_in_order(stage: &str, hooks: &[Hook], state: &str) -> Result<(), String> {
    run_all(stage, Some(&hooks.to_vec()), state, &DirectWait)
}

fn run(h: &Hook, state: &str, children: &dyn ChildWaiter) -> Result<(), String> {
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
    let mark = children.before_spawn();
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let pid = Pid::from_raw(child.id() as i32);
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state is allowed to exit early: ignore EPIPE.
        let _ = stdin.write_all(state.as_bytes());
    }
    let deadline = h
        .timeout()
        .filter(|&t| t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let wait = |deadline| {
        children
            .wait_until(pid, mark, deadline)
            .map_err(|e| format!("wait: {e}"))
    };
    let status = match wait(deadline)? {
        Some(status) => status,
        None => {
            // Still running a moment ago; the wait below takes its exit whoever reaps it.
            let _ = child.kill();
            wait(None)?;
            return Err(format!("timed out after {} s", h.timeout().unwrap_or(0)));
        }
    };
    match (status.code, status.signal) {
        (Some(0), _) => Ok(()),
        (Some(c), _) => Err(format!("exited with code {c}")),
        (None, Some(s)) => Err(format!("killed by signal {s}")),
        (None, None) => Err("ended without an exit status".to_string()),
    }
}
