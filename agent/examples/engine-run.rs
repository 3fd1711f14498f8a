//! Runs a bundle's container with the engine natively, like `runc run`: create, start,
//! wait, destroy. Exits with the container's status (128 + signal when killed).
//!
//! ```text
//! engine-run <bundle> <id> [--count N]
//! ```
//! With `--count N` it runs the container N times in this one process (ids `<id>-<i>`) and
//! prints the mean time per run, which leaves out the process start-up that a per-run
//! command pays.

use std::path::PathBuf;
use std::time::Instant;

use agent::engine::{load_bundle_spec, Container, CreateOptions, EngineError, Stdio};

fn run_once(bundle: &PathBuf, id: &str) -> Result<i32, EngineError> {
    let spec = load_bundle_spec(bundle)?;
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    let mut opts = CreateOptions::new(id, bundle, spec);
    if terminal {
        return Err(EngineError::Child(
            "engine-run does not relay terminals; set process.terminal to false".into(),
        ));
    }
    opts.stdio = Stdio::Inherit;
    let mut c = Container::create(opts)?;
    c.start()?;
    let status = c.wait()?;
    c.destroy()?;
    Ok(status.shell_code())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 && !(args.len() == 5 && args[3] == "--count") {
        eprintln!("usage: engine-run <bundle> <id> [--count N]");
        std::process::exit(2);
    }
    let bundle = PathBuf::from(&args[1]);
    if args.len() == 5 {
        let n: u32 = match args[4].parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("--count needs a positive number");
                std::process::exit(2);
            }
        };
        let t = Instant::now();
        for i in 0..n {
            if let Err(e) = run_once(&bundle, &format!("{}-{i}", args[2])) {
                eprintln!("engine-run: {e}");
                std::process::exit(1);
            }
        }
        let per = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
        println!("{n} runs, {per:.2} ms per run (in one process)");
        return;
    }
    match run_once(&bundle, &args[2]) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("engine-run: {e}");
            std::process::exit(1);
        }
    }
}
