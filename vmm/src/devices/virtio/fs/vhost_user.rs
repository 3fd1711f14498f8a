//! The frontend side of a vhost-user session with a virtio-fs backend (virtiofsd): the
//! backend serves the queues itself, from guest memory it maps from the fds it is handed,
//! woken by the queues' ioeventfds and answering through call eventfds.
//!
//! Set-up follows the vhost-user spec's order: SET_OWNER and feature discovery when the
//! device is created, then at DRIVER_OK the acked features, the memory table and, per ring,
//! size, addresses, base, call and kick fds and (with protocol features) the enable.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// What we ask for beyond the base protocol: acks for every request, so a backend that
/// refuses the memory table or a ring says so at once instead of failing later.
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::REPLY_ACK;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to the vhost-user socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user {request} refused: {source}")]
    Request {
        request: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error(
        "guest memory at {0:#x} is not file-backed; a vhost-user backend needs guest memory \
         mapped from a shared file"
    )]
    NotShared(u64),
    #[error("queue {queue}: ring address {addr:#x} is not in guest memory")]
    RingAddress { queue: usize, addr: u64 },
}

fn request(request: &'static str) -> impl FnOnce(vhost::Error) -> BackendError {
    move |source| BackendError::Request { request, source }
}

pub struct Backend {
    frontend: Frontend,
    /// Virtio feature bits the backend implements, VHOST_USER_F_PROTOCOL_FEATURES included.
    features: u64,
    protocol_features: bool,
    queues: usize,
}

impl Backend {
    /// Connects to a listening backend and discovers what it implements.
    pub fn connect(path: &Path, queues: usize) -> Result<Self, BackendError> {
        let mut frontend =
            Frontend::connect(path, queues as u64).map_err(|source| BackendError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        frontend.set_owner().map_err(request("SET_OWNER"))?;
        let features = frontend.get_features().map_err(request("GET_FEATURES"))?;
        let protocol_features = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol_features {
            let offered = frontend
                .get_protocol_features()
                .map_err(request("GET_PROTOCOL_FEATURES"))?;
            frontend
                .set_protocol_features(offered & WANTED_PROTOCOL_FEATURES)
                .map_err(request("SET_PROTOCOL_FEATURES"))?;
        }
        Ok(Self {
            frontend,
            features,
            protocol_features,
            queues,
        })
    }

    /// The virtio feature bits the backend implements, for the driver to negotiate.
    pub fn device_features(&self) -> u64 {
        self.features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// Hands the backend guest memory and the rings the driver set up; it serves them from
    /// then on. `kicks[i]` is queue `i`'s ioeventfd, `calls[i]` what it signals when done.
    pub fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
        acked_features: u64,
    ) -> Result<(), BackendError> {
        let vhost_bit = if self.protocol_features {
            VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        } else {
            0
        };
        self.frontend
            .set_features(acked_features | vhost_bit)
            .map_err(request("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|_| BackendError::NotShared(r.start_addr().0))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(request("SET_MEM_TABLE"))?;
        for (index, ((queue, kick), call)) in queues.iter().zip(kicks).zip(calls).enumerate() {
            self.start_ring(mem, index, queue, kick, call)?;
        }
        Ok(())
    }

    fn start_ring(
        &mut self,
        mem: &GuestMemoryMmap,
        index: usize,
        queue: &Queue,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<(), BackendError> {
        // vhost-user ring addresses are in this process's address space; the backend
        // translates them through the memory table.
        let host = |addr: u64| {
            mem.get_host_address(GuestAddress(addr))
                .map(|p| p as u64)
                .map_err(|_| BackendError::RingAddress { queue: index, addr })
        };
        let ring = VringConfigData {
            queue_max_size: queue.max_size(),
            queue_size: queue.size(),
            flags: 0,
            desc_table_addr: host(queue.desc_table())?,
            used_ring_addr: host(queue.used_ring())?,
            avail_ring_addr: host(queue.avail_ring())?,
            log_addr: None,
        };
        let f = &mut self.frontend;
        f.set_vring_num(index, queue.size())
            .map_err(request("SET_VRING_NUM"))?;
        f.set_vring_addr(index, &ring)
            .map_err(request("SET_VRING_ADDR"))?;
        f.set_vring_base(index, queue.next_avail())
            .map_err(request("SET_VRING_BASE"))?;
        f.set_vring_call(index, call)
            .map_err(request("SET_VRING_CALL"))?;
        f.set_vring_kick(index, kick)
            .map_err(request("SET_VRING_KICK"))?;
        if self.protocol_features {
            f.set_vring_enable(index, true)
                .map_err(request("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// Driver reset: the backend stops serving the rings (GET_VRING_BASE stops a ring).
    pub fn stop(&mut self) -> Result<(), BackendError> {
        for index in 0..self.queues {
            if self.protocol_features {
                self.frontend
                    .set_vring_enable(index, false)
                    .map_err(request("SET_VRING_ENABLE"))?;
            }
            self.frontend
                .get_vring_base(index)
                .map_err(request("GET_VRING_BASE"))?;
        }
        Ok(())
    }
}

impl AsRawFd for Backend {
    /// The session's socket: readable or hung up only when the backend went away (it sends
    /// nothing unasked on this channel).
    fn as_raw_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}
