//! Reaching the agent of a sandbox: its unix socket in native isolation, the VMM's vsock
//! socket in vm isolation. Protocol errors become runtime errors that say which container.

use std::time::Duration;

use agent::protocol::{Client, Endpoint, ProtocolError};

use crate::error::Error;
use crate::state::{ContainerRecord, Isolation};

pub fn endpoint(rec: &ContainerRecord) -> Endpoint {
    match rec.isolation {
        Isolation::Native => Endpoint::Unix(rec.agent_socket.clone()),
        Isolation::Vm => Endpoint::guest_agent(rec.agent_socket.clone()),
    }
}

pub fn connect(rec: &ContainerRecord) -> crate::error::Result<Client> {
    Client::connect_timeout(endpoint(rec), Duration::from_secs(2)).map_err(|e| {
        Error::Agent(format!(
            "cannot reach the agent of container {:?} at {}: {e}",
            rec.id,
            rec.agent_socket.display()
        ))
    })
}

/// Turns an agent failure into an error that names the operation.
pub fn agent_err(what: &str) -> impl Fn(ProtocolError) -> Error + '_ {
    move |e| match e.remote() {
        Some(reply) => Error::Agent(format!("{what}: {}", reply.message)),
        None => Error::Agent(format!("{what}: {e}")),
    }
}
