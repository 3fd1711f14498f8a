//! The messages of the agent protocol, shared by the agent and every client.
//!
//! Every connection starts with a [`Hello`] frame from the client and a [`HelloReply`] from
//! the agent. A control connection then carries [`RequestFrame`]s and [`ResponseFrame`]s; a
//! stream connection carries the raw bytes of one stdio stream of one process.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

// The engine reports how a process ended; the protocol carries that as it is, so the type,
// its wire format included, is defined once, in the engine.
pub use crate::engine::ExitStatus;

/// The protocol version. Bump it on any change that an older peer would misread.
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the agent listens on inside a guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The first frame of every connection, sent by the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Hello {
    /// A connection that carries requests and responses.
    Control { version: u32 },
    /// A connection that carries one stdio stream of a container's init process
    /// (`exec_id` absent) or of an exec'd process.
    Stream {
        version: u32,
        container_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
        stream: StreamKind,
    },
}

impl Hello {
    pub fn version(&self) -> u32 {
        match self {
            Hello::Control { version } | Hello::Stream { version, .. } => *version,
        }
    }
}

/// Which stdio stream a stream connection carries. With a terminal, `stdin` feeds the
/// terminal and `stdout` carries its output; there is no separate `stderr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        })
    }
}

/// The agent's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HelloReply {
    /// The connection is accepted; `version` is the agent's protocol version.
    Welcome { version: u32, agent: String },
    /// The connection is refused and will be closed.
    Refused { error: ErrorReply },
}

/// One request on a control connection. `id` is chosen by the client and echoed in the
/// response; responses may come back in any order when requests are pipelined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

/// One response on a control connection. `id` is `None` only when the request was so
/// malformed that its id could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: Option<u64>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The result of a request: `{"result": ...}` or `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Result(Response),
    Error(ErrorReply),
}

/// The requests a client can make: `{"method": "...", "params": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Configures the sandbox (guest): hostname, DNS, interfaces, routes, storage.
    CreateSandbox(SandboxConfig),
    /// Kills and removes every container; in a guest, optionally powers the VM off after
    /// answering.
    DestroySandbox {
        #[serde(default)]
        power_off: bool,
    },
    /// Creates a container from an OCI runtime spec; its init process waits for `start`.
    CreateContainer(CreateContainer),
    /// Starts a created container's init process.
    StartContainer { container_id: String },
    /// Runs an extra process in a running container.
    Exec(ExecRequest),
    /// Sends a signal to a container's init (or every process with `all`) or to an exec.
    Signal(SignalRequest),
    /// Blocks until the process exits and returns how it ended.
    Wait(ProcessRef),
    /// Sets the terminal size of a process that has a terminal.
    ResizeTty {
        #[serde(flatten)]
        process: ProcessRef,
        rows: u16,
        cols: u16,
    },
    /// Closes the process's stdin (the write end the agent holds).
    CloseStdin(ProcessRef),
    /// The container's state: status, init pid, exit status.
    State { container_id: String },
    /// The pids (in the agent's pid namespace) of every process in the container.
    Processes { container_id: String },
    /// The container's processes with their command lines, for a host that cannot read the
    /// agent's /proc (a guest's).
    ProcessTable { container_id: String },
    /// cgroup figures of the container.
    Stats { container_id: String },
    /// Applies new resource limits: an OCI `linux.resources` object.
    UpdateResources {
        container_id: String,
        resources: serde_json::Value,
    },
    /// OOM kills with a sequence number of at least `after`, optionally for one container.
    /// With `wait_ms`, blocks up to that long for the first such event.
    OomEvents {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container_id: Option<String>,
        #[serde(default)]
        after: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    /// Removes a stopped container (or any container with `force`, killing it first).
    RemoveContainer {
        container_id: String,
        #[serde(default)]
        force: bool,
    },
}

impl Request {
    /// Every method name, as it appears on the wire.
    pub const METHODS: &'static [&'static str] = &[
        "ping",
        "create_sandbox",
        "destroy_sandbox",
        "create_container",
        "start_container",
        "exec",
        "signal",
        "wait",
        "resize_tty",
        "close_stdin",
        "state",
        "processes",
        "process_table",
        "stats",
        "update_resources",
        "oom_events",
        "remove_container",
    ];

    /// The method name of this request.
    pub fn method(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::CreateSandbox(_) => "create_sandbox",
            Request::DestroySandbox { .. } => "destroy_sandbox",
            Request::CreateContainer(_) => "create_container",
            Request::StartContainer { .. } => "start_container",
            Request::Exec(_) => "exec",
            Request::Signal(_) => "signal",
            Request::Wait(_) => "wait",
            Request::ResizeTty { .. } => "resize_tty",
            Request::CloseStdin(_) => "close_stdin",
            Request::State { .. } => "state",
            Request::Processes { .. } => "processes",
            Request::ProcessTable { .. } => "process_table",
            Request::Stats { .. } => "stats",
            Request::UpdateResources { .. } => "update_resources",
            Request::OomEvents { .. } => "oom_events",
            Request::RemoveContainer { .. } => "remove_container",
        }
    }
}

/// The successful results: `{"type": "...", "value": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Response {
    Pong,
    /// The request was carried out and has nothing to report.
    Done,
    /// A process was created (container init) or started (exec); its pid as the agent sees it.
    Pid(i32),
    Exited(ExitStatus),
    State(ContainerState),
    Processes(Vec<i32>),
    ProcessTable(Vec<ProcessInfo>),
    Stats(ContainerStats),
    OomEvents(Vec<OomEvent>),
}

/// One process of a container as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    /// Its command line; empty for a process that has none (a zombie).
    pub args: Vec<String>,
}

/// An error reply: a machine-readable code and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The hello named a protocol version the agent does not speak.
    VersionMismatch,
    /// The frame was not valid JSON or not a request at all.
    Malformed,
    /// The method name is not one the agent knows.
    UnknownMethod,
    /// The method is known but its parameters are wrong.
    InvalidParams,
    /// No container or exec with that id.
    NotFound,
    /// A container or exec with that id exists already.
    AlreadyExists,
    /// The request does not fit the container's state (e.g. start twice).
    InvalidState,
    /// The request is not available in this mode (e.g. network set-up in native mode).
    Unsupported,
    /// The container engine failed; the message says where.
    Engine,
    /// The sandbox set-up (mounts, network, hostname) failed.
    Sandbox,
    /// Anything else that went wrong inside the agent.
    Internal,
}

/// Sandbox-wide configuration, applied once after boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
    #[serde(default)]
    pub interfaces: Vec<InterfaceConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub storage: Vec<StorageConfig>,
}

/// The contents of /etc/resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// One network interface of the guest, found by `name` and checked against `mac`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceConfig {
    pub name: String,
    /// Expected MAC address (`aa:bb:cc:dd:ee:ff`); the agent refuses to configure an
    /// interface whose address differs, since that means the wrong NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub addresses: Vec<IpCidr>,
}

/// A route. No `destination` means the default route of the gateway's family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpCidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The interface; required for routes without a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// A block device to mount in the guest (for example a container rootfs image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageConfig {
    /// The device node, e.g. `/dev/vdb`.
    pub source: PathBuf,
    pub fs_type: String,
    pub mount_point: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// Filesystem-specific data passed to mount(2), e.g. `errors=remount-ro`.
    #[serde(default)]
    pub options: Vec<String>,
}

/// An address with its prefix length, written `10.0.0.2/24` or `fd00::2/64` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl IpCidr {
    pub fn new(address: IpAddr, prefix_len: u8) -> Result<Self, String> {
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(format!(
                "prefix length {prefix_len} is longer than {max} for {address}"
            ));
        }
        Ok(IpCidr {
            address,
            prefix_len,
        })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl FromStr for IpCidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
        let address: IpAddr = addr
            .parse()
            .map_err(|e| format!("{addr:?} is not an IP address: {e}"))?;
        let prefix_len: u8 = len
            .parse()
            .map_err(|e| format!("{len:?} is not a prefix length: {e}"))?;
        IpCidr::new(address, prefix_len)
    }
}

impl Serialize for IpCidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpCidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RootfsSource {
    /// An OCI bundle directory visible to the agent; `root.path` of the spec is taken
    /// relative to it (native isolation).
    Bundle { path: PathBuf },
    /// A directory that is the rootfs itself (e.g. a mount made by `create_sandbox` storage).
    Directory { path: PathBuf },
    /// A block device holding the rootfs, mounted by the agent for this container.
    BlockDevice {
        source: PathBuf,
        fs_type: String,
        #[serde(default)]
        read_only: bool,
        #[serde(default)]
        options: Vec<String>,
    },
}

/// Which stdio streams the client will attach. Streams not asked for are connected to
/// /dev/null. Streams asked for are buffered by the agent's pipes until attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioRequest {
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdout: bool,
    #[serde(default)]
    pub stderr: bool,
}

impl StdioRequest {
    pub const ALL: StdioRequest = StdioRequest {
        stdin: true,
        stdout: true,
        stderr: true,
    };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateContainer {
    pub container_id: String,
    /// The OCI runtime spec (config.json) as JSON.
    pub spec: serde_json::Value,
    pub rootfs: RootfsSource,
    #[serde(default)]
    pub stdio: StdioRequest,
    /// Sources of the spec's file bind mounts, by value, for a guest that cannot see the
    /// host's filesystem (a guest agent only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copied_files: Vec<CopiedFile>,
}

/// The most bytes of [`CopiedFile`] contents one container may bring: enough for the small
/// files container managers bind in (resolv.conf, hosts, hostname), well under a frame.
pub const MAX_COPIED_BYTES: usize = 256 << 10;

/// A host file that a bind mount of the spec names, carried into the guest: the agent writes
/// it into the container's own directory and points the mount's source there. A snapshot
/// taken at create time: later writes on either side are not seen by the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopiedFile {
    /// Index, in the spec's `mounts`, of the bind mount whose source this is.
    pub mount_index: usize,
    /// Permission bits of the host file.
    pub mode: u32,
    pub contents: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub container_id: String,
    pub exec_id: String,
    /// An OCI `process` object as JSON.
    pub process: serde_json::Value,
    #[serde(default)]
    pub stdio: StdioRequest,
}

/// Names a container's init process (`exec_id` absent) or one of its exec'd processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessRef {
    pub container_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
}

impl ProcessRef {
    pub fn init(container_id: impl Into<String>) -> Self {
        ProcessRef {
            container_id: container_id.into(),
            exec_id: None,
        }
    }

    pub fn exec(container_id: impl Into<String>, exec_id: impl Into<String>) -> Self {
        ProcessRef {
            container_id: container_id.into(),
            exec_id: Some(exec_id.into()),
        }
    }
}

impl fmt::Display for ProcessRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.exec_id {
            Some(exec) => write!(f, "exec {exec:?} of container {:?}", self.container_id),
            None => write!(f, "container {:?}", self.container_id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    #[serde(flatten)]
    pub process: ProcessRef,
    pub signal: i32,
    /// Signal every process of the container rather than only its init.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    Created,
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub container_id: String,
    pub status: ContainerStatus,
    pub pid: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
}

/// cgroup figures of a container. Optional fields are absent where the host's cgroup
/// layout does not provide them or where there is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory_usage_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max_usage_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_usage_bytes: Option<u64>,
    pub pids_current: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
    pub oom_kills: u64,
}

/// One OOM kill inside a container. `sequence` increases by one per event across the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomEvent {
    pub sequence: u64,
    pub container_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn every_request() -> Vec<Request> {
        let p = ProcessRef::exec("c", "e");
        vec![
            Request::Ping,
            Request::CreateSandbox(SandboxConfig::default()),
            Request::DestroySandbox { power_off: true },
            Request::CreateContainer(CreateContainer {
                container_id: "c".into(),
                spec: json!({"ociVersion": "1.0.2"}),
                rootfs: RootfsSource::Bundle { path: "/b".into() },
                stdio: StdioRequest::ALL,
                copied_files: vec![CopiedFile {
                    mount_index: 0,
                    mode: 0o644,
                    contents: b"nameserver 10.0.0.1\n".to_vec(),
                }],
            }),
            Request::StartContainer {
                container_id: "c".into(),
            },
            Request::Exec(ExecRequest {
                container_id: "c".into(),
                exec_id: "e".into(),
                process: json!({"args": ["true"]}),
                stdio: StdioRequest::default(),
            }),
            Request::Signal(SignalRequest {
                process: p.clone(),
                signal: 9,
                all: false,
            }),
            Request::Wait(p.clone()),
            Request::ResizeTty {
                process: p.clone(),
                rows: 24,
                cols: 80,
            },
            Request::CloseStdin(p),
            Request::State {
                container_id: "c".into(),
            },
            Request::Processes {
                container_id: "c".into(),
            },
            Request::ProcessTable {
                container_id: "c".into(),
            },
            Request::Stats {
                container_id: "c".into(),
            },
            Request::UpdateResources {
                container_id: "c".into(),
                resources: json!({"pids": {"limit": 10}}),
            },
            Request::OomEvents {
                container_id: None,
                after: 3,
                wait_ms: Some(10),
            },
            Request::RemoveContainer {
                container_id: "c".into(),
                force: true,
            },
        ]
    }

    #[test]
    fn every_request_round_trips_and_is_listed() {
        let all = every_request();
        assert_eq!(all.len(), Request::METHODS.len());
        for (i, request) in all.into_iter().enumerate() {
            let frame = RequestFrame {
                id: i as u64,
                request,
            };
            let text = serde_json::to_value(&frame).unwrap();
            assert_eq!(text["method"], frame.request.method());
            assert!(Request::METHODS.contains(&frame.request.method()));
            let back: RequestFrame = serde_json::from_value(text).unwrap();
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn wire_format_is_stable() {
        let frame = RequestFrame {
            id: 7,
            request: Request::Ping,
        };
        assert_eq!(
            serde_json::to_value(&frame).unwrap(),
            json!({"id": 7, "method": "ping"})
        );
        let frame = RequestFrame {
            id: 8,
            request: Request::Wait(ProcessRef::init("c1")),
        };
        assert_eq!(
            serde_json::to_value(&frame).unwrap(),
            json!({"id": 8, "method": "wait", "params": {"container_id": "c1"}})
        );
        let response = ResponseFrame {
            id: Some(8),
            outcome: Outcome::Result(Response::Exited(ExitStatus::exited(3))),
        };
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"id": 8, "result": {"type": "exited", "value": {"code": 3}}})
        );
        let response = ResponseFrame {
            id: None,
            outcome: Outcome::Error(ErrorReply::new(ErrorCode::Malformed, "x")),
        };
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"id": null, "error": {"code": "malformed", "message": "x"}})
        );
    }

    #[test]
    fn ip_cidr_parses_and_rejects() {
        let c: IpCidr = "10.1.2.3/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.2.3/24");
        let c: IpCidr = "fd00::1/64".parse().unwrap();
        assert_eq!(c.prefix_len, 64);
        assert!("10.0.0.1/33".parse::<IpCidr>().is_err());
        assert!("10.0.0.1".parse::<IpCidr>().is_err());
        assert!("nonsense/8".parse::<IpCidr>().is_err());
        let v: InterfaceConfig =
            serde_json::from_value(json!({"name": "eth0", "addresses": ["10.0.0.2/8"]})).unwrap();
        assert_eq!(v.addresses[0].to_string(), "10.0.0.2/8");
    }

    #[test]
    fn exit_status_shell_code() {
        assert_eq!(ExitStatus::exited(3).shell_code(), 3);
        assert_eq!(ExitStatus::signaled(9).shell_code(), 137);
    }

    #[test]
    fn exit_status_wire_format_is_stable() {
        let cases = [
            (ExitStatus::exited(0), r#"{"code":0}"#),
            (ExitStatus::exited(3), r#"{"code":3}"#),
            (ExitStatus::signaled(9), r#"{"signal":9}"#),
            (ExitStatus::default(), r#"{}"#),
            (
                ExitStatus {
                    code: Some(1),
                    signal: Some(15),
                },
                r#"{"code":1,"signal":15}"#,
            ),
        ];
        for (status, text) in cases {
            assert_eq!(serde_json::to_string(&status).unwrap(), text);
            assert_eq!(serde_json::from_str::<ExitStatus>(text).unwrap(), status);
        }
        let nulls: ExitStatus = serde_json::from_str(r#"{"code":null,"signal":null}"#).unwrap();
        assert!(nulls.is_unknown());
        let state = ContainerState {
            container_id: "c".into(),
            status: ContainerStatus::Stopped,
            pid: 5,
            exit: Some(ExitStatus::signaled(9)),
        };
        assert_eq!(
            serde_json::to_string(&state).unwrap(),
            r#"{"container_id":"c","status":"stopped","pid":5,"exit":{"signal":9}}"#
        );
    }
}
