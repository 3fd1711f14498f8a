//! The sandbox as a whole: its configuration (hostname, network, storage) and its end.

use std::sync::atomic::Ordering;

use crate::init;
use crate::protocol::{ErrorCode, ErrorReply, Response, SandboxConfig};

use super::{Agent, Mode};

impl Agent {
    pub(super) fn create_sandbox(&self, config: SandboxConfig) -> Result<Response, ErrorReply> {
        match self.mode {
            Mode::Native => {
                if config != SandboxConfig::default() {
                    return Err(ErrorReply::new(
                        ErrorCode::Unsupported,
                        "native isolation shares the host's hostname, network and storage: \
                         create_sandbox takes an empty configuration there",
                    ));
                }
            }
            Mode::Guest => init::sandbox::apply(&config)
                .map_err(|e| ErrorReply::new(ErrorCode::Sandbox, e.to_string()))?,
        }
        Ok(Response::Done)
    }

    /// Removes every container it can and names those that would not go; `power_off` ends
    /// the server either way.
    pub(super) fn destroy_sandbox(&self, power_off: bool) -> Result<Response, ErrorReply> {
        let ids: Vec<String> = self.containers.lock().unwrap().keys().cloned().collect();
        let mut failures = Vec::new();
        for id in ids {
            if let Err(e) = self.remove(&id, true) {
                failures.push(format!("{id}: {}", e.message));
            }
        }
        if power_off {
            // Flushed before the answer: the host may end the VM as soon as it has it, and
            // whatever the containers wrote (a kept container's disk) is on the host by then.
            nix::unistd::sync();
            self.power_off.store(true, Ordering::SeqCst);
            self.shutdown.store(true, Ordering::SeqCst);
        }
        if failures.is_empty() {
            Ok(Response::Done)
        } else {
            Err(ErrorReply::new(
                ErrorCode::Engine,
                format!("could not remove every container: {}", failures.join("; ")),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{agent, entry, insert, process};
    use super::*;
    use crate::protocol::{DnsConfig, ExitStatus};

    #[test]
    fn a_native_sandbox_takes_only_an_empty_configuration() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        assert_eq!(
            a.create_sandbox(SandboxConfig::default()).unwrap(),
            Response::Done
        );
        let config = SandboxConfig {
            hostname: Some("box".into()),
            ..SandboxConfig::default()
        };
        let e = a.create_sandbox(config).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unsupported);
        assert!(
            e.message
                .contains("create_sandbox takes an empty configuration"),
            "{}",
            e.message
        );
        let config = SandboxConfig {
            dns: Some(DnsConfig::default()),
            ..SandboxConfig::default()
        };
        assert_eq!(
            a.create_sandbox(config).unwrap_err().code,
            ErrorCode::Unsupported
        );
    }

    #[test]
    fn destroying_removes_every_container_and_keeps_serving() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Native, root.path());
        for id in ["c1", "c2"] {
            let e = entry(id, process(4242));
            e.init.set_exit(ExitStatus::exited(0));
            insert(&a, e);
        }
        assert_eq!(a.destroy_sandbox(false).unwrap(), Response::Done);
        assert!(a.containers.lock().unwrap().is_empty());
        assert!(!a.shutdown_requested());
        assert!(!a.power_off_requested());
    }

    #[test]
    fn power_off_ends_the_server() {
        let root = tempfile::tempdir().unwrap();
        let a = agent(Mode::Guest, root.path());
        assert!(!a.shutdown_requested());
        assert_eq!(a.destroy_sandbox(true).unwrap(), Response::Done);
        assert!(a.shutdown_requested());
        assert!(a.power_off_requested());
    }
}
