//! The `sandbox` OCI runtime: a runc-compatible command line that runs each container in its
//! own microVM (or natively, in namespaces on the host), and the pieces it is made of.

pub mod bundle;
pub mod cli;
pub mod compare;
pub mod config;
pub mod error;
pub mod host_probe;
pub mod image;
pub mod logging;
pub mod sandbox;
pub mod shim;
pub mod signal;
pub mod state;
pub mod timefmt;
