//! `sandbox create`: claim the id, check the bundle, and start the monitor process that owns
//! the sandbox; return once the container exists and waits for `start`.

use std::path::PathBuf;

use clap::Args;

use crate::config::RuntimeConfig;
use crate::error::Result;
use crate::sandbox::launch::{create_container, CreateOptions};

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Path to the bundle (the directory holding config.json).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket that receives the master end of the container's console.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// File to write the pid of the process whose exit is the container's exit.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long = "no-pivot", hide = true)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring", hide = true)]
    pub no_new_keyring: bool,
    /// Accepted for runc compatibility (extra fds are not passed into the sandbox).
    #[arg(long = "preserve-fds", hide = true, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

pub fn run(g: &RuntimeConfig, a: CreateArgs) -> Result<()> {
    create_container(
        g,
        &CreateOptions {
            id: a.id,
            bundle: a.bundle,
            console_socket: a.console_socket,
            pid_file: a.pid_file,
            foreground: false,
            stdin_null: false,
            cleanup: Default::default(),
        },
    )
    .map(|_| ())
}
