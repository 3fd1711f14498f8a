//! `sandbox events [--stats] [--interval 5s] ID`: resource statistics and OOM events as JSON
//! lines, in runc's `{"type","id","data"}` form.

use std::time::Duration;

use clap::Args;

use crate::config::RuntimeConfig;
use crate::error::{Error, Result};
use crate::sandbox::link;
use crate::state::{StateStore, Status};

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Print one statistics event and exit.
    #[arg(long)]
    pub stats: bool,
    /// Interval between statistics events (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s")]
    pub interval: String,
    pub id: String,
}

pub fn run(g: &RuntimeConfig, a: EventsArgs) -> Result<()> {
    let store = StateStore::new(&g.root);
    let rec = store.load(&a.id)?;
    store.require_live(&rec, "report events of")?;
    let interval = parse_interval(&a.interval)?;
    let mut client = link::connect(&rec)?;
    let mut oom_seen = 0u64;
    loop {
        let stats = match client.stats(&a.id) {
            Ok(s) => s,
            Err(_) if !a.stats && stopped(&store, &a.id) => return Ok(()),
            Err(e) => return Err(link::agent_err("stats")(e)),
        };
        println!(
            "{}",
            serde_json::json!({"type": "stats", "id": a.id, "data": stats})
        );
        if a.stats {
            return Ok(());
        }
        // Wait for OOM events until the next statistics are due.
        // The agent goes away with the container: that ends the stream, it is not an error.
        let ooms = match client.oom_events(Some(&a.id), oom_seen + 1, Some(interval)) {
            Ok(o) => o,
            Err(_) if stopped(&store, &a.id) => return Ok(()),
            Err(e) => return Err(link::agent_err("oom events")(e)),
        };
        for ev in ooms {
            oom_seen = oom_seen.max(ev.sequence);
            println!(
                "{}",
                serde_json::json!({"type": "oom", "id": a.id, "data": {}})
            );
        }
        match store.load(&a.id) {
            Ok(r) if matches!(r.live_status(), Status::Created | Status::Running) => {}
            _ => return Ok(()),
        }
    }
}

fn stopped(store: &StateStore, id: &str) -> bool {
    // Give the monitor a moment to record the exit before deciding.
    for _ in 0..50 {
        match store.load(id) {
            Ok(r) if matches!(r.live_status(), Status::Created | Status::Running) => {}
            _ => return true,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn parse_interval(s: &str) -> Result<Duration> {
    let bad = || Error::Usage(format!("--interval {s:?}: expected e.g. 5s or 500ms"));
    let (n, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        (s, 1000)
    };
    let n: u64 = n.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok(Duration::from_millis(n * unit))
}
