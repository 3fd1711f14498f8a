//! virtio-net as a [`VirtioDevice`]: feature negotiation and config space for the transport,
//! and event-loop glue (queue notifications, TAP readiness) around [`NetEngine`].

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::backend::NetBackend;
use super::config::{MacAddr, NetConfig};
use super::datapath::{NetEngine, NetStats, NUM_QUEUES, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use super::tap::{Tap, TapError};
use crate::devices::virtio::device::ActiveQueues;
use crate::devices::virtio::{
    ActivateError, ActivationEvent, EventRegistry, VirtioDevice, VirtioInterrupt,
};

const TOKEN_ACTIVATION: u32 = 0;
const TOKEN_RX_QUEUE: u32 = 1;
const TOKEN_TX_QUEUE: u32 = 2;
const TOKEN_BACKEND: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot create the activation eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

pub struct Net<B: NetBackend = Tap> {
    engine: NetEngine<B>,
    queue_max_sizes: [u16; NUM_QUEUES],
    activation: ActivationEvent,
    active: Option<ActiveQueues>,
    registry: EventRegistry,
}

impl Net<Tap> {
    /// A NIC on the TAP named in `config`; the TAP is opened now so that a bad name or
    /// missing permission fails VM start-up, not the guest's first packet.
    pub fn from_config(config: &NetConfig) -> Result<Self, NetError> {
        let tap = Tap::open(&config.tap, super::datapath::VNET_HDR_LEN)?;
        Self::with_backend(tap, config.mac)
    }
}

impl<B: NetBackend> Net<B> {
    pub fn with_backend(backend: B, mac: Option<MacAddr>) -> Result<Self, NetError> {
        Ok(Net {
            engine: NetEngine::new(backend, mac),
            queue_max_sizes: [QUEUE_SIZE; NUM_QUEUES],
            activation: ActivationEvent::new().map_err(NetError::EventFd)?,
            active: None,
            registry: EventRegistry::default(),
        })
    }

    pub fn stats(&self) -> NetStats {
        self.engine.stats
    }

    pub fn backend(&self) -> &B {
        &self.engine.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.engine.backend
    }

    /// Receive path: runs on an RX notification (buffers added) and on TAP readability.
    pub fn handle_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self
            .engine
            .process_rx(&active.mem, &mut active.queues[RX_QUEUE])
        {
            active.signal_used("net");
        }
    }

    /// Transmit path: runs on a TX notification and when the TAP becomes writable.
    pub fn handle_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self
            .engine
            .process_tx(&active.mem, &mut active.queues[TX_QUEUE])
        {
            active.signal_used("net");
        }
    }

    fn register(&mut self, ops: &mut EventOps) {
        self.registry.remove_all(ops);
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let mut result = self
            .registry
            .add(
                ops,
                &active.queue_evts[RX_QUEUE],
                TOKEN_RX_QUEUE,
                EventSet::IN,
            )
            .and_then(|()| {
                self.registry.add(
                    ops,
                    &active.queue_evts[TX_QUEUE],
                    TOKEN_TX_QUEUE,
                    EventSet::IN,
                )
            });
        if let (Ok(()), Some(fd)) = (&result, self.engine.backend.raw_fd()) {
            // Edge-triggered: a backend we stopped reading (no guest buffers) or that was
            // full must not wake the loop again and again until the guest catches up.
            result = self.registry.add(
                ops,
                &RawFdRef(fd),
                TOKEN_BACKEND,
                EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
            );
        }
        if let Err(e) = result {
            error!("net: cannot register with the event loop: {e}");
        }
        // Notifications that came before registration were not lost (eventfds count), but
        // frames may already wait in the TAP: look now.
        self.handle_tx();
        self.handle_rx();
    }
}

struct RawFdRef(std::os::fd::RawFd);

impl AsRawFd for RawFdRef {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn avail_features(&self) -> u64 {
        self.engine.avail_features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let space = self.engine.config_space();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| space.get(at as usize).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is read-only for modern drivers without VIRTIO_NET_F_CTRL_MAC_ADDR.
        warn!(
            "net: ignoring a {}-byte write to read-only config space at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let active = ActiveQueues::new(&self.queue_max_sizes, mem, interrupt, queues, queue_evts)?;
        self.engine
            .activate(acked_features)
            .map_err(|e| ActivateError::Backend(format!("setting TAP offloads: {e}")))?;
        self.active = Some(active);
        self.activation.notify().map_err(ActivateError::Signal)
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) -> bool {
        if let Some(active) = self.active.take() {
            self.registry.retire(active.queue_evts);
        }
        self.engine.reset();
        if let Err(e) = self.activation.notify() {
            // Without the wake-up the old registrations stay; the device is still inert
            // because it has no queues, so the reset itself holds.
            error!("net: cannot wake the event loop after reset: {e}");
        }
        true
    }
}

impl<B: NetBackend> MutEventSubscriber for Net<B> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.activation.register(ops, TOKEN_ACTIVATION) {
            error!("net: cannot register the activation event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATION => {
                self.activation.consume();
                self.register(ops);
            }
            TOKEN_RX_QUEUE => {
                if let Some(active) = &self.active {
                    let _ = active.queue_evts[RX_QUEUE].read();
                }
                self.handle_rx();
            }
            TOKEN_TX_QUEUE => {
                if let Some(active) = &self.active {
                    let _ = active.queue_evts[TX_QUEUE].read();
                }
                self.handle_tx();
            }
            TOKEN_BACKEND => {
                let set = events.event_set();
                if set.contains(EventSet::OUT) && self.engine.tx_waiting_for_backend() {
                    self.handle_tx();
                }
                if set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                    self.handle_rx();
                }
            }
            other => warn!("net: event with unknown token {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::devices::virtio::event_loop::DeviceEventLoop;
    use crate::devices::virtio::net::testing::{
        arp_reply_sender, arp_request, in_private_netns, ip,
    };
    use crate::devices::virtio::test_utils::{test_memory, Buf, DriverQueue, MockInterrupt};

    fn run_until(el: &mut DeviceEventLoop, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            el.run_once(50).unwrap();
        }
    }

    #[test]
    fn config_space_and_features_reach_the_transport() {
        let mac = MacAddr([0x52, 0x54, 0, 1, 2, 3]);
        let net = Net::with_backend(
            crate::devices::virtio::net::MemoryBackend::default(),
            Some(mac),
        )
        .unwrap();
        let mut buf = [0u8; 6];
        net.read_config(0, &mut buf);
        assert_eq!(buf, mac.bytes());
        let mut past = [0xaau8; 4];
        net.read_config(64, &mut past);
        assert_eq!(past, [0; 4]);
        assert_eq!(net.device_type(), VIRTIO_ID_NET);
        assert_eq!(net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
        assert_ne!(
            net.avail_features() & crate::devices::virtio::VIRTIO_F_VERSION_1,
            0
        );
    }

    /// The whole path on the device event loop: TX notification -> TAP -> host kernel ->
    /// TAP readable with no guest buffer (the frame waits) -> RX notification -> delivered.
    #[test]
    fn event_loop_drives_a_tap_nic_with_receive_flow_control() {
        in_private_netns(|| {
            let config: NetConfig = "tap=sbxloop0,mac=02:00:00:00:00:02".parse().unwrap();
            let net = Arc::new(Mutex::new(Net::from_config(&config).unwrap()));
            ip(&["addr", "add", "10.0.8.1/24", "dev", "sbxloop0"]);
            ip(&["link", "set", "sbxloop0", "up"]);
            let mut el = DeviceEventLoop::new().unwrap();
            el.add(net.clone());

            let mem = test_memory(0x40_0000);
            let mut rxq = DriverQueue::new(&mem, GuestAddress(0x1000), 16);
            let mut txq = DriverQueue::new(&mem, GuestAddress(0x8000), 16);
            let irq = Arc::new(MockInterrupt::default());
            let rx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
            let tx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
            net.lock()
                .unwrap()
                .activate(
                    mem.clone(),
                    irq.clone(),
                    vec![rxq.device_queue(), txq.device_queue()],
                    vec![rx_evt.try_clone().unwrap(), tx_evt.try_clone().unwrap()],
                    crate::devices::virtio::VIRTIO_F_VERSION_1,
                )
                .unwrap();

            let req = arp_request(config.mac.unwrap().bytes(), [10, 0, 8, 2], [10, 0, 8, 1]);
            mem.write_slice(&req, GuestAddress(0x10_0000)).unwrap();
            txq.add_chain(&[Buf::read(0x10_0000, req.len() as u32)]);
            tx_evt.write(1).unwrap();
            run_until(&mut el, "the TX completion", || txq.used_idx() == 1);
            // The reply arrives while the guest has no receive buffer: it waits in the device.
            run_until(&mut el, "a frame held for lack of buffers", || {
                net.lock().unwrap().engine.rx_waiting_for_buffers()
            });
            assert_eq!(rxq.used_idx(), 0);

            let mut seen = 0u16;
            let mut got_reply = false;
            while !got_reply && seen < 100 {
                rxq.add_chain(&[Buf::write(0x20_0000 + u64::from(seen) * 0x1000, 2048)]);
                rx_evt.write(1).unwrap();
                run_until(&mut el, "a received frame", || rxq.used_idx() > seen);
                let (_, len) = rxq.used_elem(seen);
                let mut frame = vec![0u8; len as usize];
                mem.read_slice(
                    &mut frame,
                    GuestAddress(0x20_0000 + u64::from(seen) * 0x1000),
                )
                .unwrap();
                seen += 1;
                got_reply = arp_reply_sender(&frame) == Some([10, 0, 8, 1]);
            }
            assert!(got_reply, "no ARP reply among {seen} frames");
            assert!(irq.queue_count() >= 2);

            // After a reset the device lets go of its queues and stays quiet.
            assert!(net.lock().unwrap().reset());
            el.run_once(50).unwrap();
            assert!(!net.lock().unwrap().is_activated());
        });
    }
}
