//! The errors the runtime reports. Every failure a caller can cause names its cause here, so
//! `sandbox` can print one clear line (and log it for runc callers that read `--log`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container id {0:?}: use {rule}", rule = agent::engine::ID_RULE)]
    InvalidId(String),
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {id:?} is {status}: cannot {action} (it must be {needed})")]
    WrongState {
        id: String,
        status: String,
        action: &'static str,
        needed: &'static str,
    },
    /// A stopped container whose sandbox (VMM, agent) ended under it.
    #[error("container {id:?} is stopped: cannot {action}: its sandbox ended: {why}")]
    SandboxEnded {
        id: String,
        action: &'static str,
        why: String,
    },
    #[error("bundle {path}: {reason}")]
    Bundle { path: PathBuf, reason: String },
    #[error("config.json in {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("state of container {id:?} is unreadable ({path}): {reason}")]
    CorruptState {
        id: String,
        path: PathBuf,
        reason: String,
    },
    #[error("unknown signal {0:?}")]
    BadSignal(String),
    #[error("invalid argument: {0}")]
    Usage(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("agent: {0}")]
    Agent(String),
    /// The back end process of a sandbox ended: nothing in it can answer any more.
    #[error("the sandbox is gone: {0}")]
    SandboxGone(String),
    #[error("vm isolation: {0}")]
    Vm(String),
    #[error("image: {0}")]
    Image(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub fn sys(what: &'static str, source: nix::Error) -> Self {
        Error::Sys { what, source }
    }
}

/// Shorthand for attaching a path and a verb to an io::Error.
pub trait IoContext<T> {
    fn ctx(self, what: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(what, path, e))
    }
}
