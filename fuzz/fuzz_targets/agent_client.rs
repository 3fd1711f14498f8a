//! The runtime's side of the protocol (agent -> host), through the real `Client`: the VMM
//! proxy's `OK` line, the welcome, and the answers to one or two requests (framing, ids,
//! outcome, the kind of answer, list bounds, the connection breaking after garbage), read
//! from a fake agent on a unix socket in a private directory that sends the input's bytes.
//!
//! Input: one control byte (bit 0: the input brings its own welcome instead of a good one;
//! bit 1: the endpoint is the VMM's vsock proxy, bit 2: the input brings its own `OK` line;
//! bits 3-7: which requests), then what the agent sends.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixListener;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use agent::protocol::framing::write_message;
use agent::protocol::{Client, Endpoint, HelloReply, ProcessRef, PROTOCOL_VERSION};
use libfuzzer_sys::fuzz_target;
use sandbox_fuzz::temp_dir;

struct FakeAgent {
    path: std::path::PathBuf,
    send: Mutex<Sender<Vec<u8>>>,
    done: Mutex<Receiver<()>>,
}

/// A thread that, for each input, accepts one connection, sends the bytes, closes its
/// write half and reads until the client hangs up.
fn fake_agent() -> &'static FakeAgent {
    static AGENT: OnceLock<FakeAgent> = OnceLock::new();
    AGENT.get_or_init(|| {
        // A client that stops reading must get EPIPE, not kill the process.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let path = temp_dir().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (send, inputs) = channel::<Vec<u8>>();
        let (finished, done) = channel();
        thread::spawn(move || {
            for bytes in inputs {
                let (mut conn, _) = listener.accept().unwrap();
                let _ = conn.write_all(&bytes);
                let _ = conn.shutdown(Shutdown::Write);
                let mut sink = [0u8; 4096];
                while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
                finished.send(()).unwrap();
            }
        });
        FakeAgent {
            path,
            send: Mutex::new(send),
            done: Mutex::new(done),
        }
    })
}

fn call(client: &mut Client, which: u8) {
    let id = "c1";
    let _ = match which % 12 {
        0 => client.ping().map(drop),
        1 => client.state(id).map(drop),
        2 => client.processes(id).map(drop),
        3 => client.process_table(id).map(drop),
        4 => client.stats(id).map(drop),
        5 => client.oom_events(Some(id), 0, None).map(drop),
        6 => client.wait(ProcessRef::init(id)).map(drop),
        7 => client
            .signal(ProcessRef::exec(id, "e1"), 9, false)
            .map(drop),
        8 => client.start_container(id).map(drop),
        9 => client.remove_container(id, true).map(drop),
        10 => client.destroy_sandbox(false).map(drop),
        _ => client.resize_tty(ProcessRef::init(id), 24, 80).map(drop),
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let agent = fake_agent();
    let proxy = ctl & 2 != 0;
    let mut bytes = Vec::new();
    if proxy && ctl & 4 == 0 {
        bytes.extend_from_slice(b"OK 1073741824\n");
    }
    if ctl & 1 == 0 {
        let welcome = HelloReply::Welcome {
            version: PROTOCOL_VERSION,
            agent: "fuzz".into(),
        };
        write_message(&mut bytes, &welcome).unwrap();
    }
    bytes.extend_from_slice(rest);
    agent.send.lock().unwrap().send(bytes).unwrap();
    let endpoint = if proxy {
        Endpoint::VsockProxy {
            path: agent.path.clone(),
            port: 1024,
        }
    } else {
        Endpoint::Unix(agent.path.clone())
    };
    // The fake agent always ends its stream, so no bound is ever reached; they are here
    // so that a hang shows as a slow input, not a stuck run.
    if let Ok(mut client) = Client::connect_within(endpoint, Duration::from_secs(5)) {
        client.set_call_timeout(Some(Duration::from_secs(5)));
        call(&mut client, ctl >> 3);
        call(&mut client, (ctl >> 3).wrapping_add(1));
    }
    agent.done.lock().unwrap().recv().unwrap();
});
