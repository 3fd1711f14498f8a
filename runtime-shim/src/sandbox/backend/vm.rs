//! VM isolation: one `sandbox-vmm` per sandbox, booting the guest kernel with an initramfs
//! whose /init is a static `sandbox-agent`. The container's rootfs reaches the guest either
//! as the bundle's directory itself through virtio-fs (bundles of containerd, Docker and the
//! runc-style CLI: the host sees the container's writes), or, for an image-store rootfs, as
//! a read-only ext4 image cached by content plus a per-container writable disk that the agent
//! joins to it with overlayfs, so the cached image is never written ([`RootfsPath`]).

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent::protocol::{
    CopiedFile, Endpoint, RootfsSource, SandboxConfig, StorageConfig, MAX_COPIED_BYTES,
};

use super::{Backend, ProcessLogs};
use crate::bundle::Bundle;
use crate::config::RuntimeConfig;
use crate::error::{Error, IoContext, Result};
use crate::image::disk;
use crate::sandbox::pod_share::PodShare;
use crate::sandbox::shared_dirs::{self, FsDaemons, SharedDir};
use crate::sandbox::timings::Timeline;
use crate::sandbox::{binaries, network, vmm_jail};
use crate::state::{Cleanup, TapRecord};
use vmm::config::SerialOutput;
use vmm::devices::virtio::block::BlockConfig;
use vmm::devices::virtio::fs::FsConfig;
use vmm::devices::virtio::net::NetConfig;
use vmm::devices::virtio::vsock::VsockConfig;
use vmm::VmConfig;

/// Where virtiofsd sockets go whose state directory is too deep for a unix socket address.
const SHORT_SOCKET_DIR: &str = "/run/sandbox-fs";
pub const DEFAULT_KERNEL: &str = "/var/lib/sandbox/guest/vmlinux";
const GUEST_CID: u64 = 3;
/// `sandbox.milestones`: the agent reports its start on the boot-complete port
/// (`sandbox::timings`).
const GUEST_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off quiet rdinit=/init sandbox.milestones";
/// The VMM's configuration, in the state directory (`sandbox-vmm --config`).
const VMM_CONFIG: &str = "vmm.json";
const DEFAULT_VCPUS: u8 = 1;
const MAX_VCPUS: u64 = 32;
const DEFAULT_MEM_MIB: u64 = 256;
/// Memory for the guest kernel and agent on top of the container's own limit.
const GUEST_OVERHEAD_MIB: u64 = 64;
const UPPER_DISK_MIB: u64 = 1024;

/// The virtio-fs tag of a shared rootfs; volumes are `vol<N>`.
const ROOTFS_TAG: &str = "rootfs";
const LOWER_MOUNT: &str = "/run/sandbox/lower";
const UPPER_MOUNT: &str = "/run/sandbox/upper";
const ROOTFS_MOUNT: &str = "/run/sandbox/rootfs";

/// Where the guest finds container root filesystems.
#[derive(Clone, Copy)]
pub enum GuestRootfs<'a> {
    /// The bundle's own rootfs, by `--vm-rootfs` (one container per VM: the CLI).
    Bundle,
    /// A pod's share, into which each container's rootfs is bound as it is created (the
    /// containerd shim).
    Pod(&'a PodShare),
}

/// The agent as the guest's PID 1 behind `sandbox-vmm`: containers in a guest kernel.
pub struct VmBackend {
    endpoint: Endpoint,
    rootfs: Option<RootfsSource>,
    sandbox_config: SandboxConfig,
    logs: ProcessLogs,
    /// The virtiofsd serving each shared directory; they go with the back end.
    _fs_daemons: FsDaemons,
}

impl VmBackend {
    /// The bundle's rootfs as the guest sees it; none for a pod, whose containers each get
    /// theirs from the share.
    pub fn guest_rootfs(&self) -> Option<RootfsSource> {
        self.rootfs.clone()
    }
}

impl Backend for VmBackend {
    fn program(&self) -> &'static str {
        "sandbox-vmm"
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn answer_within(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// The VMM answers the CONNECT itself; the guest's agent answers the hello once it
    /// accepted, at once unless the guest is starved.
    fn handshake_within(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// A booting guest takes a while, and each try costs the VMM a connection.
    fn retry_pause(&self) -> Duration {
        Duration::from_millis(10)
    }

    fn sandbox_config(&self) -> Option<SandboxConfig> {
        Some(self.sandbox_config.clone())
    }

    fn logs(&self) -> &ProcessLogs {
        &self.logs
    }

    fn ends_when_destroyed(&self) -> bool {
        true
    }
}

/// The VMM's vsock socket for the sandbox whose state is in `dir`: in its jail directory,
/// where the VMM still finds the `_<port>` sockets of guest-initiated connections once it is
/// confined to it.
pub fn vsock_socket(dir: &Path) -> PathBuf {
    vmm_jail::jail_dir(dir).join(vmm_jail::VSOCK_NAME)
}

/// The vhost-user socket of a shared directory's virtiofsd: in the state directory when the
/// path fits a unix socket address, else in SHORT_SOCKET_DIR under a name derived from `dir`
/// (state roots can be deep).
fn fs_socket(dir: &Path, share: &SharedDir) -> PathBuf {
    let name = format!("{}.sock", share.tag);
    let inside = dir.join(&name);
    if inside.as_os_str().len() <= vmm::devices::virtio::fs::config::MAX_SOCKET_PATH_LEN {
        return inside;
    }
    Path::new(SHORT_SOCKET_DIR).join(format!("{}-{name}", vmm_jail::hash_of(dir)))
}

/// Refuses vm isolation where this host's KVM cannot run our guests (kvm-pvm, no KVM), or
/// may run them only in software unless the user allowed that. Decided from the host's KVM
/// module, never from a timing, so the same host gets the same answer every time. Never falls
/// back to native isolation.
pub fn preflight(g: &RuntimeConfig) -> Result<()> {
    let kvm = crate::host_probe::kvm_report();
    crate::host_probe::vm_isolation_policy(&kvm.kind, g.allow_slow_kvm).map_err(Error::Vm)
}

pub fn kernel_path() -> PathBuf {
    std::env::var_os("SANDBOX_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KERNEL))
}

/// Builds (or reuses) the disks, starts a virtiofsd per shared directory, then the VMM.
pub fn launch(
    g: &RuntimeConfig,
    dir: &Path,
    bundle: &Bundle,
    guest_rootfs: GuestRootfs,
    shares: &[SharedDir],
    cleanup: &mut Cleanup,
) -> Result<(VmBackend, Child)> {
    let kernel = kernel_path();
    if !kernel.is_file() {
        return Err(Error::Vm(format!(
            "guest kernel {} not found (build it with guest-kernel-config, or set SANDBOX_KERNEL)",
            kernel.display()
        )));
    }
    let vmm = binaries::find("sandbox-vmm", "SANDBOX_VMM")?;
    let agent = binaries::find_guest_agent()?;
    let initrd = disk::initramfs_from(&g.image_store, &agent)?;
    let mut shares = shares.to_vec();
    let mut disks = Vec::new();
    let rootfs = match guest_rootfs {
        GuestRootfs::Bundle => Some(RootfsSource::Directory {
            path: ROOTFS_MOUNT.into(),
        }),
        GuestRootfs::Pod(_) => None,
    };
    let mut sandbox_config = if let GuestRootfs::Pod(pod) = guest_rootfs {
        shares.push(pod.shared_dir());
        SandboxConfig {
            storage: vec![PodShare::storage()],
            ..Default::default()
        }
    } else if g.vm_rootfs.shares(&bundle.rootfs, &g.image_store) {
        shares.push(SharedDir {
            mount_index: None,
            tag: ROOTFS_TAG.into(),
            source: fs::canonicalize(&bundle.rootfs).ctx("resolve rootfs", &bundle.rootfs)?,
            read_only: bundle
                .spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
        });
        shared_rootfs_storage()
    } else {
        let lower = disk::rootfs_image(&g.image_store, &bundle.rootfs)?;
        let upper = dir.join("upper.img");
        disk::writable_layer(&g.image_store, &upper, UPPER_DISK_MIB)?;
        cleanup.files.push(upper.clone());
        disks.push(BlockConfig {
            path: lower,
            read_only: true,
            id: None,
        });
        disks.push(BlockConfig {
            path: upper,
            read_only: false,
            id: None,
        });
        guest_storage()
    };
    let shares = &shares[..];

    // The network namespace CNI prepared: a TAP behind its veth, the VMM inside it.
    let mut netns_file = None;
    let mut nets = Vec::new();
    if let Some(netns) = network::spec_netns(&bundle.spec) {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tap = network::tap_name(&id);
        let nic = network::prepare(&netns, &tap)?;
        cleanup.taps.push(TapRecord {
            name: tap.clone(),
            netns: Some(netns.clone()),
            veth: Some(nic.veth.clone()),
        });
        netns_file = Some(File::open(&netns).ctx("open network namespace", &netns)?);
        let mac = nic
            .mac
            .parse()
            .map_err(|e| Error::Vm(format!("the network namespace's veth: {e}")))?;
        nets.push(NetConfig {
            tap,
            mac: Some(mac),
        });
        sandbox_config.interfaces.push(nic.interface);
        sandbox_config.routes = nic.routes;
    }

    let (vcpus, mem_mib) = vm_size(&bundle.spec);
    // The CPU model for this host's kind of KVM (`minimal` where guest kernel code may be
    // emulated and newer instructions would fail to emulate), the same on every launch.
    let cpu_template = crate::host_probe::kvm_report().kind.cpu_template();
    // Recorded before they exist, so that a failure half way still removes them.
    cleanup.dirs.push(vmm_jail::jail_dir(dir));
    let capped = g.jail_vmm && g.cap_vmm;
    if capped {
        cleanup
            .cgroups
            .push(vmm_jail::cgroup_path(Path::new(vmm_jail::CGROUP_ROOT), dir));
    }
    let jail = vmm_jail::prepare(dir, Path::new(vmm_jail::CGROUP_ROOT), capped)?;
    let socket = jail.vsock_socket();
    let fs_sockets: Vec<PathBuf> = shares.iter().map(|s| fs_socket(dir, s)).collect();
    for path in &fs_sockets {
        if !path.starts_with(dir) {
            let parent = Path::new(SHORT_SOCKET_DIR);
            fs::create_dir_all(parent).ctx("create", parent)?;
            // Sockets outside the state directory are removed one by one at delete.
            cleanup.files.push(path.clone());
        }
    }
    for path in fs_sockets.iter().filter(|p| !p.starts_with(dir)) {
        // The Rust virtiofsd writes its pid beside its socket.
        let mut pid_file = path.as_os_str().to_owned();
        pid_file.push(".pid");
        cleanup.files.push(pid_file.into());
    }
    let fs_daemons = FsDaemons::start(shares, &fs_sockets, dir)?;
    let console = dir.join("console.log");
    let config = VmConfig {
        initrd: Some(initrd),
        cmdline: Some(GUEST_CMDLINE.into()),
        vcpus,
        mem_mib,
        serial: SerialOutput::File(console.clone()),
        cpu_template,
        disks,
        nets,
        // Relative in a jail: the VMM opens `<path>_<port>` for guest-initiated connections
        // once it is confined to its jail directory.
        vsock: Some(VsockConfig {
            cid: GUEST_CID,
            path: if g.jail_vmm {
                vmm_jail::VSOCK_NAME.into()
            } else {
                socket.clone()
            },
        }),
        // The VMM connects to these before it enters its jail, so they may be anywhere.
        fs: shares
            .iter()
            .zip(&fs_sockets)
            .map(|(s, sock)| FsConfig {
                tag: s.tag.clone(),
                socket: sock.clone(),
            })
            .collect(),
        jail: g.jail_vmm.then(|| jail.config()),
        ..VmConfig::new(kernel)
    };
    let config_path = dir.join(VMM_CONFIG);
    let json = serde_json::to_vec_pretty(&config)
        .map_err(|e| Error::Vm(format!("cannot write the VM's configuration: {e}")))?;
    crate::state::write_atomic(&config_path, &json)?;
    let log_path = dir.join("vmm.log");
    let log = File::create(&log_path).ctx("create", &log_path)?;
    let log2 = log.try_clone().ctx("dup", &log_path)?;
    let mut cmd = Command::new(&vmm);
    cmd.arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let netns_fd = netns_file.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: only async-signal-safe calls (setns, sigprocmask, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = netns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            crate::sandbox::child::reset_signals_and_die_with_parent()
        });
    }
    Timeline::in_dir(dir).record("vmm exec");
    let child = cmd
        .spawn()
        .map_err(|e| Error::Vm(format!("cannot start {}: {e}", vmm.display())))?;
    let logs = fs_daemons.logs().iter().fold(
        ProcessLogs::default()
            .with("sandbox-vmm", log_path)
            .with("guest console", console),
        |logs, log| logs.with("virtiofsd", log.clone()),
    );
    let backend = VmBackend {
        endpoint: Endpoint::guest_agent(socket),
        rootfs,
        sandbox_config,
        logs,
        _fs_daemons: fs_daemons,
    };
    Ok((backend, child))
}

/// The spec as the guest must see it: namespaces given by host paths (the pod's network
/// namespace among them) mean nothing inside the VM, so the container joins the guest's own
/// (where eth0 is) instead; the hooks are the host's (`host_hooks`); shared directories are
/// virtio-fs mounts.
pub fn guest_spec(spec: &oci_spec::runtime::Spec, shares: &[SharedDir]) -> oci_spec::runtime::Spec {
    let spec = shared_dirs::share_mounts(spec, shares);
    let mut spec = crate::sandbox::host_hooks::without_hooks(&spec);
    if let Some(mut linux) = spec.linux().clone() {
        if let Some(nss) = linux.namespaces().clone() {
            let kept: Vec<_> = nss.into_iter().filter(|n| n.path().is_none()).collect();
            linux.set_namespaces(Some(kept));
        }
        spec.set_linux(Some(linux));
    }
    spec
}

/// The sources of the spec's bind mounts that are files (Docker's resolv.conf, hosts and
/// hostname are): sent by value and bound from the guest's copy. Directories reach the guest
/// through virtio-fs when the VM starts with them (`shares`); a directory not among them (a
/// later container of a pod: devices are not hot-plugged) is refused before it is created.
pub fn copied_files(
    spec: &oci_spec::runtime::Spec,
    shares: &[SharedDir],
) -> Result<Vec<CopiedFile>> {
    let mut files = Vec::new();
    let mut total = 0usize;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !agent::engine::is_bind(m) || shares.iter().any(|s| s.mount_index == Some(i)) {
            continue;
        }
        let dest = m.destination().display();
        let Some(source) = m.source() else {
            return Err(Error::Vm(format!(
                "mounts[{i}] ({dest}): a bind mount needs a source"
            )));
        };
        let meta = fs::metadata(source).map_err(|e| {
            Error::Vm(format!(
                "mounts[{i}] ({dest}): bind source {}: {e}",
                source.display()
            ))
        })?;
        if !meta.is_file() {
            return Err(Error::Vm(format!(
                "mounts[{i}] ({dest}): bind source {} is not a regular file; a directory \
                 reaches a VM through a shared filesystem device given when the VM starts, \
                 and this container joins a VM that is already running (the first container \
                 of a pod may bind directories, later ones may not)",
                source.display()
            )));
        }
        total = total.saturating_add(meta.len() as usize);
        if total > MAX_COPIED_BYTES {
            return Err(Error::Vm(format!(
                "mounts[{i}] ({dest}): the files bound into the VM come to more than \
                 {MAX_COPIED_BYTES} bytes, all of which the guest gets a copy of"
            )));
        }
        let contents = fs::read(source).ctx("read bind source", source)?;
        use std::os::unix::fs::PermissionsExt;
        files.push(CopiedFile {
            mount_index: i,
            mode: meta.permissions().mode(),
            contents,
        });
    }
    Ok(files)
}

/// The guest mount of a rootfs shared through virtio-fs: the bundle's directory itself.
fn shared_rootfs_storage() -> SandboxConfig {
    SandboxConfig {
        storage: vec![StorageConfig {
            source: ROOTFS_TAG.into(),
            fs_type: "virtiofs".into(),
            mount_point: ROOTFS_MOUNT.into(),
            read_only: false,
            options: vec![],
        }],
        ..Default::default()
    }
}

/// The guest mounts: the shared read-only image, the container's writable disk, and the
/// overlay of the two that becomes the container's rootfs.
fn guest_storage() -> SandboxConfig {
    SandboxConfig {
        storage: vec![
            StorageConfig {
                source: "/dev/vda".into(),
                fs_type: "ext4".into(),
                mount_point: LOWER_MOUNT.into(),
                read_only: true,
                options: vec!["noload".into()],
            },
            StorageConfig {
                source: "/dev/vdb".into(),
                fs_type: "ext4".into(),
                mount_point: UPPER_MOUNT.into(),
                read_only: false,
                options: vec![],
            },
            StorageConfig {
                source: "overlay".into(),
                fs_type: "overlay".into(),
                mount_point: ROOTFS_MOUNT.into(),
                read_only: false,
                options: vec![format!(
                    "lowerdir={LOWER_MOUNT},upperdir={UPPER_MOUNT}/upper,workdir={UPPER_MOUNT}/work"
                )],
            },
        ],
        ..Default::default()
    }
}

/// vCPUs and memory from the spec's limits: CPU quota/period rounded up, the memory limit
/// plus room for the guest kernel; defaults where the spec sets none.
pub fn vm_size(spec: &oci_spec::runtime::Spec) -> (u8, u64) {
    let res = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let vcpus = res
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p)),
            _ => None,
        })
        .map_or(DEFAULT_VCPUS, |n| n.clamp(1, MAX_VCPUS) as u8);
    let mem = res
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map(|l| (l as u64).div_ceil(1 << 20) + GUEST_OVERHEAD_MIB)
        .unwrap_or(DEFAULT_MEM_MIB)
        .max(128);
    (vcpus, mem)
}

/// Removes per-container files recorded for cleanup.
pub fn release(cleanup: &Cleanup) {
    // First: the VMM may still hold the files below open.
    for cg in &cleanup.cgroups {
        vmm_jail::remove_cgroup(cg);
    }
    for m in &cleanup.mounts {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
    for d in &cleanup.dirs {
        let _ = fs::remove_dir_all(d);
    }
    for f in &cleanup.files {
        let _ = fs::remove_file(f);
    }
    for tap in &cleanup.taps {
        crate::sandbox::network::release(tap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RootfsPath;

    #[test]
    fn the_vsock_socket_is_in_the_jail() {
        let short = Path::new("/run/sandbox/c1");
        assert_eq!(
            vsock_socket(short),
            short.join("jail").join(vmm_jail::VSOCK_NAME)
        );
        let deep = PathBuf::from(format!("/tmp/{}/root/c1", "d".repeat(90)));
        let socket = vsock_socket(&deep);
        assert!(
            socket.starts_with(vmm_jail::SHORT_JAIL_DIR),
            "{}",
            socket.display()
        );
        assert!(socket.as_os_str().len() <= vmm::devices::virtio::vsock::config::MAX_PATH_LEN);
        assert_eq!(
            socket,
            vsock_socket(&deep),
            "the same directory, the same socket"
        );
        assert_ne!(socket, vsock_socket(&deep.with_file_name("c2")));
    }

    #[test]
    fn file_binds_are_copied_and_unshared_directory_binds_refused() {
        let dir = std::env::temp_dir().join(format!("vm-copied-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        fs::write(&hosts, "127.0.0.1 box\n").unwrap();
        let spec = |source: &Path| -> oci_spec::runtime::Spec {
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2",
                "root": {"path": "rootfs"},
                "mounts": [
                    {"destination": "/proc", "type": "proc", "source": "proc"},
                    {"destination": "/etc/hosts", "type": "bind", "source": source,
                     "options": ["rbind", "ro"]},
                ],
            }))
            .unwrap()
        };
        let files = copied_files(&spec(&hosts), &[]).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].mount_index, 1);
        assert_eq!(files[0].contents, b"127.0.0.1 box\n");
        let e = copied_files(&spec(&dir), &[]).unwrap_err().to_string();
        assert!(e.contains("mounts[1] (/etc/hosts)"), "{e}");
        assert!(e.contains("shared filesystem"), "{e}");
        let shares = shared_dirs::shared_dirs(&spec(&dir), Path::new("/")).unwrap();
        assert_eq!(shares.len(), 1);
        assert!(copied_files(&spec(&dir), &shares).unwrap().is_empty());
        let e = copied_files(&spec(&dir.join("absent")), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("No such file"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_rootfs_outside_the_image_store_is_shared_by_default() {
        let store = Path::new("/var/lib/sandbox/images");
        let image = store.join("images/busybox/rootfs");
        let bundle = Path::new("/run/containerd/io.containerd.runtime.v2.task/default/c1/rootfs");
        assert!(!RootfsPath::Auto.shares(&image, store));
        assert!(RootfsPath::Auto.shares(bundle, store));
        assert!(RootfsPath::Shared.shares(&image, store));
        assert!(!RootfsPath::Image.shares(bundle, store));
    }

    #[test]
    fn size_follows_limits_with_defaults() {
        let spec = oci_spec::runtime::Spec::default();
        assert_eq!(vm_size(&spec), (DEFAULT_VCPUS, DEFAULT_MEM_MIB));
        let spec: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"resources": {"cpu": {"quota": 150000, "period": 100000},
                                    "memory": {"limit": 536870912}}}
        }))
        .unwrap();
        assert_eq!(vm_size(&spec), (2, 512 + GUEST_OVERHEAD_MIB));
    }
}
