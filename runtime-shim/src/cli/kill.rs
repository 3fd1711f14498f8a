//! `sandbox kill [--all] ID [SIGNAL]`.

use clap::Args;

use crate::config::RuntimeConfig;
use crate::error::Result;
use crate::signal::parse_signal;

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal every process of the container, not only its init.
    #[arg(short, long)]
    pub all: bool,
    pub id: String,
    /// Signal name (KILL, SIGKILL) or number; SIGTERM when omitted.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

pub fn run(g: &RuntimeConfig, a: KillArgs) -> Result<()> {
    let sig = parse_signal(&a.signal)?;
    crate::sandbox::launch::kill_container(g, &a.id, sig, a.all)
}
