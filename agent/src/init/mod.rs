//! PID 1 duties inside a guest: the pseudo filesystems, hostname, network, DNS, storage and
//! power-off.

pub mod dns;
pub mod mounts;
pub mod netlink;
pub mod network;
pub mod power;
pub mod sandbox;
