//! When each phase of a container's life happened, on the host's monotonic clock, so that
//! the several processes of one start (the CLI, the monitor, the VMM, the guest's agent
//! through the boot-complete port) land on one time line.
//!
//! Each process appends `<phase>\t<microseconds>` lines to `<state>/timings`: appends of a
//! line are atomic, and the file costs a start a few writes. The VMM's own stable lines in
//! `<state>/vmm.log` (its start on the monotonic clock, then offsets from it) are read back
//! with them. `sandbox run --timings` prints the result.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file under a state directory.
pub const TIMINGS_FILE: &str = "timings";

/// What a guest's agent writes to the boot-complete port, and what the phase is called.
pub const GUEST_MILESTONES: [(u32, &str); 2] =
    [(1, "guest init started"), (2, "guest agent listening")];

/// Microseconds on CLOCK_MONOTONIC, the clock the VMM reports its start on.
pub fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// The time line of one sandbox, kept in its state directory.
#[derive(Clone, Debug)]
pub struct Timeline {
    dir: PathBuf,
}

impl Timeline {
    pub fn in_dir(dir: &Path) -> Self {
        Timeline {
            dir: dir.to_path_buf(),
        }
    }

    /// Notes that `phase` happened now. A time line is a diagnostic: failing to write it
    /// never fails the start.
    pub fn record(&self, phase: &str) {
        self.record_at(phase, monotonic_us());
    }

    pub fn record_at(&self, phase: &str, us: u64) {
        let path = self.dir.join(TIMINGS_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        if let Ok(mut f) = file {
            let _ = f.write_all(format!("{phase}\t{us}\n").as_bytes());
        }
    }

    /// Every phase recorded so far, the VMM's included, in the order they happened.
    pub fn phases(&self) -> Vec<(String, u64)> {
        let text = std::fs::read_to_string(self.dir.join(TIMINGS_FILE)).unwrap_or_default();
        let mut phases: Vec<(String, u64)> = text
            .lines()
            .filter_map(|l| {
                let (phase, us) = l.split_once('\t')?;
                Some((phase.to_string(), us.parse().ok()?))
            })
            .collect();
        let vmm_log = std::fs::read_to_string(self.dir.join("vmm.log")).unwrap_or_default();
        phases.extend(vmm_phases(&vmm_log));
        phases.sort_by_key(|(_, us)| *us);
        phases
    }
}

/// The VMM's lines: `sandbox-vmm: started at <N> us monotonic`, then `vcpus started after
/// <N> us` and `boot-complete <value> after <N> us`, both counted from that start.
fn vmm_phases(log: &str) -> Vec<(String, u64)> {
    let mut started = None;
    let mut phases = Vec::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("sandbox-vmm: ") else {
            continue;
        };
        if let Some(us) = rest
            .strip_prefix("started at ")
            .and_then(|r| r.strip_suffix(" us monotonic"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            started = Some(us);
            phases.push(("vmm main".to_string(), us));
            continue;
        }
        let Some(start) = started else { continue };
        let Some((what, after)) = rest.split_once(" after ") else {
            continue;
        };
        let Some(offset) = after
            .strip_suffix(" us")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let phase = if what == "vcpus started" {
            "vcpus started".to_string()
        } else if let Some(value) = what
            .strip_prefix("boot-complete ")
            .and_then(|v| v.parse::<u32>().ok())
        {
            GUEST_MILESTONES
                .iter()
                .find(|(v, _)| *v == value)
                .map(|(_, name)| name.to_string())
                .unwrap_or_else(|| format!("boot-complete {value}"))
        } else {
            continue;
        };
        phases.push((phase, start + offset));
    }
    phases
}

/// A table of `phases` in milliseconds from `origin`, each with the step from the one
/// before.
pub fn table(origin: u64, phases: &[(String, u64)]) -> String {
    let width = phases
        .iter()
        .map(|(p, _)| p.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<width$}  {:>10}  {:>10}\n", "phase", "at ms", "step ms");
    let mut previous = origin;
    for (phase, us) in phases {
        let at = us.saturating_sub(origin) as f64 / 1000.0;
        let step = us.saturating_sub(previous) as f64 / 1000.0;
        out.push_str(&format!("{phase:<width$}  {at:>10.1}  {step:>10.1}\n"));
        previous = *us;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(phases: &[(&str, u64)]) -> Vec<(String, u64)> {
        phases.iter().map(|(p, us)| (p.to_string(), *us)).collect()
    }

    #[test]
    fn phases_of_every_process_land_on_one_line_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let t = Timeline::in_dir(dir.path());
        t.record_at("vmm exec", 1_000);
        t.record_at("agent answered", 9_000);
        std::fs::write(
            dir.path().join("vmm.log"),
            "sandbox-vmm: started at 1500 us monotonic\n\
             sandbox-vmm: [warn] something else after 3 us\n\
             sandbox-vmm: vcpus started after 500 us\n\
             sandbox-vmm: boot-complete 1 after 6000 us\n\
             sandbox-vmm: boot-complete 2 after 7000 us\n\
             sandbox-vmm: boot-complete 9 after 7100 us\n",
        )
        .unwrap();
        let names: Vec<(String, u64)> = t.phases();
        let expected = [
            ("vmm exec", 1_000),
            ("vmm main", 1_500),
            ("vcpus started", 2_000),
            ("guest init started", 7_500),
            ("guest agent listening", 8_500),
            ("boot-complete 9", 8_600),
            ("agent answered", 9_000),
        ];
        assert_eq!(names, owned(&expected));
    }

    #[test]
    fn the_vmm_lines_are_read_as_the_vmm_writes_them() {
        use vmm::devices::legacy::BootComplete;
        let log = [
            BootComplete::started_line(10_000),
            BootComplete::vcpus_started_line(250),
            BootComplete::line(1, 4_000),
            BootComplete::line(2, 4_500),
        ]
        .concat();
        let phases = vmm_phases(&log);
        let expected = [
            ("vmm main", 10_000),
            ("vcpus started", 10_250),
            ("guest init started", 14_000),
            ("guest agent listening", 14_500),
        ];
        assert_eq!(phases, owned(&expected));
    }

    #[test]
    fn the_milestones_are_the_agents_values() {
        use agent::init::milestones::Milestone;
        assert_eq!(GUEST_MILESTONES[0].0, Milestone::InitStarted as u32);
        assert_eq!(GUEST_MILESTONES[1].0, Milestone::AgentListening as u32);
    }

    #[test]
    fn boot_complete_lines_before_the_start_line_are_not_placed() {
        let phases = vmm_phases("sandbox-vmm: boot-complete 1 after 10 us\n");
        assert!(phases.is_empty());
    }

    #[test]
    fn the_table_counts_from_the_origin_and_steps_from_the_previous_phase() {
        let phases = vec![("a".to_string(), 3_000), ("bb".to_string(), 4_500)];
        let t = table(1_000, &phases);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].starts_with("a ") && lines[1].contains("2.0"),
            "{t}"
        );
        assert!(lines[2].contains("3.5") && lines[2].contains("1.5"), "{t}");
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = monotonic_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(monotonic_us() >= a + 2_000);
    }
}
