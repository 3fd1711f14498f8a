//! `sandbox update --resources FILE|- ID`: apply new resource limits (an OCI
//! `linux.resources` object) to a created or running container.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;

use crate::config::RuntimeConfig;
use crate::error::{Error, Result};
use crate::sandbox::link;
use crate::state::StateStore;

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// JSON file with the new `linux.resources`, or `-` for stdin.
    #[arg(short, long)]
    pub resources: PathBuf,
    pub id: String,
}

pub fn run(g: &RuntimeConfig, a: UpdateArgs) -> Result<()> {
    let store = StateStore::new(&g.root);
    let rec = store.load(&a.id)?;
    store.require_live(&rec, "update")?;
    let mut text = Vec::new();
    if a.resources.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut text)
            .map_err(|e| Error::io("read", "stdin", e))?;
    } else {
        text = std::fs::read(&a.resources).map_err(|e| Error::io("read", &a.resources, e))?;
    }
    // Check the shape here so a mistake is reported with its JSON path.
    let de = &mut serde_json::Deserializer::from_slice(&text);
    let parsed: oci_spec::runtime::LinuxResources = serde_path_to_error::deserialize(de)
        .map_err(|e| Error::Usage(format!("--resources: at {}: {}", e.path(), e.inner())))?;
    let value = serde_json::to_value(parsed).map_err(|e| Error::Other(e.to_string()))?;
    link::connect(&rec)?
        .update_resources(&a.id, value)
        .map_err(link::agent_err("update resources"))
}
