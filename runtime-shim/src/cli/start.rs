//! `sandbox start`: run the user process of a created container.

use clap::Args;

use crate::config::RuntimeConfig;
use crate::error::Result;

#[derive(Args, Debug)]
pub struct StartArgs {
    pub id: String,
}

pub fn run(g: &RuntimeConfig, a: StartArgs) -> Result<()> {
    crate::sandbox::launch::start_container(g, &a.id)
}
