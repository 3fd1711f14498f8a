//! Sandbox lifecycle: the OCI operations (`launch`), the monitor process that owns a
//! sandbox for the CLI, the back ends that run its agent (`backend`: native and vm, shared
//! with the containerd shim), stdio plumbing and teardown.

pub mod backend;
pub mod binaries;
pub mod child;
pub mod console;
pub mod foreground;
pub mod host_hooks;
pub mod launch;
pub mod link;
pub mod monitor;
pub mod network;
pub mod pod_share;
pub mod shared_dirs;
pub mod stdio;
pub mod timings;
pub mod vmm_jail;
