//! Every thread of a running `sandbox-vmm` is under its seccomp filter (and none is with
//! `--no-seccomp`), checked from /proc while a guest that spins forever keeps the VM up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod test_guest_support;
use test_guest_support::spinning_kernel;

struct Vm {
    child: Child,
    dir: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_vm(name: &str, extra: &[&str]) -> Vm {
    let dir = std::env::temp_dir().join(format!("vmm-seccomp-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("spin.elf");
    spinning_kernel(&kernel);
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sandbox-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .args([
            "--vcpus",
            "2",
            "--mem-mib",
            "32",
            "--serial",
            "none",
            "--rng",
        ])
        .arg("--disk")
        .arg(format!("path={}", disk.display()))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Vm { child, dir }
}

/// Kernel workers KVM attaches to the VM's process (e.g. `kvm-nx-lpage-recovery`) run no
/// user code, so seccomp does not apply to them.
fn is_kernel_worker(task: &Path) -> bool {
    const PF_USER_WORKER: u64 = 0x0000_4000;
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
        return false;
    };
    // Fields after the parenthesised name: state ppid pgrp session tty_nr tpgid flags.
    let flags = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6))
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    flags & (PF_USER_WORKER | PF_KTHREAD) != 0
}

/// (thread name, value of the Seccomp line) for every user thread of `pid`.
fn thread_seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            if is_kernel_worker(&t) {
                return None;
            }
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            let status = std::fs::read_to_string(t.join("status")).ok()?;
            let mode = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))?
                .trim()
                .to_string();
            Some((comm.trim().to_string(), mode))
        })
        .collect()
}

/// Waits until the VM has its main, device-loop and two vCPU threads, all in `mode`.
fn wait_for_threads(vm: &mut Vm, mode: &str) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = vm.child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            vm.child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("sandbox-vmm ended early ({status}): {err}");
        }
        let threads = thread_seccomp_modes(vm.child.id());
        let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
        let complete = ["sandbox-vmm", "vmm-devices", "vcpu0", "vcpu1"]
            .iter()
            .all(|want| names.contains(want));
        if complete && threads.iter().all(|(_, m)| m == mode) {
            return threads;
        }
        assert!(
            Instant::now() < deadline,
            "threads never all reached Seccomp {mode}: {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kvm_usable() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("skipped: /dev/kvm cannot be opened on this host");
    }
    ok
}

#[test]
fn every_vmm_thread_runs_under_a_seccomp_filter() {
    if !kvm_usable() {
        return;
    }
    let mut vm = start_vm("on", &[]);
    // Seccomp mode 2 is SECCOMP_MODE_FILTER.
    let threads = wait_for_threads(&mut vm, "2");
    assert_eq!(threads.len(), 4, "{threads:?}");
}

#[test]
fn no_seccomp_leaves_threads_unfiltered() {
    if !kvm_usable() {
        return;
    }
    let mut vm = start_vm("off", &["--no-seccomp"]);
    let threads = wait_for_threads(&mut vm, "0");
    assert_eq!(threads.len(), 4, "{threads:?}");
}
