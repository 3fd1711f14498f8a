//! A sandbox's back end: the host process that runs its agent, and the one lifecycle every
//! caller (the CLI's monitor, the containerd shim) drives it through: start it, connect to
//! its agent while it lives, configure the sandbox, and destroy it.
//!
//! Each kind of back end is one implementation of [`Backend`]: [`native::NativeBackend`]
//! (the agent as a host process, namespaces on the host) and [`vm::VmBackend`] (the agent as
//! the guest's PID 1 behind `sandbox-vmm`). A new kind (a VM restored from a snapshot) is one
//! more implementation; [`Sandbox`] does the rest.

pub mod native;
pub mod process;
pub mod vm;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent::protocol::{Client, Endpoint, SandboxConfig};

use crate::error::{Error, Result};
use crate::sandbox::timings::Timeline;
use process::WatchedProcess;

/// How long a back end that ends by itself once destroyed gets before it is killed.
const EXIT_GRACE: Duration = Duration::from_millis(50);

/// What differs between kinds of back end once their process runs.
pub trait Backend: Send + Sync {
    /// The host program, as errors name it.
    fn program(&self) -> &'static str;

    /// Where its agent answers.
    fn endpoint(&self) -> &Endpoint;

    /// How long the agent may take to answer after the process started.
    fn answer_within(&self) -> Duration;

    /// The longest one connection attempt may wait for the agent's hello: a connection to a
    /// socket bound before its agent runs queues rather than fails.
    fn handshake_within(&self) -> Duration;

    /// The pause between attempts while the agent is not answering yet.
    fn retry_pause(&self) -> Duration;

    /// What the agent is told about the sandbox before any container, if anything.
    fn sandbox_config(&self) -> Option<SandboxConfig>;

    /// Where the process and what it runs write why they stopped.
    fn logs(&self) -> &ProcessLogs;

    /// Whether destroying the sandbox ends the process by itself (a guest resets once its
    /// agent has flushed its filesystems and answered), so it gets a moment to exit before
    /// it is killed.
    fn ends_when_destroyed(&self) -> bool;
}

/// Log files read back when a back end ends early or does not answer.
#[derive(Clone, Debug, Default)]
pub struct ProcessLogs {
    named: Vec<(&'static str, PathBuf)>,
}

impl ProcessLogs {
    pub fn with(mut self, what: &'static str, path: PathBuf) -> Self {
        self.named.push((what, path));
        self
    }

    /// The last lines of each log, for an error about a process that ended or went quiet.
    /// Only each file's end is read: a guest's console log can be as long as the guest
    /// made it.
    pub fn last_words(&self) -> String {
        const TAIL_LINES: usize = 8;
        let mut out = String::new();
        for (what, path) in &self.named {
            let text = tail_of(path);
            let tail: Vec<&str> = text.lines().rev().take(TAIL_LINES).collect();
            if !tail.is_empty() {
                out.push_str(&format!("\n--- {what} ({}):", path.display()));
                for l in tail.into_iter().rev() {
                    out.push_str("\n  ");
                    out.push_str(l);
                }
            }
        }
        out
    }
}

/// The last `TAIL_BYTES` of a file, as text (empty if it cannot be read).
fn tail_of(path: &std::path::Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL_BYTES: u64 = 16 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .is_err()
        || f.take(TAIL_BYTES).read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A back end whose process has been started, not yet known to answer.
pub struct Started {
    backend: Box<dyn Backend>,
    child: std::process::Child,
}

impl Started {
    pub fn new(backend: impl Backend + 'static, child: std::process::Child) -> Self {
        Started {
            backend: Box::new(backend),
            child,
        }
    }

    /// The back end's host pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Ends the process, for a caller that failed before it could use it.
    pub fn abandon(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Watches the process, connects to its agent while the process lives and configures
    /// the sandbox. On any failure the process is killed and the error says why: the
    /// process's end, or the agent's silence, with the logs' last lines.
    pub fn connect(self, timeline: &Timeline) -> Result<(Sandbox, Client)> {
        let logs = self.backend.logs().clone();
        let process = WatchedProcess::watch(self.child, self.backend.program(), logs);
        let sandbox = Sandbox {
            backend: self.backend,
            process,
        };
        let configured = sandbox.connect_agent().and_then(|mut client| {
            timeline.record("agent answered");
            if let Some(cfg) = sandbox.backend.sandbox_config() {
                client
                    .create_sandbox(cfg)
                    .map_err(crate::sandbox::link::agent_err("configure the sandbox"))?;
                timeline.record("sandbox configured");
            }
            Ok(client)
        });
        match configured {
            Ok(client) => Ok((sandbox, client)),
            Err(e) => {
                sandbox.process.kill();
                Err(e)
            }
        }
    }
}

/// A running back end whose agent answered: its process, watched, and how to reach it.
pub struct Sandbox {
    backend: Box<dyn Backend>,
    process: WatchedProcess,
}

impl Sandbox {
    fn connect_agent(&self) -> Result<Client> {
        let b = &self.backend;
        let timeout = b.answer_within();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match Client::connect_within(b.endpoint().clone(), left.min(b.handshake_within())) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    if let Some(why) = self.process.ended() {
                        return Err(Error::SandboxGone(format!(
                            "{why} before its agent answered"
                        )));
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::Agent(format!(
                            "no answer from the agent of {} within {}s: {e}{}",
                            b.program(),
                            timeout.as_secs(),
                            b.logs().last_words()
                        )));
                    }
                    std::thread::sleep(b.retry_pause());
                }
            }
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        self.backend.endpoint()
    }

    /// The back end's host pid.
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Why the back end process ended, if it has.
    pub fn gone(&self) -> Option<String> {
        self.process.ended()
    }

    /// Why a connection to the agent broke: the back end's end, when it ends within a
    /// moment (a VMM killed by its seccomp filter ends with SIGSYS).
    pub fn describe_loss(&self, e: &agent::protocol::ProtocolError) -> String {
        let mut why = format!(
            "lost the connection to {} while waiting for the container: {e}",
            self.process.program()
        );
        if let Some(end) = self.process.wait_ended(Duration::from_secs(1)) {
            why.push_str("; ");
            why.push_str(&end);
        }
        why
    }

    /// Ends the back end, killing it now (for a sandbox that cannot be destroyed in order).
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Destroys the sandbox: the agent kills what is left (a guest powers off), then the
    /// process is ended for certain. `client`, a control connection already open, saves
    /// opening another.
    pub fn shut_down(self, client: Option<Client>) {
        if self.gone().is_none() {
            let client = client.or_else(|| {
                Client::connect_within(self.endpoint().clone(), Duration::from_secs(2)).ok()
            });
            if let Some(mut c) = client {
                let _ = c.stream().set_read_timeout(Some(Duration::from_secs(2)));
                let _ = c.destroy_sandbox(self.backend.ends_when_destroyed());
            }
            if self.backend.ends_when_destroyed() {
                // Nothing is lost if it is killed now: its agent answered after flushing. The
                // moment lets a VM that resets at once exit with its own clean status.
                self.process.wait_ended(EXIT_GRACE);
            }
        }
        self.process.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::process::Command;

    struct FakeBackend {
        endpoint: Endpoint,
        logs: ProcessLogs,
        answer_within: Duration,
    }

    impl Backend for FakeBackend {
        fn program(&self) -> &'static str {
            "fake-backend"
        }
        fn endpoint(&self) -> &Endpoint {
            &self.endpoint
        }
        fn answer_within(&self) -> Duration {
            self.answer_within
        }
        fn handshake_within(&self) -> Duration {
            Duration::from_millis(100)
        }
        fn retry_pause(&self) -> Duration {
            Duration::from_millis(5)
        }
        fn sandbox_config(&self) -> Option<SandboxConfig> {
            None
        }
        fn logs(&self) -> &ProcessLogs {
            &self.logs
        }
        fn ends_when_destroyed(&self) -> bool {
            false
        }
    }

    fn fake(dir: &std::path::Path, answer_within: Duration) -> FakeBackend {
        let log = dir.join("backend.log");
        std::fs::write(&log, "booting\nthe last thing it said\n").unwrap();
        FakeBackend {
            endpoint: Endpoint::Unix(dir.join("agent.sock")),
            logs: ProcessLogs::default().with("fake log", log),
            answer_within,
        }
    }

    #[test]
    fn last_words_come_from_the_end_of_a_long_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut text = "early line\n".repeat(100_000);
        text.push_str("the last thing it said\n");
        std::fs::write(&log, text).unwrap();
        let words = ProcessLogs::default().with("console", log).last_words();
        assert!(words.ends_with("the last thing it said"), "{words}");
        assert_eq!(words.matches("early line").count(), 7, "{words}");
    }

    #[test]
    fn a_backend_that_dies_before_answering_is_named_with_its_last_words() {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let err = Started::new(fake(dir.path(), Duration::from_secs(20)), child)
            .connect(&Timeline::in_dir(dir.path()))
            .err()
            .expect("nobody answers");
        let text = err.to_string();
        assert!(matches!(err, Error::SandboxGone(_)), "{text}");
        assert!(text.contains("exited with status 3"), "{text}");
        assert!(text.contains("the last thing it said"), "{text}");
    }

    #[test]
    fn a_silent_agent_is_an_error_within_the_bound_and_the_process_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        // Connections queue on a listener nobody serves: the handshake must time out.
        let _listener = UnixListener::bind(dir.path().join("agent.sock")).unwrap();
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        let started = Instant::now();
        let err = Started::new(fake(dir.path(), Duration::from_millis(400)), child)
            .connect(&Timeline::in_dir(dir.path()))
            .err()
            .expect("the agent never answers");
        assert!(started.elapsed() < Duration::from_secs(10));
        let text = err.to_string();
        assert!(
            text.contains("no answer from the agent of fake-backend"),
            "{text}"
        );
        assert!(text.contains("the last thing it said"), "{text}");
        // Killed and reaped: the pid no longer names a process of ours.
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err());
    }
}
