//! The device against a real backend: Debian's virtiofsd (qemu-system-common) sharing a
//! temporary directory, driven through two driver-side queues in shared guest memory, with
//! a FUSE_INIT request as the guest's first message would be.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{Fs, NUM_QUEUES, QUEUE_SIZE};
use super::{FsConfig, FsError};
use crate::devices::virtio::test_utils::{Buf, DriverQueue, MockInterrupt};
use crate::devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use crate::vstate::memory::{create_guest_memory, MemoryBacking};
use crate::vstate::stop::{StopHandle, VmExit};

const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
const FUSE_INIT: u32 = 26;
const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;
const INIT_IN_LEN: usize = 64;
const INIT_OUT_LEN: usize = 64;
const WAIT: Duration = Duration::from_secs(20);

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

struct Virtiofsd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Virtiofsd {
    /// Shares a fresh directory; returns once the socket is there.
    fn start() -> Self {
        assert!(
            Path::new(VIRTIOFSD).is_file(),
            "{VIRTIOFSD} is missing: install qemu-system-common (scripts/setup.sh does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("hello"), b"from the host").unwrap();
        let socket = dir.path().join("fs.sock");
        let child = Command::new(VIRTIOFSD)
            .arg(format!("--socket-path={}", socket.display()))
            .arg("-o")
            .arg(format!("source={}", shared.display()))
            .args(["-o", "cache=none", "-o", "sandbox=namespace"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while !socket.exists() {
            assert!(Instant::now() < deadline, "virtiofsd made no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            socket,
            _dir: dir,
        }
    }

    fn config(&self) -> FsConfig {
        FsConfig {
            tag: "shared".into(),
            socket: self.socket.clone(),
        }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the event loop until `done` or the bound passes.
fn run_until(em: &mut Manager, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        em.run_with_timeout(50).unwrap();
    }
}

struct Driver {
    mem: vm_memory::GuestMemoryMmap,
    queues: Vec<DriverQueue>,
    kicks: Vec<EventFd>,
    irq: Arc<MockInterrupt>,
}

fn activate(fs: &Arc<Mutex<Fs>>, backing: MemoryBacking) -> Driver {
    let mem = create_guest_memory(16, backing).unwrap();
    let queues: Vec<_> = (0..NUM_QUEUES)
        .map(|i| DriverQueue::new(&mem, GuestAddress(0x10000 * (i as u64 + 1)), QUEUE_SIZE))
        .collect();
    let kicks: Vec<_> = (0..NUM_QUEUES)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let irq = Arc::new(MockInterrupt::default());
    fs.lock()
        .unwrap()
        .activate(
            mem.clone(),
            irq.clone(),
            queues.iter().map(|q| q.device_queue()).collect(),
            kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
            VIRTIO_F_VERSION_1,
        )
        .unwrap();
    Driver {
        mem,
        queues,
        kicks,
        irq,
    }
}

fn manager_with(fs: &Arc<Mutex<Fs>>) -> Manager {
    let mut em = Manager::new().unwrap();
    em.add_subscriber(fs.clone());
    em
}

#[test]
fn a_fuse_init_request_is_answered_by_virtiofsd() {
    let daemon = Virtiofsd::start();
    let stop = StopHandle::new();
    let fs = Arc::new(Mutex::new(Fs::new(&daemon.config(), stop.clone()).unwrap()));
    {
        let dev = fs.lock().unwrap();
        assert_eq!(dev.device_type(), 26);
        assert_ne!(dev.avail_features() & VIRTIO_F_VERSION_1, 0);
        let mut tag = [0u8; 8];
        dev.read_config(0, &mut tag);
        assert_eq!(&tag[..6], b"shared");
    }
    let mut em = manager_with(&fs);
    let mut driver = activate(&fs, MemoryBacking::SharedFile);
    assert!(fs.lock().unwrap().is_activated());

    let (req, reply) = (0x10_0000u64, 0x11_0000u64);
    let mut msg = vec![0u8; IN_HEADER_LEN + INIT_IN_LEN];
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_le_bytes());
    msg[4..8].copy_from_slice(&FUSE_INIT.to_le_bytes());
    msg[8..16].copy_from_slice(&0x77u64.to_le_bytes());
    msg[IN_HEADER_LEN..IN_HEADER_LEN + 4].copy_from_slice(&7u32.to_le_bytes());
    msg[IN_HEADER_LEN + 4..IN_HEADER_LEN + 8].copy_from_slice(&31u32.to_le_bytes());
    driver.mem.write_slice(&msg, GuestAddress(req)).unwrap();
    driver.queues[1].add_chain(&[
        Buf::read(req, msg.len() as u32),
        Buf::write(reply, (OUT_HEADER_LEN + INIT_OUT_LEN) as u32),
    ]);
    driver.kicks[1].write(1).unwrap();

    // libvhost-user signals a ring's call fd once when it is set (for a reconnecting
    // driver), so the reply, not the first interrupt, is what to wait for.
    let queue = &driver.queues[1];
    run_until(&mut em, "the FUSE_INIT reply", || queue.used_idx() == 1);
    em.run_with_timeout(50).unwrap();
    assert!(
        driver.irq.queue_count() > 0,
        "the reply raised no interrupt"
    );
    let (_, written) = driver.queues[1].used_elem(0);
    assert!(
        written as usize >= OUT_HEADER_LEN,
        "reply of {written} bytes"
    );
    let mut out = [0u8; OUT_HEADER_LEN + 8];
    driver
        .mem
        .read_slice(&mut out, GuestAddress(reply))
        .unwrap();
    let error = i32::from_le_bytes(out[4..8].try_into().unwrap());
    let unique = u64::from_le_bytes(out[8..16].try_into().unwrap());
    let major = u32::from_le_bytes(out[16..20].try_into().unwrap());
    assert_eq!((error, unique, major), (0, 0x77, 7));
    assert!(!stop.is_stopping());

    // A reset hands the rings back; the backend is still there for the next activation.
    assert!(fs.lock().unwrap().reset());
    run_until(&mut em, "the reset", || !fs.lock().unwrap().is_activated());
    em.run_with_timeout(50).unwrap();
    assert!(!stop.is_stopping(), "{:?}", stop.take_reason());
    driver.queues.clear();
}

#[test]
fn the_backend_dying_stops_the_vm_with_the_reason() {
    let mut daemon = Virtiofsd::start();
    let stop = StopHandle::new();
    let fs = Arc::new(Mutex::new(Fs::new(&daemon.config(), stop.clone()).unwrap()));
    let mut em = manager_with(&fs);
    let _driver = activate(&fs, MemoryBacking::SharedFile);
    em.run_with_timeout(50).unwrap();
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let s = stop.clone();
    run_until(&mut em, "the VM stop request", || s.is_stopping());
    let reason = stop.take_reason().unwrap();
    assert!(
        matches!(&reason, VmExit::DeviceFailed { device, message }
            if device == "virtio-fs shared" && message.contains("closed its socket")),
        "{reason}"
    );
}

#[test]
fn private_guest_memory_is_refused_with_the_reason() {
    let daemon = Virtiofsd::start();
    let stop = StopHandle::new();
    let fs = Arc::new(Mutex::new(Fs::new(&daemon.config(), stop.clone()).unwrap()));
    let mut em = manager_with(&fs);
    let _driver = activate(&fs, MemoryBacking::Anonymous);
    let s = stop.clone();
    run_until(&mut em, "the VM stop request", || s.is_stopping());
    let reason = stop.take_reason().unwrap().to_string();
    assert!(reason.contains("not file-backed"), "{reason}");
}

#[test]
fn a_missing_backend_socket_is_named() {
    let config = FsConfig {
        tag: "t".into(),
        socket: "/nonexistent/fs.sock".into(),
    };
    let err = Fs::new(&config, StopHandle::new())
        .err()
        .expect("no backend");
    assert!(matches!(err, FsError::Backend(_)));
    assert!(err.to_string().contains("/nonexistent/fs.sock"), "{err}");
}
