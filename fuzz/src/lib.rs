//! What the fuzz targets share: guest memory and split virtqueues laid out from the fuzz
//! input (so descriptor tables, rings and buffers are whatever the input says), a reader
//! of the input's control bytes, and a private temporary directory per process.
//!
//! Everything here works on in-memory structures, files in a private temporary directory and
//! unix sockets in it; nothing opens AF_VSOCK or touches the network.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::test_utils::MockInterrupt;
use vmm::devices::virtio::{VirtioDevice, VirtioInterrupt};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory size: small, so that random addresses often land inside it.
pub const MEM_SIZE: usize = 0x1_0000;
/// Entries of every queue the targets set up.
pub const QUEUE_SIZE: u16 = 16;
/// Queue `i` has its descriptor table at `i * QUEUE_STRIDE`, its available ring 0x100 after
/// it and its used ring 0x200 after it; data buffers are free to live anywhere, usually
/// from [`DATA_START`].
pub const QUEUE_STRIDE: u64 = 0x400;
pub const DATA_START: u64 = 0x1000;
/// Bytes of control header in front of the memory image in the device targets.
pub const HEADER_LEN: usize = 9;

/// The head of a device target's input: the feature bits the driver acks (masked with what
/// the device offers) and one byte of target-specific switches. The rest of the input is
/// copied into guest memory from address 0.
pub struct DeviceInput<'a> {
    pub features: u64,
    pub ctl: u8,
    pub image: &'a [u8],
}

impl<'a> DeviceInput<'a> {
    pub fn parse(data: &'a [u8]) -> Self {
        let mut head = [0u8; HEADER_LEN];
        let n = data.len().min(HEADER_LEN);
        head[..n].copy_from_slice(&data[..n]);
        let features = u64::from_le_bytes(head[..8].try_into().unwrap());
        DeviceInput {
            features,
            ctl: head[8],
            image: &data[n..],
        }
    }
}

/// Guest memory holding `image` from address 0 (the rest zero). The mapping is made once per
/// thread and rewritten for each input.
pub fn guest_memory(image: &[u8]) -> GuestMemoryMmap {
    thread_local! {
        static MEM: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    }
    MEM.with(|mem| {
        static ZEROS: [u8; MEM_SIZE] = [0; MEM_SIZE];
        mem.write_slice(&ZEROS, GuestAddress(0)).unwrap();
        let len = image.len().min(MEM_SIZE);
        mem.write_slice(&image[..len], GuestAddress(0)).unwrap();
        mem.clone()
    })
}

/// Queue `index` as the transport hands it to a device once the driver set it up.
pub fn queue(index: u64) -> Queue {
    let base = index * QUEUE_STRIDE;
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.try_set_desc_table_address(GuestAddress(base)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(base + 0x100))
        .unwrap();
    q.try_set_used_ring_address(GuestAddress(base + 0x200))
        .unwrap();
    q.set_ready(true);
    q
}

/// Activates `dev` with `count` queues laid out as [`queue`] says, acking `features` masked
/// with what the device offers. Returns the interrupt counter.
pub fn activate(
    dev: &mut dyn VirtioDevice,
    mem: &GuestMemoryMmap,
    count: u64,
    features: u64,
) -> Arc<MockInterrupt> {
    let irq = Arc::new(MockInterrupt::default());
    let queues = (0..count).map(queue).collect();
    let evts = (0..count)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let acked = dev.avail_features() & features;
    dev.activate(
        mem.clone(),
        irq.clone() as Arc<dyn VirtioInterrupt>,
        queues,
        evts,
        acked,
    )
    .expect("queues laid out by the harness are valid");
    irq
}

/// The target's own directory, `$TMPDIR/sandbox-fuzz-<target>`, emptied and made on first
/// use. Its name does not depend on the process so that seed inputs can name paths in it
/// (the image targets' canary); so run one process per target at a time.
pub fn temp_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().ok();
        let name = exe
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "target".into());
        let dir = std::env::temp_dir().join(format!("sandbox-fuzz-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fuzz temp dir");
        dir
    })
}

/// Reads control bytes off the front of an input; past its end every read is zero.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        self.u32() as u64 | (self.u32() as u64) << 32
    }
    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// The host side of the vsock targets: the muxer's socket path in the private directory,
/// and unix listeners on `<path>_<port>` for [`HOST_PORTS`] so that guest connection
/// requests to those ports succeed. Made once per process.
pub mod vsock_host {
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::sync::OnceLock;

    pub const GUEST_CID: u64 = 3;
    pub const HOST_PORTS: [u32; 2] = [1024, 5000];

    struct Host {
        path: PathBuf,
        listeners: Vec<UnixListener>,
    }

    fn host() -> &'static Host {
        static HOST: OnceLock<Host> = OnceLock::new();
        HOST.get_or_init(|| {
            let path = super::temp_dir().join("v.sock");
            let listeners = HOST_PORTS
                .iter()
                .map(|port| {
                    let l = UnixListener::bind(format!("{}_{port}", path.display())).unwrap();
                    l.set_nonblocking(true).unwrap();
                    l
                })
                .collect();
            Host { path, listeners }
        })
    }

    /// Where the muxer listens for host clients.
    pub fn path() -> PathBuf {
        host().path.clone()
    }

    /// The host ends of the connections guests made since the last call.
    pub fn accept_all(out: &mut Vec<UnixStream>) {
        for l in &host().listeners {
            while let Ok((s, _)) = l.accept() {
                s.set_nonblocking(true).unwrap();
                out.push(s);
            }
        }
    }
}

/// A directory beside the ones the image targets write into, holding a file, a
/// subdirectory and a symlink: whatever an image does, it must stay exactly as made.
pub mod canary {
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    fn dir() -> &'static PathBuf {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir = super::temp_dir().join("canary");
            std::fs::create_dir_all(dir.join("sub")).unwrap();
            std::fs::write(dir.join("victim"), b"canary").unwrap();
            std::fs::write(dir.join("sub/keep"), b"keep").unwrap();
            let _ = std::os::unix::fs::symlink("victim", dir.join("link"));
            dir
        })
    }

    /// The canary's absolute path (seed inputs name it to aim at it).
    pub fn path() -> &'static Path {
        dir()
    }

    fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, u64, u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            let mut names: Vec<_> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for p in names {
                let m = std::fs::symlink_metadata(&p).unwrap();
                let content = if m.is_file() {
                    std::fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                if m.is_dir() {
                    todo.push(p.clone());
                }
                out.push((p, m.mode(), m.nlink(), m.uid() as u64, content));
            }
        }
        out
    }

    /// Panics if anything in the canary changed since the first call.
    pub fn check() {
        static BEFORE: OnceLock<Vec<(PathBuf, u32, u64, u64, Vec<u8>)>> = OnceLock::new();
        let before = BEFORE.get_or_init(|| snapshot(dir()));
        let now = snapshot(dir());
        assert!(&now == before, "the canary beside the image changed");
    }
}
