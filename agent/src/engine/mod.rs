//! The OCI container engine: turns an `oci_spec::runtime::Spec` into a running process, the
//! same code whether it runs natively on the host or as PID 1 inside a guest.
//!
//! Each concern lives in its own module and is applied step by step, the way runc and youki
//! do it: `validate` checks the spec up front, `spawn` forks the processes, `namespaces`,
//! `rootfs`, `devices`, `cgroups`, `capabilities`, `seccomp` and `process` each apply one
//! part of the spec, and `container` ties them into the create/start/exec/destroy lifecycle.
//!
//! # Process model and the reaping contract
//!
//! `Container::create` forks a short-lived intermediate process which joins the cgroup and
//! the namespaces and then clones the container's init with `CLONE_PARENT`, so that the
//! init (and every process started by `Container::exec`) is a direct child of the calling
//! process: the caller can `waitpid` it like any other child (unless
//! [`CreateOptions::orphan_init`] leaves the init to the nearest subreaper above the caller,
//! the process tree runc leaves; the engine then watches it through its pidfd and reports its
//! end with [`Container::wait_ended`], without a status). The intermediate processes are
//! reaped by the engine itself; an event loop that calls `waitpid(-1, ..)` may reap one of
//! them first, which is harmless (the engine tolerates `ECHILD`): such a loop should ignore
//! exits of pids it does not know. The hooks the engine runs in its own process are
//! different, their status matters: the engine waits for them through the [`ChildWaiter`]
//! in [`CreateOptions::children`], which such a loop must implement to hand over the
//! statuses it reaped ([`DirectWait`], plain `waitpid`, is the default).
//!
//! Whoever reaps the init of a container must tell it with [`Container::set_exited`] (an
//! orphaned init's end: [`Container::set_ended`]), so that
//! `signal` refuses to signal a pid that may have been reused and `destroy` does not wait for
//! it again. [`wait_pid`] and [`Container::wait`] are blocking helpers for callers without
//! an event loop.

mod capabilities;
mod cgroups;
mod children;
mod container;
mod devices;
mod error;
mod exec;
mod fds;
mod hooks;
mod id;
mod mounts;
mod namespaces;
mod process;
mod rootfs;
mod seccomp;
mod spawn;
mod stdio;
mod sync;
mod validate;
mod wait;

pub use cgroups::{CgroupStats, CgroupVersion, OomWatcher};
pub use children::{ChildWaiter, DirectWait};
pub use container::{load_bundle_spec, Container, ContainerState, CreateOptions};
pub use error::{EngineError, SpecError};
pub use exec::ExecProcess;
pub use hooks::{run_stage as run_hook_stage, run_stage_in_order as run_hook_stage_in_order};
pub use id::{id_problem, ID_RULE, MAX_ID_LEN};
pub use mounts::is_bind;
pub use mounts::{parse_options as parse_mount_options, MountOptions};
pub use rootfs::{detach_shared_rootfs, mount_id};
pub use seccomp::{syscall_surface, SyscallSurface};
pub use stdio::Stdio;
pub use validate::validate_spec;
pub use wait::{exit_status, wait_pid, wait_pidfd, ExitStatus};

pub use nix::sys::signal::Signal;
pub use nix::unistd::Pid;
