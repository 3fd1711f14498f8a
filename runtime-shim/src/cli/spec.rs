//! `sandbox spec`: write a starting config.json, as `runc spec` does.

use std::path::PathBuf;

use clap::Args;
use oci_spec::runtime::Spec;

use crate::config::RuntimeConfig;
use crate::error::{Error, Result};

#[derive(Args, Debug)]
pub struct SpecArgs {
    /// Directory to write config.json into.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
}

pub fn run(_g: &RuntimeConfig, a: SpecArgs) -> Result<()> {
    let path = a.bundle.join("config.json");
    if path.exists() {
        return Err(Error::Usage(format!("{} already exists", path.display())));
    }
    let spec = Spec::default();
    let text = serde_json::to_string_pretty(&spec).map_err(|e| Error::Other(e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io("write", &path, e))
}
