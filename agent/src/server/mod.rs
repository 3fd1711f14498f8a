//! The agent's RPC server: accepts connections on a unix socket or on vsock and serves
//! each on its own thread. See docs/agent-protocol.md.

pub mod agent;
pub mod connection;
pub mod copied_files;
pub mod listener;
pub mod oom;
pub mod process;
pub mod reaper;
pub mod stream;

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

pub use agent::{Agent, Mode};
pub use listener::{ListenAddr, Listener};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: ListenAddr,
        #[source]
        source: io::Error,
    },
    #[error("state directory {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("accept on {addr}: {source}")]
    Accept {
        addr: ListenAddr,
        #[source]
        source: io::Error,
    },
}

/// How the server was asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `destroy_sandbox` with `power_off`.
    PowerOff,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: ListenAddr,
    pub mode: Mode,
    /// Where the agent keeps per-container directories (rootfs mount points).
    pub root: PathBuf,
    /// Leave each container's init to whoever adopts orphans above the agent (the agent must
    /// then not be a subreaper itself): the process tree runc leaves, where the caller of
    /// `create` reaps the init. The agent watches the init through a pidfd and reports its
    /// end without a status (`ExitStatus` with neither code nor signal).
    pub orphan_inits: bool,
}

/// Binds the listener, tells `listening`, and serves until a client destroys the sandbox
/// with `power_off`.
pub fn run(config: ServerConfig, listening: impl FnOnce()) -> Result<Ending, ServerError> {
    fs::create_dir_all(&config.root).map_err(|source| ServerError::Root {
        path: config.root.clone(),
        source,
    })?;
    let listener =
        Arc::new(
            Listener::bind(&config.listen).map_err(|source| ServerError::Listen {
                addr: config.listen.clone(),
                source,
            })?,
        );
    listening();
    let reaper = reaper::Reaper::start();
    let agent = Arc::new(Agent::new(
        config.mode,
        config.root.clone(),
        reaper,
        Arc::downgrade(&listener),
        config.orphan_inits,
    ));
    loop {
        match listener.accept() {
            Ok(conn) => {
                let agent = agent.clone();
                if let Err(e) = thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || connection::serve(agent, conn))
                {
                    log::warn!("cannot start a connection thread: {e}");
                }
            }
            Err(_) if agent.shutdown_requested() => return Ok(Ending::PowerOff),
            // Out of descriptors or memory for a moment: keep serving the clients we have.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE)
                        | Some(libc::ENFILE)
                        | Some(libc::ENOBUFS)
                        | Some(libc::ENOMEM)
                ) =>
            {
                thread::sleep(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(ServerError::Accept {
                    addr: config.listen,
                    source,
                })
            }
        }
    }
}
