//! A small synchronous client of the agent protocol, used by the runtime and the tests.
//!
//! One [`Client`] is one control connection with one request in flight at a time. A `wait`
//! blocks its connection until the process exits, so callers that wait and control at the
//! same time open a second client.
//!
//! The host does not trust what answers on the other end (in vm isolation, a guest that a
//! container may have taken over), so every answer is bounded: frames by
//! [`super::MAX_FRAME_LEN`], one frame read per request (a stray or late one is an error,
//! never queued), lists by [`MAX_LIST_LEN`], and time by a deadline on each request and
//! handshake ([`DEFAULT_CALL_TIMEOUT`], [`HANDSHAKE_TIMEOUT`]); only `wait` waits as long as
//! the process runs, unless its caller gives it a bound. After garbage, a frame over the
//! limit, a truncated frame or a timeout the stream cannot be trusted to be in step, so the
//! client refuses further requests with [`ProtocolError::Broken`] instead of reading on.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::error::ProtocolError;
use super::framing::{read_frame, read_message, write_message};
use super::messages::*;

/// How long an ordinary request may wait for its answer: far beyond what any takes on a slow
/// nested machine, and still an error rather than a hang when the agent stops answering.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a new connection may wait for the agent's welcome (and the VMM's `OK`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most entries accepted in a list the agent returns (pids, process rows, OOM events).
pub const MAX_LIST_LEN: usize = 1 << 16;
/// Longest `OK <hostport>\n` line accepted from the VMM's vsock proxy.
const MAX_PROXY_REPLY: usize = 64;

/// Where the agent listens, as seen from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The agent's own unix socket (native isolation, tests).
    Unix(PathBuf),
    /// The VMM's host-side vsock socket: connect, send `CONNECT <port>\n`, expect
    /// `OK <hostport>\n`, then speak the protocol.
    VsockProxy { path: PathBuf, port: u32 },
}

impl Endpoint {
    /// The usual vsock endpoint of a guest agent behind the VMM socket at `path`.
    pub fn guest_agent(path: impl Into<PathBuf>) -> Self {
        Endpoint::VsockProxy {
            path: path.into(),
            port: AGENT_VSOCK_PORT,
        }
    }

    /// Opens a byte stream to the agent, before any hello.
    pub fn connect_raw(&self) -> Result<UnixStream, ProtocolError> {
        match self {
            Endpoint::Unix(path) => Ok(UnixStream::connect(path)?),
            Endpoint::VsockProxy { path, port } => connect_vsock_proxy(path, *port),
        }
    }

    /// Opens a connection and sends `hello`, returning the stream once the agent welcomed it
    /// (within [`HANDSHAKE_TIMEOUT`]).
    pub fn open(&self, hello: &Hello) -> Result<UnixStream, ProtocolError> {
        let mut stream = self.connect_raw()?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        handshake(&mut stream, hello).map_err(|e| timed_out_as("hello", HANDSHAKE_TIMEOUT, e))?;
        stream.set_read_timeout(None)?;
        Ok(stream)
    }
}

fn connect_vsock_proxy(path: &Path, port: u32) -> Result<UnixStream, ProtocolError> {
    let mut stream = UnixStream::connect(path)?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Read the reply byte by byte: anything after the newline already belongs to the agent.
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_PROXY_REPLY && line.last() != Some(&b'\n') {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out_as("CONNECT", HANDSHAKE_TIMEOUT, e.into())),
        }
    }
    stream.set_read_timeout(None)?;
    let line = String::from_utf8_lossy(&line).into_owned();
    if !line.starts_with("OK ") || !line.ends_with('\n') {
        return Err(ProtocolError::VsockConnect {
            path: path.display().to_string(),
            port,
            reply: line,
        });
    }
    Ok(stream)
}

/// Sends `hello` and reads the agent's reply; a refusal or another version is an error.
pub fn handshake(stream: &mut UnixStream, hello: &Hello) -> Result<u32, ProtocolError> {
    write_message(stream, hello)?;
    read_welcome(stream, hello)
}

/// The second half of [`handshake`]: the agent's reply to `hello`, already sent.
fn read_welcome(stream: &mut UnixStream, hello: &Hello) -> Result<u32, ProtocolError> {
    match read_message::<HelloReply>(stream)? {
        HelloReply::Welcome { version, .. } if version == hello.version() => Ok(version),
        HelloReply::Welcome { version, .. } => Err(ProtocolError::VersionMismatch {
            client: hello.version(),
            agent: version,
        }),
        HelloReply::Refused { error } if error.code == ErrorCode::VersionMismatch => {
            Err(ProtocolError::Refused(error))
        }
        HelloReply::Refused { error } => Err(ProtocolError::Refused(error)),
    }
}

/// A control connection to the agent.
#[derive(Debug)]
pub struct Client {
    endpoint: Endpoint,
    stream: UnixStream,
    next_id: u64,
    /// The bound on each request but `wait`; `None` waits for ever.
    call_timeout: Option<Duration>,
    /// Why the stream can no longer be trusted to be in step, once it cannot.
    broken: Option<String>,
}

macro_rules! expect {
    ($method:expr, $response:expr, $pattern:pat => $value:expr) => {
        match $response {
            $pattern => Ok($value),
            other => Err(ProtocolError::UnexpectedResponse {
                method: $method,
                got: shortened(format!("{other:?}")),
            }),
        }
    };
}

impl Client {
    /// Connects and performs the version handshake, within [`HANDSHAKE_TIMEOUT`].
    pub fn connect(endpoint: Endpoint) -> Result<Self, ProtocolError> {
        Client::connect_within(endpoint, HANDSHAKE_TIMEOUT)
    }

    /// Like [`Client::connect`], but gives up on the handshake after `timeout`: for a socket
    /// whose listener may not be serving yet (connections queue on a socket bound before the
    /// agent started), so a stuck agent is an error rather than a hang.
    pub fn connect_within(endpoint: Endpoint, timeout: Duration) -> Result<Self, ProtocolError> {
        let timeout = timeout.max(Duration::from_millis(1));
        let mut stream = endpoint.connect_raw()?;
        stream.set_read_timeout(Some(timeout))?;
        handshake(
            &mut stream,
            &Hello::Control {
                version: PROTOCOL_VERSION,
            },
        )
        .map_err(|e| timed_out_as("hello", timeout, e))?;
        stream.set_read_timeout(None)?;
        Ok(Client {
            endpoint,
            stream,
            next_id: 1,
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
            broken: None,
        })
    }

    /// Bounds each later request but `wait` (default [`DEFAULT_CALL_TIMEOUT`]); `None`
    /// waits for ever.
    pub fn set_call_timeout(&mut self, timeout: Option<Duration>) {
        self.call_timeout = timeout;
    }

    /// Like [`Client::connect`], retrying while the agent is not listening yet (a booting
    /// guest, a freshly spawned native agent) until `timeout` has passed.
    pub fn connect_timeout(endpoint: Endpoint, timeout: Duration) -> Result<Self, ProtocolError> {
        let deadline = Instant::now() + timeout;
        loop {
            match Client::connect(endpoint.clone()) {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() < deadline && is_not_ready(&e) => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The underlying stream, e.g. to set a read timeout.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends one request and waits for its response, within the call timeout.
    pub fn call(&mut self, request: Request) -> Result<Response, ProtocolError> {
        let timeout = self.call_timeout;
        self.call_within(request, timeout)
    }

    /// Sends one request and waits at most `timeout` for its response. A read timeout the
    /// caller set on [`Client::stream`] bounds it too.
    pub fn call_within(
        &mut self,
        request: Request,
        timeout: Option<Duration>,
    ) -> Result<Response, ProtocolError> {
        if let Some(why) = &self.broken {
            return Err(ProtocolError::Broken(why.clone()));
        }
        let method = request.method();
        let callers_read = self.stream.read_timeout().ok().flatten();
        let callers_write = self.stream.write_timeout().ok().flatten();
        let limit = match (timeout, callers_read) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let result = self.exchange(request, method, limit);
        let _ = self.stream.set_read_timeout(callers_read);
        let _ = self.stream.set_write_timeout(callers_write);
        if let Err(e) = &result {
            if leaves_stream_out_of_step(e) {
                self.broken = Some(format!("{method}: {e}"));
            }
        }
        result
    }

    fn exchange(
        &mut self,
        request: Request,
        method: &'static str,
        limit: Option<Duration>,
    ) -> Result<Response, ProtocolError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut io = DeadlineStream {
            stream: &self.stream,
            deadline: limit.map(|l| Instant::now() + l),
        };
        let explain = |e: ProtocolError| match limit {
            Some(l) => timed_out_as(method, l, e),
            None => e,
        };
        write_message(&mut io, &RequestFrame { id, request }).map_err(explain)?;
        let bytes = read_frame(&mut io)
            .map_err(explain)?
            .ok_or(ProtocolError::Closed)?;
        let frame: ResponseFrame = serde_json::from_slice(&bytes).map_err(ProtocolError::Decode)?;
        if frame.id != Some(id) {
            return Err(ProtocolError::IdMismatch {
                expected: id,
                got: frame.id,
            });
        }
        match frame.outcome {
            Outcome::Result(response) => Ok(response),
            Outcome::Error(error) => Err(ProtocolError::Remote(error)),
        }
    }

    fn call_done(&mut self, request: Request) -> Result<(), ProtocolError> {
        let method = request.method();
        expect!(method, self.call(request)?, Response::Done => ())
    }

    pub fn ping(&mut self) -> Result<(), ProtocolError> {
        expect!("ping", self.call(Request::Ping)?, Response::Pong => ())
    }

    pub fn create_sandbox(&mut self, config: SandboxConfig) -> Result<(), ProtocolError> {
        self.call_done(Request::CreateSandbox(config))
    }

    pub fn destroy_sandbox(&mut self, power_off: bool) -> Result<(), ProtocolError> {
        self.call_done(Request::DestroySandbox { power_off })
    }

    /// Creates a container and returns its init pid.
    pub fn create_container(&mut self, request: CreateContainer) -> Result<i32, ProtocolError> {
        expect!("create_container", self.call(Request::CreateContainer(request))?,
            Response::Pid(pid) => pid)
    }

    pub fn start_container(&mut self, container_id: &str) -> Result<(), ProtocolError> {
        self.call_done(Request::StartContainer {
            container_id: container_id.to_owned(),
        })
    }

    /// Starts an extra process and returns its pid.
    pub fn exec(&mut self, request: ExecRequest) -> Result<i32, ProtocolError> {
        expect!("exec", self.call(Request::Exec(request))?, Response::Pid(pid) => pid)
    }

    pub fn signal(
        &mut self,
        process: ProcessRef,
        signal: i32,
        all: bool,
    ) -> Result<(), ProtocolError> {
        self.call_done(Request::Signal(SignalRequest {
            process,
            signal,
            all,
        }))
    }

    /// Blocks until the process exits, however long it runs (a read timeout set on
    /// [`Client::stream`] still bounds it).
    pub fn wait(&mut self, process: ProcessRef) -> Result<ExitStatus, ProtocolError> {
        self.wait_within(process, None)
    }

    /// Like [`Client::wait`], giving up after `timeout`.
    pub fn wait_within(
        &mut self,
        process: ProcessRef,
        timeout: Option<Duration>,
    ) -> Result<ExitStatus, ProtocolError> {
        expect!("wait", self.call_within(Request::Wait(process), timeout)?,
            Response::Exited(s) => s)
    }

    pub fn resize_tty(
        &mut self,
        process: ProcessRef,
        rows: u16,
        cols: u16,
    ) -> Result<(), ProtocolError> {
        self.call_done(Request::ResizeTty {
            process,
            rows,
            cols,
        })
    }

    pub fn close_stdin(&mut self, process: ProcessRef) -> Result<(), ProtocolError> {
        self.call_done(Request::CloseStdin(process))
    }

    pub fn state(&mut self, container_id: &str) -> Result<ContainerState, ProtocolError> {
        expect!("state", self.call(Request::State {
            container_id: container_id.to_owned(),
        })?, Response::State(s) => s)
    }

    pub fn processes(&mut self, container_id: &str) -> Result<Vec<i32>, ProtocolError> {
        let pids = expect!("processes", self.call(Request::Processes {
            container_id: container_id.to_owned(),
        })?, Response::Processes(p) => p)?;
        bounded("processes", pids)
    }

    pub fn process_table(&mut self, container_id: &str) -> Result<Vec<ProcessInfo>, ProtocolError> {
        let rows = expect!("process_table", self.call(Request::ProcessTable {
            container_id: container_id.to_owned(),
        })?, Response::ProcessTable(p) => p)?;
        bounded("process_table", rows)
    }

    pub fn stats(&mut self, container_id: &str) -> Result<ContainerStats, ProtocolError> {
        expect!("stats", self.call(Request::Stats {
            container_id: container_id.to_owned(),
        })?, Response::Stats(s) => s)
    }

    pub fn update_resources(
        &mut self,
        container_id: &str,
        resources: serde_json::Value,
    ) -> Result<(), ProtocolError> {
        self.call_done(Request::UpdateResources {
            container_id: container_id.to_owned(),
            resources,
        })
    }

    pub fn oom_events(
        &mut self,
        container_id: Option<&str>,
        after: u64,
        wait: Option<Duration>,
    ) -> Result<Vec<OomEvent>, ProtocolError> {
        // The agent may hold the answer for `wait`: the bound is that plus the usual one.
        let timeout = self.call_timeout.map(|t| t + wait.unwrap_or_default());
        let events = expect!("oom_events", self.call_within(Request::OomEvents {
            container_id: container_id.map(str::to_owned),
            after,
            wait_ms: wait.map(|d| d.as_millis() as u64),
        }, timeout)?, Response::OomEvents(e) => e)?;
        bounded("oom_events", events)
    }

    pub fn remove_container(
        &mut self,
        container_id: &str,
        force: bool,
    ) -> Result<(), ProtocolError> {
        self.call_done(Request::RemoveContainer {
            container_id: container_id.to_owned(),
            force,
        })
    }

    /// Opens a stdio stream of a process as a separate connection. Reading a `stdout` or
    /// `stderr` stream yields the process's output until it closes it; writing a `stdin`
    /// stream feeds the process, and shutting down its write half closes the process's stdin.
    pub fn attach(
        &self,
        process: &ProcessRef,
        stream: StreamKind,
    ) -> Result<UnixStream, ProtocolError> {
        self.endpoint.open(&stream_hello(process, stream))
    }

    /// Opens several stdio streams of a process at once: every connection and its hello go
    /// out before the first reply is read, so the agent answers them in parallel instead of
    /// one round trip after another. The streams come back in the order of `kinds`.
    pub fn attach_all(
        &self,
        process: &ProcessRef,
        kinds: &[StreamKind],
    ) -> Result<Vec<UnixStream>, ProtocolError> {
        let mut opened = Vec::with_capacity(kinds.len());
        for &kind in kinds {
            let hello = stream_hello(process, kind);
            let mut stream = self.endpoint.connect_raw()?;
            write_message(&mut stream, &hello)?;
            opened.push((stream, hello));
        }
        opened
            .into_iter()
            .map(|(mut stream, hello)| {
                stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
                read_welcome(&mut stream, &hello)
                    .map_err(|e| timed_out_as("hello", HANDSHAKE_TIMEOUT, e))?;
                stream.set_read_timeout(None)?;
                Ok(stream)
            })
            .collect()
    }
}

fn stream_hello(process: &ProcessRef, stream: StreamKind) -> Hello {
    Hello::Stream {
        version: PROTOCOL_VERSION,
        container_id: process.container_id.clone(),
        exec_id: process.exec_id.clone(),
        stream,
    }
}

/// Most characters of an unexpected answer quoted in an error: enough to see what it was,
/// not a copy of whatever the agent chose to send.
const MAX_QUOTED: usize = 200;

fn shortened(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_QUOTED) {
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

fn bounded<T>(method: &'static str, list: Vec<T>) -> Result<Vec<T>, ProtocolError> {
    if list.len() > MAX_LIST_LEN {
        return Err(ProtocolError::TooMany {
            method,
            len: list.len(),
            max: MAX_LIST_LEN,
        });
    }
    Ok(list)
}

/// Errors after which the next frame on the stream may be the rest of this one or a late
/// answer: nothing more can be read from it with confidence.
fn leaves_stream_out_of_step(e: &ProtocolError) -> bool {
    matches!(
        e,
        ProtocolError::Io(_)
            | ProtocolError::FrameTooLarge { .. }
            | ProtocolError::TruncatedFrame
            | ProtocolError::Closed
            | ProtocolError::Decode(_)
            | ProtocolError::IdMismatch { .. }
            | ProtocolError::Timeout { .. }
    )
}

/// A read or write that ran out of time, as the error that says which request and how long.
fn timed_out_as(method: &'static str, waited: Duration, e: ProtocolError) -> ProtocolError {
    match e {
        ProtocolError::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            ProtocolError::Timeout { method, waited }
        }
        other => other,
    }
}

/// The control stream with one deadline for a whole request: each read or write may take
/// only what is left of it, so a peer that trickles bytes cannot stretch the wait.
struct DeadlineStream<'a> {
    stream: &'a UnixStream,
    deadline: Option<Instant>,
}

impl DeadlineStream<'_> {
    fn left(&self) -> io::Result<Option<Duration>> {
        match self.deadline {
            None => Ok(None),
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed")),
            },
        }
    }
}

impl Read for DeadlineStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(self.left()?)?;
        (&mut &*self.stream).read(buf)
    }
}

impl Write for DeadlineStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(self.left()?)?;
        (&mut &*self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn is_not_ready(e: &ProtocolError) -> bool {
    match e {
        ProtocolError::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
        ),
        // A VMM proxy that answers before the guest agent listens, or a guest whose vsock
        // driver has not taken the connection request yet.
        ProtocolError::VsockConnect { .. }
        | ProtocolError::Closed
        | ProtocolError::Timeout {
            method: "CONNECT", ..
        } => true,
        _ => false,
    }
}
