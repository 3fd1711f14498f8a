//! The runtime's agent client against a fake agent that misbehaves: garbage, frames over the
//! limit, frames that stop halfway or trickle, answers that never come, answers to the wrong
//! request, lists without end, and a peer that stops reading. Each costs the caller one clear
//! error in bounded time (never a hang, a panic or memory the peer chose), after which the
//! connection refuses further use. The fake agent listens on a unix socket in a temporary
//! directory.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use agent::protocol::framing::{read_frame, write_frame, write_message};
use agent::protocol::{
    Client, Endpoint, HelloReply, Outcome, ProtocolError, Request, RequestFrame, Response,
    ResponseFrame, MAX_FRAME_LEN, PROTOCOL_VERSION,
};

/// How long any test here may wait for a misbehaving agent before the client must give up.
const SHORT: Duration = Duration::from_millis(500);
/// The most a bounded failure may take, with room for a slow machine.
const PROMPT: Duration = Duration::from_secs(5);

/// A fake agent serving one connection with `behave`, on a socket of its own.
struct FakeAgent {
    dir: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    fn start(name: &str, behave: impl FnOnce(UnixStream) + Send + 'static) -> FakeAgent {
        let dir = std::env::temp_dir().join(format!("fake-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let listener = UnixListener::bind(dir.join("agent.sock")).unwrap();
        let thread = thread::spawn(move || {
            if let Ok((conn, _)) = listener.accept() {
                behave(conn);
            }
        });
        FakeAgent {
            dir,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.dir.join("agent.sock"))
    }

    /// A client through the handshake, with `timeout` on each request.
    fn client(&self, timeout: Duration) -> Client {
        let mut c = Client::connect_within(self.endpoint(), PROMPT).expect("handshake");
        c.set_call_timeout(Some(timeout));
        c
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        // The fake's thread ends when its connection does; the client is gone by now.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The agent's side of the handshake: reads the hello, welcomes it.
fn welcome(conn: &mut UnixStream) {
    read_frame(conn).unwrap().expect("a hello");
    write_message(
        conn,
        &HelloReply::Welcome {
            version: PROTOCOL_VERSION,
            agent: "fake".into(),
        },
    )
    .unwrap();
}

/// Reads one request and returns its id.
fn request_id(conn: &mut UnixStream) -> u64 {
    let bytes = read_frame(conn).unwrap().expect("a request");
    serde_json::from_slice::<RequestFrame>(&bytes).unwrap().id
}

/// Blocks until the client hangs up, so the fake never closes first.
fn until_closed(mut conn: UnixStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut sink = [0u8; 4096];
    while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn assert_broken_after(client: &mut Client) {
    match client.ping() {
        Err(ProtocolError::Broken(why)) => assert!(why.contains("ping"), "{why}"),
        other => panic!("a second request on a broken connection got {other:?}"),
    }
}

#[test]
fn garbage_answer_is_a_decode_error_then_the_connection_is_refused() {
    let fake = FakeAgent::start("garbage", |mut conn| {
        welcome(&mut conn);
        request_id(&mut conn);
        write_frame(&mut conn, b"\x00\xffthis is not json{{{").unwrap();
        until_closed(conn);
    });
    let mut client = fake.client(PROMPT);
    match client.ping() {
        Err(ProtocolError::Decode(e)) => assert!(!e.to_string().is_empty()),
        other => panic!("garbage got {other:?}"),
    }
    assert_broken_after(&mut client);
}

#[test]
fn garbage_instead_of_a_welcome_fails_the_handshake() {
    let fake = FakeAgent::start("garbage-hello", |mut conn| {
        read_frame(&mut conn).unwrap();
        // Read as a frame length this is 0x48545450: over the limit.
        conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        until_closed(conn);
    });
    let (result, took) = timed(|| Client::connect_within(fake.endpoint(), PROMPT));
    match result {
        Err(ProtocolError::FrameTooLarge { len, max }) => {
            assert_eq!(len, 0x4854_5450);
            assert_eq!(max, MAX_FRAME_LEN);
        }
        other => panic!("garbage hello reply got {other:?}"),
    }
    assert!(took < PROMPT, "took {took:?}");
}

#[test]
fn a_huge_frame_is_refused_without_reading_it() {
    let fake = FakeAgent::start("huge", |mut conn| {
        welcome(&mut conn);
        request_id(&mut conn);
        conn.write_all(&u32::MAX.to_be_bytes()).unwrap();
        // Whatever follows is never read.
        let _ = conn.write_all(&[b'x'; 1 << 16]);
        until_closed(conn);
    });
    let mut client = fake.client(PROMPT);
    let (result, took) = timed(|| client.ping());
    assert!(
        matches!(result, Err(ProtocolError::FrameTooLarge { len, .. }) if len == u32::MAX as usize),
        "{result:?}"
    );
    assert!(took < PROMPT, "took {took:?}");
    assert_broken_after(&mut client);
}

#[test]
fn a_frame_that_stops_halfway_is_truncated() {
    let fake = FakeAgent::start("truncated", |mut conn| {
        welcome(&mut conn);
        request_id(&mut conn);
        conn.write_all(&100u32.to_be_bytes()).unwrap();
        conn.write_all(b"{\"id\":1,").unwrap();
        // Hangs up mid-frame.
    });
    let mut client = fake.client(PROMPT);
    assert!(matches!(client.ping(), Err(ProtocolError::TruncatedFrame)));
    assert_broken_after(&mut client);
}

#[test]
fn an_agent_that_stops_answering_is_a_timeout() {
    let fake = FakeAgent::start("silent", |mut conn| {
        welcome(&mut conn);
        request_id(&mut conn);
        until_closed(conn);
    });
    let mut client = fake.client(SHORT);
    let (result, took) = timed(|| client.ping());
    match result {
        Err(e @ ProtocolError::Timeout { .. }) => {
            let text = e.to_string();
            assert!(text.contains("ping") && text.contains("500ms"), "{text}");
        }
        other => panic!("a silent agent got {other:?}"),
    }
    assert!(took >= SHORT && took < PROMPT, "took {took:?}");
    assert_broken_after(&mut client);
}

#[test]
fn a_silent_handshake_is_a_timeout() {
    let fake = FakeAgent::start("silent-hello", until_closed);
    let (result, took) = timed(|| Client::connect_within(fake.endpoint(), SHORT));
    assert!(
        matches!(
            result,
            Err(ProtocolError::Timeout {
                method: "hello",
                ..
            })
        ),
        "{result:?}"
    );
    assert!(took >= SHORT && took < PROMPT, "took {took:?}");
}

#[test]
fn a_trickling_answer_cannot_stretch_the_deadline() {
    let fake = FakeAgent::start("trickle", |mut conn| {
        welcome(&mut conn);
        request_id(&mut conn);
        // A large frame announced, then one byte every 50 ms: each read succeeds, but the
        // whole answer would take days.
        if conn
            .write_all(&(MAX_FRAME_LEN as u32).to_be_bytes())
            .is_err()
        {
            return;
        }
        for _ in 0..200 {
            if conn.write_all(b" ").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let mut client = fake.client(SHORT);
    let (result, took) = timed(|| client.ping());
    assert!(
        matches!(result, Err(ProtocolError::Timeout { method: "ping", .. })),
        "{result:?}"
    );
    assert!(took < SHORT * 3, "a trickle stretched the wait to {took:?}");
}

#[test]
fn an_answer_to_another_request_is_refused() {
    let fake = FakeAgent::start("wrong-id", |mut conn| {
        welcome(&mut conn);
        let id = request_id(&mut conn);
        // Two answers: one for a request never made, then the real one.
        for answer_id in [id + 41, id] {
            let frame = ResponseFrame {
                id: Some(answer_id),
                outcome: Outcome::Result(Response::Pong),
            };
            write_message(&mut conn, &frame).unwrap();
        }
        until_closed(conn);
    });
    let mut client = fake.client(PROMPT);
    match client.ping() {
        Err(ProtocolError::IdMismatch { expected, got }) => assert_eq!(got, Some(expected + 41)),
        other => panic!("a stray answer got {other:?}"),
    }
    // The real answer, still queued, is never taken for the next request's.
    assert_broken_after(&mut client);
}

#[test]
fn a_list_without_end_is_refused() {
    let fake = FakeAgent::start("long-list", |mut conn| {
        welcome(&mut conn);
        let id = request_id(&mut conn);
        let pids: Vec<i32> = (0..=agent::protocol::client::MAX_LIST_LEN as i32).collect();
        let frame = ResponseFrame {
            id: Some(id),
            outcome: Outcome::Result(Response::Processes(pids)),
        };
        write_message(&mut conn, &frame).unwrap();
        until_closed(conn);
    });
    let mut client = fake.client(PROMPT);
    match client.processes("c1") {
        Err(ProtocolError::TooMany { method, len, max }) => {
            assert_eq!(method, "processes");
            assert_eq!(len, max + 1);
        }
        other => panic!("a long list got {other:?}"),
    }
}

#[test]
fn an_agent_that_stops_reading_cannot_block_a_request() {
    let fake = FakeAgent::start("no-reader", |mut conn| {
        welcome(&mut conn);
        // Never reads again: the request below fills the socket's buffers.
        thread::sleep(Duration::from_secs(3));
        drop(conn);
    });
    let mut client = fake.client(SHORT);
    let big = serde_json::Value::String("x".repeat(MAX_FRAME_LEN - 1024));
    let (result, took) = timed(|| {
        client.call(Request::UpdateResources {
            container_id: "c1".into(),
            resources: big,
        })
    });
    assert!(
        matches!(
            result,
            Err(ProtocolError::Timeout {
                method: "update_resources",
                ..
            })
        ),
        "{result:?}"
    );
    assert!(took < PROMPT, "took {took:?}");
}

#[test]
fn one_misbehaving_agent_leaves_another_connection_working() {
    let silent = FakeAgent::start("silent-one", |mut conn| {
        welcome(&mut conn);
        until_closed(conn);
    });
    let good = FakeAgent::start("good-one", |mut conn| {
        welcome(&mut conn);
        while let Ok(Some(bytes)) = read_frame(&mut conn) {
            let id = serde_json::from_slice::<RequestFrame>(&bytes).unwrap().id;
            let frame = ResponseFrame {
                id: Some(id),
                outcome: Outcome::Result(Response::Pong),
            };
            if write_message(&mut conn, &frame).is_err() {
                break;
            }
        }
    });
    let mut bad = silent.client(SHORT);
    let mut fine = good.client(PROMPT);
    assert!(matches!(bad.ping(), Err(ProtocolError::Timeout { .. })));
    fine.ping().expect("the other agent answers");
    fine.ping().expect("and goes on answering");
}

#[test]
fn an_answer_of_the_wrong_kind_is_quoted_briefly() {
    let fake = FakeAgent::start("wrong-kind", |mut conn| {
        welcome(&mut conn);
        let id = request_id(&mut conn);
        // A ping answered with a long process list.
        let frame = ResponseFrame {
            id: Some(id),
            outcome: Outcome::Result(Response::Processes((0..100_000).collect())),
        };
        write_message(&mut conn, &frame).unwrap();
        // The next one answered right.
        let id = request_id(&mut conn);
        let frame = ResponseFrame {
            id: Some(id),
            outcome: Outcome::Result(Response::Pong),
        };
        write_message(&mut conn, &frame).unwrap();
        until_closed(conn);
    });
    let mut client = fake.client(PROMPT);
    match client.ping() {
        Err(ProtocolError::UnexpectedResponse { method, got }) => {
            assert_eq!(method, "ping");
            assert!(got.starts_with("Processes(["), "{got}");
            assert!(got.len() < 300, "quoted {} bytes of the answer", got.len());
        }
        other => panic!("a wrong answer got {other:?}"),
    }
    // The stream is still in step (the agent answered that request, just wrongly), so the
    // connection goes on.
    client.ping().expect("the next answer, in step");
}
