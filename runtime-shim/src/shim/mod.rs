//! `containerd-shim-sandbox-v2`: the containerd runtime v2 shim. containerd starts it per
//! container; the containers of one pod share one shim process, which runs them in one
//! sandbox (one agent in native isolation, one microVM in vm isolation) and answers
//! containerd's task service for them. See docs/kubernetes.md for configuration.

pub mod error;
pub mod events;
pub mod grouping;
pub mod io;
pub mod launch;
pub mod options;
pub mod pod;
mod process;
pub mod rootfs;
pub mod service;
pub mod stats;
mod tasks;

/// The binary's entry point; returns the process exit status.
pub fn main() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let flags = match containerd_shim::parse(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{}: {e}", launch::RUNTIME_ID);
            return 1;
        }
    };
    if flags.version {
        println!("{} {}", launch::RUNTIME_ID, env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let result = match flags.action.as_str() {
        "start" => launch::start(&flags),
        "delete" => launch::delete(&flags),
        "" => launch::serve(&flags),
        other => Err(launch::LaunchError::Args(format!(
            "unknown action {other:?}"
        ))),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}: {e}", launch::RUNTIME_ID);
            1
        }
    }
}
