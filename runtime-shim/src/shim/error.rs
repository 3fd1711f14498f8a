//! What the shim reports back to containerd. Each error maps to the gRPC code containerd's
//! errdefs expect (a missing task is NotFound, a task in the wrong state FailedPrecondition),
//! so clients such as `ctr` print the cause rather than a generic failure.

use agent::protocol::{ErrorCode, ProtocolError};

use crate::error::Error;
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
    /// The agent answered with an error: its kind decides the code containerd gets.
    #[error("agent: {what}: {message}")]
    AgentReply {
        what: &'static str,
        code: ErrorCode,
        message: String,
    },
    /// The agent did not answer, or not in the protocol.
    #[error("agent: {what}: {source}")]
    AgentConnection {
        what: &'static str,
        #[source]
        source: ProtocolError,
    },
    #[error(transparent)]
    Runtime(#[from] Error),
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
            ShimError::SandboxGone(_) | ShimError::Runtime(Error::SandboxGone(_)) => {
                Code::UNAVAILABLE
            }
            ShimError::AgentReply { code, .. } => code_of_reply(*code),
            ShimError::AgentConnection { source, .. } => code_of_connection(source),
            _ => Code::INTERNAL,
        }
    }
}

/// The errdefs kind of an agent's error reply, as containerd's runc shim reports the same
/// failure of runc.
fn code_of_reply(code: ErrorCode) -> Code {
    match code {
        ErrorCode::NotFound => Code::NOT_FOUND,
        ErrorCode::AlreadyExists => Code::ALREADY_EXISTS,
        ErrorCode::InvalidState | ErrorCode::VersionMismatch => Code::FAILED_PRECONDITION,
        ErrorCode::InvalidParams | ErrorCode::Malformed | ErrorCode::UnknownMethod => {
            Code::INVALID_ARGUMENT
        }
        ErrorCode::Unsupported => Code::UNIMPLEMENTED,
        ErrorCode::Engine | ErrorCode::Sandbox | ErrorCode::Internal => Code::INTERNAL,
    }
}

/// A connection that failed or went quiet is the sandbox being unavailable; an agent that
/// answered outside the protocol is an internal failure.
fn code_of_connection(e: &ProtocolError) -> Code {
    match e {
        ProtocolError::Timeout { .. } => Code::DEADLINE_EXCEEDED,
        ProtocolError::Io(_)
        | ProtocolError::Closed
        | ProtocolError::TruncatedFrame
        | ProtocolError::Broken(_)
        | ProtocolError::VsockConnect { .. } => Code::UNAVAILABLE,
        ProtocolError::Remote(reply) | ProtocolError::Refused(reply) => code_of_reply(reply.code),
        ProtocolError::FrameTooLarge { .. }
        | ProtocolError::Encode(_)
        | ProtocolError::Decode(_)
        | ProtocolError::VersionMismatch { .. }
        | ProtocolError::IdMismatch { .. }
        | ProtocolError::UnexpectedResponse { .. }
        | ProtocolError::TooMany { .. } => Code::INTERNAL,
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Turns an agent protocol failure into a shim error naming the operation.
pub fn agent(what: &'static str) -> impl Fn(ProtocolError) -> ShimError {
    move |e| match e.remote() {
        Some(reply) => ShimError::AgentReply {
            what,
            code: reply.code,
            message: reply.message.clone(),
        },
        None => ShimError::AgentConnection { what, source: e },
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

    fn reply(code: ErrorCode) -> ProtocolError {
        ProtocolError::Remote(agent::protocol::ErrorReply::new(code, "said the agent"))
    }

    #[test]
    fn agent_replies_keep_their_kind() {
        for (code, want) in [
            (ErrorCode::NotFound, Code::NOT_FOUND),
            (ErrorCode::AlreadyExists, Code::ALREADY_EXISTS),
            (ErrorCode::InvalidState, Code::FAILED_PRECONDITION),
            (ErrorCode::VersionMismatch, Code::FAILED_PRECONDITION),
            (ErrorCode::InvalidParams, Code::INVALID_ARGUMENT),
            (ErrorCode::Malformed, Code::INVALID_ARGUMENT),
            (ErrorCode::UnknownMethod, Code::INVALID_ARGUMENT),
            (ErrorCode::Unsupported, Code::UNIMPLEMENTED),
            (ErrorCode::Engine, Code::INTERNAL),
            (ErrorCode::Sandbox, Code::INTERNAL),
            (ErrorCode::Internal, Code::INTERNAL),
        ] {
            let e = agent("start")(reply(code));
            assert_eq!(e.code(), want, "{code:?}");
            assert_eq!(e.to_string(), "agent: start: said the agent");
        }
    }

    #[test]
    fn a_silent_or_broken_agent_is_unavailable_and_a_garbling_one_internal() {
        let timeout = ProtocolError::Timeout {
            method: "wait",
            waited: std::time::Duration::from_secs(5),
        };
        let reset = ProtocolError::Io(std::io::ErrorKind::ConnectionReset.into());
        for (e, want) in [
            (timeout, Code::DEADLINE_EXCEEDED),
            (ProtocolError::Closed, Code::UNAVAILABLE),
            (reset, Code::UNAVAILABLE),
            (ProtocolError::TruncatedFrame, Code::UNAVAILABLE),
            (
                ProtocolError::FrameTooLarge {
                    len: 1 << 30,
                    max: 1 << 20,
                },
                Code::INTERNAL,
            ),
            (
                ProtocolError::IdMismatch {
                    expected: 1,
                    got: Some(7),
                },
                Code::INTERNAL,
            ),
        ] {
            let text = e.to_string();
            let shim = agent("wait")(e);
            assert_eq!(shim.code(), want, "{text}");
            assert_eq!(shim.to_string(), format!("agent: wait: {text}"));
        }
    }
}
