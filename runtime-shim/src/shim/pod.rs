//! The sandbox behind one shim: one agent (native isolation) or one VM (vm isolation) that
//! runs every container of the pod. Started by the pod's first container, shut down when the
//! last task is gone. The agent or VMM is started with the runtime's own launchers
//! (`sandbox::native`, `sandbox::vm`), so the shim and the `sandbox` CLI run sandboxes the
//! same way.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::protocol::{Client, Endpoint};
use sha2::{Digest, Sha256};

use crate::bundle::Bundle;
use crate::config::{self, RuntimeConfig};
use crate::sandbox::pod_share::PodShare;
use crate::sandbox::shared_dirs::FsDaemons;
use crate::sandbox::{native, vm};
use crate::state::{Cleanup, Isolation};

use super::error::{agent, Result, ShimError};
use super::options::ShimOptions;

pub struct Pod {
    pub isolation: Isolation,
    pub endpoint: Endpoint,
    pub dir: PathBuf,
    /// The agent's (native) or VMM's (vm) host pid.
    pub backend_pid: i32,
    /// Set by the watcher when the back end process has ended.
    pub ended: Arc<Mutex<Option<String>>>,
    /// The share that carries every container's rootfs and volumes into the VM (vm
    /// isolation).
    pub vm_share: Option<PodShare>,
    /// Its virtiofsd, stopped with the pod.
    fs_daemons: FsDaemons,
    cleanup: Cleanup,
    /// One control connection, one request at a time; waits use connections of their own.
    pub control: Mutex<Client>,
}

/// The state directory of the sandbox of `group` in `namespace`: a short hash keeps the
/// agent's socket path within the 108 bytes of a unix socket address.
pub fn state_dir(root: &Path, namespace: &str, group: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{namespace}/{group}").as_bytes());
    let hex = crate::image::tree_hash::hex(&digest[..8]);
    root.join(hex)
}

/// The runtime configuration the launchers get for a pod of `isolation`: the shim's options,
/// and the switches of the shim's environment, as for the `sandbox` CLI.
fn runtime_config(opts: &ShimOptions, isolation: Isolation) -> Result<RuntimeConfig> {
    let from_environment = |name| config::switch_from_environment(name).map_err(ShimError::Options);
    Ok(RuntimeConfig {
        root: opts.root.clone(),
        image_store: opts.image_store.clone(),
        isolation,
        allow_slow_kvm: opts.allow_slow_kvm || from_environment(config::ALLOW_SLOW_KVM_ENV)?,
        jail_vmm: from_environment(config::JAIL_VMM_ENV)?,
        ..RuntimeConfig::default()
    })
}

/// Runs jobs on one thread that lives as long as the shim. The agent and the VMM are started
/// with a parent-death signal, which Linux ties to the thread that forked them: started from
/// a ttrpc worker thread, they would be killed when the server retires that worker.
struct Launcher {
    tx: Mutex<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

fn launcher() -> &'static Launcher {
    static LAUNCHER: std::sync::OnceLock<Launcher> = std::sync::OnceLock::new();
    LAUNCHER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("launcher".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn the launcher thread");
        Launcher { tx: Mutex::new(tx) }
    })
}

/// Runs `f` on the launcher thread and returns its result.
fn on_launcher<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    let job: Box<dyn FnOnce() + Send> = Box::new(move || {
        let _ = tx.send(f());
    });
    launcher().tx.lock().ok()?.send(job).ok()?;
    rx.recv().ok()
}

impl Pod {
    /// The host pid containerd is told for a process the agent started as `agent_pid`: the
    /// process itself natively; in a VM, where the guest's pids mean nothing on the host, the
    /// VMM that holds it (what Kata reports too), so that containerd's view of the task ends
    /// with the VM.
    pub fn host_pid(&self, agent_pid: i32) -> u32 {
        match self.isolation {
            Isolation::Native => agent_pid as u32,
            Isolation::Vm => self.backend_pid as u32,
        }
    }

    /// Starts the sandbox for its first container, whose bundle (rootfs already mounted) is
    /// `bundle`.
    pub fn start(
        opts: &ShimOptions,
        isolation: Isolation,
        namespace: &str,
        group: &str,
        bundle: &Path,
    ) -> Result<Pod> {
        let dir = state_dir(&opts.root, namespace, group);
        let g = runtime_config(opts, isolation)?;
        if isolation == Isolation::Vm {
            // Refuse before anything is made where this host's KVM cannot run the VM.
            vm::preflight(&g)?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ShimError::Agent(format!("cannot create {}: {e}", dir.display())))?;
        let (d, b) = (dir.clone(), bundle.to_path_buf());
        let launched = on_launcher(move || Self::launch(&g, &d, &b))
            .unwrap_or_else(|| Err(ShimError::Agent("the launcher thread is gone".into())));
        match launched {
            Ok(pod) => Ok(pod),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn launch(g: &RuntimeConfig, dir: &Path, bundle: &Path) -> Result<Pod> {
        let isolation = g.isolation;
        let mut cleanup = Cleanup::default();
        let mut vm_share = None;
        let mut fs_daemons = FsDaemons::default();
        let mut vm_logs = None;
        let (child, endpoint, sandbox_cfg) = match isolation {
            Isolation::Native => {
                let a = native::start_agent(dir)?;
                (a.child, a.endpoint, None)
            }
            Isolation::Vm => {
                let b = Bundle::load(bundle)?;
                let share = PodShare::create(dir)?;
                let pod_rootfs = vm::GuestRootfs::Pod(&share);
                let v = match vm::launch(g, dir, &b, pod_rootfs, &[], &mut cleanup) {
                    Ok(v) => v,
                    Err(e) => {
                        vm::release(&cleanup);
                        return Err(e.into());
                    }
                };
                vm_share = Some(share);
                fs_daemons = v.fs_daemons;
                vm_logs = Some(v.logs);
                (v.child, v.endpoint, Some(v.sandbox_config))
            }
        };
        let backend_pid = child.id() as i32;
        // The child is reaped by the watcher thread, not through `Child`.
        drop(child);
        let ended = Arc::new(Mutex::new(None));
        spawn_watcher(backend_pid, vm_logs.clone(), ended.clone());
        let timeout = match isolation {
            Isolation::Native => Duration::from_secs(10),
            Isolation::Vm => Duration::from_secs(60),
        };
        let connected =
            connect_while_alive(&endpoint, &ended, timeout, vm_logs.as_ref()).and_then(|mut c| {
                if let Some(cfg) = sandbox_cfg {
                    c.create_sandbox(cfg)
                        .map_err(agent("configure the sandbox"))?;
                }
                Ok(c)
            });
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                kill_and_reap(backend_pid, &ended);
                vm::release(&cleanup);
                return Err(e);
            }
        };
        Ok(Pod {
            isolation,
            endpoint,
            dir: dir.to_path_buf(),
            backend_pid,
            ended,
            vm_share,
            fs_daemons,
            cleanup,
            control: Mutex::new(client),
        })
    }

    /// Runs `f` on the control connection, reconnecting once if the connection broke (or
    /// an earlier failure left it out of step).
    pub fn call<T>(
        &self,
        f: impl Fn(&mut Client) -> std::result::Result<T, agent::protocol::ProtocolError>,
    ) -> std::result::Result<T, agent::protocol::ProtocolError> {
        use agent::protocol::ProtocolError;
        let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
        match f(&mut c) {
            Err(ProtocolError::Io(_) | ProtocolError::Closed | ProtocolError::Broken(_)) => {
                *c = Client::connect(self.endpoint.clone())?;
                f(&mut c)
            }
            other => other,
        }
    }

    /// Why the back end is gone, if it is.
    pub fn gone(&self) -> Option<String> {
        self.ended.lock().ok().and_then(|g| g.clone())
    }

    /// Destroys the sandbox: the agent kills what is left (a VM powers off), then the back
    /// end process is ended for certain and everything made for it removed.
    pub fn shut_down(self) {
        if self.gone().is_none() {
            if let Ok(mut c) = Client::connect(self.endpoint.clone()) {
                let _ = c.stream().set_read_timeout(Some(Duration::from_secs(2)));
                let _ = c.destroy_sandbox(self.isolation == Isolation::Vm);
            }
            if self.isolation == Isolation::Vm {
                wait_ended(&self.ended, Duration::from_millis(500));
            }
        }
        kill_and_reap(self.backend_pid, &self.ended);
        vm::release(&self.cleanup);
        // virtiofsd goes before the share it serves is unmounted.
        drop(self.fs_daemons);
        drop(self.vm_share);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for the back end process on a thread of its own and records how it ended; a VMM
/// that ends with an error status has its and the guest's last words logged with it, before
/// the state directory holding them goes.
fn spawn_watcher(pid: i32, vm_logs: Option<vm::VmLogs>, ended: Arc<Mutex<Option<String>>>) {
    std::thread::spawn(move || {
        let why = loop {
            match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => {
                    let mut why = format!("back end process {pid} exited with status {code}");
                    if code != 0 {
                        if let Some(logs) = &vm_logs {
                            why.push_str(&logs.last_words());
                        }
                    }
                    break why;
                }
                Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                    break format!("back end process {pid} was killed by {sig}")
                }
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => break format!("back end process {pid}: {e}"),
            }
        };
        log::info!("{why}");
        if let Ok(mut g) = ended.lock() {
            *g = Some(why);
        }
    });
}

fn wait_ended(ended: &Mutex<Option<String>>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ended.lock().map(|g| g.is_some()).unwrap_or(true) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn kill_and_reap(pid: i32, ended: &Mutex<Option<String>>) {
    if !ended.lock().map(|g| g.is_some()).unwrap_or(true) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        wait_ended(ended, Duration::from_secs(3));
    }
}

/// Connects to the agent within `timeout`, giving up early if the back end ends; a VM that
/// does not answer in time has its logs' last lines (`vm_logs`) in the error.
fn connect_while_alive(
    endpoint: &Endpoint,
    ended: &Mutex<Option<String>>,
    timeout: Duration,
    vm_logs: Option<&vm::VmLogs>,
) -> Result<Client> {
    let deadline = Instant::now() + timeout;
    loop {
        // The agent's socket is bound before the agent runs, so a connection queues at once:
        // bound the handshake too, or an agent that never accepts would hang the shim.
        match Client::connect_within(endpoint.clone(), Duration::from_millis(500)) {
            Ok(c) => return Ok(c),
            Err(e) => {
                if let Some(why) = ended.lock().ok().and_then(|g| g.clone()) {
                    return Err(ShimError::SandboxGone(format!(
                        "{why} before its agent answered"
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(ShimError::Agent(format!(
                        "no answer from the agent within {}s: {e}{}",
                        timeout.as_secs(),
                        vm_logs.map(vm::VmLogs::last_words).unwrap_or_default()
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dirs_are_short_and_distinct() {
        let root = Path::new("/run/sandbox-shim");
        let a = state_dir(root, "k8s.io", &"a".repeat(64));
        let b = state_dir(root, "default", &"a".repeat(64));
        assert_ne!(a, b);
        assert!(a.join(native::AGENT_SOCKET).as_os_str().len() < 100);
    }

    #[test]
    fn the_runtime_config_takes_the_shim_options() {
        let o = ShimOptions {
            allow_slow_kvm: true,
            image_store: "/tmp/images".into(),
            ..Default::default()
        };
        let g = runtime_config(&o, Isolation::Native).unwrap();
        assert_eq!(g.image_store, o.image_store);
        assert_eq!(g.isolation, Isolation::Native);
        assert!(g.allow_slow_kvm);
        assert_eq!(g.root, o.root);
    }
}
