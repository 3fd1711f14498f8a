//! OCI hooks of a container in a VM. The runtime spec runs prestart, createRuntime,
//! poststart and poststop hooks in the runtime's namespaces, where their paths resolve: for a
//! VM that is the host, so the host side runs them (Docker's network hook among them), with
//! the state a runc-style caller sees (the monitor's pid). createContainer and startContainer
//! hooks run inside the container's namespaces, which are in the guest, where a host program
//! cannot run: a spec with them is refused before the VM boots.

use oci_spec::runtime::{Hook, Hooks, Spec};

use crate::error::{Error, Result};

/// The hooks the host runs for a container in a VM.
#[derive(Debug, Default)]
pub struct HostHooks {
    pub prestart: Vec<Hook>,
    pub create_runtime: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

impl HostHooks {
    /// The spec's host-side hooks; an error names a stage the host cannot run in a VM.
    pub fn of(spec: &Spec) -> Result<HostHooks> {
        let Some(h) = spec.hooks() else {
            return Ok(HostHooks::default());
        };
        for (stage, hooks) in [
            ("createContainer", h.create_container()),
            ("startContainer", h.start_container()),
        ] {
            if hooks.as_ref().is_some_and(|v| !v.is_empty()) {
                return Err(Error::Vm(format!(
                    "hooks.{stage}: these run inside the container's namespaces, which in vm \
                     isolation are in the guest, where a host program cannot run (use \
                     --isolation native)"
                )));
            }
        }
        let list = |v: &Option<Vec<Hook>>| v.clone().unwrap_or_default();
        #[allow(deprecated)]
        let prestart = list(h.prestart());
        Ok(HostHooks {
            prestart,
            create_runtime: list(h.create_runtime()),
            poststart: list(h.poststart()),
            poststop: list(h.poststop()),
        })
    }

    /// prestart, then createRuntime, with the container `created` (as natively): the first failure fails
    /// the create, as the runtime spec asks.
    pub fn run_create(&self, state: &serde_json::Value) -> Result<()> {
        let state = with_status(state, "created");
        for (stage, hooks) in [
            ("prestart", &self.prestart),
            ("createRuntime", &self.create_runtime),
        ] {
            agent::engine::run_hook_stage_in_order(stage, hooks, &state).map_err(Error::Vm)?;
        }
        Ok(())
    }

    /// poststart, with the container `running`: the first failure fails the start (the
    /// runtime spec since 1.1; the caller stops the container), as natively.
    pub fn run_poststart(&self, state: &serde_json::Value) -> Result<()> {
        let state = with_status(state, "running");
        agent::engine::run_hook_stage_in_order("poststart", &self.poststart, &state)
            .map_err(Error::Vm)
    }
}

fn with_status(state: &serde_json::Value, status: &str) -> String {
    let mut state = state.clone();
    state["status"] = status.into();
    state.to_string()
}

/// The spec the guest's engine gets: no hooks, since the host runs those it can.
pub fn without_hooks(spec: &Spec) -> Spec {
    let mut spec = spec.clone();
    spec.set_hooks(None::<Hooks>);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hooks: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "hooks": hooks,
        }))
        .unwrap()
    }

    #[test]
    fn host_stages_are_taken_and_container_stages_refused() {
        let s = spec(serde_json::json!({
            "prestart": [{"path": "/bin/true"}],
            "createRuntime": [{"path": "/bin/true"}, {"path": "/bin/false"}],
            "poststart": [{"path": "/bin/true"}],
            "poststop": [{"path": "/bin/true"}],
        }));
        let h = HostHooks::of(&s).unwrap();
        assert_eq!(
            (
                h.prestart.len(),
                h.create_runtime.len(),
                h.poststart.len(),
                h.poststop.len()
            ),
            (1, 2, 1, 1)
        );
        assert!(without_hooks(&s).hooks().is_none());
        let e = HostHooks::of(&spec(serde_json::json!({
            "startContainer": [{"path": "/bin/true"}],
        })))
        .unwrap_err()
        .to_string();
        assert!(e.contains("hooks.startContainer"), "{e}");
    }

    #[test]
    fn a_failing_create_hook_fails_and_names_itself_with_the_state_on_stdin() {
        let dir = std::env::temp_dir().join(format!("host-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let seen = dir.join("state.json");
        let record = format!("cat > {}", seen.display());
        let s = spec(serde_json::json!({
            "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", record]}],
            "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}],
        }));
        let h = HostHooks::of(&s).unwrap();
        let state = serde_json::json!({"id": "c1", "pid": 42, "status": "created"});
        let e = h.run_create(&state).unwrap_err().to_string();
        assert!(e.contains("hooks.createRuntime[0]"), "{e}");
        let got: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
        assert_eq!(got["status"], "created");
        assert_eq!(got["pid"], 42);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
