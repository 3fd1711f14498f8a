//! `sandbox list [--format table|json] [--quiet]`.

use clap::Args;

use crate::cli::ListFormat;
use crate::config::RuntimeConfig;
use crate::error::Result;
use crate::state::StateStore;

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
    /// Print only the ids.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(g: &RuntimeConfig, a: ListArgs) -> Result<()> {
    let store = StateStore::new(&g.root);
    let mut states = Vec::new();
    for id in store.ids()? {
        // A directory whose state cannot be read (an interrupted create) is still listed, so
        // the user sees it and can `delete --force` it.
        match store.load(&id) {
            Ok(rec) => states.push((id, Some(rec))),
            Err(_) => states.push((id, None)),
        }
    }
    if a.quiet {
        for (id, _) in &states {
            println!("{id}");
        }
        return Ok(());
    }
    match a.format {
        ListFormat::Json => {
            let list: Vec<_> = states
                .iter()
                .map(|(id, rec)| match rec {
                    Some(r) => {
                        let mut v = r.oci_state();
                        v["isolation"] = serde_json::json!(r.isolation.to_string());
                        v
                    }
                    None => serde_json::json!({"id": id, "status": "unknown"}),
                })
                .collect();
            println!("{}", serde_json::Value::Array(list));
        }
        ListFormat::Table => {
            println!(
                "{:<24} {:<8} {:<10} {:<10} {:<32} BUNDLE",
                "ID", "PID", "STATUS", "ISOLATION", "CREATED"
            );
            for (id, rec) in &states {
                match rec {
                    Some(r) => {
                        let st = r.oci_state();
                        println!(
                            "{:<24} {:<8} {:<10} {:<10} {:<32} {}",
                            id,
                            st["pid"].as_i64().unwrap_or(0),
                            r.live_status(),
                            r.isolation,
                            r.created,
                            r.bundle.display()
                        );
                    }
                    None => println!("{id:<24} {:<8} {:<10}", 0, "unknown"),
                }
            }
        }
    }
    Ok(())
}
