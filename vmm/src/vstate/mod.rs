//! Live VM state: guest memory, the VM file descriptor, vCPU threads and how they stop.

pub mod memory;
pub mod stop;
pub mod vcpu;
pub mod vm;
