//! `sandbox exec`: run another process in a running container, from `--process` JSON or from
//! arguments on top of the container's own process settings.

use std::ffi::OsString;
use std::path::PathBuf;

use agent::protocol::ProcessRef;
use clap::Args;

use crate::bundle::Bundle;
use crate::config::RuntimeConfig;
use crate::error::{Error, Result};
use crate::sandbox::{foreground, launch, link};
use crate::state::{StateStore, Status};

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// An OCI process JSON file describing what to run.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    #[arg(short, long)]
    pub tty: bool,
    /// Return once the process has started; its monitor's pid goes to --pid-file.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    #[arg(long)]
    pub cwd: Option<String>,
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// UID[:GID] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    #[arg(long = "preserve-fds", hide = true, default_value_t = 0)]
    pub preserve_fds: u32,
    #[arg(long = "process-label", hide = true)]
    pub process_label: Option<String>,
    #[arg(long = "apparmor", hide = true)]
    pub apparmor: Option<String>,
    #[arg(long = "no-new-privs", hide = true)]
    pub no_new_privs: bool,
    #[arg(long = "cap", hide = true)]
    pub cap: Vec<String>,
    #[arg(long = "ignore-paused", hide = true)]
    pub ignore_paused: bool,
    pub id: String,
    /// The command and its arguments (when --process is not given).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub fn run(g: &RuntimeConfig, a: ExecArgs) -> Result<i32> {
    let store = StateStore::new(&g.root);
    let rec = store.load(&a.id)?;
    store.require_status(&rec, "exec", &[Status::Running], "running")?;
    let process = build_process(&rec.bundle, &a)?;
    let tty = process["terminal"].as_bool().unwrap_or(false);
    let exec_id = crate::state::generated_id("exec");
    let dir = store.dir(&a.id);
    let process_file = dir.join(format!("{exec_id}.json"));
    crate::state::write_atomic(&process_file, process.to_string().as_bytes())?;

    let mut args: Vec<OsString> = vec![
        "__monitor".into(),
        "exec".into(),
        a.id.clone().into(),
        "--exec-id".into(),
        exec_id.clone().into(),
        "--process".into(),
        process_file.clone().into(),
    ];
    if let Some(sock) = &a.console_socket {
        args.push("--console-socket".into());
        args.push(sock.clone().into());
    }
    let sigs = (!a.detach).then(foreground::block_forwarded);
    let raw = if !a.detach && a.console_socket.is_none() {
        foreground::raw_terminal(tty)
    } else {
        None
    };
    let spawned = launch::spawn_monitor(g, &args, false);
    let _ = std::fs::remove_file(&process_file);
    let (pid, child) = spawned?;
    if let Some(pid_file) = &a.pid_file {
        crate::state::write_atomic(pid_file, pid.to_string().as_bytes())?;
    }
    if a.detach {
        return Ok(0);
    }
    let endpoint = link::endpoint(&rec);
    let pref = ProcessRef::exec(&a.id, &exec_id);
    if raw.is_some() {
        foreground::push_window_size(&endpoint, &pref);
    }
    let code = foreground::wait(child, None, endpoint, pref, tty, sigs.expect("foreground"));
    drop(raw);
    Ok(code)
}

/// The process to exec: `--process` as given, or the container's process with the command,
/// cwd, env, user and terminal from the command line.
fn build_process(bundle: &std::path::Path, a: &ExecArgs) -> Result<serde_json::Value> {
    if let Some(path) = &a.process {
        let text = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        let de = &mut serde_json::Deserializer::from_slice(&text);
        let p: oci_spec::runtime::Process = serde_path_to_error::deserialize(de).map_err(|e| {
            Error::Usage(format!(
                "--process {}: at {}: {}",
                path.display(),
                e.path(),
                e.inner()
            ))
        })?;
        if p.args().as_ref().map(|a| a.is_empty()).unwrap_or(true) {
            return Err(Error::Usage(format!(
                "--process {}: args is empty",
                path.display()
            )));
        }
        return serde_json::to_value(p).map_err(|e| Error::Other(e.to_string()));
    }
    if a.command.is_empty() {
        return Err(Error::Usage("exec needs a command or --process".into()));
    }
    let base = Bundle::load(bundle)
        .ok()
        .and_then(|b| b.spec.process().clone())
        .unwrap_or_default();
    let mut v = serde_json::to_value(base).map_err(|e| Error::Other(e.to_string()))?;
    v["args"] = serde_json::json!(a.command);
    v["terminal"] = serde_json::json!(a.tty);
    if let Some(cwd) = &a.cwd {
        v["cwd"] = serde_json::json!(cwd);
    }
    if !a.env.is_empty() {
        let mut env: Vec<String> = v["env"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for kv in &a.env {
            let key = kv.split('=').next().unwrap_or("");
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        v["env"] = serde_json::json!(env);
    }
    if let Some(user) = &a.user {
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user.as_str(), None),
        };
        let uid: u32 = uid
            .parse()
            .map_err(|_| Error::Usage(format!("--user {user:?}: expected UID[:GID]")))?;
        let gid: u32 = match gid {
            Some(g) => g
                .parse()
                .map_err(|_| Error::Usage(format!("--user {user:?}: expected UID[:GID]")))?,
            None => 0,
        };
        v["user"] = serde_json::json!({"uid": uid, "gid": gid});
    }
    Ok(v)
}
