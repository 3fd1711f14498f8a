//! Task events for containerd. They are queued and forwarded by one thread, so they reach
//! containerd in the order they happened and a slow event service never holds up a task
//! request (containerd may be inside a request to this shim when an event is sent).

use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

pub struct Events {
    tx: Mutex<Sender<(&'static str, Box<dyn MessageDyn>)>>,
}

impl Events {
    /// Starts the forwarding thread over `publisher`, for containerd namespace `namespace`.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Events {
        let (tx, rx) = channel::<(&'static str, Box<dyn MessageDyn>)>();
        std::thread::spawn(move || {
            for (topic, event) in rx {
                if let Err(e) = publisher.publish(Context::default(), topic, &namespace, event) {
                    log::warn!("publish {topic}: {e}");
                }
            }
        });
        Events { tx: Mutex::new(tx) }
    }

    pub fn send(&self, topic: &'static str, event: impl MessageDyn) {
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send((topic, Box::new(event)));
        }
    }
}
