//! `sandbox state`: the OCI state document of one container.

use clap::Args;

use crate::config::RuntimeConfig;
use crate::error::Result;
use crate::state::StateStore;

#[derive(Args, Debug)]
pub struct StateArgs {
    pub id: String,
}

pub fn run(g: &RuntimeConfig, a: StateArgs) -> Result<()> {
    let rec = StateStore::new(&g.root).load(&a.id)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&rec.oci_state()).unwrap_or_default()
    );
    Ok(())
}
