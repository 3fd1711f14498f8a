//! End-to-end tests of the `sandbox` command line, each run in native isolation
//! (`NAME::native`) and again in vm isolation (`NAME::vm`). The vm runs happen only where
//! `sandbox check` finds hardware-speed KVM and the guest pieces; elsewhere they print why
//! they skip, or fail with `SANDBOX_REQUIRE_VM=1`.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sandbox_tests::image::sha256_hex;
use sandbox_tests::{
    bin, kvm_kind, patience, processes_mentioning, sandbox, skip, vm_or_skip, Env, TestNet,
};

/// Declares `NAME::native` and `NAME::vm` for a test body taking an `Env`.
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn native() {
                let env = Env::new(stringify!($name), "native");
                ($body)(&env);
            }

            #[test]
            fn vm() {
                in_vm(stringify!($name), $body);
            }
        }
    };
}

/// Runs the scenario `name` in vm isolation where it is ready (see `vm_or_skip`).
fn in_vm(name: &str, body: impl FnOnce(&Env)) {
    if vm_or_skip(&format!("{name}::vm")) {
        body(&Env::new(name, "vm"));
    }
}

/// Declares only `NAME::vm`, for what only a microVM has: its own vCPUs, its own VMM.
macro_rules! vm_only {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn vm() {
                in_vm(stringify!($name), $body);
            }
        }
    };
}

both!(run_echo_hello, |env: &Env| {
    let out = env.sandbox(&["run", "--", "echo", "hello"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(out.status.code(), Some(0));
    env.assert_clean();
});

both!(run_timings_place_every_phase_in_order, |env: &Env| {
    let out = env.sandbox(&["run", "--timings", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Table rows: "<phase words>  <at ms>  <step ms>", in the order the phases happened.
    let phases: Vec<String> = stderr
        .lines()
        .skip_while(|l| !l.starts_with("phase "))
        .skip(1)
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len().saturating_sub(2)].join(" ")
        })
        .collect();
    let expected: &[&str] = if env.isolation == "vm" {
        &[
            "run started",
            "monitor started",
            "vmm exec",
            "vmm main",
            "vcpus started",
            "guest init started",
            "guest agent listening",
            "agent answered",
            "sandbox configured",
            "container created",
            "container exited",
            "sandbox down",
        ]
    } else {
        &[
            "run started",
            "monitor started",
            "agent exec",
            "agent answered",
            "container created",
            "container exited",
            "sandbox down",
        ]
    };
    // `sandbox run` notes the start once the agent confirmed it, and `true` may be gone by
    // then: only its place after the creation is fixed.
    let started = phases.iter().position(|p| p == "container started");
    let created = phases.iter().position(|p| p == "container created");
    assert!(started.is_some() && started > created, "{stderr}");
    let causal: Vec<&String> = phases
        .iter()
        .filter(|p| *p != "container started")
        .collect();
    assert_eq!(causal, expected, "{stderr}");
    env.assert_clean();
});

both!(run_returns_exit_code, |env: &Env| {
    let out = env.sandbox(&["run", "--", "sh", "-c", "echo to-stderr >&2; exit 42"]);
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    env.assert_clean();
});

both!(run_env_and_stdin, |env: &Env| {
    let mut child = env
        .cmd()
        .args([
            "run",
            "-i",
            "-e",
            "GREETING=hi there",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\"; cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi there\nfrom stdin\n"
    );
    assert!(out.status.success());
    env.assert_clean();
});

both!(run_keeps_writes_out_of_the_image, |env: &Env| {
    env.ok(&["run", "--", "sh", "-c", "echo scribble > /etc/scribble"]);
    assert!(!env
        .images
        .join("images/busybox/rootfs/etc/scribble")
        .exists());
    let out = env.sandbox(&["run", "--", "cat", "/etc/scribble"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a second container saw the first one's write"
    );
    env.assert_clean();
});

both!(run_volume_is_shared_both_ways, |env: &Env| {
    let vol = env.dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("from-host"), "host-line\n").unwrap();
    let volume = format!("{}:/data", vol.display());
    // The container reads what the host wrote before, writes back, then waits for a file
    // the host makes while it runs.
    let script = "cat /data/from-host; echo guest-line > /data/from-guest; echo ready; \
                  i=0; while [ ! -e /data/later ]; do i=$((i+1)); [ $i -gt 600 ] && exit 9; \
                  sleep 0.1; done; cat /data/later";
    let mut child = env
        .cmd()
        .args(["run", "-v", &volume, "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"host-line\nready\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("from-guest")).unwrap(),
        "guest-line\n"
    );
    std::fs::write(vol.join("later"), "written-while-running\n").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "written-while-running\n");
    assert_eq!(status.code(), Some(0));
    env.assert_clean();
});

both!(run_read_only_volume_refuses_writes, |env: &Env| {
    let vol = env.dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("kept"), "original\n").unwrap();
    let volume = format!("{}:/data:ro", vol.display());
    let out = env.sandbox(&[
        "run",
        "-v",
        &volume,
        "--",
        "sh",
        "-c",
        "cat /data/kept; echo changed > /data/kept || echo refused; touch /data/new || echo refused",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "original\nrefused\nrefused\n"
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("kept")).unwrap(),
        "original\n"
    );
    assert!(!vol.join("new").exists());
    env.assert_clean();
});

both!(
    run_volume_with_a_missing_source_is_refused_before_start,
    |env: &Env| {
        let missing = env.dir.join("no-such-dir");
        let volume = format!("{}:/data", missing.display());
        let err = env.fails(&["run", "-v", &volume, "--", "true"]);
        assert!(err.contains(missing.to_str().unwrap()), "{err}");
        env.assert_clean();
    }
);

vm_only!(
    virtiofsd_killed_mid_run_is_reported_and_cleaned_up,
    |env: &Env| {
        let vol = env.dir.join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        let volume = format!("{}:/data", vol.display());
        let mut child = env
            .cmd()
            .args([
                "run",
                "-v",
                &volume,
                "--",
                "sh",
                "-c",
                "ls /data; echo ready; while true; do ls /data > /dev/null; sleep 0.1; done",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut ready = [0u8; 6];
        if let Err(e) = stdout.read_exact(&mut ready) {
            let o = child.wait_with_output().unwrap();
            panic!(
                "no ready line ({e}): run ended {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert_eq!(&ready, b"ready\n");
        // Its command line names the volume (its socket may be outside the state root).
        let daemons: Vec<i32> = processes_mentioning(vol.to_str().unwrap())
            .into_iter()
            // By executable name: the test's name, in every path of its Env, says virtiofsd.
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "virtiofsd")
            })
            .collect();
        assert!(!daemons.is_empty(), "no virtiofsd for the volume");
        for pid in daemons {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let deadline = Instant::now() + patience(Duration::from_secs(30));
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "sandbox run did not end after virtiofsd was killed"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(!status.success());
        assert!(err.contains("virtio-fs vol"), "{status}: {err:?}");
        assert!(err.contains("closed its socket"), "{status}: {err:?}");
        env.assert_clean();
    }
);

both!(run_signal_is_forwarded_and_cleans_up, |env: &Env| {
    let mut child = env
        .cmd()
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "trap 'echo got-term; exit 5' TERM; echo ready; while true; do sleep 0.05; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    stdout.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(child.wait().unwrap().code(), Some(5));
    env.assert_clean();
});

both!(bundle_rootfs_writes_reach_the_bundle, |env: &Env| {
    // As with runc: a bundle's rootfs is the container's, and its writes stay there (in a VM
    // the directory is shared through virtio-fs). `--vm-rootfs image` keeps them in the VM.
    let b = env.bundle("b", &["sh", "-c", "echo kept > /written-by-container"]);
    env.ok(&["run", "--bundle", b.to_str().unwrap(), "w1"]);
    let written = b.join("rootfs/written-by-container");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "kept\n");
    if env.isolation == "vm" {
        std::fs::remove_file(&written).unwrap();
        env.ok(&[
            "--vm-rootfs",
            "image",
            "run",
            "--bundle",
            b.to_str().unwrap(),
            "w2",
        ]);
        assert!(!written.exists(), "the image path wrote into the bundle");
    }
    env.assert_clean();
});

both!(lifecycle_create_start_state_kill_delete, |env: &Env| {
    let b = env.bundle("b", &["sh", "-c", "echo started; exec sleep 60"]);
    let pid_file = env.dir.join("pid");
    let out_file = std::fs::File::create(env.dir.join("out")).unwrap();
    let st = env
        .cmd()
        .args([
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c1",
        ])
        .stdin(Stdio::null())
        .stdout(out_file)
        .status()
        .unwrap();
    assert!(st.success());
    let state = env.state("c1");
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], "c1");
    assert_eq!(state["bundle"], b.canonicalize().unwrap().to_str().unwrap());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(state["pid"], pid);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    // Lifecycle rules.
    assert!(env
        .fails(&["create", "--bundle", b.to_str().unwrap(), "c1"])
        .contains("already exists"));
    env.ok(&["start", "c1"]);
    assert!(env.fails(&["start", "c1"]).contains("cannot start"));
    assert_eq!(env.status("c1"), "running");
    assert!(env.fails(&["delete", "c1"]).contains("cannot delete"));

    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list[0]["id"], "c1");
    assert_eq!(list[0]["status"], "running");
    assert_eq!(env.ok(&["list", "-q"]), "c1\n");

    // The container's stdout is the stdout `create` was given.
    let deadline = Instant::now() + sandbox_tests::patience(Duration::from_secs(5));
    while std::fs::read_to_string(env.dir.join("out")).unwrap() != "started\n" {
        assert!(Instant::now() < deadline, "container output never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }

    env.ok(&["kill", "c1", "KILL"]);
    env.wait_status("c1", "stopped");
    assert_eq!(env.state("c1")["pid"], 0);
    // The pid `create` reported is gone once the container is.
    let deadline = Instant::now() + sandbox_tests::patience(Duration::from_secs(5));
    while std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            Instant::now() < deadline,
            "the container's init {pid} outlived the container"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(env.fails(&["kill", "c1"]).contains("stopped"));
    env.ok(&["delete", "c1"]);
    assert!(env.fails(&["state", "c1"]).contains("does not exist"));
    env.assert_clean();
});

both!(kill_takes_names_and_numbers, |env: &Env| {
    let b = env.bundle(
        "b",
        &[
            "sh",
            "-c",
            "trap 'exit 3' USR1; while true; do sleep 0.05; done",
        ],
    );
    env.ok_bg(&["create", "--bundle", b.to_str().unwrap(), "k1"]);
    env.ok(&["start", "k1"]);
    assert!(env
        .fails(&["kill", "k1", "SIGNOPE"])
        .contains("unknown signal"));
    assert!(env.fails(&["kill", "k1", "99"]).contains("unknown signal"));
    std::thread::sleep(Duration::from_millis(200));
    env.ok(&["kill", "k1", "usr1"]);
    env.wait_status("k1", "stopped");
    env.ok(&["delete", "k1"]);

    env.ok_bg(&["create", "--bundle", b.to_str().unwrap(), "k2"]);
    env.ok(&["start", "k2"]);
    env.ok(&["kill", "--all", "k2", "9"]);
    env.wait_status("k2", "stopped");
    env.ok(&["delete", "k2"]);
    env.assert_clean();
});

both!(exec_ps_events, |env: &Env| {
    let b = env.bundle("b", &["sleep", "60"]);
    env.ok_bg(&["create", "--bundle", b.to_str().unwrap(), "e1"]);
    assert!(env.fails(&["exec", "e1", "true"]).contains("cannot exec"));
    env.ok(&["start", "e1"]);

    assert_eq!(env.ok(&["exec", "e1", "echo", "from-exec"]), "from-exec\n");
    let out = env.sandbox(&["exec", "e1", "sh", "-c", "exit 9"]);
    assert_eq!(out.status.code(), Some(9));
    assert_eq!(
        env.ok(&[
            "exec",
            "--env",
            "X=1",
            "--cwd",
            "/etc",
            "e1",
            "sh",
            "-c",
            "echo $X $(pwd)"
        ]),
        "1 /etc\n"
    );
    let process = env.dir.join("process.json");
    std::fs::write(
        &process,
        serde_json::to_vec(&serde_json::json!({
            "user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["echo", "from-process-json"],
            "env": ["PATH=/bin:/usr/bin"]
        }))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        env.ok(&["exec", "--process", process.to_str().unwrap(), "e1"]),
        "from-process-json\n"
    );

    // A detached exec: its pid-file names a process that lives as long as the exec.
    let pid_file = env.dir.join("exec.pid");
    env.ok_bg(&[
        "exec",
        "--detach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "e1",
        "sleep",
        "30",
    ]);
    let exec_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{exec_pid}")).exists());

    let pids: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", "e1"])).unwrap();
    assert_eq!(pids.len(), 2, "init and the detached exec: {pids:?}");
    let table = env.ok(&["ps", "e1"]);
    assert!(table.contains("sleep 60"), "{table}");
    assert!(table.contains("sleep 30"), "{table}");

    let stats: serde_json::Value =
        serde_json::from_str(env.ok(&["events", "--stats", "e1"]).trim()).unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["id"], "e1");
    assert!(stats["data"].is_object());

    let res = env.dir.join("resources.json");
    std::fs::write(&res, br#"{"pids": {"limit": 64}}"#).unwrap();
    env.ok(&["update", "--resources", res.to_str().unwrap(), "e1"]);
    std::fs::write(&res, br#"{"pids": {"limit": "many"}}"#).unwrap();
    let err = env.fails(&["update", "--resources", res.to_str().unwrap(), "e1"]);
    assert!(err.contains("pids.limit"), "{err}");

    env.ok(&["delete", "--force", "e1"]);
    assert!(env.fails(&["state", "e1"]).contains("does not exist"));
    env.assert_clean();
});

both!(
    delete_force_cleans_up_after_a_crashed_monitor,
    |env: &Env| {
        let b = env.bundle("b", &["sleep", "60"]);
        env.ok_bg(&["create", "--bundle", b.to_str().unwrap(), "x1"]);
        env.ok(&["start", "x1"]);
        let pid = env.state("x1")["pid"].as_i64().unwrap() as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // The monitor is gone: the container counts as stopped whatever the file says.
        env.wait_status("x1", "stopped");
        env.ok(&["delete", "--force", "x1"]);
        // Give the killed back end's children a moment to be reaped by init.
        let deadline = Instant::now() + sandbox_tests::patience(Duration::from_secs(5));
        while !processes_mentioning(env.root.to_str().unwrap()).is_empty()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        env.assert_clean();

        // An interrupted create (state directory without state.json) is listed and removable.
        std::fs::create_dir_all(env.root.join("half")).unwrap();
        assert!(env.fails(&["state", "half"]).contains("delete --force"));
        assert!(env.ok(&["list"]).contains("half"));
        env.ok(&["delete", "--force", "half"]);
        env.assert_clean();
    }
);

both!(events_stream_ends_with_the_container, |env: &Env| {
    let b = env.bundle("b", &["sleep", "1"]);
    env.ok_bg(&["create", "--bundle", b.to_str().unwrap(), "ev"]);
    env.ok(&["start", "ev"]);
    let out = env.ok(&["events", "--interval", "200ms", "ev"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("each event is one JSON line"))
        .collect();
    assert!(lines.len() >= 2, "{out}");
    assert!(lines
        .iter()
        .all(|l| l["type"] == "stats" && l["id"] == "ev"));
    assert_eq!(env.status("ev"), "stopped");
    assert!(env.fails(&["events", "--stats", "ev"]).contains("stopped"));
    env.ok(&["delete", "ev"]);
    env.assert_clean();
});

both!(backend_crash_is_noticed_and_reported, |env: &Env| {
    let child = env
        .cmd()
        .args(["run", "--", "sleep", "67"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the container to run, then kill its back end (agent or VMM) outright.
    let deadline = Instant::now() + sandbox_tests::patience(Duration::from_secs(10));
    let backend = loop {
        let list: serde_json::Value =
            serde_json::from_str(&env.ok(&["list", "--format", "json"])).unwrap();
        if list[0]["status"] == "running" {
            let id = list[0]["id"].as_str().unwrap().to_string();
            let rec: serde_json::Value = serde_json::from_slice(
                &std::fs::read(env.root.join(&id).join("state.json")).unwrap(),
            )
            .unwrap();
            break rec["backend"]["pid"].as_i64().unwrap() as i32;
        }
        assert!(Instant::now() < deadline, "container never ran");
        std::thread::sleep(Duration::from_millis(20));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(backend),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("lost the connection"), "{err}");
    let deadline = Instant::now() + sandbox_tests::patience(Duration::from_secs(5));
    while !processes_mentioning(env.root.to_str().unwrap()).is_empty() && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The container's own process went with its sandbox.
    assert!(
        processes_mentioning("sleep 67").is_empty(),
        "container process left behind"
    );
    env.assert_clean();
});

both!(bad_bundles_are_refused_clearly, |env: &Env| {
    let b = env.bundle("b", &["true"]);
    std::fs::write(b.join("config.json"), b"{ not json").unwrap();
    assert!(env
        .fails(&["create", "--bundle", b.to_str().unwrap(), "bb"])
        .contains("line 1"));

    env.write_config(&b, &["true"], |c| {
        c["process"]["args"] = serde_json::json!("true")
    });
    let err = env.fails(&["create", "--bundle", b.to_str().unwrap(), "bb"]);
    assert!(err.contains("process.args"), "{err}");

    env.write_config(&b, &["true"], |c| {
        c["root"]["path"] = serde_json::json!("missing")
    });
    let err = env.fails(&["create", "--bundle", b.to_str().unwrap(), "bb"]);
    assert!(err.contains("root.path"), "{err}");

    env.write_config(&b, &[], |_| {});
    let err = env.fails(&["create", "--bundle", b.to_str().unwrap(), "bb"]);
    assert!(err.contains("process.args"), "{err}");

    let err = env.fails(&[
        "create",
        "--bundle",
        env.dir.join("nowhere").to_str().unwrap(),
        "bb",
    ]);
    assert!(err.contains("bundle"), "{err}");
    assert!(env
        .fails(&["create", "--bundle", b.to_str().unwrap(), "../evil"])
        .contains("invalid container id"));
    assert!(env.fails(&["start", "nope"]).contains("does not exist"));
    assert!(env.fails(&["delete", "nope"]).contains("does not exist"));
    env.assert_clean();
});

both!(console_socket_gets_a_terminal, |env: &Env| {
    use std::os::unix::net::UnixListener;
    let b = env.bundle("b", &["sh", "-c", "tty; stty size"]);
    env.write_config(
        &b,
        &["sh", "-c", "test -t 0 && echo is-a-tty; stty size"],
        |c| c["process"]["terminal"] = serde_json::json!(true),
    );
    let sock = env.dir.join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        receive_fd(&conn)
    });
    env.ok(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        "t1",
    ]);
    let master = receiver.join().unwrap();
    let ws = libc::winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on the pty master we were handed.
    unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&master),
            libc::TIOCSWINSZ,
            &ws,
        )
    };
    std::thread::sleep(Duration::from_millis(200));
    env.ok(&["start", "t1"]);
    let mut master = std::fs::File::from(master);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 256];
        while !text.contains("33 101") {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        let _ = tx.send(text);
    });
    let text = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("console output within 10 s");
    assert!(text.contains("is-a-tty"), "{text:?}");
    assert!(text.contains("33 101"), "{text:?}");
    env.wait_status("t1", "stopped");
    env.ok(&["delete", "t1"]);
    env.assert_clean();
});

fn receive_fd(conn: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the fd was just received and is ours alone.
            return unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd received on the console socket");
}

both!(image_import_docker_and_oci_archives, |env: &Env| {
    let docker = env.dir.join("docker.tar");
    build_docker_archive(&docker);
    assert_eq!(
        env.ok(&["image", "import", docker.to_str().unwrap()])
            .trim(),
        "test/layered:1"
    );
    let rootfs = env.images.join("images/test_layered_1/rootfs");
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/kept")).unwrap(),
        "kept\n"
    );
    assert!(!rootfs.join("etc/removed").exists(), "whiteout not applied");
    assert!(
        !rootfs.join("data/old").exists(),
        "opaque directory not applied"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/new")).unwrap(),
        "new\n"
    );
    assert!(env.ok(&["image", "ls"]).contains("test/layered:1"));
    let out = env.ok(&[
        "run",
        "--image",
        "test/layered:1",
        "--",
        "cat",
        "/etc/kept",
        "/data/new",
    ]);
    assert_eq!(out, "kept\nnew\n");
    // The image's own command (Cmd) runs when none is given.
    assert_eq!(env.ok(&["run", "--image", "test/layered:1"]), "image-cmd\n");

    env.ok(&["image", "build-default"]);
    let oci = env.dir.join("oci.tar");
    build_oci_layout(&oci, &env.images.join("images/busybox/rootfs"));
    assert_eq!(
        env.ok(&[
            "image",
            "import",
            "--name",
            "ocitest",
            oci.to_str().unwrap()
        ])
        .trim(),
        "ocitest"
    );
    assert_eq!(
        env.ok(&["run", "--image", "ocitest", "--", "cat", "/hello"]),
        "oci layer\n"
    );

    env.ok(&["image", "rm", "ocitest"]);
    assert!(!env.ok(&["image", "ls"]).contains("ocitest"));
    assert!(env
        .fails(&["run", "--image", "ocitest", "--", "true"])
        .contains("no image"));
    let junk = env.dir.join("junk.tar");
    std::fs::write(&junk, b"this is not a tar file at all, not even close....").unwrap();
    assert!(env
        .fails(&["image", "import", junk.to_str().unwrap()])
        .contains("image"));
    env.assert_clean();
});

fn tar_with(entries: &[(&str, &[u8])], dirs: &[&str], base: Option<&std::path::Path>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    if let Some(base) = base {
        b.append_dir_all(".", base).unwrap();
    }
    for d in dirs {
        let mut h = header();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    for (name, data) in entries {
        let mut h = header();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A tar header with the numeric fields real archives carry (uid, gid, mtime).
fn header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// A two-layer `docker save` archive: busybox plus files, then a layer that deletes one file
/// (whiteout) and replaces a directory's contents (opaque marker).
fn build_docker_archive(path: &std::path::Path) {
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut l1 = tar::Builder::new(Vec::new());
    for d in ["bin", "etc", "data"] {
        let mut h = header();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        l1.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    let mut h = header();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    l1.append_data(&mut h, "bin/busybox", &busybox[..]).unwrap();
    for (link, _) in [("bin/sh", ()), ("bin/cat", ()), ("bin/echo", ())] {
        let mut h = header();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        l1.append_link(&mut h, link, "busybox").unwrap();
    }
    for (name, data) in [
        ("etc/kept", "kept\n"),
        ("etc/removed", "gone\n"),
        ("data/old", "old\n"),
    ] {
        let mut h = header();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        l1.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    let l1 = l1.into_inner().unwrap();
    let l2 = tar_with(
        &[
            ("etc/.wh.removed", b""),
            ("data/.wh..wh..opq", b""),
            ("data/new", b"new\n"),
        ],
        &[],
        None,
    );
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["echo", "image-cmd"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&l1)), format!("sha256:{}", sha256_hex(&l2))]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json", "RepoTags": ["test/layered:1"], "Layers": ["l1/layer.tar", "l2/layer.tar"]
    }]))
    .unwrap();
    let outer = tar_with(
        &[
            ("manifest.json", &manifest),
            ("config.json", &config),
            ("l1/layer.tar", &l1),
            ("l2/layer.tar", &l2),
        ],
        &["l1", "l2"],
        None,
    );
    std::fs::write(path, outer).unwrap();
}

/// An OCI image layout with a gzip-compressed layer on top of a busybox rootfs.
fn build_oci_layout(path: &std::path::Path, busybox_rootfs: &std::path::Path) {
    let base = tar_with(&[], &[], Some(busybox_rootfs));
    let top_plain = tar_with(&[("hello", b"oci layer\n")], &[], None);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&top_plain).unwrap();
    let top = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&base)), format!("sha256:{}", sha256_hex(&top_plain))]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha256_hex(&config)), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha256_hex(&base)), "size": base.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", sha256_hex(&top)), "size": top.len()}
        ]
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", sha256_hex(&manifest)), "size": manifest.len()}]
    }))
    .unwrap();
    let blobs: Vec<(String, &[u8])> = [&config[..], &manifest[..], &base[..], &top[..]]
        .iter()
        .map(|d| (format!("blobs/sha256/{}", sha256_hex(d)), *d))
        .collect();
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", &index),
    ];
    for (n, d) in &blobs {
        entries.push((n.as_str(), d));
    }
    std::fs::write(path, tar_with(&entries, &["blobs", "blobs/sha256"], None)).unwrap();
}

#[test]
fn spec_writes_a_loadable_config_once() {
    let env = Env::new("spec", "native");
    let b = env.dir.join("specb");
    std::fs::create_dir_all(&b).unwrap();
    env.ok(&["spec", "--bundle", b.to_str().unwrap()]);
    let text = std::fs::read(b.join("config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(v["process"]["args"][0], "sh");
    assert!(env
        .fails(&["spec", "--bundle", b.to_str().unwrap()])
        .contains("already exists"));
}

/// Where the host's KVM cannot run the guest, vm isolation refuses before anything boots and
/// suggests only what can work there; it never falls back to native isolation.
#[test]
fn vm_isolation_refuses_where_the_kvm_cannot_run_it() {
    let env = Env::new("slowkvm", "vm");
    let kind = kvm_kind();
    if kind == "kvm_intel" || kind == "kvm_amd" {
        skip("vm_isolation_refuses_where_the_kvm_cannot_run_it: KVM is hardware-assisted here");
        return;
    }
    let refused = |allow_slow: Option<&str>| {
        let mut cmd = env.cmd();
        cmd.env_remove("SANDBOX_ALLOW_SLOW_KVM");
        if let Some(v) = allow_slow {
            cmd.env("SANDBOX_ALLOW_SLOW_KVM", v);
        }
        let out = cmd
            .args(["run", "--", "echo", "hello"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            out.stdout.is_empty(),
            "ran anyway: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(None);
    match kind.as_str() {
        "kvm_pvm" => {
            for want in ["kvm-pvm", "user-mode syscall faults", "--isolation native"] {
                assert!(err.contains(want), "{want:?} missing from: {err}");
            }
            assert!(
                !err.contains("--allow-slow-kvm"),
                "suggests what cannot work: {err}"
            );
            // Allowing slow KVM cannot make PVM run an ordinary guest: still refused, unbooted.
            let err = refused(Some("1"));
            assert!(err.contains("kvm-pvm"), "{err}");
        }
        "none" => {
            assert!(err.contains("KVM is not usable"), "{err}");
            assert!(err.contains("--isolation native"), "{err}");
            assert!(!err.contains("--allow-slow-kvm"), "{err}");
        }
        "unknown" => {
            for want in [
                "cannot be identified",
                "--allow-slow-kvm",
                "SANDBOX_ALLOW_SLOW_KVM",
            ] {
                assert!(err.contains(want), "{want:?} missing from: {err}");
            }
        }
        other => panic!("sandbox check --json reports an unexpected kvm.kind {other:?}"),
    }
    env.assert_clean();
}

#[test]
fn features_document_is_json() {
    let out = sandbox().arg("features").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ociVersionMin"], "1.0.0");
    assert!(v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("pid")));
    // Every hook point of the runtime spec runs (native isolation; hooks_run_at_their_points
    // sees each one).
    assert_eq!(
        v["hooks"],
        serde_json::json!([
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ])
    );
}

#[test]
fn check_reports_the_host() {
    let out = sandbox().args(["check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for what in [
        "KVM usable",
        "hardware speed",
        "TUN",
        "cgroup v2",
        "mkfs.ext4",
        "vm isolation ready",
    ] {
        assert!(text.contains(what), "check output lacks {what}: {text}");
    }
}

both!(exec_leaves_the_container_running, |env: &Env| {
    env.ok_bg(&["run", "-d", "c1", "--", "sleep", "1000"]);
    env.wait_status("c1", "running");
    assert_eq!(env.ok(&["exec", "c1", "echo", "ok"]), "ok\n");
    assert_eq!(
        env.status("c1"),
        "running",
        "the exec's end stopped the container"
    );
    let table = env.ok(&["ps", "c1"]);
    assert!(
        table.contains("sleep 1000"),
        "ps does not list the container's init: {table}"
    );
    assert_eq!(env.ok(&["exec", "c1", "echo", "again"]), "again\n");
    assert_eq!(env.status("c1"), "running");
    env.ok(&["kill", "c1", "KILL"]);
    env.wait_status("c1", "stopped");
    env.ok(&["delete", "c1"]);
    env.assert_clean();
});

both!(run_with_a_terminal, |env: &Env| {
    // script(1) gives `sandbox run -t` a terminal on its stdio, as a user's shell would.
    let mut cmd = std::process::Command::new("script");
    for (k, v) in env.cmd().get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let line = format!(
        "{} run -t -- sh -c 'tty; echo cols=$(stty size)'",
        bin("sandbox").display()
    );
    let out = cmd
        .args(["-qefc", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("/dev/pts/"),
        "the process got no terminal: {text:?}"
    );
    assert!(text.contains("cols="), "{text:?}");
    assert!(!text.contains("not a tty"), "{text:?}");
    env.assert_clean();
});

both!(memory_limit_kills_what_exceeds_it, |env: &Env| {
    // The shell holds 128 MiB in a variable: twice the limit.
    let out = env.sandbox(&[
        "run",
        "--memory",
        "64m",
        "--",
        "sh",
        "-c",
        "echo start; x=$(head -c 134217728 /dev/zero | tr '\\0' x); echo survived ${#x}",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("start\n"), "{stdout:?}");
    assert!(
        !stdout.contains("survived"),
        "the limit did not hold: {stdout:?}"
    );
    assert_eq!(
        out.status.code(),
        Some(137),
        "not OOM-killed: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    env.assert_clean();
});

vm_only!(cpus_two_gives_the_guest_two_online_cpus, |env: &Env| {
    let out = env.ok(&[
        "run",
        "--cpus",
        "2",
        "--",
        "sh",
        "-c",
        "cat /sys/devices/system/cpu/online; grep -c ^processor /proc/cpuinfo; nproc",
    ]);
    assert_eq!(out, "0-1\n2\n2\n");
    let one = env.ok(&["run", "--", "nproc"]);
    assert_eq!(one, "1\n", "the default guest has one vCPU");
    env.assert_clean();
});

both!(
    network_namespace_serves_and_reaches_the_host_side,
    |env: &Env| {
        let net = TestNet::new("web");
        let ns = net.container_ns_path();
        env.ok_bg(&[
            "run",
            "-d",
            "--network",
            ns.to_str().unwrap(),
            "web",
            "--",
            "sh",
            "-c",
            "mkdir -p /www && echo from-guest > /www/index.html && exec httpd -f -p 8080 -h /www",
        ]);
        env.wait_status("web", "running");
        // The server in the container answers the host side.
        let deadline = Instant::now() + patience(Duration::from_secs(20));
        let page = loop {
            match net.get_from_host_side(net.container_addr, 8080) {
                Ok(body) => break body,
                Err(e) => assert!(Instant::now() < deadline, "the container's server: {e}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(page, "from-guest\n");
        // The container reaches a server on the host side.
        let server = net.serve_once(8081, "from-host\n");
        let fetched = env.ok(&[
            "exec",
            "web",
            // busybox 1.35's `wget -T` crashes; timeout(1) bounds it instead.
            "timeout",
            "30",
            "wget",
            "-q",
            "-O-",
            &format!("http://{}:8081/", net.host_addr),
        ]);
        assert_eq!(fetched, "from-host\n");
        server.join().unwrap();
        assert_eq!(env.status("web"), "running");
        env.ok(&["delete", "--force", "web"]);
        net.assert_only_the_veth_left();
        env.assert_clean();
    }
);

vm_only!(vmm_killed_while_booting_leaves_nothing, |env: &Env| {
    // With a network, so that the TAP the launch put beside the veth must go too.
    let net = TestNet::new("boot");
    let ns = net.container_ns_path();
    let run = env
        .cmd()
        .args([
            "run",
            "--network",
            ns.to_str().unwrap(),
            "--",
            "sleep",
            "60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let root = env.root.to_str().unwrap().to_string();
    let deadline = Instant::now() + patience(Duration::from_secs(30));
    let vmm = loop {
        let found: Vec<i32> = processes_mentioning(&root)
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .map(|c| c.trim() == "sandbox-vmm")
                    .unwrap_or(false)
            })
            .collect();
        if let Some(p) = found.first() {
            break *p;
        }
        assert!(Instant::now() < deadline, "no sandbox-vmm appeared");
        std::thread::sleep(Duration::from_millis(5));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(!out.status.success(), "run succeeded without its VM");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sandbox-vmm"),
        "the error does not name the VMM: {err}"
    );
    for id in env.ok(&["list", "-q"]).lines() {
        env.ok(&["delete", "--force", id]);
    }
    net.assert_only_the_veth_left();
    env.assert_clean();
});

// OCI runtime-spec conformance in native isolation: the pid the runtime reports, namespaces
// the spec leaves out, and the lifecycle hooks.

/// `readlink /proc/PID/ns/NAME`: which namespace of a kind the process is in.
fn namespace_of(pid: &str, name: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}"))
        .unwrap_or_else(|e| panic!("readlink /proc/{pid}/ns/{name}: {e}"))
        .display()
        .to_string()
}

/// The namespaces under /proc/PID/ns that every kernel we run on has.
const NAMESPACES: [&str; 7] = ["mnt", "pid", "net", "ipc", "uts", "cgroup", "user"];

fn read_pid_file(path: &std::path::Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits (bounded) until `pid` runs `program` (its argv[0]).
fn wait_for_program(pid: i32, program: &str) {
    let deadline = Instant::now() + patience(Duration::from_secs(10));
    loop {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|&b| b == 0).next() == Some(program.as_bytes()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pid} never ran {program}: {cmdline:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn state_pid_is_the_container_init_in_its_namespaces_and_cgroup() {
    let env = Env::new("state_pid_is_the_container_init", "native");
    let b = env.bundle("b", &["sleep", "60"]);
    let pid_file = env.dir.join("pid");
    env.ok_bg(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "p1",
    ]);
    let pid = read_pid_file(&pid_file);
    assert_eq!(env.state("p1")["pid"], pid);
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list[0]["pid"], pid);

    // Every namespace the default spec lists is a new one: what /proc/PID/ns shows differs
    // from ours (the monitor, reported before, showed ours).
    let p = pid.to_string();
    for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup"] {
        assert_ne!(namespace_of(&p, ns), namespace_of("self", ns), "{ns}");
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_ne!(
        cgroup,
        std::fs::read_to_string("/proc/self/cgroup").unwrap()
    );
    assert!(
        cgroup.lines().any(|l| l.ends_with("/sandbox/p1")),
        "not in the container's cgroup: {cgroup}"
    );
    let pids: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", "p1"])).unwrap();
    assert_eq!(pids, vec![pid]);

    // The same process becomes the container's program.
    env.ok(&["start", "p1"]);
    wait_for_program(pid, "sleep");
    assert_eq!(env.state("p1")["pid"], pid);

    env.ok(&["kill", "p1", "KILL"]);
    env.wait_status("p1", "stopped");
    assert_eq!(env.state("p1")["pid"], 0);
    env.ok(&["delete", "p1"]);
    env.assert_clean();
}

/// Where `subreaper_caller` finds its instructions.
const SUBREAPER_CALLER_ENV: &str = "SANDBOX_TEST_SUBREAPER_CALLER";

/// A caller that waits for the pid it was given, as containerd's runc shim does: a child
/// subreaper that reaps whatever comes to it and matches pids. It runs in a process of its
/// own (this test executable, running `subreaper_caller`), since a subreaper test thread
/// would adopt the orphans of every other test.
#[test]
fn a_subreaper_caller_reaps_the_reported_pid_and_gets_the_exit_status() {
    let env = Env::new("a_subreaper_caller_reaps_the_reported_pid", "native");
    let b = env.bundle("b", &["sh", "-c", "sleep 0.2; exit 7"]);
    let task = serde_json::json!({
        "root": env.root, "images": env.images, "bundle": b, "id": "r1",
        "pid_file": env.dir.join("pid"),
    });
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "subreaper_caller",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SUBREAPER_CALLER_ENV, task.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = read_pid_file(&env.dir.join("pid"));
    assert!(
        stdout.contains(&format!("reaped {pid}: exit code 7")),
        "{stdout}"
    );
    env.wait_status("r1", "stopped");
    env.ok(&["delete", "r1"]);
    env.assert_clean();
}

#[test]
#[ignore = "the caller half of a_subreaper_caller_reaps_the_reported_pid_and_gets_the_exit_status, run by it"]
fn subreaper_caller() {
    let task: serde_json::Value = serde_json::from_str(
        &std::env::var(SUBREAPER_CALLER_ENV).expect("run by the test that sets it"),
    )
    .unwrap();
    let s = |k: &str| task[k].as_str().unwrap().to_string();
    // SAFETY: prctl with integer arguments only.
    let became_subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(became_subreaper, 0);
    let sandbox_cmd = |args: &[&str]| {
        let st = sandbox()
            .env("SANDBOX_ROOT", s("root"))
            .env("SANDBOX_IMAGE_STORE", s("images"))
            .env("SANDBOX_ISOLATION", "native")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "sandbox {args:?}: {st}");
    };
    let (bundle, id, pid_file) = (s("bundle"), s("id"), s("pid_file"));
    sandbox_cmd(&["create", "--bundle", &bundle, "--pid-file", &pid_file, &id]);
    let pid = read_pid_file(std::path::Path::new(&pid_file));
    sandbox_cmd(&["start", &id]);
    // Our child now: waitpid on it works (ECHILD otherwise), bounded by polling.
    let deadline = Instant::now() + patience(Duration::from_secs(10));
    loop {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                println!("reaped {pid}: exit code {code}");
                return;
            }
            Ok(WaitStatus::StillAlive) => {}
            other => panic!("waitpid({pid}): {other:?}"),
        }
        assert!(Instant::now() < deadline, "{pid} never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes `linux.namespaces` entries of the given types (all of them with `None`).
fn drop_namespaces(c: &mut serde_json::Value, types: Option<&[&str]>) {
    let kept: Vec<serde_json::Value> = c["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| types.is_some_and(|t| !t.contains(&n["type"].as_str().unwrap())))
        .cloned()
        .collect();
    c["linux"]["namespaces"] = serde_json::json!(kept);
}

#[test]
fn namespaces_left_out_of_the_spec_are_the_runtimes() {
    let env = Env::new("namespaces_left_out_of_the_spec", "native");
    let b = env.bundle("b", &["sleep", "60"]);
    // A spec with no namespaces at all: the container is in every namespace of ours.
    env.write_config(&b, &["sleep", "60"], |c| {
        drop_namespaces(c, None);
        c.as_object_mut().unwrap().remove("hostname");
    });
    std::fs::write(b.join("rootfs/only-in-the-container"), b"").unwrap();
    let pid_file = env.dir.join("pid");
    env.ok_bg(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "s1",
    ]);
    let pid = read_pid_file(&pid_file);
    assert_eq!(env.state("s1")["pid"], pid);
    for ns in NAMESPACES {
        assert_eq!(
            namespace_of(&pid.to_string(), ns),
            namespace_of("self", ns),
            "{ns} is not shared"
        );
    }
    env.ok(&["start", "s1"]);
    wait_for_program(pid, "sleep");
    // Its mounts are made in our mount namespace, under its rootfs...
    let rootfs_proc = format!(" {}/rootfs/proc ", b.canonicalize().unwrap().display());
    assert!(std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&rootfs_proc));
    // ...and its root is the rootfs (a chroot), for exec'd processes too.
    let listing = env.ok(&["exec", "s1", "ls", "/"]);
    assert!(listing.contains("only-in-the-container"), "{listing}");
    // Its mounts in our namespace (the cgroup hierarchies among them, read-only) do not
    // get in the way of another container's set-up.
    let other = env.bundle("other", &["sleep", "60"]);
    env.ok_bg(&["create", "--bundle", other.to_str().unwrap(), "s1b"]);
    env.ok(&["start", "s1b"]);
    assert_eq!(env.status("s1b"), "running");
    env.ok(&["delete", "--force", "s1b"]);
    env.ok(&["kill", "s1", "KILL"]);
    env.wait_status("s1", "stopped");
    env.ok(&["delete", "s1"]);
    // Every mount it made went with it (assert_clean looks at our mount table).
    env.assert_clean();

    // Only the mount namespace left out: shared, while the pid namespace is new.
    env.write_config(
        &b,
        &[
            "sh",
            "-c",
            "echo $$; readlink /proc/self/ns/mnt; readlink /proc/self/ns/pid",
        ],
        |c| drop_namespaces(c, Some(&["mount"])),
    );
    let out = env.sandbox(&["run", "--bundle", b.to_str().unwrap(), "s2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "1", "not PID 1 of a new pid namespace: {text}");
    assert_eq!(lines[1], namespace_of("self", "mnt"));
    assert_ne!(lines[2], namespace_of("self", "pid"));
    env.assert_clean();

    // What the spec cannot have is still refused, and refused before anything is made.
    type SpecEdit = Box<dyn Fn(&mut serde_json::Value)>;
    let refused: [(&str, SpecEdit); 3] = [
        (
            "hostname: needs a UTS namespace",
            Box::new(|c| drop_namespaces(c, Some(&["uts"]))),
        ),
        (
            "linux.rootfsPropagation: needs a mount namespace",
            Box::new(|c| {
                drop_namespaces(c, Some(&["mount"]));
                c["linux"]["rootfsPropagation"] = serde_json::json!("private");
            }),
        ),
        (
            "pid namespace listed twice",
            Box::new(|c| {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"type": "pid"}));
            }),
        ),
    ];
    for (why, edit) in refused {
        env.write_config(&b, &["true"], |c| edit(c));
        let err = env.fails(&["create", "--bundle", b.to_str().unwrap(), "s3"]);
        assert!(err.contains(why), "wanted {why:?}: {err}");
        assert!(env.fails(&["state", "s3"]).contains("does not exist"));
        env.assert_clean();
    }
}

/// A hook that records its stdin as `<dir>/<name>.json` and appends its name to
/// `<dir>/order`, then exits with `code`.
fn recording_hook(dir: &str, name: &str, code: i32) -> serde_json::Value {
    serde_json::json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", format!("cat > {dir}/{name}.json; echo {name} >> {dir}/order; exit {code}")],
    })
}

/// A bundle whose hooks record themselves in `out` (seen as `/hooks-out` inside the
/// container, where the startContainer hook runs); `fail` names a stage whose hook fails,
/// before a second hook of the same stage that records `<stage>-after`.
fn hooked_bundle(env: &Env, args: &[&str], fail: Option<&str>) -> (std::path::PathBuf, String) {
    let b = env.bundle("hooked", args);
    let out = env.dir.join("hooks-out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let out = out.display().to_string();
    env.write_config(&b, args, |c| {
        let mut hooks = serde_json::Map::new();
        for stage in [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop",
        ] {
            let dir = if stage == "startContainer" {
                "/hooks-out"
            } else {
                &out
            };
            let list = if fail == Some(stage) {
                vec![
                    recording_hook(dir, stage, 3),
                    recording_hook(dir, &format!("{stage}-after"), 0),
                ]
            } else {
                vec![recording_hook(dir, stage, 0)]
            };
            hooks.insert(stage.into(), serde_json::json!(list));
        }
        c["hooks"] = serde_json::Value::Object(hooks);
        c["annotations"] = serde_json::json!({"org.example.hooks": "yes"});
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/hooks-out", "type": "bind", "source": out,
            "options": ["rbind", "rw"]
        }));
    });
    (b, out)
}

fn hooks_seen(out: &str) -> Vec<String> {
    std::fs::read_to_string(format!("{out}/order"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn hook_state(out: &str, name: &str) -> serde_json::Value {
    let text = std::fs::read(format!("{out}/{name}.json"))
        .unwrap_or_else(|e| panic!("the {name} hook left no state: {e}"));
    serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("{name} hook's stdin is not the state: {e}"))
}

#[test]
fn hooks_run_at_their_points_with_the_state_on_stdin() {
    let env = Env::new("hooks_run_at_their_points", "native");
    let (b, out) = hooked_bundle(&env, &["sleep", "60"], None);
    let bundle = b.canonicalize().unwrap().display().to_string();
    env.ok_bg(&["create", "--bundle", b.to_str().unwrap(), "h1"]);
    let pid = env.state("h1")["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_eq!(
        hooks_seen(&out),
        ["prestart", "createRuntime", "createContainer"]
    );
    let check = |name: &str, status: &str| {
        let st = hook_state(&out, name);
        assert_eq!(st["id"], "h1", "{name}: {st}");
        assert_eq!(st["status"], status, "{name}: {st}");
        assert_eq!(st["bundle"], bundle.as_str(), "{name}: {st}");
        assert_eq!(
            st["annotations"]["org.example.hooks"], "yes",
            "{name}: {st}"
        );
        st
    };
    for name in ["prestart", "createRuntime", "createContainer"] {
        assert_eq!(check(name, "created")["pid"], pid, "{name}");
    }

    env.ok(&["start", "h1"]);
    assert_eq!(
        hooks_seen(&out),
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart"
        ]
    );
    assert_eq!(check("startContainer", "created")["pid"], pid);
    assert_eq!(check("poststart", "running")["pid"], pid);

    // The container's end is not its deletion: poststop waits for `delete`.
    env.ok(&["kill", "h1", "KILL"]);
    env.wait_status("h1", "stopped");
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        assert!(!hooks_seen(&out).contains(&"poststop".to_string()));
        std::thread::sleep(Duration::from_millis(50));
    }
    env.ok(&["delete", "h1"]);
    assert_eq!(
        hooks_seen(&out).last().map(String::as_str),
        Some("poststop")
    );
    check("poststop", "stopped");
    env.assert_clean();
}

/// The container's cgroup directories under the default parent `/sandbox`: the one of
/// cgroup v2, or one per v1 hierarchy.
fn cgroups_of(id: &str) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut bases = vec![root.to_path_buf()];
    bases.extend(std::fs::read_dir(root).unwrap().flatten().map(|e| e.path()));
    bases
        .into_iter()
        .map(|b| b.join("sandbox").join(id))
        .filter(|d| d.is_dir())
        .collect()
}

#[test]
fn a_failing_hook_fails_its_step_and_leaves_nothing_behind() {
    let env = Env::new("a_failing_hook_fails_its_step", "native");

    // create: the error names the hook, nothing of the container stays, and the lifecycle
    // goes on to the poststop hooks.
    for stage in ["prestart", "createRuntime", "createContainer"] {
        let (b, out) = hooked_bundle(&env, &["true"], Some(stage));
        let err = env.fails(&["create", "--bundle", b.to_str().unwrap(), "f1"]);
        assert!(err.contains(&format!("hooks.{stage}[0]")), "{stage}: {err}");
        assert!(env.fails(&["state", "f1"]).contains("does not exist"));
        let seen = hooks_seen(&out);
        assert!(
            !seen.contains(&format!("{stage}-after")),
            "{stage}: {seen:?}"
        );
        assert_eq!(seen.last().map(String::as_str), Some("poststop"), "{stage}");
        assert_eq!(
            cgroups_of("f1"),
            Vec::<std::path::PathBuf>::new(),
            "{stage}"
        );
        env.assert_clean();
    }

    // start: the error names the hook, and the container is stopped; delete removes it.
    for stage in ["startContainer", "poststart"] {
        let (b, out) = hooked_bundle(&env, &["sleep", "60"], Some(stage));
        env.ok_bg(&["create", "--bundle", b.to_str().unwrap(), "f2"]);
        assert!(
            !cgroups_of("f2").is_empty(),
            "{stage}: no cgroup to look for"
        );
        let err = env.fails(&["start", "f2"]);
        assert!(err.contains(&format!("hooks.{stage}[0]")), "{stage}: {err}");
        env.wait_status("f2", "stopped");
        env.ok(&["delete", "f2"]);
        let seen = hooks_seen(&out);
        assert!(
            !seen.contains(&format!("{stage}-after")),
            "{stage}: {seen:?}"
        );
        assert_eq!(seen.last().map(String::as_str), Some("poststop"), "{stage}");
        assert_eq!(
            cgroups_of("f2"),
            Vec::<std::path::PathBuf>::new(),
            "{stage}"
        );
        env.assert_clean();
    }

    // poststop: a warning; the next hook runs and the delete succeeds.
    let (b, out) = hooked_bundle(&env, &["true"], Some("poststop"));
    env.ok_bg(&["create", "--bundle", b.to_str().unwrap(), "f3"]);
    env.ok(&["start", "f3"]);
    env.wait_status("f3", "stopped");
    let deleted = env.sandbox(&["delete", "f3"]);
    let err = String::from_utf8_lossy(&deleted.stderr);
    assert!(deleted.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("hooks.poststop[0]"),
        "{err}"
    );
    assert_eq!(
        hooks_seen(&out)[5..],
        ["poststop".to_string(), "poststop-after".to_string()]
    );
    env.assert_clean();
}

#[test]
fn capabilities_that_cannot_be_granted_are_warned_about_in_the_agents_log() {
    let env = Env::new("capabilities_that_cannot_be_granted", "native");
    let b = env.bundle("b", &["sleep", "60"]);
    env.write_config(&b, &["sleep", "60"], |c| {
        c["process"]["capabilities"] = serde_json::json!({
            "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
            "inheritable": [], "ambient": ["CAP_KILL"]
        });
    });
    env.ok_bg(&["create", "--bundle", b.to_str().unwrap(), "w1"]);
    env.ok(&["start", "w1"]);
    let log = std::fs::read_to_string(env.root.join("w1/agent.log")).unwrap();
    assert!(
        log.contains(
            "process.capabilities.ambient: CAP_KILL is not both permitted and inheritable"
        ),
        "{log}"
    );
    env.ok(&["delete", "--force", "w1"]);
    env.assert_clean();
}

#[test]
fn delete_force_unmounts_what_a_killed_agent_left_of_a_container_sharing_the_mount_namespace() {
    let env = Env::new("delete_force_unmounts_a_shared_rootfs", "native");
    let b = env.bundle("b", &["sleep", "60"]);
    env.write_config(&b, &["sleep", "60"], |c| {
        drop_namespaces(c, Some(&["mount"]))
    });
    env.ok_bg(&["create", "--bundle", b.to_str().unwrap(), "k1"]);
    env.ok(&["start", "k1"]);
    let rootfs = format!(" {}/rootfs", b.canonicalize().unwrap().display());
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&rootfs))
            .count()
    };
    assert!(
        mounted() > 1,
        "the container's mounts are not in our namespace"
    );
    // The monitor killed outright takes the agent with it (parent-death signal): nobody
    // unmounts at destroy.
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.root.join("k1/state.json")).unwrap()).unwrap();
    let monitor = rec["monitor"]["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    env.wait_status("k1", "stopped");
    env.ok(&["delete", "--force", "k1"]);
    assert_eq!(mounted(), 0);
    let deadline = Instant::now() + patience(Duration::from_secs(5));
    while !processes_mentioning(env.root.to_str().unwrap()).is_empty() && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    env.assert_clean();
}

vm_only!(host_hooks_run_on_the_host_at_their_points, |env: &Env| {
    let args = ["sleep", "60"];
    let b = env.bundle("vm-hooked", &args);
    let out_dir = env.dir.join("vm-hooks-out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.display().to_string();
    env.write_config(&b, &args, |c| {
        c["hooks"] = serde_json::json!({
            "prestart": [recording_hook(&out, "prestart", 0)],
            "createRuntime": [recording_hook(&out, "createRuntime", 0)],
            "poststart": [recording_hook(&out, "poststart", 0)],
            "poststop": [recording_hook(&out, "poststop", 0)],
        });
    });
    env.ok_bg(&["create", "--bundle", b.to_str().unwrap(), "vh1"]);
    let pid = env.state("vh1")["pid"].as_i64().unwrap();
    // In a VM the pid `state` reports is the container's monitor, the host process that
    // exits as the container does (docs/sandbox-cli.md, "Which pid").
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("__monitor"), "pid {pid}: {cmdline:?}");
    assert_eq!(hooks_seen(&out), ["prestart", "createRuntime"]);
    for name in ["prestart", "createRuntime"] {
        let st = hook_state(&out, name);
        assert_eq!(st["id"], "vh1", "{name}: {st}");
        assert_eq!(st["status"], "created", "{name}: {st}");
        assert_eq!(st["pid"], pid, "{name}: {st}");
    }
    env.ok(&["start", "vh1"]);
    assert_eq!(hooks_seen(&out), ["prestart", "createRuntime", "poststart"]);
    assert_eq!(hook_state(&out, "poststart")["status"], "running");
    env.ok(&["kill", "vh1", "KILL"]);
    env.wait_status("vh1", "stopped");
    assert_eq!(hooks_seen(&out).len(), 3, "poststop ran before delete");
    env.ok(&["delete", "vh1"]);
    assert_eq!(
        hooks_seen(&out).last().map(String::as_str),
        Some("poststop")
    );
    assert_eq!(hook_state(&out, "poststop")["status"], "stopped");

    // A hook that must run inside the container's namespaces cannot, in a guest: refused
    // before anything boots, naming the stage.
    env.write_config(&b, &args, |c| {
        c["hooks"] = serde_json::json!({
            "startContainer": [recording_hook("/", "startContainer", 0)],
        });
    });
    let o = env.sandbox(&["create", "--bundle", b.to_str().unwrap(), "vh2"]);
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hooks.startContainer"), "{err}");
    env.assert_clean();
});
