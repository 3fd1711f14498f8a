//! End-to-end tests of `containerd-shim-sandbox-v2` under a real containerd (Debian's), driven
//! with `ctr`: output, exit codes, exec, kill, pids, metrics, a two-container pod in one
//! sandbox, isolation options, and that nothing is left behind. Native isolation, and vm
//! isolation (`containerd_single_container::vm`) where `sandbox check` finds it ready.
//!
//! Run: `cargo test -p sandbox-tests --test containerd -- --nocapture` (as root).

use std::path::PathBuf;

use sandbox_tests::containerd::{self as harness, ancestor_named, Containerd, IMAGE, RUNTIME};
use sandbox_tests::{kvm_hardware_speed, skip, vm_or_skip};

/// A private containerd with the test image, or `None` (having said why) where containerd
/// cannot run here.
fn setup(test: &str, name: &str) -> Option<Containerd> {
    if let Some(why) = harness::unavailable() {
        skip(&format!("{test}: {why}"));
        return None;
    }
    let c = Containerd::start(name);
    c.import_image();
    Some(c)
}

/// A runtime options file (read by the shim through `--runtime-config-path`).
fn options_file(c: &Containerd, name: &str, text: &str) -> String {
    let p: PathBuf = c.dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn run_args<'a>(opts: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", "--runtime", RUNTIME, "--runtime-config-path", opts];
    v.extend_from_slice(extra);
    v
}

/// Output, stderr, exit codes, stdin, exec, pids, metrics, kill: the same in either isolation
/// (`in_vm` says which the options file chose).
fn single_container_flow(c: &Containerd, opts: &str, tag: &str, in_vm: bool) {
    // Output and a clean exit.
    let out = c.ok(&run_args(
        opts,
        &[
            "--rm",
            IMAGE,
            &format!("{tag}-echo"),
            "echo",
            "hello from the sandbox",
        ],
    ));
    assert_eq!(out, "hello from the sandbox\n");

    // stdout, stderr and the exit code come back separately.
    let o = c.ctr(&run_args(
        opts,
        &[
            "--rm",
            IMAGE,
            &format!("{tag}-exit"),
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; exit 3",
        ],
    ));
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "to-out\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("to-err"),
        "{o:?}"
    );

    // A host directory bound in (in a VM: a virtio-fs device of the pod's first container).
    let shared = c.dir.join(format!("{tag}-shared"));
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("from-host"), "host-line\n").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        shared.display()
    );
    let out = c.ok(&run_args(
        opts,
        &[
            "--rm",
            "--mount",
            &mount,
            IMAGE,
            &format!("{tag}-bind"),
            "sh",
            "-c",
            "cat /data/from-host; echo guest-line > /data/from-guest",
        ],
    ));
    assert_eq!(out, "host-line\n");
    assert_eq!(
        std::fs::read_to_string(shared.join("from-guest")).unwrap(),
        "guest-line\n"
    );

    // stdin reaches the container and its end is seen (CloseIO).
    let stdin_id = format!("{tag}-stdin");
    let o = c.ctr_in(
        &run_args(opts, &["--rm", IMAGE, &stdin_id, "wc", "-c"]),
        Some((&stdin_id, b"twelve bytes")),
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "12");

    // A long-running container: exec, ps, metrics, kill.
    let id = format!("{tag}-long");
    c.ok(&run_args(opts, &["-d", IMAGE, &id, "sleep", "600"]));
    let pid = c.wait_task_status(&id, "RUNNING");
    assert!(pid > 0);

    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo inside; exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "inside\n");
    let out = c.ok(&["task", "exec", "--exec-id", "e2", &id, "ps"]);
    assert!(out.contains("sleep 600"), "exec ps: {out}");

    // An exec with a terminal: the agent's pty, sized by ResizePty from ctr's console.
    // ctr (1.6) puts no consoleSize in the exec's spec: it sends ResizePty only once Start
    // has returned, by when the process already runs (as under runc), so the shell waits up
    // to 5 s for the size to arrive instead of reading the pty's initial 0x0. (busybox stty
    // may exit 0 after failing, hence the check of what it prints.)
    if harness::which("script").is_some() {
        let cmd = format!(
            "stty rows 33 cols 77; ctr --address {} --namespace {} task exec -t --exec-id t1 \
             {id} sh -c 'tty; i=0; while [ $i -lt 100 ]; do case $(stty size 2>/dev/null) in \
             [1-9]*) break;; esac; sleep 0.05; i=$((i+1)); done; stty size; exit 4'",
            c.socket.display(),
            harness::NAMESPACE
        );
        let o = std::process::Command::new("timeout")
            .arg(
                sandbox_tests::patience(std::time::Duration::from_secs(60))
                    .as_secs()
                    .to_string(),
            )
            .args(["script", "-qec", &cmd, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(4), "{o:?}");
        assert!(text.contains("/dev/pts/"), "not a terminal: {text:?}");
        assert!(
            text.contains("33 77"),
            "terminal size not applied: {text:?}"
        );
    } else {
        skip("the terminal exec under containerd: util-linux `script` is not installed");
    }

    // The task's pid is a host process: the container's init natively, the VMM that holds
    // it in a VM (whose guest pids mean nothing on the host); `task ps` lists the
    // container's processes as the agent sees them.
    let ps = c.ok(&["task", "ps", &id]);
    let listed: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let host_cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let host_cmdline = String::from_utf8_lossy(&host_cmdline).replace('\0', " ");
    if in_vm {
        assert!(
            host_cmdline.contains("sandbox-vmm"),
            "task pid {pid} is not the VMM: {host_cmdline:?}"
        );
        assert!(!listed.is_empty(), "task ps lists nothing: {ps}");
    } else {
        assert!(
            host_cmdline.contains("sleep"),
            "task pid {pid} is not the container's init: {host_cmdline:?}"
        );
        assert!(
            listed.contains(&pid.to_string().as_str()),
            "task ps lacks the init pid {pid}: {ps}"
        );
    }

    let metrics = c.ok(&["task", "metrics", &id]);
    println!("ctr task metrics {id}:\n{metrics}");
    let pids_line = metrics
        .lines()
        .find(|l| l.trim_start().starts_with("pids.current"))
        .unwrap_or_else(|| panic!("no pids.current in metrics: {metrics}"));
    let n: u64 = pids_line
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n >= 1, "{pids_line}");
    let mem_line = metrics
        .lines()
        .find(|l| l.trim_start().starts_with("memory.usage"))
        .unwrap_or_else(|| panic!("no memory.usage in metrics: {metrics}"));
    let bytes: u64 = mem_line.split_whitespace().last().unwrap().parse().unwrap();
    assert!(bytes > 0, "{mem_line}");

    // The init of a pid namespace ignores SIGTERM without a handler (as under runc).
    c.ok(&["task", "kill", "-s", "SIGTERM", &id]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(c.task_status(&id).map(|t| t.1).as_deref(), Some("RUNNING"));
    c.ok(&["task", "kill", "-s", "SIGKILL", &id]);
    c.wait_task_status(&id, "STOPPED");
    let del = c.ok(&["task", "delete", &id]);
    println!("task delete {id}: {del}");
    c.ok(&["container", "delete", &id]);
    assert!(c.task_status(&id).is_none());
}

/// Waits until no shim of this containerd is left and the sandbox state is gone.
fn assert_all_gone(c: &Containerd) {
    let addr = c.socket.display().to_string();
    let deadline =
        std::time::Instant::now() + sandbox_tests::patience(std::time::Duration::from_secs(10));
    loop {
        let shims = c.processes_with(&["containerd-shim-sandbox-v2", &addr]);
        let root = c.shim_root.display().to_string();
        let agents = c.processes_with(&["sandbox-agent", &root]);
        let vmms = c.processes_with(&["sandbox-vmm", &root]);
        let virtiofsds = c.processes_with(&["virtiofsd", &root]);
        let state_left: Vec<_> = std::fs::read_dir(&c.shim_root)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        // Containers' rootfs, and what a VM pod's share held.
        let mounts: Vec<_> = c
            .mounts()
            .into_iter()
            .filter(|m| m.ends_with("/rootfs") || m.contains(".pod/"))
            .collect();
        if shims.is_empty()
            && agents.is_empty()
            && vmms.is_empty()
            && virtiofsds.is_empty()
            && state_left.is_empty()
            && mounts.is_empty()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: shims {shims:?}, agents {agents:?}, VMMs {vmms:?}, virtiofsd \
             {virtiofsds:?}, state {state_left:?}, mounts {mounts:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The single-container flow in each isolation.
mod containerd_single_container {
    use super::*;

    /// The flow, then the shim's task events as containerd's event service received them.
    fn flow_with_events(c: &Containerd, opts: &str, tag: &str, in_vm: bool) {
        let mut events = c.events();
        single_container_flow(c, opts, tag, in_vm);
        assert_all_gone(c);
        let _ = events.kill();
        let _ = events.wait();
        let seen = std::fs::read_to_string(c.dir.join("events.log")).unwrap();
        let long = format!("{tag}-long");
        for topic in [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/delete",
        ] {
            assert!(
                seen.lines().any(|l| l.contains(topic) && l.contains(&long)),
                "no {topic} event for {long} in:\n{seen}"
            );
        }
    }

    #[test]
    fn native() {
        let Some(c) = setup("containerd_single_container::native", "ctrd-native") else {
            return;
        };
        let opts = options_file(&c, "native.toml", "isolation = \"native\"\n");
        flow_with_events(&c, &opts, "n", false);
    }

    #[test]
    fn vm() {
        const TEST: &str = "containerd_single_container::vm";
        if !vm_or_skip(TEST) {
            return;
        }
        let Some(c) = setup(TEST, "ctrd-vm") else {
            return;
        };
        let opts = options_file(&c, "vm.toml", "isolation = \"vm\"\n");
        flow_with_events(&c, &opts, "v", true);
    }
}

#[test]
fn containerd_pod_shares_one_sandbox() {
    let Some(c) = setup("containerd_pod_shares_one_sandbox", "ctrd-pod") else {
        return;
    };
    let opts = options_file(&c, "native.toml", "isolation = \"native\"\n");
    // The CRI annotations, as the CRI plugin sets them on a pod's containers.
    c.ok(&run_args(
        &opts,
        &[
            "-d",
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod-a",
            IMAGE,
            "pod-a",
            "sleep",
            "600",
        ],
    ));
    c.ok(&run_args(
        &opts,
        &[
            "-d",
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod-a",
            IMAGE,
            "app-a",
            "sleep",
            "601",
        ],
    ));
    let pause = c.wait_task_status("pod-a", "RUNNING");
    let app = c.wait_task_status("app-a", "RUNNING");
    let addr = c.socket.display().to_string();
    let shims = c.processes_with(&["containerd-shim-sandbox-v2", &addr]);
    assert_eq!(shims.len(), 1, "one shim for the pod, found {shims:?}");
    let agent_pause = ancestor_named(pause as i32, "sandbox-agent");
    let agent_app = ancestor_named(app as i32, "sandbox-agent");
    assert!(
        agent_pause.is_some(),
        "pause container {pause} has no agent above it"
    );
    assert_eq!(
        agent_pause, agent_app,
        "both containers run under the same agent"
    );
    assert_eq!(
        harness::parent_of(agent_pause.unwrap()),
        Some(shims[0]),
        "the agent belongs to the pod's shim"
    );

    // A container outside the pod gets a sandbox (shim, agent) of its own.
    c.ok(&run_args(&opts, &["-d", IMAGE, "other", "sleep", "602"]));
    let other = c.wait_task_status("other", "RUNNING");
    assert_ne!(ancestor_named(other as i32, "sandbox-agent"), agent_pause);
    assert_eq!(
        c.processes_with(&["containerd-shim-sandbox-v2", &addr])
            .len(),
        2
    );

    // The pod's shim stays while one of its containers is left, then goes.
    c.remove("app-a");
    assert_eq!(
        c.task_status("pod-a").map(|t| t.1).as_deref(),
        Some("RUNNING")
    );
    let out = c.ok(&[
        "task",
        "exec",
        "--exec-id",
        "x",
        "pod-a",
        "echo",
        "still here",
    ]);
    assert_eq!(out, "still here\n");
    c.remove("pod-a");
    c.remove("other");
    assert_all_gone(&c);
}

/// A second image for pods of two images: busybox again, its /etc/image-name saying this name.
const APP_IMAGE: &str = "docker.io/library/app:sandbox-test";

/// A pod of two images in one sandbox (in a VM: one VM, each container's rootfs and volumes
/// bound into the pod's share): the pause container from one image, the app container from
/// another with a host directory bound in; each sees its own image, the volume carries
/// writes both ways, and removing the app leaves the pause container running.
fn two_image_pod(c: &Containerd, opts: &str, in_vm: bool) {
    c.import_image_named(APP_IMAGE);
    let shared = c.dir.join("pod-shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("from-host"), "host-line\n").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        shared.display()
    );
    c.ok(&run_args(
        opts,
        &[
            "-d",
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod-b",
            IMAGE,
            "pod-b",
            "sleep",
            "600",
        ],
    ));
    c.wait_task_status("pod-b", "RUNNING");
    c.ok(&run_args(
        opts,
        &[
            "-d",
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod-b",
            "--mount",
            &mount,
            APP_IMAGE,
            "app-b",
            "sh",
            "-c",
            "echo app-line > /data/from-app; exec sleep 601",
        ],
    ));
    c.wait_task_status("app-b", "RUNNING");
    let addr = c.socket.display().to_string();
    let shims = c.processes_with(&["containerd-shim-sandbox-v2", &addr]);
    assert_eq!(shims.len(), 1, "one shim for the pod, found {shims:?}");
    if in_vm {
        let root = c.shim_root.display().to_string();
        let vmms = c.processes_with(&["sandbox-vmm", &root]);
        assert_eq!(vmms.len(), 1, "one VM for the pod, found {vmms:?}");
    }

    let exec = |id: &str, exec_id: &str, cmd: &[&str]| {
        let mut args = vec!["task", "exec", "--exec-id", exec_id, id];
        args.extend_from_slice(cmd);
        c.ok(&args)
    };
    assert_eq!(
        exec("pod-b", "n1", &["cat", "/etc/image-name"]),
        format!("{IMAGE}\n")
    );
    assert_eq!(
        exec("app-b", "n2", &["cat", "/etc/image-name"]),
        format!("{APP_IMAGE}\n")
    );
    assert_eq!(
        exec("app-b", "d1", &["cat", "/data/from-host"]),
        "host-line\n"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("from-app")).unwrap(),
        "app-line\n"
    );
    // The pause container sees neither the app's volume nor its image.
    let o = c.ctr(&["task", "exec", "--exec-id", "d2", "pod-b", "ls", "/data"]);
    assert!(!o.status.success(), "pause container has /data: {o:?}");

    c.remove("app-b");
    assert_eq!(
        c.task_status("pod-b").map(|t| t.1).as_deref(),
        Some("RUNNING")
    );
    assert_eq!(exec("pod-b", "s1", &["echo", "still here"]), "still here\n");
    c.remove("pod-b");
    assert_all_gone(c);
    assert_eq!(
        std::fs::read_to_string(shared.join("from-host")).unwrap(),
        "host-line\n",
        "the volume outlives the pod"
    );
}

mod containerd_two_image_pod {
    use super::*;

    #[test]
    fn native() {
        let Some(c) = setup("containerd_two_image_pod::native", "ctrd-pod2n") else {
            return;
        };
        let opts = options_file(&c, "native.toml", "isolation = \"native\"\n");
        two_image_pod(&c, &opts, false);
    }

    #[test]
    fn vm() {
        const TEST: &str = "containerd_two_image_pod::vm";
        if !vm_or_skip(TEST) {
            return;
        }
        let Some(c) = setup(TEST, "ctrd-pod2v") else {
            return;
        };
        let opts = options_file(&c, "vm.toml", "isolation = \"vm\"\n");
        two_image_pod(&c, &opts, true);
    }
}

#[test]
fn containerd_isolation_choices() {
    let Some(c) = setup("containerd_isolation_choices", "ctrd-iso") else {
        return;
    };
    // The annotation picks native isolation without any runtime options.
    let out = c.ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.sandbox.isolation=native",
        IMAGE,
        "by-annotation",
        "echo",
        "annotated",
    ]);
    assert_eq!(out, "annotated\n");

    // A bad option is refused with its reason.
    let bad = options_file(&c, "bad.toml", "isolation = \"kvm\"\n");
    let o = c.ctr(&run_args(&bad, &["--rm", IMAGE, "bad-opts", "true"]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("kvm"), "{err}");

    // The operator can forbid the annotation.
    let locked = options_file(
        &c,
        "locked.toml",
        "isolation = \"vm\"\nallow_isolation_annotation = false\n",
    );
    let o = c.ctr(&run_args(
        &locked,
        &[
            "--rm",
            "--annotation",
            "io.sandbox.isolation=native",
            IMAGE,
            "locked",
            "true",
        ],
    ));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("allow_isolation_annotation"), "{err}");

    // The default is vm isolation; where KVM is not hardware-speed it refuses (no silent
    // fall-back to native).
    if !kvm_hardware_speed() {
        let o = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            "default-vm",
            "true",
        ]);
        assert!(
            !o.status.success(),
            "vm isolation ran without hardware-speed KVM"
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("vm isolation"), "{err}");
    }
    for id in ["bad-opts", "locked", "default-vm"] {
        let _ = c.ctr(&["container", "delete", id]);
    }
    assert_all_gone(&c);
}

/// The shim killed while its container runs: containerd's clean-up ends the container (and
/// its VM) and nothing is left.
fn shim_crash_leaves_nothing(test: &str, isolation: &str) {
    let Some(c) = setup(test, &format!("ctrd-crash-{isolation}")) else {
        return;
    };
    let opts = options_file(&c, "opts.toml", &format!("isolation = \"{isolation}\"\n"));
    c.ok(&run_args(&opts, &["-d", IMAGE, "victim", "sleep", "600"]));
    let pid = c.wait_task_status("victim", "RUNNING") as i32;
    let addr = c.socket.display().to_string();
    let shims = c.processes_with(&["containerd-shim-sandbox-v2", &addr]);
    assert_eq!(shims.len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd sees the shim gone and runs `containerd-shim-sandbox-v2 delete`, which
    // must end the container (the process the task reports: the container's init natively,
    // the VMM in vm isolation) that the dead shim's back end left behind.
    let deadline =
        std::time::Instant::now() + sandbox_tests::patience(std::time::Duration::from_secs(20));
    let gone = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    };
    while !gone(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "container process {pid} outlived its shim"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = c.ctr(&["task", "delete", "victim"]);
    c.ok(&["container", "delete", "victim"]);
    assert_all_gone(&c);
}

mod containerd_shim_crash_leaves_nothing {
    use super::*;

    #[test]
    fn native() {
        shim_crash_leaves_nothing("containerd_shim_crash_leaves_nothing::native", "native");
    }

    #[test]
    fn vm() {
        const TEST: &str = "containerd_shim_crash_leaves_nothing::vm";
        if vm_or_skip(TEST) {
            shim_crash_leaves_nothing(TEST, "vm");
        }
    }
}
