//! Errors of the container engine.
//!
//! Spec problems are reported with the JSON path of the offending field so that the caller
//! can show the user exactly what to fix (`linux.resources.memory.limit: must be ...`).

use std::io;
use std::path::PathBuf;

/// A problem with one field of the OCI runtime spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    /// JSON path of the field, e.g. `linux.resources.memory.limit`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Everything that can go wrong while creating, running or tearing down a container.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    #[error("invalid container id {id:?}: {problem}")]
    InvalidId { id: String, problem: String },
    #[error("cgroup {path}: {action}: {source}")]
    Cgroup {
        path: PathBuf,
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("cgroup: {0}")]
    CgroupUnsupported(String),
    #[error("{action}: {source}")]
    Sys {
        action: String,
        #[source]
        source: io::Error,
    },
    /// The container's init (or an exec'd process) reported a failure before it ran the
    /// user's program; the message comes from inside the container.
    #[error("container process: {0}")]
    Child(String),
    #[error("container process exited before it was ready ({0})")]
    ChildVanished(String),
    /// A lifecycle hook run by the engine failed; the text names the hook.
    #[error("{0}")]
    Hook(String),
    #[error("container is {actual}, expected {expected}")]
    WrongState {
        expected: &'static str,
        actual: &'static str,
    },
}

impl EngineError {
    /// Wraps an OS error with the step that failed.
    pub fn sys(action: impl Into<String>, source: impl Into<io::Error>) -> Self {
        EngineError::Sys {
            action: action.into(),
            source: source.into(),
        }
    }

    pub fn cgroup(path: impl Into<PathBuf>, action: impl Into<String>, source: io::Error) -> Self {
        EngineError::Cgroup {
            path: path.into(),
            action: action.into(),
            source,
        }
    }
}
