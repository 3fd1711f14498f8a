//! What the shim reports back to containerd. Each error maps to the gRPC code containerd's
//! errdefs expect (a missing task is NotFound, a task in the wrong state FailedPrecondition),
//! so clients such as `ctr` print the cause rather than a generic failure.

use containerd_shim::protos::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("task {0:?} does not exist")]
    NoTask(String),
    #[error("exec {exec_id:?} of task {id:?} does not exist")]
    NoExec { id: String, exec_id: String },
    #[error("{0} has already finished")]
    Finished(String),
    #[error("task {0:?} already exists")]
    TaskExists(String),
    #[error("exec {exec_id:?} of task {id:?} already exists")]
    ExecExists { id: String, exec_id: String },
    #[error("{what} is {state}: cannot {action}")]
    WrongState {
        what: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("invalid shim options: {0}")]
    Options(String),
    #[error("{0} is not implemented by the sandbox shim")]
    Unimplemented(&'static str),
    #[error("container {id:?} wants {wanted} isolation but its sandbox {group:?} runs {running}")]
    IsolationConflict {
        id: String,
        group: String,
        wanted: String,
        running: String,
    },
    #[error("rootfs of {bundle}: {reason}")]
    Rootfs { bundle: String, reason: String },
    #[error("stdio {path}: {source}")]
    Stdio {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the sandbox is gone: {0}")]
    SandboxGone(String),
    #[error("agent: {0}")]
    Agent(String),
    #[error(transparent)]
    Runtime(#[from] crate::error::Error),
}

pub type Result<T> = std::result::Result<T, ShimError>;

impl ShimError {
    pub fn code(&self) -> Code {
        match self {
            ShimError::NoTask(_) | ShimError::NoExec { .. } | ShimError::Finished(_) => {
                Code::NOT_FOUND
            }
            ShimError::TaskExists(_) | ShimError::ExecExists { .. } => Code::ALREADY_EXISTS,
            ShimError::WrongState { .. } | ShimError::IsolationConflict { .. } => {
                Code::FAILED_PRECONDITION
            }
            ShimError::Invalid(_) | ShimError::Options(_) => Code::INVALID_ARGUMENT,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::SandboxGone(_) => Code::UNAVAILABLE,
            _ => Code::INTERNAL,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Turns an agent protocol failure into a shim error naming the operation.
pub fn agent(what: &'static str) -> impl Fn(agent::protocol::ProtocolError) -> ShimError {
    move |e| match e.remote() {
        Some(reply) => ShimError::Agent(format!("{what}: {}", reply.message)),
        None => ShimError::Agent(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_the_codes_containerd_expects() {
        assert_eq!(ShimError::NoTask("a".into()).code(), Code::NOT_FOUND);
        assert_eq!(
            ShimError::Unimplemented("Pause").code(),
            Code::UNIMPLEMENTED
        );
        let e: ttrpc::Error = ShimError::NoTask("x".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::NOT_FOUND);
                assert!(s.message().contains("\"x\""));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
