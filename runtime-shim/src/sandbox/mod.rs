//! Sandbox lifecycle: the monitor process that owns a sandbox, the native and vm back ends
//! that run the agent, stdio plumbing and teardown.

pub mod binaries;
pub mod child;
pub mod console;
pub mod foreground;
pub mod host_hooks;
pub mod launch;
pub mod link;
pub mod monitor;
pub mod native;
pub mod network;
pub mod pod_share;
pub mod shared_dirs;
pub mod stdio;
pub mod vm;
pub mod vmm_jail;
