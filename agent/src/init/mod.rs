//! PID 1 duties inside a guest: the pseudo filesystems, hostname, network, DNS, storage,
//! start milestones for the host's time line, and power-off.

pub mod dns;
pub mod milestones;
pub mod mounts;
pub mod netlink;
pub mod network;
pub mod power;
pub mod sandbox;
