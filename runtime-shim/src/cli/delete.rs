//! `sandbox delete [--force] ID`: release the sandbox and its state directory.

use clap::Args;

use crate::config::RuntimeConfig;
use crate::error::Result;

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kill the container if it still runs, and clean up after a crashed runtime.
    #[arg(short, long)]
    pub force: bool,
    pub id: String,
}

pub fn run(g: &RuntimeConfig, a: DeleteArgs) -> Result<()> {
    crate::sandbox::launch::delete_container(g, &a.id, a.force)
}
