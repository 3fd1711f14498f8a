//! The report as rows (section, probe, native, vm) and as a plain-text table.

use super::{Column, Report, BOMB_PIDS, BOMB_SECS, HOG_LIMIT};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub section: &'static str,
    pub what: String,
    pub native: String,
    pub vm: String,
}

/// A number for the charts, per column (None where it was not measured).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub native: Option<f64>,
    pub vm: Option<f64>,
}

fn val(c: &Column, probe: &str, key: &str) -> Option<String> {
    c.probes.get(probe).and_then(|o| o.values.get(key)).cloned()
}

fn num(c: &Column, probe: &str, key: &str) -> Option<f64> {
    val(c, probe, key).and_then(|v| v.trim().parse().ok())
}

/// A cell: the value, or why there is none.
fn cell(c: &Column, probe: &str, key: &str) -> String {
    if !c.ran {
        return "not run".into();
    }
    match (val(c, probe, key), c.probes.get(probe)) {
        (Some(v), _) => v,
        (None, Some(o)) if o.exit_code != Some(0) => format!(
            "probe failed (exit {}): {}",
            o.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "by signal".into()),
            o.stderr.lines().last().unwrap_or("")
        ),
        (None, Some(_)) => "-".into(),
        (None, None) => "probe did not run".into(),
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some(s[s.len() / 2])
}

fn rate(c: &Column, probe: &str, amount: &str, secs: &str) -> Option<f64> {
    let (a, s) = (num(c, probe, amount)?, num(c, probe, secs)?);
    (s > 0.0).then(|| a / s)
}

pub fn metrics(r: &Report) -> Vec<Metric> {
    let m = |c: &Column, f: &dyn Fn(&Column) -> Option<f64>| if c.ran { f(c) } else { None };
    let both = |name, unit, f: &dyn Fn(&Column) -> Option<f64>| Metric {
        name,
        unit,
        native: m(&r.native, f),
        vm: m(&r.vm, f),
    };
    vec![
        both("start-up (run of `true`, median)", "ms", &|c| {
            median(&c.startup_ms)
        }),
        both("memory per sandbox (back end RSS)", "MiB", &|c| {
            c.probes
                .get("sees")
                .and_then(|o| o.backend_rss_kib)
                .map(|k| k as f64 / 1024.0)
        }),
        both("syscall latency (1-byte read/write)", "ns", &|c| {
            rate(c, "costs", "syscall_secs", "syscall_count").map(|x| x * 1e9)
        }),
        both("file write with fsync", "MiB/s", &|c| {
            rate(c, "costs", "file_mib", "file_secs")
        }),
        both("TCP over loopback", "MiB/s", &|c| {
            // Only a transfer that arrived whole counts.
            let sent = num(c, "costs", "net_mib")? * (1u64 << 20) as f64;
            (num(c, "costs", "net_bytes")? == sent)
                .then(|| rate(c, "costs", "net_mib", "net_secs"))
                .flatten()
        }),
    ]
}

/// Counts of what the workload sees, for the visibility chart.
pub fn visibility(r: &Report) -> Vec<Metric> {
    let f = |name, key| Metric {
        name,
        unit: "",
        native: num(&r.native, "sees", key),
        vm: num(&r.vm, "sees", key),
    };
    vec![
        f("processes in /proc", "pids"),
        f("mounts", "mounts"),
        f("entries in /dev", "dev_count"),
        f("kernel symbols with addresses", "kallsyms_nonzero"),
        f("routes", "routes"),
    ]
}

fn host_log_effect(c: &Column) -> String {
    if !c.ran {
        return "not run".into();
    }
    if let Some(e) = &c.host_log_error {
        return format!("host log unreadable: {e}");
    }
    let hits: Vec<&String> = c
        .host_log_during_drills
        .iter()
        .filter(|l| l.to_ascii_lowercase().contains("sysrq"))
        .collect();
    if hits.is_empty() {
        format!(
            "no sysrq line in the host kernel log ({} other lines during the drill)",
            c.host_log_during_drills.len()
        )
    } else {
        format!("HOST LOGGED: {}", hits[0])
    }
}

/// busybox insmod prints the kernel's errno as text; name the errno too.
fn insmod(c: &Column, probe: &str) -> String {
    let text = cell(c, probe, "insmod");
    let errno = [
        (
            "kernel does not support requested operation",
            "ENOSYS: no module loader",
        ),
        (
            "invalid module format",
            "ENOEXEC: the loader ran and rejected the image",
        ),
        ("Operation not permitted", "EPERM: no CAP_SYS_MODULE"),
    ]
    .iter()
    .find(|(msg, _)| text.contains(msg))
    .map(|(_, name)| *name);
    match errno {
        Some(e) => format!("{e} ({text})"),
        None => text,
    }
}

fn exit_meaning(c: &Column, probe: &str, key: &str) -> String {
    match val(c, probe, key).as_deref() {
        Some("137") => "killed by SIGKILL (exit 137)".into(),
        Some("0") => "finished: the limit did not stop it".into(),
        Some(s) => format!("exit status {s}"),
        None => cell(c, probe, key),
    }
}

fn responsiveness(c: &Column) -> String {
    match c.host_responsiveness {
        _ if !c.ran => "not run".into(),
        Some((n, max)) if n > 0 => {
            format!("host fork+exec of `true`: {n} samples, slowest {max:.1} ms")
        }
        _ => "no host samples".into(),
    }
}

fn fmt_metric(v: Option<f64>, unit: &str, ran: bool, representative: bool) -> String {
    match v {
        Some(x) => {
            let s = if x >= 100.0 {
                format!("{x:.0} {unit}")
            } else {
                format!("{x:.1} {unit}")
            };
            if representative {
                s
            } else {
                format!("{s} (unrepresentative)")
            }
        }
        None if !ran => "not run".into(),
        None => "not measured".into(),
    }
}

pub fn rows(r: &Report) -> Vec<Row> {
    let (n, v) = (&r.native, &r.vm);
    let mut rows = Vec::new();
    let mut row = |section, what: &str, native: String, vm: String| {
        rows.push(Row {
            section,
            what: what.to_string(),
            native,
            vm,
        })
    };
    const SEES: &str = "what the workload sees";
    for (what, key) in [
        ("kernel release (uname -r)", "kernel_release"),
        ("kernel build (uname -v)", "kernel_build"),
        ("processes in /proc", "pids"),
        ("mounts", "mounts"),
        ("devices in /dev", "dev"),
        ("block devices (/sys/class/block)", "block_devices"),
        ("kernel symbols (/proc/kallsyms lines)", "kallsyms"),
        ("kernel symbols with non-zero address", "kallsyms_nonzero"),
        ("kernel modules (/proc/modules)", "modules"),
        ("network interfaces (/proc/net/dev)", "ifaces"),
        ("routes (/proc/net/route)", "routes"),
    ] {
        row(SEES, what, cell(n, "sees", key), cell(v, "sees", key));
    }
    row(
        SEES,
        "host kernel release, for reference",
        r.host_kernel_release.clone(),
        r.host_kernel_release.clone(),
    );

    const REACH: &str = "what it can reach on the host";
    let ns = &r.native_surface;
    let vs = &r.vm_surface;
    row(
        REACH,
        "host system calls reachable",
        format!(
            "{} of {} (seccomp profile: {}; {} argument-conditional)",
            ns.syscalls_allowed, ns.syscalls_known, ns.profile, ns.syscalls_conditional
        ),
        format!(
            "none directly; the VMM's threads may make {} distinct calls",
            vs.syscalls_union
        ),
    );
    for t in &vs.threads {
        row(
            REACH,
            &format!("VMM {} thread allow-list", t.thread),
            "-".into(),
            if t.ioctls > 0 {
                format!(
                    "{} syscalls; ioctl limited to {} requests",
                    t.syscalls, t.ioctls
                )
            } else {
                format!("{} syscalls", t.syscalls)
            },
        );
    }
    row(
        REACH,
        "device model",
        "the host kernel's own drivers".into(),
        vs.devices.join("; "),
    );

    const DRILLS: &str = "escape drills";
    row(
        DRILLS,
        "privileged: echo h > /proc/sysrq-trigger",
        cell(n, "privileged", "sysrq"),
        cell(v, "privileged", "sysrq"),
    );
    row(
        DRILLS,
        "  effect on the host kernel log",
        host_log_effect(n),
        host_log_effect(v),
    );
    row(
        DRILLS,
        "module load (empty image), default container",
        insmod(n, "sees"),
        insmod(v, "sees"),
    );
    row(
        DRILLS,
        "module load (empty image), privileged",
        insmod(n, "privileged"),
        insmod(v, "privileged"),
    );
    row(
        DRILLS,
        "kernel log (dmesg), default container",
        cell(n, "sees", "dmesg"),
        cell(v, "sees", "dmesg"),
    );
    row(
        DRILLS,
        "kernel log (dmesg), privileged",
        cell(n, "privileged", "dmesg"),
        cell(v, "privileged", "dmesg"),
    );
    let block_keys: std::collections::BTreeSet<String> = [n, v]
        .iter()
        .filter_map(|c| c.probes.get("privileged"))
        .flat_map(|o| o.values.keys())
        .filter(|k| k.starts_with("block_"))
        .cloned()
        .collect();
    if block_keys.is_empty() {
        row(
            DRILLS,
            "block device read / read-only mount",
            "no mounted host block device to try".into(),
            "no mounted host block device to try".into(),
        );
    }
    for k in &block_keys {
        let what = format!("privileged: {}", k.replace('_', " "));
        row(
            DRILLS,
            &what,
            cell(n, "privileged", k),
            cell(v, "privileged", k),
        );
    }
    let bomb = |c: &Column| {
        if !c.ran {
            return "not run".into();
        }
        match (
            val(c, "fork_bomb", "bomb_peak"),
            val(c, "fork_bomb", "bomb"),
        ) {
            (Some(p), _) => format!(
                "peak {p} processes under pids.max {}; {}",
                val(c, "fork_bomb", "pids_max").unwrap_or_default(),
                match val(c, "fork_bomb", "bomb_events")
                    .as_deref()
                    .and_then(|e| e.strip_prefix("max "))
                {
                    Some(n) => format!("{n} forks refused by the limit"),
                    None => "no pids.events to count refused forks".into(),
                }
            ),
            (None, Some(b)) => b,
            (None, None) => cell(c, "fork_bomb", "bomb_peak"),
        }
    };
    row(
        DRILLS,
        &format!("fork bomb, pids limit {BOMB_PIDS}, {BOMB_SECS} s"),
        bomb(n),
        bomb(v),
    );
    row(
        DRILLS,
        "  host during the bomb",
        responsiveness(n),
        responsiveness(v),
    );
    row(
        DRILLS,
        &format!("memory hog (256 MiB) under {} MiB limit", HOG_LIMIT >> 20),
        exit_meaning(n, "memory_hog", "hog_status"),
        exit_meaning(v, "memory_hog", "hog_status"),
    );
    row(
        DRILLS,
        "  OOM kills counted by the cgroup",
        cell(n, "memory_hog", "hog_oom_kills"),
        cell(v, "memory_hog", "hog_oom_kills"),
    );

    const COSTS: &str = "what isolation costs";
    for m in metrics(r) {
        row(
            COSTS,
            &format!("{} [{}]", m.name, m.unit),
            fmt_metric(m.native, m.unit, n.ran, n.costs_representative),
            fmt_metric(m.vm, m.unit, v.ran, v.costs_representative),
        );
    }
    rows
}

/// Wraps `s` into lines of at most `w` characters, on spaces where it can.
fn wrap(s: &str, w: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    for word in s.split_whitespace() {
        let mut word = word.to_string();
        while word.chars().count() > w {
            let head: String = word.chars().take(w).collect();
            let tail: String = word.chars().skip(w).collect();
            if !line.is_empty() {
                out.push(std::mem::take(&mut line));
            }
            out.push(head);
            word = tail;
        }
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > w {
            out.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() || out.is_empty() {
        out.push(line);
    }
    out
}

/// The terminal table: three columns, long cells wrapped.
pub fn text(r: &Report) -> String {
    const W: [usize; 3] = [40, 36, 36];
    let mut s = String::new();
    s.push_str(&format!(
        "{}  (image {}; host kernel {}; KVM: {})\n",
        r.command, r.image, r.host_kernel_release, r.kvm_detail
    ));
    for c in [&r.native, &r.vm] {
        if let Some(note) = &c.note {
            s.push_str(&format!("{} column: {note}\n", c.isolation));
        }
        for e in &c.errors {
            s.push_str(&format!("{} column error: {e}\n", c.isolation));
        }
    }
    let rule = format!(
        "+{}+{}+{}+\n",
        "-".repeat(W[0] + 2),
        "-".repeat(W[1] + 2),
        "-".repeat(W[2] + 2)
    );
    let mut section = "";
    for row in rows(r) {
        if row.section != section {
            section = row.section;
            s.push_str(&rule);
            s.push_str(&format!(
                "| {:<w0$} | {:<w1$} | {:<w2$} |\n",
                section.to_uppercase(),
                "native",
                "vm",
                w0 = W[0],
                w1 = W[1],
                w2 = W[2]
            ));
            s.push_str(&rule);
        }
        let cols = [
            wrap(&row.what, W[0]),
            wrap(&row.native, W[1]),
            wrap(&row.vm, W[2]),
        ];
        let h = cols.iter().map(|c| c.len()).max().unwrap_or(1);
        for i in 0..h {
            let get = |c: &Vec<String>| c.get(i).cloned().unwrap_or_default();
            s.push_str(&format!(
                "| {:<w0$} | {:<w1$} | {:<w2$} |\n",
                get(&cols[0]),
                get(&cols[1]),
                get(&cols[2]),
                w0 = W[0],
                w1 = W[1],
                w2 = W[2]
            ));
        }
    }
    s.push_str(&rule);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_on_spaces_and_splits_long_words() {
        assert_eq!(wrap("aaa bbb ccc", 7), vec!["aaa bbb", "ccc"]);
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 4), vec![""]);
    }

    #[test]
    fn median_of_odd_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }
}
