//! The monitor: one host process per container (and per detached exec) that lives as long as
//! the process. It owns the back end (agent or VMM), pumps stdio between the caller's file
//! descriptors and the agent, records the exit in the state directory, tears the back end
//! down, and finally exits the way the process did where it knows how (vm isolation, execs).
//!
//! In native isolation the container's init is not the monitor's descendant for long: the
//! agent leaves it to whoever adopts orphans above the monitor, so the caller of `create`
//! (containerd's runc shim, a subreaper) reaps the pid it was given and gets the status, as
//! with runc. The agent tells the monitor of the init's end through the init's pidfd, without
//! a status; the monitor then exits 0.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use agent::protocol::{
    Client, CreateContainer, Endpoint, ErrorCode, ExecRequest, ExitStatus, ProcessRef,
};
use clap::{Args, ValueEnum};

use crate::bundle::Bundle;
use crate::config::RuntimeConfig;
use crate::error::{Error, Result};
use crate::sandbox::backend::native::{self, InitReaper};
use crate::sandbox::backend::{vm, Sandbox, Started};
use crate::sandbox::console::{self, HostPty};
use crate::sandbox::host_hooks::HostHooks;
use crate::sandbox::launch::READY_FD;
use crate::sandbox::link::agent_err;
use crate::sandbox::shared_dirs;
use crate::sandbox::stdio::{self, HostStdio, Plumbing};
use crate::sandbox::timings::Timeline;
use crate::state::{HostProcess, Isolation, StateStore, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MonitorMode {
    Create,
    Exec,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    #[arg(value_enum)]
    pub mode: MonitorMode,
    pub id: String,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    #[arg(long = "exec-id")]
    pub exec_id: Option<String>,
    /// The OCI process (JSON) to exec.
    #[arg(long)]
    pub process: Option<PathBuf>,
}

pub fn run(g: &RuntimeConfig, a: MonitorArgs) -> Result<i32> {
    // SAFETY: the launcher put the write end of the ready pipe on this fd for us alone.
    let ready = unsafe { File::from_raw_fd(READY_FD) };
    // The back end must not inherit it, or the launcher would never see the pipe close.
    let _ = nix::fcntl::fcntl(
        &ready,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    match a.mode {
        MonitorMode::Create => monitor_container(g, &a, ready),
        MonitorMode::Exec => monitor_exec(g, &a, ready),
    }
}

fn report(mut ready: File, outcome: &Result<()>) {
    let _ = match outcome {
        Ok(()) => ready.write_all(b"ok\n"),
        Err(e) => ready.write_all(format!("{e}\n").as_bytes()),
    };
}

fn monitor_container(g: &RuntimeConfig, a: &MonitorArgs, ready: File) -> Result<i32> {
    let store = StateStore::new(&g.root);
    let id = a.id.clone();
    // SIGWINCH is taken by a dedicated thread; block it before any thread exists.
    block_sigwinch();
    let mut backend: Option<Sandbox> = None;
    let mut engine_started = false;
    let set_up = set_up_container(g, &store, a, &mut backend, &mut engine_started);
    let (client, plumbing, pty) = match set_up {
        Ok(v) => {
            report(ready, &Ok(()));
            v
        }
        Err(e) => {
            log::error!("create {id}: {e}");
            report(ready, &Err(e));
            if let Some(b) = backend {
                b.shut_down(None);
            }
            // The engine got as far as creating (a hook or a later step failed) and has
            // destroyed what it made: the lifecycle goes on with the poststop hooks.
            if engine_started {
                if let Ok(rec) = store.load(&id) {
                    crate::sandbox::launch::run_poststop(&rec);
                }
            }
            return Ok(1);
        }
    };
    let mut client = client;
    let backend = backend.expect("set-up succeeded with a back end");
    if let Some(pty) = pty {
        spawn_resize_forwarder(client.endpoint().clone(), ProcessRef::init(&id), pty);
    }

    let waited = client.wait(ProcessRef::init(&id));
    let timeline = Timeline::in_dir(&store.dir(&id));
    timeline.record("container exited");
    plumbing.finish(Duration::from_secs(2));
    let connection_alive = waited.is_ok();
    let status = match waited {
        Ok(s) => s,
        Err(e) => {
            // The agent or VMM went away under the container: say so, and report it as a
            // failure rather than pretending the container exited.
            let why = backend.describe_loss(&e);
            log::error!("container {id}: {why}");
            if let Err(e) = store.record_loss(&id, &why) {
                log::warn!("container {id}: {e}");
            }
            ExitStatus::exited(255)
        }
    };
    // An init that the caller reaped ended without a status we could know.
    let known = (!status.is_unknown()).then_some(status);
    record_exit(&store, &id, known);
    // The connection that waited is idle now: it carries the clean-up too.
    backend.shut_down(connection_alive.then_some(client));
    timeline.record("sandbox down");
    Ok(known.map(exit_like).unwrap_or(0))
}

type Running = (Client, Plumbing, Option<HostPty>);

fn set_up_container(
    g: &RuntimeConfig,
    store: &StateStore,
    a: &MonitorArgs,
    backend: &mut Option<Sandbox>,
    engine_started: &mut bool,
) -> Result<Running> {
    let id = &a.id;
    let dir = store.dir(id);
    let timeline = Timeline::in_dir(&dir);
    timeline.record("monitor started");
    let mut rec = store.load(id)?;
    let bundle = Bundle::load(&rec.bundle)?;
    let mut host_hooks = None;
    let mut shares = Vec::new();
    let (rootfs, copied_files, started) = match rec.isolation {
        Isolation::Native => {
            let (native, child) = native::start(&dir, InitReaper::Caller)?;
            let started = Started::new(native, child);
            (native::rootfs_source(&bundle.dir), Vec::new(), started)
        }
        Isolation::Vm => {
            shares = shared_dirs::shared_dirs(&bundle.spec, &bundle.dir)?;
            let copied = vm::copied_files(&bundle.spec, &shares)?;
            host_hooks = Some(HostHooks::of(&bundle.spec)?);
            let (vm, child) = vm::launch(
                g,
                &dir,
                &bundle,
                vm::GuestRootfs::Bundle,
                &shares,
                &mut rec.cleanup,
            )?;
            let rootfs = vm.guest_rootfs().expect("a bundle's VM has its rootfs");
            (rootfs, copied, Started::new(vm, child))
        }
    };
    // Recorded before the wait for the agent, so that a monitor killed meanwhile leaves
    // `delete` a process to end.
    rec.backend = HostProcess::of(started.pid());
    if let Err(e) = store.save(&rec) {
        started.abandon();
        return Err(e);
    }
    let (sandbox, mut client) = started.connect(&timeline)?;
    *backend = Some(sandbox);

    if let Some(hooks) = &host_hooks {
        // The runtime environment (the VM) exists: the host's create hooks see the process
        // that stands for the container, this monitor.
        let mut state = rec.oci_state();
        state["pid"] = std::process::id().into();
        if let Err(e) = hooks.run_create(&state) {
            *engine_started = true;
            return Err(e);
        }
    }

    let tty = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let (io, pty) = host_stdio(tty, a.console_socket.as_ref())?;
    let spec = match rec.isolation {
        Isolation::Native => serde_json::to_value(native::agent_spec(&bundle.spec)),
        Isolation::Vm => serde_json::to_value(vm::guest_spec(&bundle.spec, &shares)),
    }
    .map_err(|e| Error::Other(e.to_string()))?;
    let pid = client
        .create_container(CreateContainer {
            container_id: id.clone(),
            spec,
            rootfs,
            stdio: io.request(tty),
            copied_files,
        })
        .map_err(|e| {
            // A refused spec created nothing; an engine failure came after the creation
            // began (a hook, a mount).
            *engine_started = e.remote().is_some_and(|r| r.code == ErrorCode::Engine);
            agent_err("create container")(e)
        })?;
    timeline.record("container created");
    let plumbing = stdio::attach(&client, &ProcessRef::init(id), tty, io)?;
    if let Some(pty) = &pty {
        if let Some((rows, cols)) = console::window_size(&pty.slave) {
            let _ = client.resize_tty(ProcessRef::init(id), rows, cols);
        }
    }

    let _lock = store.lock(id)?;
    let mut rec = store.load(id)?;
    rec.status = Status::Created;
    rec.monitor = HostProcess::of(std::process::id() as i32);
    rec.container_pid = Some(pid);
    if rec.isolation == Isolation::Native {
        rec.container_process = HostProcess::of(pid);
    }
    store.save(&rec)?;
    Ok((client, plumbing, pty))
}

/// The host fds the process's stdio is joined to: the monitor's own stdio (inherited from
/// the caller of `create`), or a fresh pty whose master goes to the console socket.
fn host_stdio(tty: bool, console_socket: Option<&PathBuf>) -> Result<(HostStdio, Option<HostPty>)> {
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().ok();
    if tty {
        if let Some(sock) = console_socket {
            let pty = console::open_pty()?;
            console::send_console(sock, &pty.master)?;
            // Make the slave our controlling terminal so a resize of the master reaches us
            // as SIGWINCH.
            // SAFETY: TIOCSCTTY on a pty slave we own, in our own session.
            unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
            let io = HostStdio {
                stdin: dup(pty.slave.as_fd()),
                stdout: dup(pty.slave.as_fd()),
                stderr: None,
            };
            // The caller's stdio is not the container's here: let go of it, so a caller that
            // reads our inherited pipes to their end is not kept waiting for the container.
            release_caller_stdio();
            return Ok((io, Some(pty)));
        }
    }
    let io = HostStdio {
        stdin: dup(std::io::stdin().as_fd()),
        stdout: dup(std::io::stdout().as_fd()),
        stderr: dup(std::io::stderr().as_fd()),
    };
    Ok((io, None))
}

fn release_caller_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard fds of this process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn block_sigwinch() {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGWINCH);
    let _ = set.thread_block();
}

fn spawn_resize_forwarder(endpoint: Endpoint, process: ProcessRef, pty: HostPty) {
    std::thread::spawn(move || {
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(nix::sys::signal::Signal::SIGWINCH);
        let Ok(mut client) = Client::connect(endpoint) else {
            return;
        };
        // Keep the master open too: the caller may close its copy before the container ends.
        let _master: OwnedFd = pty.master;
        while set.wait().is_ok() {
            if let Some((rows, cols)) = console::window_size(&pty.slave) {
                if client.resize_tty(process.clone(), rows, cols).is_err() {
                    return;
                }
            }
        }
    });
}

fn record_exit(store: &StateStore, id: &str, status: Option<ExitStatus>) {
    let Ok(_lock) = store.lock(id) else { return };
    if let Ok(mut rec) = store.load(id) {
        rec.status = Status::Stopped;
        rec.exit_code = status.map(|s| s.shell_code());
        let _ = store.save(&rec);
    }
}

/// Ends this process the way the container's process ended: the same exit code, or death by
/// the same signal (with core dumps off, so a SIGSEGV'd container does not dump the monitor).
pub fn exit_like(status: ExitStatus) -> i32 {
    if let (None, Some(sig)) = (status.code, status.signal) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
        if let Ok(signal) = nix::sys::signal::Signal::try_from(sig) {
            // SAFETY: restoring the default action of a signal before raising it.
            unsafe {
                let _ = nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl);
            }
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(signal);
            let _ = set.thread_unblock();
            let _ = nix::sys::signal::raise(signal);
        }
    }
    status.shell_code()
}

fn monitor_exec(g: &RuntimeConfig, a: &MonitorArgs, ready: File) -> Result<i32> {
    block_sigwinch();
    let store = StateStore::new(&g.root);
    let exec_id = a.exec_id.clone().unwrap_or_default();
    let started = (|| -> Result<(Client, Plumbing, Option<HostPty>)> {
        let rec = store.load(&a.id)?;
        let path = a
            .process
            .as_ref()
            .ok_or_else(|| Error::Usage("exec monitor needs --process".into()))?;
        let text = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        let process: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| Error::Usage(e.to_string()))?;
        let tty = process["terminal"].as_bool().unwrap_or(false);
        let mut client = crate::sandbox::link::connect(&rec)?;
        let (io, pty) = host_stdio(tty, a.console_socket.as_ref())?;
        let pref = ProcessRef::exec(&a.id, &exec_id);
        client
            .exec(ExecRequest {
                container_id: a.id.clone(),
                exec_id: exec_id.clone(),
                process,
                stdio: io.request(tty),
            })
            .map_err(agent_err("exec"))?;
        let plumbing = stdio::attach(&client, &pref, tty, io)?;
        Ok((client, plumbing, pty))
    })();
    let (mut client, plumbing, pty) = match started {
        Ok(v) => {
            report(ready, &Ok(()));
            v
        }
        Err(e) => {
            log::error!("exec in {}: {e}", a.id);
            report(ready, &Err(e));
            return Ok(1);
        }
    };
    let pref = ProcessRef::exec(&a.id, &exec_id);
    if let Some(pty) = pty {
        spawn_resize_forwarder(client.endpoint().clone(), pref.clone(), pty);
    }
    let status = client.wait(pref).unwrap_or(ExitStatus::exited(255));
    plumbing.finish(Duration::from_secs(2));
    Ok(exit_like(status))
}
