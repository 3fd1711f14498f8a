//! Boots our real guest kernel (built by `guest-kernel-config/build.sh`) with the real
//! `sandbox-vmm` binary and checks, from the serial log, that Linux received what the VMM
//! gave it: the kernel banner, our command line, the e820 map of the VMM's memory layout,
//! and the kernel handing over to `/init` from our initramfs.
//!
//! The kernel is looked up in `$SANDBOX_GUEST_DIR` (default `/var/lib/sandbox/guest`). When
//! it (or /dev/kvm) is missing the tests are skipped with a message, unless
//! `SANDBOX_REQUIRE_GUEST_KERNEL=1` (set by CI after building the kernel), in which case they
//! fail.
//!
//! Where guest kernel mode is emulated rather than run by hardware virtualisation, booting
//! takes tens of seconds, hence the generous timeouts. The command line only contains
//! settings that suit any KVM host; see `BASE_CMDLINE`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm::arch::x86_64::boot_params::{e820_map, E820_RAM};

/// How long the kernel may take to reach `/init`: well under a second with hardware
/// virtualisation, about a minute where guest kernel mode is emulated, and several times
/// that when such a host's CPUs are busy with other work.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Kernel command line; each parameter suits KVM guests in general:
/// - `console=ttyS0`: the kernel log goes to the 16550 the VMM emulates on 0x3f8.
/// - `reboot=k panic=-1`: reboot and panic both end the VM through the i8042 reset line.
/// - `lapic=notscdeadline`: use the local APIC timer in one-shot mode rather than the
///   TSC-deadline MSR, which not every KVM implementation emulates.
/// - `tsc=reliable lpj=5000000`: trust the TSC (KVM keeps it stable) and skip the timed
///   delay-loop calibration, which costs seconds when kernel code does not run at full speed.
/// - `rcupdate.rcu_cpu_stall_suppress_at_boot=1`: on a busy host, or where kernel code is
///   emulated, boot can be slow enough for RCU to report stalls, and writing those long
///   reports to the serial console slows boot further.
/// - `clearcpuid=...`: see `KERNEL_HIDDEN_FEATURES`.
const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 lapic=notscdeadline tsc=reliable \
     lpj=5000000 rcupdate.rcu_cpu_stall_suppress_at_boot=1";

/// The VMM's `minimal` CPU template hides, in CPUID, features whose instructions a hypervisor
/// may be unable to emulate for guest kernel code. `clearcpuid=` tells the kernel the same
/// from the inside, for hypervisors that do not apply the CPUID a VMM sets (seen on a
/// software-nested KVM, whose KVM_GET_CPUID2 returns the host's bits after KVM_SET_CPUID2).
/// Clearing `xsave` also clears everything that depends on it (AVX and its extensions).
/// The kernel reads at most 127 characters of this list.
const KERNEL_HIDDEN_FEATURES: &str = "popcnt,xsave,smap,smep,fsgsbase,pcid,invpcid,pku,rdrand,\
     rdseed,clflushopt,clwb,movbe,bmi1,bmi2,adx,sha_ni,aes,pclmulqdq,cx16";

/// Hides the CPU features a KVM host may be unable to emulate for guest kernel code.
const CPU_TEMPLATE: &str = "minimal";

/// The command line for a test: our base line, the hidden features, the test's own
/// parameters, then `$SANDBOX_LINUX_BOOT_EXTRA_CMDLINE` (e.g. `initcall_debug` to see where
/// boot time goes).
fn cmdline(test_params: &str) -> String {
    let mut line = format!("{BASE_CMDLINE} clearcpuid={KERNEL_HIDDEN_FEATURES} {test_params}");
    if let Ok(extra) = std::env::var("SANDBOX_LINUX_BOOT_EXTRA_CMDLINE") {
        if !extra.trim().is_empty() {
            line.push(' ');
            line.push_str(extra.trim());
        }
    }
    line
}

/// Small, because where kernel mode is emulated, setting up memory takes time in
/// proportion to its size.
const MEM_MIB: u64 = 64;
const VCPUS: u32 = 1;

/// What one VM of a test is made of.
struct VmSpec {
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
    /// Device flags and the like.
    extra_args: Vec<String>,
}

#[test]
fn linux_boots_to_init() {
    let Some(kernel) = GuestKernel::find_or_skip("linux_boots_to_init") else {
        return;
    };
    let work = TempDir::new("linux-boot");
    let initrd = write_initramfs(work.path()).expect("writing the initramfs");
    // A parameter of our own at the end proves the kernel read the whole line.
    let cmdline = cmdline("sandbox.test=linux_boots_to_init");

    let spec = VmSpec {
        kernel: kernel.vmlinux.clone(),
        initrd,
        cmdline: cmdline.clone(),
        extra_args: Vec::new(),
    };
    let started = Instant::now();
    let mut vm = VmmRun::start(&spec, None);
    let init_line = vm.wait_for("Run /init as init process", BOOT_TIMEOUT);
    let boot_time = started.elapsed();
    let log = vm.stop();
    eprintln!("Linux reached /init after {boot_time:.1?}: {init_line}");

    let banner = find_line(&log, "Linux version ").unwrap_or_else(|| {
        panic!("no kernel banner in the serial log:\n{log}");
    });
    if let Some(release) = &kernel.release {
        assert!(
            banner.contains(&format!("Linux version {release} ")),
            "banner {banner:?} is not from the kernel we built ({release})"
        );
    }

    let echoed = find_line(&log, "Command line: ").unwrap_or_else(|| {
        panic!("the kernel did not print its command line:\n{log}");
    });
    assert!(
        echoed.ends_with(&format!("Command line: {cmdline}")),
        "the kernel saw another command line:\n  ours:   {cmdline}\n  kernel: {echoed}"
    );

    assert_eq!(
        kernel_e820(&log),
        expected_e820(MEM_MIB << 20),
        "the kernel's e820 map differs from the VMM's layout; serial log:\n{log}"
    );

    // The kernel only runs /init when it exists, and only our initramfs has one.
    assert!(
        log.contains("Unpacking initramfs...") && log.contains("Freeing initrd memory: "),
        "the kernel did not unpack our initramfs:\n{log}"
    );
}

/// A disk, a NIC and a vsock device (and an entropy source) attached to the VM: Linux's own
/// virtio drivers find each of them on the command line, bind to them and report what the
/// device told them, all before `/init` runs.
#[test]
fn linux_probes_virtio_devices() {
    let Some(kernel) = GuestKernel::find_or_skip("linux_probes_virtio_devices") else {
        return;
    };
    let Some(netns) = NetNs::create_or_skip("linux_probes_virtio_devices") else {
        return;
    };
    let work = TempDir::new("linux-devices");
    let initrd = write_initramfs(work.path()).expect("writing the initramfs");

    // An odd size, so that no default could match it by chance.
    let disk_sectors: u64 = 20_000 + u64::from(std::process::id() % 1000);
    let disk = work.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(disk_sectors * 512))
        .expect("creating the disk image");
    let mac = "52:54:00:5a:b0:07";
    let vsock = work.path().join("vsock.sock");

    // `ip=` has the kernel configure eth0 itself and print the MAC it read from the device;
    // `dyndbg=` makes the driver core say which driver bound to which virtio device, at
    // debug level, which `loglevel=8` lets through to the console.
    let cmdline = cmdline(
        "sandbox.test=linux_probes_virtio_devices \
         ip=10.0.2.15::10.0.2.1:255.255.255.0::eth0:off \
         dyndbg=\"func driver_bound +p\" loglevel=8",
    );
    let spec = VmSpec {
        kernel: kernel.vmlinux.clone(),
        initrd,
        cmdline: cmdline.clone(),
        extra_args: vec![
            "--disk".into(),
            format!("path={}", disk.display()),
            "--net".into(),
            format!("tap={},mac={mac}", NetNs::TAP),
            "--vsock".into(),
            format!("cid=3,path={}", vsock.display()),
            "--rng".into(),
        ],
    };
    let started = Instant::now();
    let mut vm = VmmRun::start(&spec, Some(&netns));
    vm.wait_for("Run /init as init process", BOOT_TIMEOUT);
    eprintln!("Linux reached /init after {:.1?}", started.elapsed());
    let log = vm.stop();
    let before_init = &log[..log.find("Run /init as init process").unwrap()];

    // The VMM announced four virtio-mmio windows on the command line, after ours.
    let echoed = find_line(&log, "Command line: ").expect("the kernel's command line");
    assert!(
        echoed.contains(&cmdline),
        "our command line is missing from {echoed:?}"
    );
    let announced = echoed.matches("virtio_mmio.device=").count();
    assert_eq!(announced, 4, "expected 4 virtio-mmio devices in {echoed:?}");
    let registered = before_init
        .matches("Registering device virtio-mmio.")
        .count();
    assert_eq!(
        registered, 4,
        "virtio-mmio did not register 4 devices:\n{log}"
    );

    // Each driver bound to a device.
    for driver in [
        "virtio_blk",
        "virtio_net",
        "vmw_vsock_virtio_transport",
        "virtio_rng",
    ] {
        let bound = format!("driver: '{driver}': driver_bound: bound to device 'virtio");
        assert!(
            before_init.contains(&bound),
            "no {driver} bound to a virtio device before /init:\n{log}"
        );
    }

    // The disk's size as the guest read it from the device's configuration space.
    let blocks = format!("[vda] {disk_sectors} 512-byte logical blocks");
    assert!(
        before_init.contains(&blocks),
        "virtio_blk did not report {blocks:?}:\n{log}"
    );

    // The NIC's MAC as the guest read it, on the interface the kernel configured.
    let nic = format!("device=eth0, hwaddr={mac}, ipaddr=10.0.2.15");
    assert!(
        before_init.contains(&nic),
        "the kernel did not configure eth0 with MAC {mac}:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------
// The guest kernel

struct GuestKernel {
    vmlinux: PathBuf,
    /// `uname -r` of the build, from the installed kernel.config's tree, when known.
    release: Option<String>,
}

impl GuestKernel {
    /// Finds the installed guest kernel, or says why the test is skipped and returns `None`.
    /// With `SANDBOX_REQUIRE_GUEST_KERNEL=1` a missing kernel or /dev/kvm fails the test.
    fn find_or_skip(test: &str) -> Option<GuestKernel> {
        let dir = std::env::var_os("SANDBOX_GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/sandbox/guest"));
        let vmlinux = dir.join("vmlinux");
        let missing = if !vmlinux.is_file() {
            Some(format!(
                "no guest kernel at {} (build it with guest-kernel-config/build.sh)",
                vmlinux.display()
            ))
        } else if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            Some(format!("/dev/kvm is not usable: {e}"))
        } else {
            None
        };
        if let Some(why) = missing {
            if std::env::var("SANDBOX_REQUIRE_GUEST_KERNEL").as_deref() == Ok("1") {
                panic!("{test}: {why}, and SANDBOX_REQUIRE_GUEST_KERNEL=1");
            }
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
        let release = std::fs::read_to_string(dir.join("kernel.release"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        Some(GuestKernel { vmlinux, release })
    }
}

// ---------------------------------------------------------------------------------------
// Reading the kernel log

fn find_line<'a>(log: &'a str, needle: &str) -> Option<&'a str> {
    log.lines()
        .find(|l| l.contains(needle))
        .map(|l| l.trim_end())
}

/// The map as the kernel printed it: `BIOS-e820: [mem 0x...-0x...] usable`, timestamps
/// dropped.
fn kernel_e820(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            l.find("BIOS-e820: ")
                .map(|at| l[at..].trim_end().to_owned())
        })
        .collect()
}

/// The VMM's e820 map for `mem_size` bytes, in the kernel's words.
fn expected_e820(mem_size: u64) -> Vec<String> {
    e820_map(mem_size)
        .expect("the VMM's e820 map")
        .iter()
        .map(|e| {
            let kind = if e.kind == E820_RAM {
                "usable"
            } else {
                "reserved"
            };
            format!(
                "BIOS-e820: [mem {:#018x}-{:#018x}] {kind}",
                e.addr,
                e.addr + e.size - 1
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Running the VMM

/// A running `sandbox-vmm` whose serial output (its stdout) is collected line by line.
/// Dropping it kills the VMM.
struct VmmRun {
    child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl VmmRun {
    /// Starts `sandbox-vmm` for `spec`, inside network namespace `netns` when given.
    fn start(spec: &VmSpec, netns: Option<&NetNs>) -> VmmRun {
        let vmm = env!("CARGO_BIN_EXE_sandbox-vmm");
        let mut command = match netns {
            // `ip netns exec` execs the VMM itself, so killing the child kills the VMM.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, vmm]);
                c
            }
            None => Command::new(vmm),
        };
        command
            .arg("--kernel")
            .arg(&spec.kernel)
            .arg("--initrd")
            .arg(&spec.initrd)
            .args(["--cmdline", &spec.cmdline])
            .args(["--vcpus", &VCPUS.to_string()])
            .args(["--mem-mib", &MEM_MIB.to_string()])
            .args(["--cpu-template", CPU_TEMPLATE])
            .args(["--serial", "stdout"])
            .args(&spec.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starting sandbox-vmm");

        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            // The serial port carries bytes, not necessarily UTF-8.
            let mut reader = BufReader::new(stdout);
            let mut raw = Vec::new();
            while matches!(reader.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&raw).replace('\r', "");
                sink.lock().unwrap().push_str(&line);
                if tx.send(line).is_err() {
                    break;
                }
                raw.clear();
            }
        });
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        VmmRun {
            child,
            lines,
            log,
            stderr: Some(stderr),
        }
    }

    /// Waits for a serial line containing `needle` and returns it; fails the test with the
    /// log so far when the VMM exits first or `timeout` passes.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line.trim_end().to_owned(),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    let log = self.stop();
                    panic!("no {needle:?} on the serial port within {timeout:?}; log:\n{log}");
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    let log = self.stop();
                    panic!("sandbox-vmm exited ({status:?}) before {needle:?}; log:\n{log}");
                }
            }
        }
    }

    /// Kills the VMM (if it still runs) and returns the whole serial log followed by the
    /// VMM's own stderr.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let mut log = self.log.lock().unwrap().clone();
        if !stderr.is_empty() {
            log.push_str("\n--- sandbox-vmm stderr ---\n");
            log.push_str(&stderr);
        }
        log
    }
}

impl Drop for VmmRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// A network namespace for the TAP device

/// A network namespace of the test's own, deleted (with the TAP device in it) when dropped.
struct NetNs {
    name: String,
}

impl NetNs {
    /// Name of the TAP device the VMM creates inside the namespace.
    const TAP: &'static str = "sbxtap0";

    /// Creates the namespace, or says why the test is skipped (not root, no `ip`). With
    /// `SANDBOX_REQUIRE_GUEST_KERNEL=1` that fails the test instead.
    fn create_or_skip(test: &str) -> Option<NetNs> {
        let name = format!("sbx-linux-boot-{}", std::process::id());
        let made = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))
            .and_then(|out| {
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "ip netns add failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
            });
        match made {
            Ok(()) => Some(NetNs { name }),
            Err(why) => {
                if std::env::var("SANDBOX_REQUIRE_GUEST_KERNEL").as_deref() == Ok("1") {
                    panic!("{test}: {why}, and SANDBOX_REQUIRE_GUEST_KERNEL=1");
                }
                eprintln!("SKIPPED {test}: {why} (creating a network namespace needs root)");
                None
            }
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

// ---------------------------------------------------------------------------------------
// The initramfs

/// Writes an initramfs (cpio "newc") whose `/init` is a tiny static x86-64 program that
/// prints a line on the console and exits.
fn write_initramfs(dir: &Path) -> std::io::Result<PathBuf> {
    let mut cpio = Vec::new();
    cpio_entry(&mut cpio, "dev", 0o040_755, 0, &[]);
    cpio_entry(&mut cpio, "dev/console", 0o020_600, (5 << 8) | 1, &[]);
    cpio_entry(&mut cpio, "init", 0o100_755, 0, &tiny_init());
    cpio_entry(&mut cpio, "TRAILER!!!", 0, 0, &[]);
    let path = dir.join("initramfs.cpio");
    std::fs::write(&path, cpio)?;
    Ok(path)
}

/// Appends one cpio "newc" record; `rdev` is `major << 8 | minor` for device nodes.
fn cpio_entry(out: &mut Vec<u8>, name: &str, mode: u32, rdev: u32, data: &[u8]) {
    static INODE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let ino = INODE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev >> 8,
        rdev & 0xff,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A static ELF64 executable: `write(1, MESSAGE)`, then `exit_group(0)`. As PID 1 its exit
/// panics the kernel, which `panic=-1` turns into a reboot that ends the VM.
fn tiny_init() -> Vec<u8> {
    const MESSAGE: &[u8] = b"sandbox tiny init: running in guest user mode\n";
    const BASE: u64 = 0x40_0000;
    const EHDR: usize = 64;
    const PHDR: usize = 56;

    let mut code = Vec::new();
    code.extend_from_slice(&[0xb8, 1, 0, 0, 0]); // mov eax, SYS_write
    code.extend_from_slice(&[0xbf, 1, 0, 0, 0]); // mov edi, 1
    let lea_end = code.len() + 7;
    code.extend_from_slice(&[0x48, 0x8d, 0x35, 0, 0, 0, 0]); // lea rsi, [rip + message]
    code.push(0xba); // mov edx, len
    code.extend_from_slice(&(MESSAGE.len() as u32).to_le_bytes());
    code.extend_from_slice(&[0x0f, 0x05]); // syscall
    code.extend_from_slice(&[0xb8, 231, 0, 0, 0]); // mov eax, SYS_exit_group
    code.extend_from_slice(&[0x31, 0xff]); // xor edi, edi
    code.extend_from_slice(&[0x0f, 0x05]); // syscall
    code.extend_from_slice(&[0xeb, 0xfe]); // jmp .
    let message_offset = (code.len() - lea_end) as u32;
    code[lea_end - 4..lea_end].copy_from_slice(&message_offset.to_le_bytes());
    code.extend_from_slice(MESSAGE);

    let entry = BASE + (EHDR + PHDR) as u64;
    let file_size = (EHDR + PHDR + code.len()) as u64;
    let mut elf = Vec::with_capacity(file_size as usize);
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    elf.extend_from_slice(&entry.to_le_bytes());
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR as u16).to_le_bytes());
    elf.extend_from_slice(&(PHDR as u16).to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // no section headers
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // PF_R | PF_X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&file_size.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&file_size.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(&code);
    elf
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("sandbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn tiny_init_runs_on_the_host() {
    // The same bytes the guest gets: a static executable that prints and exits cleanly.
    let dir = TempDir::new("tiny-init");
    let path = dir.path().join("init");
    std::fs::write(&path, tiny_init()).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(&path).output().expect("running the tiny init");
    assert!(
        out.status.success(),
        "tiny init exited with {:?}",
        out.status
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sandbox tiny init: running in guest user mode\n"
    );
}
