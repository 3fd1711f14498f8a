//! The sandbox microVM monitor.
//!
//! One process per sandbox: guest memory, one thread per vCPU, one event-loop thread for
//! devices, and a seccomp filter on each of them.
//!
//! - `arch`: the x86_64 memory map and boot protocol structures, CPU state, CPUID.
//! - `vstate`: guest memory, the KVM VM, vCPU threads and how the VM stops.
//! - `loader`: kernel, initrd and command line.
//! - `devices`: the buses and the devices on them.
//! - `builder`: puts a VM together from a `config::VmConfig`.
//! - `check`: `sandbox-vmm check`.
//! - `jail`: confining the process once its devices are open.
//! - `snapshot`: the state of a paused VM in files, and a VM built from them.

pub mod arch;
pub mod builder;
pub mod check;
pub mod config;
pub mod device_manager;
pub mod devices;
pub mod hypervisor;
pub mod jail;
pub mod loader;
pub mod logger;
pub mod seccomp;
pub mod snapshot;
pub mod vstate;

pub use builder::{BuildError, Vmm, VmmBuilder};
pub use config::VmConfig;
pub use vstate::stop::{exit_code, VmExit};
