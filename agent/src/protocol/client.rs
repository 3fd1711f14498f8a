//! A small synchronous client of the agent protocol, used by the runtime and the tests.
//!
//! One [`Client`] is one control connection with one request in flight at a time. A `wait`
//! blocks its connection until the process exits, so callers that wait and control at the
//! same time open a second client.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::error::ProtocolError;
use super::framing::{read_frame, read_message, write_message};
use super::messages::*;

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

    /// Opens a connection and sends `hello`, returning the stream once the agent welcomed it.
    pub fn open(&self, hello: &Hello) -> Result<UnixStream, ProtocolError> {
        let mut stream = self.connect_raw()?;
        handshake(&mut stream, hello)?;
        Ok(stream)
    }
}

fn connect_vsock_proxy(path: &Path, port: u32) -> Result<UnixStream, ProtocolError> {
    let mut stream = UnixStream::connect(path)?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Read the reply byte by byte: anything after the newline already belongs to the agent.
    let mut reader = BufReader::with_capacity(1, stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
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
}

macro_rules! expect {
    ($method:expr, $response:expr, $pattern:pat => $value:expr) => {
        match $response {
            $pattern => Ok($value),
            other => Err(ProtocolError::UnexpectedResponse {
                method: $method,
                got: format!("{other:?}"),
            }),
        }
    };
}

impl Client {
    /// Connects and performs the version handshake.
    pub fn connect(endpoint: Endpoint) -> Result<Self, ProtocolError> {
        let stream = endpoint.open(&Hello::Control {
            version: PROTOCOL_VERSION,
        })?;
        Ok(Client {
            endpoint,
            stream,
            next_id: 1,
        })
    }

    /// Like [`Client::connect`], but gives up on the handshake after `timeout`: for a socket
    /// whose listener may not be serving yet (connections queue on a socket bound before the
    /// agent started), so a stuck agent is an error rather than a hang.
    pub fn connect_within(endpoint: Endpoint, timeout: Duration) -> Result<Self, ProtocolError> {
        let mut stream = endpoint.connect_raw()?;
        stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        handshake(
            &mut stream,
            &Hello::Control {
                version: PROTOCOL_VERSION,
            },
        )?;
        stream.set_read_timeout(None)?;
        Ok(Client {
            endpoint,
            stream,
            next_id: 1,
        })
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

    /// Sends one request and waits for its response.
    pub fn call(&mut self, request: Request) -> Result<Response, ProtocolError> {
        let id = self.next_id;
        self.next_id += 1;
        write_message(&mut self.stream, &RequestFrame { id, request })?;
        let bytes = read_frame(&mut self.stream)?.ok_or(ProtocolError::Closed)?;
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

    /// Blocks until the process exits.
    pub fn wait(&mut self, process: ProcessRef) -> Result<ExitStatus, ProtocolError> {
        expect!("wait", self.call(Request::Wait(process))?, Response::Exited(s) => s)
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
        expect!("processes", self.call(Request::Processes {
            container_id: container_id.to_owned(),
        })?, Response::Processes(p) => p)
    }

    pub fn process_table(&mut self, container_id: &str) -> Result<Vec<ProcessInfo>, ProtocolError> {
        expect!("process_table", self.call(Request::ProcessTable {
            container_id: container_id.to_owned(),
        })?, Response::ProcessTable(p) => p)
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
        expect!("oom_events", self.call(Request::OomEvents {
            container_id: container_id.map(str::to_owned),
            after,
            wait_ms: wait.map(|d| d.as_millis() as u64),
        })?, Response::OomEvents(e) => e)
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
            .map(|(mut stream, hello)| read_welcome(&mut stream, &hello).map(|_| stream))
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

fn is_not_ready(e: &ProtocolError) -> bool {
    match e {
        ProtocolError::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
        ),
        // A VMM proxy that answers before the guest agent listens.
        ProtocolError::VsockConnect { .. } | ProtocolError::Closed => true,
        _ => false,
    }
}
