//! `sandbox ps [--format table|json] ID [PS_ARGS...]`: the container's processes. Natively the
//! pids are host pids and `ps` describes them; in a VM they are guest pids, and the agent
//! gives their command lines, since the host cannot read the guest's /proc.

use std::process::Command;

use clap::Args;

use crate::cli::ListFormat;
use crate::config::RuntimeConfig;
use crate::error::{Error, Result};
use crate::sandbox::link;
use crate::state::{Isolation, StateStore};

#[derive(Args, Debug)]
pub struct PsArgs {
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
    pub id: String,
    /// Options passed to ps(1) for the table (default -ef).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

pub fn run(g: &RuntimeConfig, a: PsArgs) -> Result<()> {
    let store = StateStore::new(&g.root);
    let rec = store.load(&a.id)?;
    store.require_live(&rec, "list processes of")?;
    let mut client = link::connect(&rec)?;
    if rec.isolation == Isolation::Vm && a.format == ListFormat::Table {
        let table = client
            .process_table(&a.id)
            .map_err(link::agent_err("list processes"))?;
        println!("{:>7} CMD (pids in the sandbox VM)", "PID");
        for p in table {
            println!("{:>7} {}", p.pid, p.args.join(" "));
        }
        return Ok(());
    }
    let pids = client
        .processes(&a.id)
        .map_err(link::agent_err("list processes"))?;
    match a.format {
        ListFormat::Json => println!("{}", serde_json::json!(pids)),
        ListFormat::Table => {
            let args = if a.ps_args.is_empty() {
                vec!["-ef".to_string()]
            } else {
                a.ps_args
            };
            let out = Command::new("ps")
                .args(&args)
                .output()
                .map_err(|e| Error::Other(format!("cannot run ps: {e}")))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or("");
            let pid_col = header
                .split_whitespace()
                .position(|c| c == "PID")
                .ok_or_else(|| Error::Other("ps output has no PID column".into()))?;
            println!("{header}");
            for line in lines {
                let pid = line
                    .split_whitespace()
                    .nth(pid_col)
                    .and_then(|p| p.parse::<i32>().ok());
                if pid.is_some_and(|p| pids.contains(&p)) {
                    println!("{line}");
                }
            }
        }
    }
    Ok(())
}
