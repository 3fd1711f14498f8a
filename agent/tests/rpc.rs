//! The agent protocol end to end: a real `sandbox-agent` in native mode on a unix socket in
//! a temporary directory, driven through `protocol::client`, running busybox containers.
//! Needs root (containers); each test says so and returns early otherwise.

use std::fs;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use agent::protocol::framing::{read_frame, read_message, write_frame, write_message};
use agent::protocol::*;
use serde_json::{json, Value};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "true", "false", "head", "tr", "stty", "tty", "id", "ls",
    "hostname", "wc", "kill", "grep",
];

/// The agent under test: the one cargo built for this test, or another build of it (the
/// static one) named by `SANDBOX_AGENT_BIN`.
fn agent_binary() -> PathBuf {
    std::env::var_os("SANDBOX_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sandbox-agent")))
}

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root to run containers");
    false
}

/// A native agent serving on a socket in its own temporary directory.
struct TestAgent {
    dir: PathBuf,
    child: Option<Child>,
}

impl TestAgent {
    fn start() -> TestAgent {
        let dir = std::env::temp_dir().join(format!(
            "rpc-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let child = Command::new(agent_binary())
            .arg("--socket")
            .arg(dir.join("agent.sock"))
            .arg("--root")
            .arg(dir.join("state"))
            .spawn()
            .expect("spawn sandbox-agent");
        let agent = TestAgent {
            dir,
            child: Some(child),
        };
        // Wait until it listens.
        agent.client();
        agent
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.dir.join("agent.sock"))
    }

    fn client(&self) -> Client {
        Client::connect_timeout(self.endpoint(), Duration::from_secs(10)).expect("connect")
    }

    /// The number of threads of the agent process.
    fn threads(&self) -> usize {
        let pid = self.child.as_ref().unwrap().id();
        fs::read_dir(format!("/proc/{pid}/task")).unwrap().count()
    }

    fn raw(&self) -> UnixStream {
        UnixStream::connect(self.dir.join("agent.sock")).unwrap()
    }

    /// A busybox bundle whose config.json comes from `runc spec`, with `args` and no tty.
    fn bundle(&self, name: &str, args: &[&str]) -> (PathBuf, Value) {
        let bundle = self.dir.join(name);
        let bin = bundle.join("rootfs/bin");
        fs::create_dir_all(&bin).unwrap();
        fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let out = Command::new("runc")
            .arg("spec")
            .current_dir(&bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "runc spec failed");
        let mut spec: Value =
            serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(args);
        spec["hostname"] = json!("rpc-test");
        // `runc spec` lists ambient capabilities that are not inheritable, which the kernel
        // cannot grant; runc ignores that, our engine refuses it.
        if let Some(caps) = spec["process"]["capabilities"].as_object_mut() {
            caps.remove("ambient");
        }
        // Its deny-all device cgroup rule relies on the runtime allowing the default devices
        // (/dev/null, ...) on its own, which the engine does not do yet on cgroup v1 hosts.
        if let Some(res) = spec["linux"]["resources"].as_object_mut() {
            res.remove("devices");
        }
        (bundle, spec)
    }

    fn create(&self, client: &mut Client, id: &str, args: &[&str], stdio: StdioRequest) -> i32 {
        let (bundle, spec) = self.bundle(id, args);
        client
            .create_container(CreateContainer {
                container_id: id.into(),
                spec,
                rootfs: RootfsSource::Bundle { path: bundle },
                stdio,
                copied_files: Vec::new(),
            })
            .expect("create_container")
    }

    /// Asks the agent to end and checks that it does, cleanly.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(mut c) = Client::connect(self.endpoint()) {
                let _ = c.destroy_sandbox(true);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "agent exited with {status}");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("agent did not exit after destroy_sandbox(power_off)");
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(mut c) = Client::connect(self.endpoint()) {
                let _ = c.destroy_sandbox(true);
            }
            thread::sleep(Duration::from_millis(100));
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn read_all(mut s: UnixStream) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn remote_code(e: ProtocolError) -> ErrorCode {
    match e.remote() {
        Some(r) => r.code,
        None => panic!("expected an error from the agent, got {e}"),
    }
}

#[test]
fn rpc_handshake_and_version_mismatch() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    client.ping().unwrap();

    // Another protocol version is refused with a reply that says so.
    let mut raw = agent.raw();
    write_message(&mut raw, &json!({"kind": "control", "version": 999})).unwrap();
    match read_message::<HelloReply>(&mut raw).unwrap() {
        HelloReply::Refused { error } => {
            assert_eq!(error.code, ErrorCode::VersionMismatch);
            assert!(error.message.contains("999"), "{}", error.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // ... and the connection is closed after it.
    assert!(read_frame(&mut raw).unwrap().is_none());

    // The client reports the mismatch as such.
    let err = Endpoint::Unix(agent.dir.join("agent.sock"))
        .open(&Hello::Control { version: 2 })
        .unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::VersionMismatch);

    // A hello that is not JSON, or has no version.
    for bad in [&b"hello?"[..], br#"{"kind":"control"}"#] {
        let mut raw = agent.raw();
        write_frame(&mut raw, bad).unwrap();
        match read_message::<HelloReply>(&mut raw).unwrap() {
            HelloReply::Refused { error } => assert_eq!(error.code, ErrorCode::Malformed),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    // The first connection is unaffected.
    client.ping().unwrap();
}

#[test]
fn rpc_malformed_frames_and_unknown_methods_get_errors() {
    let agent = TestAgent::start();
    let mut raw = agent.raw();
    write_message(
        &mut raw,
        &Hello::Control {
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    assert!(matches!(
        read_message::<HelloReply>(&mut raw).unwrap(),
        HelloReply::Welcome {
            version: PROTOCOL_VERSION,
            ..
        }
    ));

    let exchange = |raw: &mut UnixStream, frame: &[u8]| -> ResponseFrame {
        write_frame(raw, frame).unwrap();
        read_message(raw).unwrap()
    };
    let error_of = |r: ResponseFrame| match r.outcome {
        Outcome::Error(e) => (r.id, e.code),
        other => panic!("expected an error, got {other:?}"),
    };

    assert_eq!(
        error_of(exchange(&mut raw, b"\x00\xffnot json")),
        (None, ErrorCode::Malformed)
    );
    assert_eq!(
        error_of(exchange(&mut raw, b"42")),
        (None, ErrorCode::Malformed)
    );
    assert_eq!(
        error_of(exchange(&mut raw, br#"{"id":3,"method":"reboot_host"}"#)),
        (Some(3), ErrorCode::UnknownMethod)
    );
    assert_eq!(
        error_of(exchange(
            &mut raw,
            br#"{"id":4,"method":"start_container","params":{"id":1}}"#
        )),
        (Some(4), ErrorCode::InvalidParams)
    );
    assert_eq!(
        error_of(exchange(
            &mut raw,
            br#"{"id":5,"method":"wait","params":{"container_id":"nope"}}"#
        )),
        (Some(5), ErrorCode::NotFound)
    );
    assert_eq!(
        error_of(exchange(
            &mut raw,
            br#"{"id":6,"method":"signal","params":{"container_id":"x","signal":99999}}"#
        )),
        (Some(6), ErrorCode::InvalidParams)
    );
    // The same connection still serves good requests.
    let ok = exchange(&mut raw, br#"{"id":7,"method":"ping"}"#);
    assert_eq!(ok.id, Some(7));
    assert_eq!(ok.outcome, Outcome::Result(Response::Pong));

    // A frame over the limit is answered and the connection closed; it cannot be resynced.
    raw.write_all(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes())
        .unwrap();
    let r: ResponseFrame = read_message(&mut raw).unwrap();
    assert_eq!(error_of(r), (None, ErrorCode::Malformed));
    assert!(read_frame(&mut raw).unwrap().is_none());

    // The agent as a whole is fine.
    agent.client().ping().unwrap();
}

#[test]
fn rpc_server_survives_client_disconnects() {
    let agent = TestAgent::start();

    // Gone before the hello, in the middle of the hello, after the hello.
    drop(agent.raw());
    let mut raw = agent.raw();
    raw.write_all(&[0, 0]).unwrap();
    drop(raw);
    let mut raw = agent.raw();
    raw.write_all(&100u32.to_be_bytes()).unwrap();
    raw.write_all(b"{\"kind\":").unwrap();
    drop(raw);
    let client = agent.client();
    drop(client);

    // Gone in the middle of a request frame.
    let mut raw = agent.raw();
    write_message(
        &mut raw,
        &Hello::Control {
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    let _: HelloReply = read_message(&mut raw).unwrap();
    raw.write_all(&50u32.to_be_bytes()).unwrap();
    raw.write_all(b"{\"id\":1,").unwrap();
    drop(raw);

    // Gone before reading the response.
    let mut raw = agent.raw();
    write_message(
        &mut raw,
        &Hello::Control {
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    let _: HelloReply = read_message(&mut raw).unwrap();
    write_message(
        &mut raw,
        &RequestFrame {
            id: 1,
            request: Request::Ping,
        },
    )
    .unwrap();
    raw.shutdown(Shutdown::Both).unwrap();
    drop(raw);

    if is_root() {
        // Gone while a wait blocks, and while a stream is attached.
        let mut client = agent.client();
        client
            .create_container(CreateContainer {
                container_id: "waiter".into(),
                spec: agent.bundle("waiter", &["sleep", "1000"]).1,
                rootfs: RootfsSource::Bundle {
                    path: agent.dir.join("waiter"),
                },
                stdio: StdioRequest::ALL,
                copied_files: Vec::new(),
            })
            .unwrap();
        let out = client
            .attach(&ProcessRef::init("waiter"), StreamKind::Stdout)
            .unwrap();
        client.start_container("waiter").unwrap();
        let threads_before = agent.threads();
        let mut waiter = agent.client();
        let t = thread::spawn(move || {
            waiter
                .stream()
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            // Times out on our side; the agent is left with a pending wait on a dead socket.
            assert!(waiter.wait(ProcessRef::init("waiter")).is_err());
        });
        t.join().unwrap();
        // The abandoned wait (and its connection) does not keep a thread in the agent.
        let deadline = Instant::now() + Duration::from_secs(5);
        while agent.threads() > threads_before && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            agent.threads(),
            threads_before,
            "threads left behind by a dead wait"
        );
        drop(out);
        client.signal(ProcessRef::init("waiter"), 9, false).unwrap();
        assert_eq!(
            client.wait(ProcessRef::init("waiter")).unwrap(),
            ExitStatus::signaled(9)
        );
        client.remove_container("waiter", false).unwrap();
    }

    // Many more connections than one would keep open; the agent keeps going.
    for _ in 0..50 {
        let mut c = agent.client();
        c.ping().unwrap();
    }
    agent.client().ping().unwrap();
}

#[test]
fn rpc_container_lifecycle_with_stdio() {
    if !is_root() {
        return;
    }
    let mut agent = TestAgent::start();
    let mut client = agent.client();
    let id = "life";
    let pid = agent.create(
        &mut client,
        id,
        &[
            "sh",
            "-c",
            "read line; echo \"got $line\"; echo oops >&2; hostname; exit 3",
        ],
        StdioRequest::ALL,
    );
    assert!(pid > 1);
    let init = ProcessRef::init(id);
    let mut stdin = client.attach(&init, StreamKind::Stdin).unwrap();
    let stdout = client.attach(&init, StreamKind::Stdout).unwrap();
    let stderr = client.attach(&init, StreamKind::Stderr).unwrap();
    // A stream can be attached only once.
    let err = client.attach(&init, StreamKind::Stdout).unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::InvalidState);

    let state = client.state(id).unwrap();
    assert_eq!(
        (state.status, state.pid, state.exit),
        (ContainerStatus::Created, pid, None)
    );
    // Not yet removable without force? A created container may be removed; test that
    // elsewhere. Starting twice is refused.
    client.start_container(id).unwrap();
    let err = client.start_container(id).unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::InvalidState);

    stdin.write_all(b"hello\n").unwrap();
    stdin.shutdown(Shutdown::Write).unwrap();
    let out = thread::spawn(move || read_all(stdout));
    let err = thread::spawn(move || read_all(stderr));
    assert_eq!(client.wait(init.clone()).unwrap(), ExitStatus::exited(3));
    assert_eq!(out.join().unwrap(), "got hello\nrpc-test\n");
    assert_eq!(err.join().unwrap(), "oops\n");

    let state = client.state(id).unwrap();
    assert_eq!(state.status, ContainerStatus::Stopped);
    assert_eq!(state.exit, Some(ExitStatus::exited(3)));
    // Waiting again returns the same status.
    assert_eq!(client.wait(init).unwrap(), ExitStatus::exited(3));

    client.remove_container(id, false).unwrap();
    assert_eq!(
        remote_code(client.state(id).unwrap_err()),
        ErrorCode::NotFound
    );
    agent.stop();
}

/// The agent's reaper reaps every child of the agent, the engine's hook processes included,
/// usually before the engine looks at them: the engine must still get each hook's exit
/// status from it (creating used to fail now and then with `wait: No child processes`).
/// Quick hooks, many times over, make that race all but certain to show.
#[test]
fn rpc_runtime_hooks_report_their_exit_status() {
    if !is_root() {
        return;
    }
    let mut agent = TestAgent::start();
    let mut client = agent.client();
    let seen = agent.dir.join("hook-states");
    fs::create_dir_all(&seen).unwrap();
    let create = |client: &mut Client, id: &str, hooks: Value| {
        let (bundle, mut spec) = agent.bundle(id, &["true"]);
        spec["hooks"] = hooks;
        client.create_container(CreateContainer {
            container_id: id.into(),
            spec,
            rootfs: RootfsSource::Bundle { path: bundle },
            stdio: StdioRequest::default(),
            copied_files: Vec::new(),
        })
    };
    for i in 0..40 {
        let id = format!("hooks-{i}");
        let record = format!("cat > {}/{id}", seen.display());
        let hooks = json!({
            "prestart": [{"path": "/bin/true", "args": ["true"]}],
            "createRuntime": [
                {"path": "/bin/sh", "args": ["sh", "-c", "exit 0"]},
                {"path": "/bin/sh", "args": ["sh", "-c", record]},
            ],
        });
        let pid = create(&mut client, &id, hooks).unwrap_or_else(|e| panic!("create {id}: {e}"));
        // The last hook ran, with the container's state.
        let state: Value = serde_json::from_slice(&fs::read(seen.join(&id)).unwrap()).unwrap();
        assert_eq!(
            (state["id"].as_str(), state["pid"].as_i64()),
            (Some(&*id), Some(pid as i64))
        );
        client.remove_container(&id, true).unwrap();
    }
    // A hook that fails fails the create, named with its status, and nothing is left.
    for i in 0..10 {
        let id = format!("badhook-{i}");
        let hooks = json!({
            "prestart": [
                {"path": "/bin/true", "args": ["true"]},
                {"path": "/bin/sh", "args": ["sh", "-c", "exit 7"]},
            ],
        });
        let err = create(&mut client, &id, hooks).unwrap_err();
        let reply = err
            .remote()
            .unwrap_or_else(|| panic!("not from the agent: {err}"));
        assert!(
            reply
                .message
                .contains("hooks.prestart[1] (/bin/sh): exited with code 7"),
            "{}",
            reply.message
        );
        assert_eq!(
            remote_code(client.state(&id).unwrap_err()),
            ErrorCode::NotFound
        );
    }
    agent.stop();
}

#[test]
fn rpc_exec_signal_stats_update_and_remove() {
    if !is_root() {
        return;
    }
    let mut agent = TestAgent::start();
    let mut client = agent.client();
    let id = "busy";
    agent.create(
        &mut client,
        id,
        &[
            "sh",
            "-c",
            "trap 'exit 7' TERM; while true; do sleep 0.1; done",
        ],
        StdioRequest::default(),
    );
    let init = ProcessRef::init(id);

    // exec before start is refused.
    let exec_req = |exec_id: &str, args: &[&str], stdio: StdioRequest| ExecRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        process: json!({"args": args, "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}),
        stdio,
    };
    let err = client
        .exec(exec_req("early", &["true"], StdioRequest::default()))
        .unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::InvalidState);

    client.start_container(id).unwrap();
    assert_eq!(client.state(id).unwrap().status, ContainerStatus::Running);

    // An exec with output; it sees the container's hostname and pid namespace.
    let out_only = StdioRequest {
        stdout: true,
        ..Default::default()
    };
    let pid = client
        .exec(exec_req(
            "e1",
            &[
                "sh",
                "-c",
                "hostname; echo $$; grep -E 'SigIgn|SigBlk' /proc/self/status",
            ],
            out_only,
        ))
        .unwrap();
    assert!(pid > 1);
    let e1 = ProcessRef::exec(id, "e1");
    let out = read_all(client.attach(&e1, StreamKind::Stdout).unwrap());
    assert_eq!(client.wait(e1).unwrap(), ExitStatus::exited(0));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "rpc-test");
    let inner_pid: i32 = lines[1].parse().unwrap();
    assert!(
        inner_pid > 1 && inner_pid != pid,
        "exec pid inside: {inner_pid}, outside: {pid}"
    );
    // Processes started through the agent get default signal dispositions and an empty
    // mask, whatever the agent itself ignores or blocks.
    client
        .exec(exec_req(
            "signals",
            &["grep", "-E", "SigIgn|SigBlk", "/proc/self/status"],
            out_only,
        ))
        .unwrap();
    let signals = ProcessRef::exec(id, "signals");
    let out = read_all(client.attach(&signals, StreamKind::Stdout).unwrap());
    assert_eq!(client.wait(signals).unwrap(), ExitStatus::exited(0));
    assert_eq!(
        out, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n",
        "{out}"
    );

    // An exec fed through stdin, ended by close_stdin.
    let io = StdioRequest {
        stdin: true,
        stdout: true,
        stderr: false,
    };
    client.exec(exec_req("cat", &["cat"], io)).unwrap();
    let cat = ProcessRef::exec(id, "cat");
    let mut cat_in = client.attach(&cat, StreamKind::Stdin).unwrap();
    let cat_out = client.attach(&cat, StreamKind::Stdout).unwrap();
    cat_in.write_all(b"through the pipe\n").unwrap();
    cat_in.flush().unwrap();
    thread::sleep(Duration::from_millis(100));
    client.close_stdin(cat.clone()).unwrap();
    assert_eq!(read_all(cat_out), "through the pipe\n");
    assert_eq!(client.wait(cat.clone()).unwrap(), ExitStatus::exited(0));
    // The same exec id cannot be reused while the container keeps it.
    let err = client
        .exec(exec_req("cat", &["true"], StdioRequest::default()))
        .unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::AlreadyExists);

    // Signal an exec.
    client
        .exec(exec_req(
            "sleeper",
            &["sleep", "1000"],
            StdioRequest::default(),
        ))
        .unwrap();
    let sleeper = ProcessRef::exec(id, "sleeper");
    client
        .signal(sleeper.clone(), libc::SIGKILL, false)
        .unwrap();
    assert_eq!(
        client.wait(sleeper.clone()).unwrap(),
        ExitStatus::signaled(libc::SIGKILL)
    );
    let err = client.signal(sleeper, libc::SIGKILL, false).unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::InvalidState);

    // Processes and stats.
    let pids = client.processes(id).unwrap();
    assert!(pids.contains(&client.state(id).unwrap().pid), "{pids:?}");
    let stats = client.stats(id).unwrap();
    assert!(stats.pids_current >= 1, "{stats:?}");
    assert!(stats.memory_usage_bytes > 0, "{stats:?}");

    // Resource update, seen in the stats.
    client
        .update_resources(
            id,
            json!({"pids": {"limit": 42}, "memory": {"limit": 64 << 20}}),
        )
        .unwrap();
    let stats = client.stats(id).unwrap();
    assert_eq!(stats.pids_limit, Some(42), "{stats:?}");
    assert_eq!(stats.memory_limit_bytes, Some(64 << 20), "{stats:?}");
    let err = client
        .update_resources(id, json!({"pids": {"limit": "many"}}))
        .unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::InvalidParams);

    // A running container is not removed without force.
    let err = client.remove_container(id, false).unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::InvalidState);

    // SIGTERM reaches the init's trap.
    client.signal(init.clone(), libc::SIGTERM, false).unwrap();
    assert_eq!(client.wait(init).unwrap(), ExitStatus::exited(7));
    client.remove_container(id, false).unwrap();

    // Forced removal of a running container.
    agent.create(
        &mut client,
        "forced",
        &["sleep", "1000"],
        StdioRequest::default(),
    );
    client.start_container("forced").unwrap();
    client.remove_container("forced", true).unwrap();
    assert_eq!(
        remote_code(client.state("forced").unwrap_err()),
        ErrorCode::NotFound
    );
    agent.stop();
}

#[test]
fn rpc_terminal_and_resize() {
    if !is_root() {
        return;
    }
    let mut agent = TestAgent::start();
    let mut client = agent.client();
    let id = "tty";
    let (bundle, mut spec) = agent.bundle(id, &["sh", "-c", "stty size; tty"]);
    spec["process"]["terminal"] = json!(true);
    client
        .create_container(CreateContainer {
            container_id: id.into(),
            spec,
            rootfs: RootfsSource::Bundle { path: bundle },
            stdio: StdioRequest::ALL,
            copied_files: Vec::new(),
        })
        .unwrap();
    let init = ProcessRef::init(id);
    let err = client.attach(&init, StreamKind::Stderr).unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::InvalidParams);
    let out = client.attach(&init, StreamKind::Stdout).unwrap();
    client.resize_tty(init.clone(), 31, 101).unwrap();
    client.start_container(id).unwrap();
    let out = thread::spawn(move || read_all(out));
    assert_eq!(client.wait(init).unwrap(), ExitStatus::exited(0));
    let out = out.join().unwrap();
    assert!(out.contains("31 101"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    client.remove_container(id, false).unwrap();
    agent.stop();
}

#[test]
fn rpc_bad_requests_name_the_problem() {
    if !is_root() {
        return;
    }
    let mut agent = TestAgent::start();
    let mut client = agent.client();

    let (bundle, spec) = agent.bundle("good", &["true"]);
    let create = |id: &str, spec: Value, path: &Path| CreateContainer {
        container_id: id.into(),
        spec,
        rootfs: RootfsSource::Bundle {
            path: path.to_owned(),
        },
        stdio: StdioRequest::default(),
        copied_files: Vec::new(),
    };

    let err = client
        .create_container(create("../escape", spec.clone(), &bundle))
        .unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::InvalidParams);

    let err = client
        .create_container(create("s1", json!({"process": 5}), &bundle))
        .unwrap_err();
    let reply = err.remote().unwrap().clone();
    assert_eq!(reply.code, ErrorCode::InvalidParams);
    assert!(reply.message.starts_with("spec:"), "{}", reply.message);

    let err = client
        .create_container(create("s2", spec.clone(), Path::new("/nonexistent/bundle")))
        .unwrap_err();
    assert!(err.remote().is_some(), "{err}");
    // Nothing of the failed container is left behind.
    assert_eq!(
        remote_code(client.state("s2").unwrap_err()),
        ErrorCode::NotFound
    );

    let mut bad_limit = spec.clone();
    bad_limit["linux"]["resources"]["memory"] = json!({"limit": -5});
    let err = client
        .create_container(create("s3", bad_limit, &bundle))
        .unwrap_err();
    assert!(err.remote().is_some(), "{err}");
    assert_eq!(
        remote_code(client.state("s3").unwrap_err()),
        ErrorCode::NotFound
    );

    let err = client
        .create_sandbox(SandboxConfig {
            hostname: Some("h".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::Unsupported);
    client.create_sandbox(SandboxConfig::default()).unwrap();

    // A good one still works after all that, and a second with the same id is refused.
    client
        .create_container(create("good", spec.clone(), &bundle))
        .unwrap();
    let err = client
        .create_container(create("good", spec, &bundle))
        .unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::AlreadyExists);
    // A created, never started container can be removed.
    client.remove_container("good", false).unwrap();

    assert_eq!(
        remote_code(client.start_container("ghost").unwrap_err()),
        ErrorCode::NotFound
    );
    assert_eq!(
        remote_code(client.wait(ProcessRef::exec("ghost", "x")).unwrap_err()),
        ErrorCode::NotFound
    );
    assert!(client
        .oom_events(None, 0, Some(Duration::from_millis(50)))
        .unwrap()
        .is_empty());
    agent.stop();
}

#[test]
fn rpc_oom_kill_is_reported() {
    if !is_root() {
        return;
    }
    let mut agent = TestAgent::start();
    let mut client = agent.client();
    let id = "hog";
    let (bundle, mut spec) = agent.bundle(
        id,
        &[
            "sh",
            "-c",
            "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    spec["linux"]["resources"]["memory"] = json!({"limit": 16 << 20, "swap": 16 << 20});
    client
        .create_container(CreateContainer {
            container_id: id.into(),
            spec,
            rootfs: RootfsSource::Bundle { path: bundle },
            stdio: StdioRequest::default(),
            copied_files: Vec::new(),
        })
        .unwrap();
    client.start_container(id).unwrap();
    let mut events = agent.client();
    let got = events
        .oom_events(Some(id), 0, Some(Duration::from_secs(20)))
        .unwrap();
    let status = client.wait(ProcessRef::init(id)).unwrap();
    let stats = client.stats(id).unwrap();
    assert!(
        !got.is_empty(),
        "no OOM event; init ended {status:?}, stats {stats:?}"
    );
    assert_eq!(got[0].container_id, id);
    assert!(client.stats(id).unwrap().oom_kills >= 1);
    client.remove_container(id, true).unwrap();
    agent.stop();
}

/// Runs `cmd` and returns its stdout, failing the test with its stderr otherwise.
fn sh(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A network namespace with a veth `eth0` (its peer up), removed on drop.
struct NetNs(String);

impl NetNs {
    fn new(mac: &str) -> NetNs {
        let name = format!(
            "rpcg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = NetNs(name);
        sh(&[
            "ip", "-n", &ns.0, "link", "add", "eth0", "address", mac, "type", "veth", "peer",
            "name", "peer0",
        ]);
        sh(&["ip", "-n", &ns.0, "link", "set", "peer0", "up"]);
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn rpc_guest_create_sandbox_configures_namespaces() {
    if !is_root() {
        return;
    }
    // The agent in guest mode, in a network namespace of its own, with its own UTS
    // namespace and a private tmpfs on /etc, so that nothing of the host is touched.
    let ns = NetNs::new("02:00:00:00:30:02");
    let dir = std::env::temp_dir().join(format!("rpc-guest-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("agent.sock");
    let script = format!(
        "mount -t tmpfs tmpfs /etc && exec {} --guest --socket {} --root {}",
        agent_binary().display(),
        socket.display(),
        dir.join("state").display()
    );
    let mut child = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "unshare", "--uts", "--mount", "--", "sh", "-c", &script,
        ])
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let mut client =
        Client::connect_timeout(Endpoint::Unix(socket.clone()), Duration::from_secs(10))
            .expect("connect to the guest-mode agent");

    let mut config = SandboxConfig {
        hostname: Some("guest-test".into()),
        dns: Some(DnsConfig {
            nameservers: vec!["10.30.0.53".parse().unwrap()],
            search: vec!["sandbox.test".into()],
            options: vec![],
        }),
        interfaces: vec![InterfaceConfig {
            name: "eth0".into(),
            mac: Some("02:00:00:00:30:99".into()),
            mtu: Some(1280),
            addresses: vec![
                "10.30.0.2/24".parse().unwrap(),
                "fd00:30::2/64".parse().unwrap(),
            ],
        }],
        routes: vec![
            RouteConfig {
                destination: None,
                gateway: Some("10.30.0.1".parse().unwrap()),
                device: Some("eth0".into()),
                metric: None,
            },
            RouteConfig {
                destination: None,
                gateway: Some("fd00:30::1".parse().unwrap()),
                device: Some("eth0".into()),
                metric: None,
            },
        ],
        storage: vec![],
    };
    // The wrong NIC is refused, naming the interface and both addresses.
    let err = client.create_sandbox(config.clone()).unwrap_err();
    let reply = err.remote().expect("an agent error").clone();
    assert_eq!(reply.code, ErrorCode::Sandbox);
    assert!(
        reply.message.contains("eth0") && reply.message.contains("02:00:00:00:30:02"),
        "{}",
        reply.message
    );

    config.interfaces[0].mac = Some("02:00:00:00:30:02".into());
    client.create_sandbox(config).unwrap();

    let link = sh(&["ip", "-n", &ns.0, "-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1280") && link.contains(",UP"), "{link}");
    let addrs = sh(&["ip", "-n", &ns.0, "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains("inet 10.30.0.2/24"), "{addrs}");
    assert!(addrs.contains("inet6 fd00:30::2/64"), "{addrs}");
    let routes = sh(&["ip", "-n", &ns.0, "route"]);
    assert!(
        routes.contains("default via 10.30.0.1 dev eth0"),
        "{routes}"
    );
    let routes6 = sh(&["ip", "-n", &ns.0, "-6", "route"]);
    assert!(
        routes6.contains("default via fd00:30::1 dev eth0"),
        "{routes6}"
    );
    let lo = sh(&["ip", "-n", &ns.0, "-o", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    let hostname = sh(&["nsenter", "-t", &pid, "-u", "hostname"]);
    assert_eq!(hostname.trim(), "guest-test");
    let resolv = sh(&["nsenter", "-t", &pid, "-m", "cat", "/etc/resolv.conf"]);
    assert_eq!(resolv, "nameserver 10.30.0.53\nsearch sandbox.test\n");
    // The host's hostname is untouched.
    assert_ne!(sh(&["hostname"]).trim(), "guest-test");

    // power_off ends a non-PID-1 agent cleanly.
    client.destroy_sandbox(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("guest-mode agent did not exit after destroy_sandbox(power_off)");
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let _ = fs::remove_dir_all(&dir);
}

/// The pid of the only child of `pid`.
fn only_child(pid: u32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// (pid, ppid, state, comm) of every process on the host.
fn all_processes() -> Vec<(u32, u32, char, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // comm may hold spaces: it sits between the first '(' and the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        let state = rest[0].chars().next().unwrap_or('?');
        let ppid = rest[1].parse().unwrap_or(0);
        out.push((pid, ppid, state, comm));
    }
    out
}

/// The `unshare` running a PID 1 agent; on drop (a failed test) the agent is killed with
/// SIGKILL, the only signal a namespace's init takes from outside without a handler.
struct Pid1 {
    unshare: Child,
    agent_pid: Option<u32>,
    dir: PathBuf,
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        if let Some(pid) = self.agent_pid {
            if self.unshare.try_wait().ok().flatten().is_none() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn rpc_pid1_mounts_serves_reaps_orphans_and_powers_off() {
    if !is_root() {
        return;
    }
    // PID 1 of its own pid namespace, with private mount, UTS and network namespaces, on a
    // unix socket (this host must never open vsock).
    let dir = std::env::temp_dir().join(format!("rpc-pid1-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("agent.sock");
    let log = fs::File::create(dir.join("agent.log")).unwrap();
    let unshare = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--uts",
            "--net",
            "--propagation",
            "private",
            "--",
        ])
        .arg(agent_binary())
        .arg("--socket")
        .arg(&socket)
        .arg("--root")
        .arg(dir.join("state"))
        .stderr(log)
        .spawn()
        .unwrap();
    let mut pid1 = Pid1 {
        unshare,
        agent_pid: None,
        dir: dir.clone(),
    };
    let mut client =
        Client::connect_timeout(Endpoint::Unix(socket.clone()), Duration::from_secs(10))
            .expect("connect to the PID 1 agent");
    let agent_pid = only_child(pid1.unshare.id()).expect("the agent under unshare");
    pid1.agent_pid = Some(agent_pid);

    // Its mounts.
    let mountinfo = fs::read_to_string(format!("/proc/{agent_pid}/mountinfo")).unwrap();
    for (target, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/run", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        assert!(
            mountinfo.lines().any(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let dash = f.iter().position(|x| *x == "-").unwrap();
                f[4] == target && f[dash + 1] == fstype
            }),
            "{target} ({fstype}) not mounted in the agent's namespace"
        );
    }

    client
        .create_sandbox(SandboxConfig {
            hostname: Some("pid1-test".into()),
            ..Default::default()
        })
        .unwrap();
    let hostname = sh(&["nsenter", "-t", &agent_pid.to_string(), "-u", "hostname"]);
    assert_eq!(hostname.trim(), "pid1-test");

    // A container sharing the agent's pid namespace leaves an orphan behind, which is
    // reparented to PID 1 and must be reaped by it.
    let bundle = dir.join("orphans");
    let bin = bundle.join("rootfs/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", "sleep 1 & exit 0"],
            "env": ["PATH=/bin"],
            "cwd": "/"
        },
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}
    });
    client
        .create_container(CreateContainer {
            container_id: "orphans".into(),
            spec,
            rootfs: RootfsSource::Bundle { path: bundle },
            stdio: StdioRequest::default(),
            copied_files: Vec::new(),
        })
        .unwrap();
    client.start_container("orphans").unwrap();
    assert_eq!(
        client.wait(ProcessRef::init("orphans")).unwrap(),
        ExitStatus::exited(0)
    );
    // The orphan is the agent's only child now (it may still be the forked shell on its
    // way to exec `sleep`).
    let deadline = Instant::now() + Duration::from_millis(900);
    let mut adopted = false;
    while !adopted && Instant::now() < deadline {
        adopted = all_processes()
            .into_iter()
            .any(|(_, ppid, state, _)| ppid == agent_pid && state != 'Z');
        thread::sleep(Duration::from_millis(10));
    }
    assert!(adopted, "the orphan was not reparented to the agent");
    thread::sleep(Duration::from_millis(1500));
    let leftovers: Vec<_> = all_processes()
        .into_iter()
        .filter(|(_, ppid, _, _)| *ppid == agent_pid)
        .collect();
    assert!(
        leftovers.is_empty(),
        "children (zombies?) left under PID 1 after the orphan ended: {leftovers:?}"
    );
    client.remove_container("orphans", false).unwrap();

    // Power-off: reboot(RB_POWER_OFF) in a pid namespace ends its init.
    client.destroy_sandbox(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid1.unshare.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            panic!("PID 1 agent did not power off");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let log = fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(log.contains("powering off"), "{log}");
    assert!(!log.contains("power off:"), "{log}");
}

#[test]
fn rpc_directory_rootfs_and_exec_with_a_terminal() {
    if !is_root() {
        return;
    }
    let mut agent = TestAgent::start();
    let mut client = agent.client();
    let id = "dir";
    // The rootfs given as a directory (as a guest's storage mount would be), not a bundle.
    let (bundle, spec) = agent.bundle(id, &["sleep", "1000"]);
    client
        .create_container(CreateContainer {
            container_id: id.into(),
            spec,
            rootfs: RootfsSource::Directory {
                path: bundle.join("rootfs"),
            },
            stdio: StdioRequest::default(),
            copied_files: Vec::new(),
        })
        .unwrap();
    // The agent keeps its own directory for the container while it exists.
    assert!(agent.dir.join("state").join(id).is_dir());
    client.start_container(id).unwrap();

    let exec = ExecRequest {
        container_id: id.into(),
        exec_id: "tty".into(),
        process: json!({
            "terminal": true,
            "args": ["sh", "-c", "read x; stty size; echo \"in: $x\""],
            "cwd": "/",
            "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0}
        }),
        stdio: StdioRequest::ALL,
    };
    client.exec(exec).unwrap();
    let p = ProcessRef::exec(id, "tty");
    let mut input = client.attach(&p, StreamKind::Stdin).unwrap();
    let output = client.attach(&p, StreamKind::Stdout).unwrap();
    let output = thread::spawn(move || read_all(output));
    client.resize_tty(p.clone(), 40, 120).unwrap();
    input.write_all(b"typed\n").unwrap();
    assert_eq!(client.wait(p.clone()).unwrap(), ExitStatus::exited(0));
    let out = output.join().unwrap();
    // The terminal echoes the input and turns \n into \r\n.
    assert!(out.contains("40 120\r\n"), "{out:?}");
    assert!(out.contains("in: typed\r\n"), "{out:?}");

    // close_stdin on a terminal ends the input with the terminal's EOF character.
    client
        .exec(ExecRequest {
            container_id: id.into(),
            exec_id: "tty-cat".into(),
            process: json!({
                "terminal": true,
                "args": ["cat"],
                "cwd": "/",
                "env": ["PATH=/bin"],
                "user": {"uid": 0, "gid": 0}
            }),
            stdio: StdioRequest::ALL,
        })
        .unwrap();
    let cat = ProcessRef::exec(id, "tty-cat");
    let output = client.attach(&cat, StreamKind::Stdout).unwrap();
    let output = thread::spawn(move || read_all(output));
    client.close_stdin(cat.clone()).unwrap();
    assert_eq!(client.wait(cat).unwrap(), ExitStatus::exited(0));
    output.join().unwrap();

    // A process without a terminal cannot be resized.
    let err = client.resize_tty(ProcessRef::init(id), 1, 1).unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::InvalidState);

    client.remove_container(id, true).unwrap();
    assert!(!agent.dir.join("state").join(id).exists());
    agent.stop();
}
