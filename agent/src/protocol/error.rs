//! Errors seen by either end of the protocol.

use std::io;

use super::messages::ErrorReply;

/// What went wrong while speaking the agent protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o error on the agent connection: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("connection ended in the middle of a frame")]
    TruncatedFrame,
    #[error("connection closed by the peer")]
    Closed,
    #[error("cannot encode message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("cannot decode message: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("agent speaks protocol version {agent}, this client speaks {client}")]
    VersionMismatch { client: u32, agent: u32 },
    #[error("agent refused the connection: {0}")]
    Refused(ErrorReply),
    #[error("agent returned an error: {0}")]
    Remote(ErrorReply),
    #[error("response id {got:?} does not match request id {expected}")]
    IdMismatch { expected: u64, got: Option<u64> },
    #[error("unexpected response to {method}: {got}")]
    UnexpectedResponse { method: &'static str, got: String },
    #[error("the agent did not answer {method} within {waited:?}")]
    Timeout {
        method: &'static str,
        waited: std::time::Duration,
    },
    #[error("the agent connection is unusable after an earlier failure ({0}); reconnect")]
    Broken(String),
    #[error("the agent's answer to {method} lists {len} items, more than the {max} accepted")]
    TooMany {
        method: &'static str,
        len: usize,
        max: usize,
    },
    #[error("vsock proxy at {path} refused CONNECT {port}: {reply:?}")]
    VsockConnect {
        path: String,
        port: u32,
        reply: String,
    },
}

impl ProtocolError {
    /// The agent's error reply, when the failure was reported by the agent.
    pub fn remote(&self) -> Option<&ErrorReply> {
        match self {
            ProtocolError::Remote(e) | ProtocolError::Refused(e) => Some(e),
            _ => None,
        }
    }
}
