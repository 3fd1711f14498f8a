//! `sandbox-agent`: PID 1 of a sandbox guest, or the native-isolation agent on the host.
//!
//! As PID 1 (no arguments needed) it sets up the guest, serves on vsock port 1024 and powers
//! the VM off when the server ends. Natively it needs `--socket PATH` and serves there.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use agent::init;
use agent::init::milestones::{Milestone, Milestones};
use agent::protocol::AGENT_VSOCK_PORT;
use agent::server::{self, ListenAddr, Mode, ServerConfig};

/// Default directory for per-container state in native mode.
const NATIVE_ROOT: &str = "/run/sandbox-agent";
/// Per-container state inside a guest (/run is a tmpfs there).
const GUEST_ROOT: &str = "/run/sandbox-agent";

#[derive(Debug, Parser)]
#[command(
    name = "sandbox-agent",
    version,
    about = "Sandbox agent: guest PID 1 and container engine server"
)]
struct Args {
    /// Serve on this unix socket (native isolation). Required unless running as PID 1.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The socket at --socket is already bound and listening on this inherited descriptor
    /// (the parent bound it so clients need not wait for the agent to start).
    #[arg(long, value_name = "FD", requires = "socket")]
    listen_fd: Option<i32>,
    /// Serve on AF_VSOCK at this port (guest). Implied as PID 1.
    #[arg(long, value_name = "PORT", conflicts_with = "socket")]
    vsock: Option<u32>,
    /// Directory for per-container state.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Act as a guest's agent without being PID 1: `create_sandbox` then sets the hostname,
    /// network, DNS and storage of the namespaces the agent runs in. Meant for testing the
    /// guest behaviour inside namespaces made for it.
    #[arg(long)]
    guest: bool,
    /// Leave each container's init to whoever adopts orphans above the agent, as runc's
    /// caller adopts it: the agent is then no subreaper and reports an init's end without
    /// its status (native isolation under the `sandbox` CLI).
    #[arg(long, conflicts_with = "guest")]
    orphan_inits: bool,
}

/// Warnings and errors of the engine and the server on stderr: the agent's log file
/// natively (`<state>/agent.log`), the console in a guest. Without a logger the `log` crate
/// drops them, and the runtime spec wants some of them seen (hooks, capabilities).
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("sandbox-agent: {}: {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn main() -> ExitCode {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    if nix::unistd::getpid().as_raw() == 1 {
        // The kernel may hand PID 1 arguments of its own: unknown ones are ignored.
        run_as_pid1(Args::try_parse().ok())
    } else {
        run_native(Args::parse())
    }
}

fn run_native(args: Args) -> ExitCode {
    let listen = match (args.socket, args.vsock) {
        (Some(path), None) => match args.listen_fd {
            Some(fd) => ListenAddr::InheritedUnix { path, fd },
            None => ListenAddr::Unix(path),
        },
        (None, Some(port)) => ListenAddr::Vsock { port },
        _ => {
            eprintln!("sandbox-agent: give --socket PATH (or --vsock PORT inside a guest)");
            return ExitCode::from(2);
        }
    };
    // Orphans of processes we start (an exec'd daemon's children) come back to us rather
    // than to the host's init, so the reaper collects them; unless the inits are to go to
    // whoever is above us, which a subreaper here would stop.
    if !args.orphan_inits {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let config = ServerConfig {
        listen,
        mode: if args.guest {
            Mode::Guest
        } else {
            Mode::Native
        },
        root: args.root.unwrap_or_else(|| PathBuf::from(NATIVE_ROOT)),
        orphan_inits: args.orphan_inits,
    };
    match server::run(config, || {}) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbox-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// PID 1 must never exit (the kernel panics): every path ends in power-off. It listens on
/// vsock unless `--socket` names a unix socket (for testing PID 1 in a pid namespace).
fn run_as_pid1(args: Option<Args>) -> ExitCode {
    if let Err(e) = init::mounts::mount_pseudo_filesystems(std::path::Path::new("/")) {
        eprintln!("sandbox-agent: {e}");
    }
    let milestones = Milestones::from_kernel();
    milestones.report(Milestone::InitStarted);
    let missing = init::mounts::enable_cgroup_controllers(std::path::Path::new("/sys/fs/cgroup"));
    if !missing.is_empty() {
        eprintln!("sandbox-agent: cgroup controllers not available: {missing:?}");
    }
    let (socket, vsock, root) = match args {
        Some(a) => (a.socket, a.vsock, a.root),
        None => (None, None, None),
    };
    let listen = match socket {
        Some(path) => ListenAddr::Unix(path),
        None => ListenAddr::Vsock {
            port: vsock.unwrap_or(AGENT_VSOCK_PORT),
        },
    };
    let config = ServerConfig {
        listen,
        mode: Mode::Guest,
        root: root.unwrap_or_else(|| PathBuf::from(GUEST_ROOT)),
        orphan_inits: false,
    };
    match server::run(config, || milestones.report(Milestone::AgentListening)) {
        Ok(_) => eprintln!("sandbox-agent: sandbox destroyed, powering off"),
        Err(e) => eprintln!("sandbox-agent: {e}; powering off"),
    }
    let Err(e) = init::power::power_off();
    eprintln!("sandbox-agent: power off: {e}");
    // Power-off failed: halting here keeps the kernel from panicking on PID 1's exit.
    loop {
        nix::unistd::pause();
    }
}
