//! Task stats in the form containerd decodes: the agent's cgroup figures as a cgroup v2
//! `Metrics` message (`io.containerd.cgroups.v2.Metrics`), which `ctr task metrics` and the
//! CRI plugin read whatever cgroup layout the host (or guest) has.

use agent::protocol::ContainerStats;
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;

pub const METRICS_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

pub fn to_metrics(s: &ContainerStats) -> Metrics {
    let mut m = Metrics::new();
    let mut pids = PidsStat::new();
    pids.current = s.pids_current;
    pids.limit = s.pids_limit.unwrap_or(0);
    m.pids = Some(pids).into();
    let mut cpu = CPUStat::new();
    cpu.usage_usec = s.cpu_usage_ns / 1000;
    cpu.user_usec = s.cpu_user_ns / 1000;
    cpu.system_usec = s.cpu_system_ns / 1000;
    m.cpu = Some(cpu).into();
    let mut mem = MemoryStat::new();
    mem.usage = s.memory_usage_bytes;
    mem.usage_limit = s.memory_limit_bytes.unwrap_or(0);
    mem.max_usage = s.memory_max_usage_bytes.unwrap_or(0);
    mem.swap_usage = s.swap_usage_bytes.unwrap_or(0);
    m.memory = Some(mem).into();
    let mut ev = MemoryEvents::new();
    ev.oom_kill = s.oom_kills;
    m.memory_events = Some(ev).into();
    m
}

pub fn to_any(s: &ContainerStats) -> Result<Any, String> {
    let value = to_metrics(s)
        .write_to_bytes()
        .map_err(|e| format!("encode metrics: {e}"))?;
    let mut any = Any::new();
    any.type_url = METRICS_TYPE.to_string();
    any.value = value;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_round_trip_through_the_message() {
        let s = ContainerStats {
            cpu_usage_ns: 5_000_000,
            memory_usage_bytes: 4096,
            memory_limit_bytes: Some(1 << 20),
            pids_current: 3,
            oom_kills: 1,
            ..Default::default()
        };
        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 5000);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.usage_limit, 1 << 20);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.memory_events.oom_kill, 1);
    }
}
