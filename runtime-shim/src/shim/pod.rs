//! The sandbox behind one shim: one agent (native isolation) or one VM (vm isolation) that
//! runs every container of the pod. Started by the pod's first container, shut down when the
//! last task is gone. The agent or VMM is run through the runtime's own back ends
//! (`sandbox::backend`), so the shim and the `sandbox` CLI run sandboxes the same way.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use agent::protocol::{Client, Endpoint};
use sha2::{Digest, Sha256};

use crate::bundle::Bundle;
use crate::config::{self, RuntimeConfig};
use crate::sandbox::backend::native::{self, InitReaper};
use crate::sandbox::backend::{vm, Sandbox, Started};
use crate::sandbox::pod_share::PodShare;
use crate::sandbox::timings::Timeline;
use crate::state::{Cleanup, Isolation};

use super::error::{Result, ShimError};
use super::options::ShimOptions;

pub struct Pod {
    pub isolation: Isolation,
    pub dir: PathBuf,
    /// The agent (native) or VMM (vm) that runs the pod's containers.
    sandbox: Sandbox,
    /// The share that carries every container's rootfs and volumes into the VM (vm
    /// isolation).
    pub vm_share: Option<PodShare>,
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
    let from_environment =
        |name, unset| config::switch_from_environment(name, unset).map_err(ShimError::Options);
    Ok(RuntimeConfig {
        root: opts.root.clone(),
        image_store: opts.image_store.clone(),
        isolation,
        allow_slow_kvm: opts.allow_slow_kvm || from_environment(config::ALLOW_SLOW_KVM_ENV, false)?,
        jail_vmm: from_environment(config::JAIL_VMM_ENV, RuntimeConfig::default().jail_vmm)?,
        cap_vmm: from_environment(config::CAP_VMM_ENV, RuntimeConfig::default().cap_vmm)?,
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
            Isolation::Vm => self.backend_pid() as u32,
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
        let launched = match isolation {
            Isolation::Native => native::start(dir, InitReaper::Agent)
                .map(|(native, child)| Started::new(native, child)),
            Isolation::Vm => Bundle::load(bundle).and_then(|b| {
                let share = PodShare::create(dir)?;
                let pod_rootfs = vm::GuestRootfs::Pod(&share);
                let (vm, child) = vm::launch(g, dir, &b, pod_rootfs, &[], &mut cleanup)?;
                vm_share = Some(share);
                Ok(Started::new(vm, child))
            }),
        };
        let timeline = Timeline::in_dir(dir);
        match launched.and_then(|started| started.connect(&timeline)) {
            Ok((sandbox, client)) => Ok(Pod {
                isolation,
                dir: dir.to_path_buf(),
                sandbox,
                vm_share,
                cleanup,
                control: Mutex::new(client),
            }),
            Err(e) => {
                vm::release(&cleanup);
                Err(e.into())
            }
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        self.sandbox.endpoint()
    }

    /// The agent's (native) or VMM's (vm) host pid.
    pub fn backend_pid(&self) -> i32 {
        self.sandbox.pid()
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
                *c = Client::connect(self.endpoint().clone())?;
                f(&mut c)
            }
            other => other,
        }
    }

    /// Why the back end is gone, if it is.
    pub fn gone(&self) -> Option<String> {
        self.sandbox.gone()
    }

    /// Ends the back end now, while something still holds the pod.
    pub fn kill(&self) {
        self.sandbox.kill();
    }

    /// Destroys the sandbox: the agent kills what is left (a VM powers off), then the back
    /// end process is ended for certain and everything made for it removed.
    pub fn shut_down(self) {
        // A fresh connection carries the request: the control connection may be out of
        // step. virtiofsd goes with the back end, before the share it serves is unmounted.
        self.sandbox.shut_down(None);
        vm::release(&self.cleanup);
        drop(self.vm_share);
        let _ = std::fs::remove_dir_all(&self.dir);
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
