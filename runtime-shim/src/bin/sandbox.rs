//! `sandbox`: the OCI runtime command line.

use clap::Parser;
use runtime_shim::cli::{dispatch, Cli, Command};

fn main() {
    let cli = Cli::parse();
    let log_path = match (&cli.command, &cli.global.log) {
        // The monitor's stderr belongs to the container: its own messages go to a file.
        (Command::Monitor(m), None) => Some(cli.global.root.join(&m.id).join("monitor.log")),
        (_, l) => l.clone(),
    };
    let is_monitor = matches!(cli.command, Command::Monitor(_));
    let logs_to_file = log_path.is_some();
    runtime_shim::logging::init(log_path.as_ref(), cli.global.log_format, cli.global.debug);
    match dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            if logs_to_file {
                log::error!("{e}");
            }
            if !is_monitor {
                eprintln!("sandbox: {e}");
            }
            std::process::exit(1);
        }
    }
}
