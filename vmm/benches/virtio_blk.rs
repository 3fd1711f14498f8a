//! virtio-blk sequential throughput, driven device-side: requests are laid out in guest
//! memory through a driver-side queue helper, and the device serves them against an image on
//! tmpfs exactly as it does for a guest (descriptor parsing, checks, preadv/pwritev straight
//! into guest memory, used ring, interrupt). One thread, so the figure is per core.
//!
//! Run: `cargo bench -p vmm --bench virtio_blk` (options: `-- --image-mib N --total-gib N
//! --request-kib N --dir PATH`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::block::{Block, BlockConfig};
use vmm::devices::virtio::test_utils::{test_memory, Buf, DriverQueue, MockInterrupt};
use vmm::devices::virtio::VIRTIO_F_VERSION_1;
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZE: u16 = 256;
/// Requests in flight per batch; three descriptors each fit the ring.
const BATCH: u64 = 64;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;

struct Args {
    image_mib: u64,
    total_gib: u64,
    request_kib: u64,
    dir: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        image_mib: 256,
        total_gib: 4,
        request_kib: 64,
        dir: PathBuf::from("/dev/shm"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = || -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} needs a number"))
        };
        match k.as_str() {
            "--image-mib" => a.image_mib = num(),
            "--total-gib" => a.total_gib = num(),
            "--request-kib" => a.request_kib = num(),
            "--dir" => a.dir = it.next().expect("--dir needs a path").into(),
            // cargo bench passes --bench; ignore what we do not know.
            _ => {}
        }
    }
    a
}

struct Rig {
    mem: GuestMemoryMmap,
    dq: DriverQueue,
    blk: Block,
    hdr_base: u64,
    data_base: u64,
    status_base: u64,
}

fn run(rig: &mut Rig, req_type: u32, req_bytes: u64, image_bytes: u64, total: u64) -> f64 {
    let sectors_per_req = req_bytes / 512;
    let reqs_in_image = image_bytes / req_bytes;
    let total_reqs = total / req_bytes;
    let mut next_req = 0u64;
    let start = Instant::now();
    while next_req < total_reqs {
        let batch = BATCH.min(total_reqs - next_req);
        for i in 0..batch {
            let sector = ((next_req + i) % reqs_in_image) * sectors_per_req;
            let hdr = rig.hdr_base + 16 * i;
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&req_type.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            rig.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
            let data = rig.data_base + req_bytes * i;
            let data_buf = if req_type == T_IN {
                Buf::write(data, req_bytes as u32)
            } else {
                Buf::read(data, req_bytes as u32)
            };
            rig.dq.add_chain(&[
                Buf::read(hdr, 16),
                data_buf,
                Buf::write(rig.status_base + i, 1),
            ]);
        }
        // Status bytes start as 0xff so that an untouched one fails the check below.
        let statuses = vec![0xffu8; batch as usize];
        rig.mem
            .write_slice(&statuses, GuestAddress(rig.status_base))
            .unwrap();
        let done = rig.blk.process_queue().unwrap();
        assert_eq!(done as u64, batch);
        let mut statuses = vec![0xffu8; batch as usize];
        rig.mem
            .read_slice(&mut statuses, GuestAddress(rig.status_base))
            .unwrap();
        assert!(statuses.iter().all(|&s| s == 0), "a request failed");
        next_req += batch;
    }
    let secs = start.elapsed().as_secs_f64();
    (total_reqs * req_bytes) as f64 / secs / (1u64 << 30) as f64
}

fn main() {
    let args = parse_args();
    let req_bytes = args.request_kib * 1024;
    let image_bytes = args.image_mib << 20;
    let total = args.total_gib << 30;
    let path = args
        .dir
        .join(format!("virtio-blk-bench-{}.img", std::process::id()));
    {
        let f = std::fs::File::create(&path).expect("create image");
        f.set_len(image_bytes).unwrap();
    }
    // Fill the image so reads come from populated page cache, not holes.
    std::fs::write(&path, vec![0x5au8; image_bytes as usize]).unwrap();

    let mut blk = Block::from_config(&BlockConfig {
        path: path.clone(),
        read_only: false,
        id: None,
    })
    .expect("open image");
    let data_base = 0x10_0000u64;
    let mem_size = data_base + req_bytes * BATCH + 0x10_0000;
    let mem = test_memory(mem_size as usize);
    let dq = DriverQueue::new(&mem, GuestAddress(0x1000), QUEUE_SIZE);
    let hdr_base = dq.end().0;
    let status_base = hdr_base + 16 * BATCH;
    let irq = Arc::new(MockInterrupt::default());
    dq.activate_device(
        &mut blk,
        irq.clone(),
        EventFd::new(0).unwrap(),
        VIRTIO_F_VERSION_1,
    )
    .unwrap();
    let mut rig = Rig {
        mem,
        dq,
        blk,
        hdr_base,
        data_base,
        status_base,
    };
    println!(
        "virtio-blk sequential, {} KiB requests, {} MiB image in {}, {} GiB per direction, batches of {BATCH}",
        args.request_kib,
        args.image_mib,
        args.dir.display(),
        args.total_gib
    );
    // Warm-up pass over the whole image.
    run(&mut rig, T_IN, req_bytes, image_bytes, image_bytes);
    let read = run(&mut rig, T_IN, req_bytes, image_bytes, total);
    println!("read:  {read:.2} GiB/s");
    let write = run(&mut rig, T_OUT, req_bytes, image_bytes, total);
    println!("write: {write:.2} GiB/s");
    println!("interrupts raised: {}", irq.queue_count());
    let _ = std::fs::remove_file(&path);
}
