//! One client connection: the hello, then either requests and responses (control) or the
//! bytes of one stdio stream.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::protocol::framing::{read_frame, write_message};
use crate::protocol::{
    ErrorCode, ErrorReply, Hello, HelloReply, Outcome, ProtocolError, Request, RequestFrame,
    ResponseFrame, PROTOCOL_VERSION,
};

use super::agent::Agent;
use super::stream;

/// How long a new connection may take to say hello; keeps idle sockets from pinning threads.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection until it ends. Never panics on anything the peer sends.
pub fn serve(agent: Arc<Agent>, mut conn: UnixStream) {
    let _ = conn.set_read_timeout(Some(HELLO_TIMEOUT));
    let hello = match read_hello(&mut conn) {
        Ok(hello) => hello,
        Err(Some(error)) => {
            let _ = write_message(&mut conn, &HelloReply::Refused { error });
            return;
        }
        Err(None) => return,
    };
    let _ = conn.set_read_timeout(None);
    let welcome = HelloReply::Welcome {
        version: PROTOCOL_VERSION,
        agent: format!("sandbox-agent {}", env!("CARGO_PKG_VERSION")),
    };
    match hello {
        Hello::Control { .. } => {
            if write_message(&mut conn, &welcome).is_ok() {
                control_loop(agent, conn);
            }
        }
        Hello::Stream {
            container_id,
            exec_id,
            stream: kind,
            ..
        } => match agent.attach(&container_id, exec_id.as_deref(), kind, &conn) {
            Ok(attachment) => {
                if write_message(&mut conn, &welcome).is_ok() {
                    stream::pump(attachment, conn);
                }
            }
            Err(error) => {
                let _ = write_message(&mut conn, &HelloReply::Refused { error });
            }
        },
    }
}

/// Reads and checks the hello. `Err(None)`: the peer went away, nothing to answer.
/// Public for the fuzz targets only.
#[doc(hidden)]
pub fn read_hello(conn: &mut impl Read) -> Result<Hello, Option<ErrorReply>> {
    let bytes = match read_frame(conn) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err(None),
        Err(ProtocolError::FrameTooLarge { len, max }) => {
            return Err(Some(ErrorReply::new(
                ErrorCode::Malformed,
                format!("hello frame of {len} bytes exceeds {max}"),
            )))
        }
        Err(_) => return Err(None),
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Some(ErrorReply::new(
            ErrorCode::Malformed,
            format!("hello is not JSON: {e}"),
        ))
    })?;
    // The version is checked before anything else so that a peer of another version gets
    // the right error even if the rest of its hello looks different.
    match value.get("version").and_then(Value::as_u64) {
        Some(v) if v == PROTOCOL_VERSION as u64 => {}
        Some(v) => {
            return Err(Some(ErrorReply::new(
                ErrorCode::VersionMismatch,
                format!("client speaks protocol version {v}, agent speaks {PROTOCOL_VERSION}"),
            )))
        }
        None => {
            return Err(Some(ErrorReply::new(
                ErrorCode::Malformed,
                "hello has no integer \"version\"",
            )))
        }
    }
    serde_json::from_value(value)
        .map_err(|e| Some(ErrorReply::new(ErrorCode::Malformed, format!("hello: {e}"))))
}

/// Decodes a request frame, or says precisely why it is not one. Public for the fuzz
/// targets only.
#[doc(hidden)]
pub fn decode(bytes: &[u8]) -> Result<RequestFrame, (Option<u64>, ErrorReply)> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        (
            None,
            ErrorReply::new(ErrorCode::Malformed, format!("request is not JSON: {e}")),
        )
    })?;
    let Some(object) = value.as_object() else {
        return Err((
            None,
            ErrorReply::new(ErrorCode::Malformed, "a request must be a JSON object"),
        ));
    };
    let id = object.get("id").and_then(Value::as_u64).ok_or_else(|| {
        (
            None,
            ErrorReply::new(
                ErrorCode::Malformed,
                "request has no unsigned integer \"id\"",
            ),
        )
    })?;
    let method = object
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            (
                Some(id),
                ErrorReply::new(ErrorCode::Malformed, "request has no string \"method\""),
            )
        })?;
    if !Request::METHODS.contains(&method) {
        return Err((
            Some(id),
            ErrorReply::new(
                ErrorCode::UnknownMethod,
                format!("unknown method {method:?}"),
            ),
        ));
    }
    let method = method.to_owned();
    serde_json::from_value(value).map_err(|e| {
        (
            Some(id),
            ErrorReply::new(ErrorCode::InvalidParams, format!("{method}: {e}")),
        )
    })
}

/// Requests that may block for long run on their own thread so that the connection keeps
/// serving; everything else is answered in order.
fn blocks(request: &Request) -> bool {
    matches!(
        request,
        Request::Wait(_)
            | Request::OomEvents {
                wait_ms: Some(_),
                ..
            }
    )
}

fn reply(writer: &Mutex<UnixStream>, id: Option<u64>, outcome: Outcome) -> io::Result<()> {
    let mut w = writer.lock().unwrap();
    write_message(&mut *w, &ResponseFrame { id, outcome }).map_err(|e| match e {
        ProtocolError::Io(io) => io,
        other => io::Error::other(other.to_string()),
    })
}

/// Marks the connection closed when the control loop ends, however it ends.
struct ClosedOnDrop(Arc<AtomicBool>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn control_loop(agent: Arc<Agent>, mut conn: UnixStream) {
    let writer = match conn.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(_) => return,
    };
    let closed = Arc::new(AtomicBool::new(false));
    let _closed_on_drop = ClosedOnDrop(closed.clone());
    loop {
        let bytes = match read_frame(&mut conn) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(ProtocolError::FrameTooLarge { len, max }) => {
                // The stream cannot be resynchronised: answer, then hang up.
                let _ = reply(
                    &writer,
                    None,
                    Outcome::Error(ErrorReply::new(
                        ErrorCode::Malformed,
                        format!("frame of {len} bytes exceeds the limit of {max}"),
                    )),
                );
                return;
            }
            // A truncated frame or a reset: the client is gone.
            Err(_) => return,
        };
        let frame = match decode(&bytes) {
            Ok(frame) => frame,
            Err((id, error)) => {
                if reply(&writer, id, Outcome::Error(error)).is_err() {
                    return;
                }
                continue;
            }
        };
        let id = Some(frame.id);
        if blocks(&frame.request) {
            let agent = agent.clone();
            let writer = writer.clone();
            let closed = closed.clone();
            thread::spawn(move || {
                let outcome = match &frame.request {
                    Request::Wait(p) => agent.wait_for_client(p, || closed.load(Ordering::SeqCst)),
                    _ => Some(agent.handle(frame.request)),
                };
                if let Some(outcome) = outcome {
                    let _ = reply(&writer, id, outcome);
                }
            });
            continue;
        }
        let outcome = agent.handle(frame.request);
        if reply(&writer, id, outcome).is_err() {
            return;
        }
        if agent.shutdown_requested() {
            agent.shut_down();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_tells_malformed_unknown_and_invalid_apart() {
        let err = decode(b"{not json").unwrap_err();
        assert_eq!((err.0, err.1.code), (None, ErrorCode::Malformed));
        let err = decode(b"[1,2]").unwrap_err();
        assert_eq!(err.1.code, ErrorCode::Malformed);
        let err = decode(br#"{"method":"ping"}"#).unwrap_err();
        assert_eq!((err.0, err.1.code), (None, ErrorCode::Malformed));
        let err = decode(br#"{"id":4}"#).unwrap_err();
        assert_eq!((err.0, err.1.code), (Some(4), ErrorCode::Malformed));
        let err = decode(br#"{"id":5,"method":"format_disk"}"#).unwrap_err();
        assert_eq!((err.0, err.1.code), (Some(5), ErrorCode::UnknownMethod));
        assert!(err.1.message.contains("format_disk"));
        let err = decode(br#"{"id":6,"method":"wait","params":{"exec_id":"x"}}"#).unwrap_err();
        assert_eq!((err.0, err.1.code), (Some(6), ErrorCode::InvalidParams));
        assert!(err.1.message.contains("container_id"), "{}", err.1.message);
        let ok = decode(br#"{"id":7,"method":"ping"}"#).unwrap();
        assert_eq!(ok.request, Request::Ping);
    }
}
