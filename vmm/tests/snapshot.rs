//! Snapshots on the real /dev/kvm with the test guest (vmm/test-guest) in its counter mode:
//! a guest paused in the middle of its computation, written to files and restored into a
//! fresh VM, carries on and ends with what it would have printed without the snapshot; and
//! snapshot files that are not this build's, or not whole, are refused by name.

mod test_guest_support;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use test_guest_support::{guest_elf, kvm_available, TempDir};
use vmm::config::SerialOutput;
use vmm::devices::bus::BusDevice;
use vmm::snapshot::format::FormatError;
use vmm::snapshot::memory::MemoryFileError;
use vmm::snapshot::{SnapshotError, SnapshotFiles};
use vmm::{BuildError, VmConfig, VmExit, Vmm, VmmBuilder};

const COUNTER_PORT: u64 = 0x520;
/// What the test device answers to every read of the counter port.
const PORT_VALUE: u32 = 0x00c0_ffee;
const ROUNDS: u64 = 16;
const STEPS: u64 = 0x4000;
/// The round whose port read the source VM is paused at.
const PAUSE_ROUND: u64 = 6;
const VCPUS: u8 = 2;
const MEM_MIB: u64 = 32;
/// Guest kernel-mode code may be emulated (a few M instructions/s) and tests share cores.
const TIMEOUT: Duration = Duration::from_secs(120);

/// What the guest's counter prints, computed here the way guest.S computes it.
fn expected_counter_lines() -> Vec<String> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lines = vec!["COUNTER start".to_string()];
    for round in 0..ROUNDS {
        state ^= u64::from(PORT_VALUE);
        for _ in 0..STEPS {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state = state.wrapping_add(round);
        }
        lines.push(format!("COUNTER round={round:#x} value={state:#x}"));
    }
    lines.push(format!("CHECK counter ok value={state:#x}"));
    lines.push("TESTGUEST done".to_string());
    lines
}

/// Answers the counter port with `PORT_VALUE`. At read number `pause_at` (counting from 0)
/// it tells the test and holds the vCPU inside the exit until the test has asked for the
/// pause, so the vCPU stops right after that `in`, with KVM still owing the guest its value.
struct CounterPort {
    reads: u64,
    pause_at: Option<u64>,
    reached: Sender<()>,
    go: Receiver<()>,
}

impl BusDevice for CounterPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        let bytes = PORT_VALUE.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        if Some(self.reads) == self.pause_at {
            let _ = self.reached.send(());
            let _ = self.go.recv_timeout(TIMEOUT);
        }
        self.reads += 1;
    }

    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

struct PortControl {
    reached: Receiver<()>,
    go: Sender<()>,
}

fn config(serial: &Path) -> VmConfig {
    VmConfig {
        vcpus: VCPUS,
        mem_mib: MEM_MIB,
        cmdline: Some("console=ttyS0 testguest.counter".into()),
        serial: SerialOutput::File(serial.to_path_buf()),
        ..VmConfig::new(guest_elf())
    }
}

/// Puts the counter port on the builder's bus.
fn add_counter_port(builder: &mut VmmBuilder, pause_at: Option<u64>) -> PortControl {
    let (reached_tx, reached) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let port = CounterPort {
        reads: 0,
        pause_at,
        reached: reached_tx,
        go: go_rx,
    };
    builder
        .pio_bus_mut()
        .insert(Arc::new(Mutex::new(port)), COUNTER_PORT, 4)
        .unwrap();
    PortControl { reached, go }
}

/// Waits for the VM to end, failing the test if it takes too long.
fn wait(vmm: Vmm) -> VmExit {
    let stop = vmm.stop_handle();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(vmm.wait());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(exit) => exit,
        Err(_) => {
            stop.request(VmExit::GuestReset);
            panic!("the VM did not stop within {TIMEOUT:?}");
        }
    }
}

fn serial_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

/// The lines from `COUNTER start` on.
fn counter_part(lines: &[String]) -> Vec<String> {
    match lines.iter().position(|l| l == "COUNTER start") {
        Some(at) => lines[at..].to_vec(),
        None => Vec::new(),
    }
}

/// Boots the guest, pauses it at the port read of round PAUSE_ROUND and snapshots it into
/// `dir`. Returns the running source VM (paused) and its serial log.
fn boot_and_snapshot(dir: &Path) -> (Vmm, PathBuf, SnapshotFiles) {
    let serial = dir.join("source.serial");
    let mut builder = VmmBuilder::new(&config(&serial), Instant::now()).unwrap();
    let port = add_counter_port(&mut builder, Some(PAUSE_ROUND));
    let mut vmm = builder.start().unwrap();
    port.reached
        .recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("the guest never reached round {PAUSE_ROUND}"));
    vmm.request_pause().unwrap();
    port.go.send(()).unwrap();
    vmm.pause().unwrap();
    assert!(vmm.is_paused());
    let files = SnapshotFiles::in_dir(dir);
    vmm.snapshot(&files).unwrap();
    (vmm, serial, files)
}

#[test]
fn a_restored_guest_carries_on_where_it_was_paused() {
    if !kvm_available("a_restored_guest_carries_on_where_it_was_paused") {
        return;
    }
    let dir = TempDir::new("snapshot-resume");
    let expected = expected_counter_lines();
    let (mut source, source_serial, files) = boot_and_snapshot(dir.path());

    // Paused at the read of round PAUSE_ROUND: rounds before it are printed, none after.
    let before = counter_part(&serial_lines(&source_serial));
    assert_eq!(
        before,
        expected[..=PAUSE_ROUND as usize],
        "output of the source VM up to the pause"
    );
    let state_len = std::fs::metadata(&files.state).unwrap().len();
    let memory = std::fs::metadata(&files.memory).unwrap();
    assert_eq!(memory.len(), MEM_MIB << 20);
    assert!(state_len > 0);

    // The source VM goes on from the pause as if nothing happened.
    source.resume();
    let exit = wait(source);
    assert!(matches!(exit, VmExit::GuestReset), "source VM: {exit}");
    assert_eq!(counter_part(&serial_lines(&source_serial)), expected);

    // A fresh VM from the snapshot prints the rest, and only the rest: no second boot.
    let after = run_restored(&files, &dir.file("restored.serial"), "restored VM");
    assert_eq!(
        after,
        expected[PAUSE_ROUND as usize + 1..],
        "output of the restored VM"
    );

    // The same snapshot restores again (its memory file is only ever read).
    let again = run_restored(&files, &dir.file("again.serial"), "second restore");
    assert_eq!(again, after);
}

#[test]
fn a_guest_paused_at_any_moment_restores_from_its_snapshot() {
    if !kvm_available("a_guest_paused_at_any_moment_restores_from_its_snapshot") {
        return;
    }
    let dir = TempDir::new("snapshot-async");
    let expected = expected_counter_lines();
    let serial = dir.file("source.serial");
    let mut builder = VmmBuilder::new(&config(&serial), Instant::now()).unwrap();
    add_counter_port(&mut builder, None);
    let mut source = builder.start().unwrap();
    // Wait for the counter to start, then pause wherever the guest happens to be.
    let deadline = Instant::now() + TIMEOUT;
    while counter_part(&serial_lines(&serial)).len() < 2 {
        assert!(Instant::now() < deadline, "the counter never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    match source.pause() {
        Ok(()) => {}
        Err(SnapshotError::NotRunning) => {
            // Hardware KVM runs the whole counter in microseconds: nothing left to pause.
            assert_eq!(counter_part(&serial_lines(&serial)), expected);
            eprintln!("the guest finished before it could be paused; only its output checked");
            return;
        }
        Err(e) => panic!("pause: {e}"),
    }
    let files = SnapshotFiles::in_dir(dir.path());
    source.snapshot(&files).unwrap();
    let printed = counter_part(&serial_lines(&serial));
    source.stop_handle().request(VmExit::GuestReset);
    wait(source);

    let restored_serial = dir.file("restored.serial");
    run_restored(&files, &restored_serial, "restored VM");
    // What the source printed before the pause and what the restored VM printed after it
    // make up the output of one uninterrupted run, a line cut in the middle included.
    let source_text = std::fs::read_to_string(&serial).unwrap();
    let restored_text = std::fs::read_to_string(&restored_serial).unwrap();
    let whole = format!("{source_text}{restored_text}");
    let lines: Vec<String> = whole.lines().map(str::to_string).collect();
    assert_eq!(counter_part(&lines), expected, "paused after {printed:?}");
}

/// Builds a VM from `files`, runs it with the counter port until the guest resets (`what`
/// names it if it ends otherwise), and returns what its serial printed.
fn run_restored(files: &SnapshotFiles, serial: &Path, what: &str) -> Vec<String> {
    let mut builder = VmmBuilder::from_snapshot(&config(serial), files, Instant::now()).unwrap();
    add_counter_port(&mut builder, None);
    let exit = wait(builder.start().unwrap());
    assert!(matches!(exit, VmExit::GuestReset), "{what}: {exit}");
    serial_lines(serial)
}

fn build_error(result: Result<VmmBuilder, BuildError>) -> BuildError {
    match result {
        Ok(_) => panic!("a bad snapshot was accepted"),
        Err(e) => e,
    }
}

#[test]
fn snapshots_that_do_not_match_are_refused_by_name() {
    if !kvm_available("snapshots_that_do_not_match_are_refused_by_name") {
        return;
    }
    let dir = TempDir::new("snapshot-refused");
    let (source, _, files) = boot_and_snapshot(dir.path());
    source.stop_handle().request(VmExit::GuestReset);
    wait(source);
    let serial = dir.file("restored.serial");
    let original = std::fs::read(&files.state).unwrap();
    let restore = || VmmBuilder::from_snapshot(&config(&serial), &files, Instant::now());

    // Another format version.
    let mut bytes = original.clone();
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&files.state, &bytes).unwrap();
    let err = build_error(restore());
    let text = err.to_string();
    assert!(
        matches!(
            err,
            BuildError::Snapshot(SnapshotError::StateFile {
                source: FormatError::Version { found: 99 },
                ..
            })
        ),
        "{text}"
    );
    assert!(text.contains(&files.state.display().to_string()), "{text}");

    // Another build: the build identity follows the version and its length.
    let mut bytes = original.clone();
    bytes[14] ^= 0x20;
    std::fs::write(&files.state, &bytes).unwrap();
    let err = build_error(restore());
    let text = err.to_string();
    assert!(
        matches!(
            err,
            BuildError::Snapshot(SnapshotError::StateFile {
                source: FormatError::BuildId { .. },
                ..
            })
        ),
        "{text}"
    );
    assert!(text.contains("build"), "{text}");

    // Not a snapshot at all.
    std::fs::write(&files.state, b"hello").unwrap();
    let err = build_error(restore());
    assert!(
        err.to_string().contains("not a sandbox-vmm snapshot"),
        "{err}"
    );

    // Another machine than the snapshot's.
    std::fs::write(&files.state, &original).unwrap();
    let err = build_error(VmmBuilder::from_snapshot(
        &VmConfig {
            vcpus: 1,
            ..config(&serial)
        },
        &files,
        Instant::now(),
    ));
    assert!(
        matches!(
            err,
            BuildError::Snapshot(SnapshotError::MachineMismatch { .. })
        ),
        "{err}"
    );

    // A memory file cut short.
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(&files.memory)
        .unwrap();
    memory.set_len((MEM_MIB << 20) / 2).unwrap();
    let err = build_error(restore());
    let text = err.to_string();
    assert!(
        matches!(
            err,
            BuildError::Snapshot(SnapshotError::MemoryFile(MemoryFileError::Length { .. }))
        ),
        "{text}"
    );
    assert!(text.contains(&files.memory.display().to_string()), "{text}");

    // A missing memory file.
    std::fs::remove_file(&files.memory).unwrap();
    let err = build_error(restore());
    assert!(
        err.to_string()
            .contains(&files.memory.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_snapshot_needs_a_paused_vm() {
    if !kvm_available("a_snapshot_needs_a_paused_vm") {
        return;
    }
    let dir = TempDir::new("snapshot-unpaused");
    let serial = dir.file("serial");
    let mut builder = VmmBuilder::new(&config(&serial), Instant::now()).unwrap();
    let port = add_counter_port(&mut builder, Some(0));
    let vmm = builder.start().unwrap();
    port.reached.recv_timeout(TIMEOUT).unwrap();
    let err = vmm
        .snapshot(&SnapshotFiles::in_dir(dir.path()))
        .expect_err("a snapshot of a running VM");
    assert!(matches!(err, SnapshotError::NotPaused), "{err}");
    assert!(!dir.file("state").exists());
    port.go.send(()).unwrap();
    let exit = wait(vmm);
    assert!(matches!(exit, VmExit::GuestReset), "{exit}");
}
