//! Which namespaces the container gets: new ones (unshare) or existing ones joined by path
//! (setns), from `linux.namespaces`.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

use super::error::{EngineError, SpecError};

pub(crate) fn flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The name of the namespace under /proc/PID/ns.
pub(crate) fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Order in which namespaces are joined: the user namespace first (it grants the rights
/// for the others), the mount namespace last (its root replaces ours, and /proc with it).
const JOIN_ORDER: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::User,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Time,
    LinuxNamespaceType::Mount,
];

/// What the forked child does about namespaces.
#[derive(Debug)]
pub(crate) struct NsPlan {
    /// Existing namespaces to enter, already opened, in join order.
    pub join: Vec<(LinuxNamespaceType, OwnedFd)>,
    /// Create a user namespace (before the others, so that it owns them).
    pub new_user: bool,
    /// The other namespaces to create.
    pub unshare: CloneFlags,
    /// The root directory to chroot into after joining: a running container's root, for
    /// a process exec'd into a container that shares our mount namespace (its root is a
    /// chroot there, which joining namespaces does not give).
    pub root: Option<OwnedFd>,
}

impl NsPlan {
    fn empty() -> NsPlan {
        NsPlan {
            join: Vec::new(),
            new_user: false,
            unshare: CloneFlags::empty(),
            root: None,
        }
    }

    pub(crate) fn has(&self, t: LinuxNamespaceType) -> bool {
        self.join.iter().any(|(j, _)| *j == t)
            || (t == LinuxNamespaceType::User && self.new_user)
            || (t != LinuxNamespaceType::User && self.unshare.contains(flag(t)))
    }

    pub(crate) fn fds(&self) -> Vec<RawFd> {
        self.join
            .iter()
            .map(|(_, f)| f.as_raw_fd())
            .chain(self.root.as_ref().map(|f| f.as_raw_fd()))
            .collect()
    }

    /// From the spec (already validated): opens every path to join.
    pub(crate) fn from_spec(spec: &Spec) -> Result<NsPlan, EngineError> {
        let mut plan = NsPlan::empty();
        let list: &[LinuxNamespace] = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_deref())
            .unwrap_or(&[]);
        for t in JOIN_ORDER {
            let Some((i, ns)) = list.iter().enumerate().find(|(_, n)| n.typ() == t) else {
                continue;
            };
            match ns.path() {
                Some(p) => {
                    let f = File::open(p).map_err(|e| {
                        SpecError::new(
                            format!("linux.namespaces[{i}].path"),
                            format!("cannot open {}: {e}", p.display()),
                        )
                    })?;
                    plan.join.push((t, f.into()));
                }
                None if t == LinuxNamespaceType::User => plan.new_user = true,
                None => plan.unshare |= flag(t),
            }
        }
        Ok(plan)
    }

    /// The namespaces of a running process that differ from ours, for exec.
    pub(crate) fn of_process(pid: i32) -> Result<NsPlan, EngineError> {
        let mut plan = NsPlan::empty();
        for t in JOIN_ORDER {
            let theirs = PathBuf::from(format!("/proc/{pid}/ns/{}", proc_name(t)));
            let ours = PathBuf::from(format!("/proc/self/ns/{}", proc_name(t)));
            let (Ok(a), Ok(b)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
                continue;
            };
            if a.ino() == b.ino() && a.dev() == b.dev() {
                if t == LinuxNamespaceType::Mount {
                    let root = format!("/proc/{pid}/root");
                    let f = File::open(&root)
                        .map_err(|e| EngineError::sys(format!("open {root}"), e))?;
                    plan.root = Some(f.into());
                }
                continue;
            }
            let f = File::open(&theirs)
                .map_err(|e| EngineError::sys(format!("open {}", theirs.display()), e))?;
            plan.join.push((t, f.into()));
        }
        Ok(plan)
    }

    /// Enters the namespaces to join, in order (user first, mount last).
    pub(crate) fn join_all(&self) -> Result<(), String> {
        for (t, fd) in &self.join {
            setns(fd.as_fd(), flag(*t))
                .map_err(|e| format!("setns into the {} namespace: {e}", proc_name(*t)))?;
        }
        if let Some(root) = &self.root {
            nix::unistd::fchdir(root.as_fd())
                .map_err(|e| format!("chdir to the container's root: {e}"))?;
            nix::unistd::chroot(".").map_err(|e| format!("chroot into the container: {e}"))?;
            nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
        }
        Ok(())
    }

    /// Creates the new namespaces other than the user namespace.
    pub(crate) fn unshare_rest(&self) -> Result<(), String> {
        if !self.unshare.is_empty() {
            unshare(self.unshare).map_err(|e| format!("unshare({:?}): {e}", self.unshare))?;
        }
        Ok(())
    }
}
