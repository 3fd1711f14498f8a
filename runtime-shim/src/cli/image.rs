//! `sandbox image import|ls|rm|build-default`.

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::RuntimeConfig;
use crate::error::Result;
use crate::image::{busybox, import, ImageStore};

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an OCI image layout tarball or a `docker save` archive.
    Import {
        file: PathBuf,
        /// Name to store it under (default: the tag in the archive).
        #[arg(long)]
        name: Option<String>,
    },
    /// List local images.
    Ls,
    /// Remove a local image.
    Rm { name: String },
    /// Build the built-in busybox image from /bin/busybox (also done on first use).
    BuildDefault {
        #[arg(long, default_value = busybox::BUSYBOX_BINARY)]
        busybox: PathBuf,
    },
}

pub fn run(g: &RuntimeConfig, c: ImageCommand) -> Result<()> {
    let store = ImageStore::new(&g.image_store);
    match c {
        ImageCommand::Import { file, name } => {
            let cfg = import::import(&store, &file, name.as_deref())?;
            println!("{}", cfg.name);
        }
        ImageCommand::Ls => {
            println!("{:<32} {:>10} {:<32} SOURCE", "NAME", "SIZE", "COMMAND");
            for (cfg, size) in store.list()? {
                let mut cmd = cfg.entrypoint.clone();
                cmd.extend(cfg.cmd.clone());
                println!(
                    "{:<32} {:>9.1}M {:<32} {}",
                    cfg.name,
                    size as f64 / (1 << 20) as f64,
                    cmd.join(" "),
                    cfg.source
                );
            }
        }
        ImageCommand::Rm { name } => {
            store.remove(&name)?;
            println!("{name}");
        }
        ImageCommand::BuildDefault { busybox: path } => {
            let cfg = busybox::build_default(&store, &path)?;
            println!("{}", cfg.name);
        }
    }
    Ok(())
}
