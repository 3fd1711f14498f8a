//! virtio-net frames per second, driven device-side: frames are laid out in guest memory
//! through a driver-side queue helper (a virtio-net header descriptor plus a frame
//! descriptor per chain, as Linux sends them), and the device's datapath serves the queue
//! exactly as on the event loop (chain checks, gather, backend write, used ring).
//!
//! Backends:
//! - `mock`: an in-memory backend that only counts frames: the device's own cost.
//! - `tap`: a real TAP created in a private network namespace (root needed); the host
//!   kernel takes each frame (an unknown ethertype, dropped by the stack after delivery).
//!
//! Directions: `tx` (guest -> backend) for both backends, `rx` (backend -> guest) for the
//! mock backend, which hands the device the same frame again and again.
//!
//! Run: `cargo bench -p vmm --bench virtio_net` (options: `-- --frames N --backend
//! mock|tap|all`).

use std::time::Instant;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::net::datapath::{NetEngine, VNET_HDR_LEN};
use vmm::devices::virtio::net::{MemoryBackend, NetBackend, Tap};
use vmm::devices::virtio::test_utils::{test_memory, Buf, DriverQueue};

const QUEUE_SIZE: u16 = 256;
/// Chains per batch: two descriptors each fill the ring.
const BATCH: u64 = 128;
const FRAME_SIZES: [usize; 2] = [64, 1514];
const DATA_BASE: u64 = 0x10_0000;

struct Args {
    frames: u64,
    backend: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        frames: 2_000_000,
        backend: "all".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--frames" => {
                a.frames = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--frames needs a number")
            }
            "--backend" => a.backend = it.next().expect("--backend needs mock, tap or all"),
            // cargo bench passes --bench; ignore what we do not know.
            _ => {}
        }
    }
    a
}

/// An Ethernet frame of `size` bytes (without FCS) to a locally administered MAC, with an
/// experimental ethertype nobody handles.
fn frame(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

fn bench_tx<B: NetBackend>(net: &mut NetEngine<B>, size: usize, frames: u64) -> (f64, u64) {
    let mem: GuestMemoryMmap = test_memory(0x100_0000);
    let mut dq = DriverQueue::new(&mem, GuestAddress(0x1000), QUEUE_SIZE);
    let mut q = dq.device_queue();
    let f = frame(size);
    // One header and one frame buffer per ring slot, written once: the device copies from
    // guest memory on every send regardless.
    for i in 0..BATCH {
        let hdr = DATA_BASE + i * 0x1_0000;
        mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(hdr))
            .unwrap();
        mem.write_slice(&f, GuestAddress(hdr + 0x100)).unwrap();
    }
    let before = net.stats.tx_frames;
    let start = Instant::now();
    let mut sent = 0;
    while sent < frames {
        let batch = BATCH.min(frames - sent);
        for i in 0..batch {
            let hdr = DATA_BASE + i * 0x1_0000;
            dq.add_chain(&[
                Buf::read(hdr, VNET_HDR_LEN as u32),
                Buf::read(hdr + 0x100, size as u32),
            ]);
        }
        net.process_tx(&mem, &mut q);
        sent += batch;
    }
    let secs = start.elapsed().as_secs_f64();
    let done = net.stats.tx_frames - before;
    assert_eq!(net.stats.tx_malformed, 0);
    (secs, done)
}

fn bench_rx_mock(size: usize, frames: u64) -> (f64, u64) {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&frame(size));
    let backend = MemoryBackend {
        repeat: Some(f),
        repeat_left: frames,
        ..MemoryBackend::default()
    };
    let mut net = NetEngine::new(backend, None);
    let mem: GuestMemoryMmap = test_memory(0x100_0000);
    let mut dq = DriverQueue::new(&mem, GuestAddress(0x1000), QUEUE_SIZE);
    let mut q = dq.device_queue();
    let start = Instant::now();
    while net.stats.rx_frames < frames {
        // Linux without merged buffers posts one 1518+header buffer per frame (no GSO).
        for i in 0..(QUEUE_SIZE as u64) {
            dq.add_chain(&[Buf::write(DATA_BASE + i * 0x1000, 1536)]);
        }
        net.process_rx(&mem, &mut q);
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(net.stats.rx_dropped, 0);
    (secs, net.stats.rx_frames)
}

fn report(backend: &str, dir: &str, size: usize, (secs, frames): (f64, u64)) {
    let fps = frames as f64 / secs;
    let gbit = fps * size as f64 * 8.0 / 1e9;
    println!(
        "virtio-net {dir} {backend:>4} {size:>5}-byte frames: {:>10.0} frames/s  {gbit:>6.2} Gbit/s  ({frames} frames in {secs:.3} s)",
        fps
    );
}

/// Runs the TAP part on a thread in a fresh network namespace; the TAP goes away with it.
fn bench_tap(frames: u64) {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "virtio-net tap: unshare(CLONE_NEWNET) failed ({}); run as root",
                std::io::Error::last_os_error()
            );
            return;
        }
        let tap = Tap::open("benchtap0", VNET_HDR_LEN).expect("create TAP in private netns");
        let up = std::process::Command::new("ip")
            .args(["link", "set", "benchtap0", "up"])
            .status()
            .expect("run ip");
        assert!(up.success());
        let mut net = NetEngine::new(tap, None);
        for size in FRAME_SIZES {
            report("tap", "tx", size, bench_tx(&mut net, size, frames));
        }
        assert_eq!(net.stats.tx_errors, 0, "{:?}", net.stats);
    })
    .join()
    .expect("tap bench thread");
}

fn main() {
    let args = parse_args();
    if args.backend == "mock" || args.backend == "all" {
        let backend = MemoryBackend {
            count_only: true,
            ..MemoryBackend::default()
        };
        let mut net = NetEngine::new(backend, None);
        for size in FRAME_SIZES {
            report("mock", "tx", size, bench_tx(&mut net, size, args.frames));
        }
        for size in FRAME_SIZES {
            report("mock", "rx", size, bench_rx_mock(size, args.frames));
        }
    }
    if args.backend == "tap" || args.backend == "all" {
        bench_tap(args.frames);
    }
}
