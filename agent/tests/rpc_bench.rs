//! Timings of the agent protocol, printed rather than asserted (speed is measured, not
//! tested): `cargo test -p agent --test rpc_bench -- --ignored --nocapture` as root.
//!
//! - a request round trip (`ping`) on an open connection;
//! - connect + version handshake;
//! - a busybox `true` container through the protocol (create, start, wait, remove), next to
//!   `runc run` of the same bundle.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::protocol::*;
use serde_json::{json, Value};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bundle(dir: &Path) -> (PathBuf, Value) {
    let bundle = dir.join("bundle");
    let bin = bundle.join("rootfs/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bin.join("true")).unwrap();
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut spec: Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["/bin/true"]);
    // See tests/rpc.rs: the same two adjustments, kept for runc too so both run one spec.
    spec["process"]["capabilities"]
        .as_object_mut()
        .unwrap()
        .remove("ambient");
    spec["linux"]["resources"]
        .as_object_mut()
        .unwrap()
        .remove("devices");
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    (bundle, spec)
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn rpc_bench() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("rpc-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("agent.sock");
    let bin = std::env::var_os("SANDBOX_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sandbox-agent")));
    let _agent = Agent(
        Command::new(&bin)
            .arg("--socket")
            .arg(&socket)
            .arg("--root")
            .arg(dir.join("state"))
            .spawn()
            .unwrap(),
    );
    let endpoint = Endpoint::Unix(socket);
    let mut client = Client::connect_timeout(endpoint.clone(), Duration::from_secs(10)).unwrap();

    let n = 2000;
    let start = Instant::now();
    for _ in 0..n {
        client.ping().unwrap();
    }
    let ping = start.elapsed() / n;

    let n = 500;
    let start = Instant::now();
    for _ in 0..n {
        Client::connect(endpoint.clone()).unwrap();
    }
    let connect = start.elapsed() / n;

    let (bundle, spec) = bundle(&dir);
    let runs = 20;
    let mut agent_runs = Vec::new();
    let mut remove_runs = Vec::new();
    for i in 0..runs {
        let id = format!("bench-{i}");
        let start = Instant::now();
        client
            .create_container(CreateContainer {
                container_id: id.clone(),
                spec: spec.clone(),
                rootfs: RootfsSource::Bundle {
                    path: bundle.clone(),
                },
                stdio: StdioRequest::default(),
                copied_files: Vec::new(),
            })
            .unwrap();
        client.start_container(&id).unwrap();
        let status = client.wait(ProcessRef::init(&id)).unwrap();
        agent_runs.push(start.elapsed());
        assert_eq!(status, ExitStatus::exited(0));
        let start = Instant::now();
        client.remove_container(&id, false).unwrap();
        remove_runs.push(start.elapsed());
    }

    let mut runc_runs = Vec::new();
    for i in 0..runs {
        let start = Instant::now();
        let status = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("runc-bench-{}-{i}", std::process::id()))
            .stdin(Stdio::null())
            .status()
            .unwrap();
        runc_runs.push(start.elapsed());
        assert!(status.success());
    }

    let agent_median = median(agent_runs);
    let runc_median = median(runc_runs);
    println!("agent binary: {}", bin.display());
    println!("ping round trip (mean of 2000):        {ping:?}");
    println!("connect + handshake (mean of 500):     {connect:?}");
    println!("create+start+wait /bin/true (median of {runs}): {agent_median:?}");
    println!(
        "remove after exit (median of {runs}):   {:?}",
        median(remove_runs)
    );
    println!("runc run /bin/true (median of {runs}):  {runc_median:?}");
    println!(
        "ratio agent / runc: {:.2}",
        agent_median.as_secs_f64() / runc_median.as_secs_f64()
    );
    let _ = fs::remove_dir_all(&dir);
}
