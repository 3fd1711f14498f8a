//! Running the real `sandbox-vmm` binary with the test guest (vmm/test-guest) and reading
//! what the guest reported on its serial port. Shared by the `test_guest*` integration tests.

#![allow(dead_code)] // each test crate uses its own part of this module

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Generous: guest kernel-mode code may be emulated (about 2 M instructions/s) and the tests
/// share the host's cores with each other.
pub const VMM_TIMEOUT: Duration = Duration::from_secs(180);

pub fn vmm_binary() -> &'static str {
    env!("CARGO_BIN_EXE_sandbox-vmm")
}

/// The test guest ELF, built by vmm's build script.
pub fn guest_elf() -> &'static Path {
    Path::new(env!("TEST_GUEST_ELF"))
}

/// Whether this host can run VMs at all; tests that need one say so and stop otherwise.
pub fn kvm_available(test: &str) -> bool {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        eprintln!("{test}: skipped, /dev/kvm cannot be opened on this host");
    }
    usable
}

/// A directory under the system temp dir, removed with everything in it when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "sandbox-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How one run of the VMM ended.
pub struct VmmRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl VmmRun {
    /// Runs `sandbox-vmm args...`, killing it if it is still running after `timeout`.
    pub fn run<I, S>(args: I, timeout: Duration) -> VmmRun
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::run_with_prefix(&[], args, timeout)
    }

    /// Runs `prefix... sandbox-vmm args...`, where the prefix is a command that execs the VMM
    /// in the same process (such as `ip netns exec NAME`).
    pub fn run_with_prefix<I, S>(prefix: &[&str], args: I, timeout: Duration) -> VmmRun
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(vmm_binary());
                c
            }
            None => Command::new(vmm_binary()),
        };
        let mut child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", vmm_binary()));
        let stdout = drain(child.stdout.take().expect("piped"));
        let stderr = drain(child.stderr.take().expect("piped"));
        let (status, timed_out) = wait_or_kill(&mut child, timeout);
        VmmRun {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
            timed_out,
        }
    }

    /// Everything the run printed, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {:?}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            if self.timed_out {
                " (killed after the timeout)"
            } else {
                ""
            },
            self.stdout,
            self.stderr
        )
    }

    /// The run ended by itself with exit status 0.
    pub fn assert_clean_exit(&self) {
        assert!(!self.timed_out, "the VMM hung:\n{}", self.describe());
        assert_eq!(
            self.status.code(),
            Some(0),
            "the VMM did not exit with status 0:\n{}",
            self.describe()
        );
    }

    /// The run failed the way bad input should fail: by itself, with a non-zero exit status,
    /// no panic, and an error message that mentions one of `words` (case-insensitive).
    pub fn assert_clear_error(&self, words: &[&str]) {
        assert!(!self.timed_out, "the VMM hung:\n{}", self.describe());
        let code = self.status.code();
        assert!(
            code.is_some(),
            "the VMM was killed by a signal:\n{}",
            self.describe()
        );
        assert_ne!(
            code,
            Some(0),
            "the VMM accepted bad input:\n{}",
            self.describe()
        );
        assert_ne!(
            code,
            Some(101),
            "exit status 101 is a Rust panic:\n{}",
            self.describe()
        );
        assert!(
            !self.stderr.contains("panicked"),
            "the VMM panicked:\n{}",
            self.describe()
        );
        let stderr = self.stderr.to_lowercase();
        assert!(
            words.iter().any(|w| stderr.contains(&w.to_lowercase())),
            "the error message names none of {words:?}:\n{}",
            self.describe()
        );
    }
}

fn drain<R: Read + Send + 'static>(mut pipe: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn wait_or_kill(child: &mut Child, timeout: Duration) -> (ExitStatus, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (status, false),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let status = child.wait().expect("waiting for the killed VMM");
                return (status, true);
            }
        }
    }
}

/// The arguments that boot the test guest.
pub struct GuestArgs {
    pub mem_mib: u64,
    pub vcpus: u32,
    pub cmdline: String,
    pub initrd: Option<PathBuf>,
    pub serial: String,
    pub extra: Vec<OsString>,
    /// A command that execs the VMM (for example in a network namespace).
    pub prefix: Vec<String>,
}

impl GuestArgs {
    pub fn new(mem_mib: u64, vcpus: u32) -> Self {
        GuestArgs {
            mem_mib,
            vcpus,
            cmdline: "console=ttyS0".to_string(),
            initrd: None,
            serial: "stdout".to_string(),
            extra: Vec::new(),
            prefix: Vec::new(),
        }
    }

    /// Adds `--flag value` after the base arguments.
    pub fn with(mut self, flag: &str, value: impl Into<OsString>) -> Self {
        self.extra.push(flag.into());
        self.extra.push(value.into());
        self
    }

    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--kernel".into(),
            guest_elf().into(),
            "--cmdline".into(),
            self.cmdline.clone().into(),
            "--vcpus".into(),
            self.vcpus.to_string().into(),
            "--mem-mib".into(),
            self.mem_mib.to_string().into(),
            "--serial".into(),
            self.serial.clone().into(),
        ];
        if let Some(initrd) = &self.initrd {
            args.push("--initrd".into());
            args.push(initrd.into());
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Boots the guest, expects it to finish and end the VM through the i8042 with status 0,
    /// and returns its report (read from stdout, or from the serial file when one is given).
    pub fn boot(&self) -> (VmmRun, GuestReport) {
        let prefix: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        let run = VmmRun::run_with_prefix(&prefix, self.to_args(), VMM_TIMEOUT);
        run.assert_clean_exit();
        let serial = match self.serial.strip_prefix("file:") {
            Some(path) => std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("reading the serial log {path}: {e}")),
            None => run.stdout.clone(),
        };
        let report = GuestReport::parse(&serial);
        report.assert_complete(&run);
        (run, report)
    }
}

/// What the guest printed: one fact per line, `key=value` fields, numbers in hex.
pub struct GuestReport {
    pub lines: Vec<String>,
}

impl GuestReport {
    pub fn parse(serial: &str) -> Self {
        GuestReport {
            lines: serial
                .lines()
                .map(|l| l.trim_end_matches('\r').to_string())
                .collect(),
        }
    }

    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The guest started, reached its last line, and no check failed.
    pub fn assert_complete(&self, run: &VmmRun) {
        assert!(
            self.lines.iter().any(|l| l == "TESTGUEST start"),
            "the guest never started:\n{}",
            run.describe()
        );
        let failures: Vec<&String> = self
            .lines
            .iter()
            .filter(|l| l.starts_with("FAIL"))
            .collect();
        assert!(
            failures.is_empty(),
            "the guest reported failures {failures:#?}:\n{}",
            self.text()
        );
        assert!(
            self.lines.iter().any(|l| l == "TESTGUEST done"),
            "the guest did not finish:\n{}",
            run.describe()
        );
    }

    /// Lines starting with `prefix ` (the first word), in order.
    pub fn records(&self, prefix: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.split_whitespace().next() == Some(prefix))
            .map(|l| l.as_str())
            .collect()
    }

    /// The one `CHECK <what> ok ...` line.
    pub fn check(&self, what: &str) -> &str {
        let head = format!("CHECK {what} ok");
        let found: Vec<&String> = self
            .lines
            .iter()
            .filter(|l| l.as_str() == head || l.starts_with(&format!("{head} ")))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one `{head}` line:\n{}",
            self.text()
        );
        found[0]
    }
}

/// The value of `key=0x...` in a report line.
pub fn hex_field(line: &str, key: &str) -> Option<u64> {
    let value = field(line, key)?;
    u64::from_str_radix(value.strip_prefix("0x")?, 16).ok()
}

/// The raw value of `key=...` in a report line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

pub fn hex_field_or_panic(line: &str, key: &str) -> u64 {
    hex_field(line, key).unwrap_or_else(|| panic!("no hex `{key}=` in {line:?}"))
}

/// FNV-1a, 32-bit: what the guest computes over the initrd.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

const SPIN_LOAD_ADDR: u64 = 0x10_0000;

/// A minimal x86_64 ELF kernel whose entry point is `jmp $`.
pub fn spinning_kernel(path: &Path) {
    let code = [0xeb, 0xfe];
    let mut elf = Vec::new();
    // ELF header.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&SPIN_LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                                // One PT_LOAD segment with the code right after the program header.
    let offset = 64 + 56u64;
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&offset.to_le_bytes());
    elf.extend_from_slice(&SPIN_LOAD_ADDR.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&SPIN_LOAD_ADDR.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&code);
    std::fs::write(path, &elf).unwrap();
}
