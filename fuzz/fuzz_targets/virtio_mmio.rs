//! The virtio-mmio register interface: any sequence of 32-bit (and odd-sized or unaligned)
//! register and config-space reads and writes, so the driver status state machine, feature
//! negotiation, queue setup with any addresses and sizes, notifications, interrupt acks and
//! resets in any order, in front of a real device (rng, block, net on an in-memory backend or
//! vsock) whose queues are served after each notification, over guest memory holding the
//! rest of the input.
//!
//! Input: device selector, 2-byte length of the access list, the accesses, guest memory.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use sandbox_fuzz::{guest_memory, temp_dir, vsock_host, Reader};
use vmm::devices::bus::BusDevice;
use vmm::devices::virtio::block::{Block, DiskImage};
use vmm::devices::virtio::mmio::MmioTransport;
use vmm::devices::virtio::net::{MemoryBackend, Net};
use vmm::devices::virtio::rng::Rng;
use vmm::devices::virtio::vsock::{Vsock, VsockConfig};
use vmm::devices::virtio::VirtioDevice;

const QUEUE_NOTIFY: u64 = 0x50;
const STATUS: u64 = 0x70;

enum Dev {
    Rng(Arc<Mutex<Rng>>),
    Block(Arc<Mutex<Block>>),
    Net(Arc<Mutex<Net<MemoryBackend>>>),
    Vsock(Arc<Mutex<Vsock>>),
}

impl Dev {
    fn serve(&self) {
        match self {
            Dev::Rng(d) => drop(d.lock().unwrap().process_queue()),
            Dev::Block(d) => drop(d.lock().unwrap().process_queue()),
            Dev::Net(d) => {
                let mut d = d.lock().unwrap();
                d.backend_mut().inbound.push_back(vec![0x11; 60]);
                d.handle_tx();
                d.handle_rx();
            }
            Dev::Vsock(d) => {
                let mut d = d.lock().unwrap();
                d.finish_reset();
                d.process_tx();
            }
        }
    }
}

fn disk_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = temp_dir().join("disk.img");
        std::fs::write(&path, vec![0u8; 16 * 512]).unwrap();
        path
    })
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let which = r.u8();
    let ops_len = r.u16() as usize;
    let mut ops = Reader::new(r.bytes(ops_len));
    let mem = guest_memory(r.rest());
    let (dev, dyn_dev): (Dev, Arc<Mutex<dyn VirtioDevice>>) = match which % 4 {
        0 => {
            let d = Arc::new(Mutex::new(Rng::new().unwrap()));
            (Dev::Rng(d.clone()), d)
        }
        1 => {
            let disk = DiskImage::open(disk_path(), which & 4 != 0).unwrap();
            let d = Arc::new(Mutex::new(Block::new(disk, [b'x'; 20]).unwrap()));
            (Dev::Block(d.clone()), d)
        }
        2 => {
            let d = Arc::new(Mutex::new(
                Net::with_backend(MemoryBackend::default(), None).unwrap(),
            ));
            (Dev::Net(d.clone()), d)
        }
        _ => {
            let config = VsockConfig {
                cid: vsock_host::GUEST_CID,
                path: vsock_host::path(),
            };
            let d = Arc::new(Mutex::new(Vsock::new(&config).unwrap()));
            (Dev::Vsock(d.clone()), d)
        }
    };
    let mut mmio = MmioTransport::new(mem, dyn_dev).unwrap();
    let mut peers = Vec::new();
    let mut steps = 0;
    while !ops.is_empty() && steps < 256 {
        steps += 1;
        let a = ops.u8();
        let b = ops.u8();
        let len = [4usize, 1, 2, 8][(b & 3) as usize];
        let offset = if a & 0x40 != 0 {
            0x100 + (b >> 2) as u64
        } else if b & 0x80 != 0 {
            (a & 0x3f) as u64 * 4 + (b >> 4 & 3) as u64
        } else {
            (a & 0x3f) as u64 * 4
        };
        let mut buf = [0u8; 8];
        if a & 0x80 != 0 {
            buf[..4].copy_from_slice(&ops.u32().to_le_bytes());
            if len == 8 {
                buf[4..].copy_from_slice(&ops.u32().to_le_bytes());
            }
            mmio.write(0, offset, &buf[..len]);
            if offset == QUEUE_NOTIFY || offset == STATUS {
                dev.serve();
            }
        } else {
            mmio.read(0, offset, &mut buf[..len]);
        }
    }
    vsock_host::accept_all(&mut peers);
});
