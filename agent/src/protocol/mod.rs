//! The agent protocol: one definition of the messages, the framing and a client, shared by
//! the agent (server) and the runtime (client). See docs/agent-protocol.md.

pub mod client;
pub mod error;
pub mod framing;
pub mod messages;

pub use client::{Client, Endpoint};
pub use error::ProtocolError;
pub use framing::MAX_FRAME_LEN;
pub use messages::*;
