//! Builds a VM from a `VmConfig`: KVM, memory, legacy devices, then the virtio devices the
//! config names (through the device manager, `attach_virtio_devices`), then the kernel, boot
//! structures and vCPU threads.
//!
//! ```ignore
//! let mut builder = VmmBuilder::new(&config, start)?;
//! let mut virtio = VirtioDevices::new()?;
//! builder.attach_virtio_devices(&mut virtio)?;   // MMIO slots, irqfds, ioeventfds
//! let devices = virtio.start(|| Ok(()), builder.stop_handle())?;
//! let vmm = builder.start()?;
//! ```
//!
//! Snapshots: `Vmm::pause`, `Vmm::snapshot` (a paused VM to files), `Vmm::resume`, and
//! `VmmBuilder::from_snapshot`, which builds the VM from those files instead of a kernel.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;

use crate::arch::x86_64::boot_params::{self, BootInfo, BootParamsError};
use crate::arch::x86_64::mptable::{self, MpTableError};
use crate::config::{ConfigError, VmConfig};
use crate::device_manager::virtio::{AttachError, VirtioDevices, VmParts};
use crate::device_manager::{self, DeviceManagerError, LegacyDevices, MmioDeviceManager};
use crate::devices::bus::Bus;
use crate::devices::legacy::SerialDevice;
use crate::hypervisor::{self, KvmError};
use crate::loader::{self, LoaderError};
use crate::snapshot::vcpu::{VcpuState, VcpuStateSupport};
use crate::snapshot::vm::VmState;
use crate::snapshot::{self, MachineState, SnapshotError, SnapshotFiles};
use crate::vstate::memory::{self, GuestMemory, MemoryError};
use crate::vstate::stop::{StopHandle, VmExit};
use crate::vstate::vcpu::{self, BootSetup, Vcpu, VcpuError, VcpuRequest};
use crate::vstate::vm::{Vm, VmError};

const MIB: u64 = 1 << 20;
/// How long to wait for vCPU threads to leave KVM_RUN after the VM stopped.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a vCPU may take to leave KVM_RUN when paused; generous, since a host that
/// emulates guest kernel code may take a while to notice the kick.
const VCPU_PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("{requested} vCPUs requested, but KVM supports at most {max}")]
    KvmVcpuLimit { requested: u8, max: usize },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("VM: {0}")]
    Vm(#[from] VmError),
    #[error("devices: {0}")]
    Device(#[from] DeviceManagerError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("boot parameters: {0}")]
    BootParams(#[from] BootParamsError),
    #[error("MP table: {0}")]
    MpTable(#[from] MpTableError),
    #[error("vCPU: {0}")]
    Vcpu(#[from] VcpuError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
}

pub struct VmmBuilder {
    config: VmConfig,
    kvm: Kvm,
    vm: Arc<Vm>,
    memory: GuestMemory,
    pio_bus: Bus,
    mmio: MmioDeviceManager,
    cmdline_extra: Vec<String>,
    stop: StopHandle,
    legacy: LegacyDevices,
    vcpu_thread_init: Option<VcpuThreadInit>,
    start: Instant,
    memory_slots: Option<JoinHandle<Result<(), VmError>>>,
    /// vCPUs configured by `load`, for `start`.
    loaded: Option<Vec<Vcpu>>,
    /// What `load` puts into the VM and its vCPUs instead of booting a kernel.
    restore: Option<RestoredState>,
}

/// The KVM state of a snapshot, kept from `from_snapshot` until `load`.
struct RestoredState {
    vm: VmState,
    vcpus: Vec<VcpuState>,
}

pub use crate::vstate::vcpu::VcpuThreadInit;

impl VmmBuilder {
    /// `start` is when the process started; the boot-complete port reports time since then.
    pub fn new(config: &VmConfig, start: Instant) -> Result<Self, BuildError> {
        config.validate()?;
        let kvm = open_kvm_for(config)?;
        let memory = memory::create_guest_memory(config.mem_mib, config.memory_backing())?;
        Self::assemble(config, kvm, memory, start, None)
    }

    /// A VM that carries on from the snapshot in `files` rather than booting `config`'s
    /// kernel: guest RAM mapped copy-on-write from the memory file, then (in `load`) the vCPU
    /// and VM state put back. `config` gives the serial output and must ask for the machine
    /// the snapshot was taken of (vCPUs, memory); its kernel and initrd are not read.
    pub fn from_snapshot(
        config: &VmConfig,
        files: &SnapshotFiles,
        start: Instant,
    ) -> Result<Self, BuildError> {
        config.validate()?;
        let virtio = configured_virtio_devices(config);
        if !virtio.is_empty() {
            return Err(SnapshotError::VirtioDevices(virtio.join(", ")).into());
        }
        let machine = MachineState {
            vcpus: config.vcpus,
            mem_mib: config.mem_mib,
        };
        let state = snapshot::read(files, &machine)?;
        let kvm = open_kvm_for(config)?;
        let memory = snapshot::memory::restore(&files.memory, &state.memory, config.mem_mib)
            .map_err(SnapshotError::from)?;
        let mut builder = Self::assemble(config, kvm, memory, start, Some(&state.legacy_devices))?;
        builder.restore = Some(RestoredState {
            vm: state.vm,
            vcpus: state.vcpus,
        });
        Ok(builder)
    }

    fn assemble(
        config: &VmConfig,
        kvm: Kvm,
        memory: GuestMemory,
        start: Instant,
        legacy_state: Option<&device_manager::LegacyDevicesState>,
    ) -> Result<Self, BuildError> {
        let vm = Arc::new(Vm::new(&kvm)?);
        log::debug!("VM created after {} us", start.elapsed().as_micros());
        // Registering memory with KVM can take milliseconds (an SRCU grace period, and more
        // on some hosts); nothing but KVM_RUN needs the slots, so it runs in the background
        // while devices are attached, the guest is loaded and the vCPUs are configured.
        let memory_slots = {
            let (vm, memory) = (vm.clone(), memory.clone());
            std::thread::Builder::new()
                .name("memslots".into())
                .spawn(move || vm.register_memory(&memory))
                .map_err(BuildError::Thread)?
        };
        let stop = StopHandle::new();
        let mut pio_bus = Bus::new();
        let legacy = device_manager::attach_legacy_devices(
            &vm,
            &mut pio_bus,
            &config.serial,
            &stop,
            start,
            legacy_state,
        )?;
        Ok(Self {
            config: config.clone(),
            kvm,
            vm,
            memory,
            pio_bus,
            mmio: MmioDeviceManager::default(),
            cmdline_extra: Vec::new(),
            stop,
            legacy,
            vcpu_thread_init: None,
            start,
            memory_slots: Some(memory_slots),
            loaded: None,
            restore: None,
        })
    }

    /// Runs `init` at the start of every vCPU thread, before its first KVM_RUN (e.g. to
    /// install the thread's seccomp filter). An error stops the VM.
    pub fn on_vcpu_thread_start(&mut self, init: VcpuThreadInit) {
        self.vcpu_thread_init = Some(init);
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Device backends hold this to end the VM on a fatal error and to notice it stopping.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    pub fn serial(&self) -> Arc<Mutex<SerialDevice>> {
        self.legacy.serial.clone()
    }

    pub fn pio_bus_mut(&mut self) -> &mut Bus {
        &mut self.pio_bus
    }

    /// Has the device manager attach every virtio device the config names.
    pub fn attach_virtio_devices(&mut self, virtio: &mut VirtioDevices) -> Result<(), AttachError> {
        let mut parts = VmParts {
            mmio: &mut self.mmio,
            vm: &self.vm,
            memory: &self.memory,
            stop: &self.stop,
        };
        virtio.attach_configured(&mut parts, &self.config)
    }

    /// Adds a parameter to the kernel command line.
    pub fn append_cmdline(&mut self, param: impl Into<String>) {
        self.cmdline_extra.push(param.into());
    }

    /// Loads the guest (the last files opened by path: kernel, initrd) and configures the
    /// vCPUs without starting them; afterwards the process has no thread but the caller's
    /// (the jail needs that point). `start` does it if this was not called.
    pub fn load(&mut self) -> Result<(), BuildError> {
        if let Some(restore) = self.restore.take() {
            // Restored MSRs (kvmclock's) point KVM at guest pages: the slots must be there.
            self.join_memory_slots()?;
            self.loaded = Some(self.restore_vcpus(restore)?);
        }
        if self.loaded.is_none() {
            self.loaded = Some(self.load_and_configure()?);
        }
        self.join_memory_slots()
    }

    fn join_memory_slots(&mut self) -> Result<(), BuildError> {
        if let Some(slots) = self.memory_slots.take() {
            slots
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        }
        Ok(())
    }

    /// vCPUs created in the VM whose irqchip and PIT `Vm::new` made, each given its saved
    /// state; then the VM-wide state, so that the IOAPIC and PIT resume with the vCPUs they
    /// deliver to already in place.
    fn restore_vcpus(&self, restore: RestoredState) -> Result<Vec<Vcpu>, BuildError> {
        let mut vcpus = Vec::with_capacity(restore.vcpus.len());
        for state in &restore.vcpus {
            let mut vcpu = Vcpu::new(
                &self.vm,
                state.id,
                self.pio_bus.clone(),
                self.mmio.bus().clone(),
            )?;
            vcpu.restore_state(state)?;
            vcpus.push(vcpu);
        }
        self.vm.restore_state(&restore.vm)?;
        Ok(vcpus)
    }

    /// Loads the guest, configures the vCPUs (unless `load` did) and starts them.
    pub fn start(mut self) -> Result<Vmm, BuildError> {
        self.load()?;
        let vcpus = self.loaded.take().unwrap_or_default();
        log::debug!(
            "guest loaded and vCPUs configured after {} us",
            self.start.elapsed().as_micros()
        );

        let mut threads = Vec::with_capacity(vcpus.len());
        let mut requests = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let (sender, receiver) = mpsc::channel();
            requests.push(sender);
            match vcpu.spawn(self.stop.clone(), self.vcpu_thread_init.clone(), receiver) {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    self.stop.request(VmExit::DeviceFailed {
                        device: "vcpu".into(),
                        message: e.to_string(),
                    });
                    stop_threads(&threads);
                    return Err(e.into());
                }
            }
        }
        Ok(Vmm {
            threads,
            requests,
            pause_acks: Vec::new(),
            paused: false,
            stop: self.stop,
            machine: MachineState {
                vcpus: self.config.vcpus,
                mem_mib: self.config.mem_mib,
            },
            virtio_devices: self.mmio.cmdline_params().to_vec(),
            legacy: self.legacy,
            kvm: self.kvm,
            vm: self.vm,
            memory: self.memory,
        })
    }

    /// The configured command line, then what devices added, then the CPU template's
    /// parameter for Linux.
    pub fn kernel_cmdline(&self) -> Result<linux_loader::cmdline::Cmdline, BuildError> {
        let mut extra = self.mmio.cmdline_params().to_vec();
        extra.extend(self.cmdline_extra.iter().cloned());
        if let Some(param) = self.config.cpu_template.linux_cmdline() {
            // A clearcpuid= the user gave wins: Linux reads only the first one.
            if !self.config.cmdline().contains("clearcpuid=") {
                extra.push(param);
            }
        }
        Ok(loader::build_cmdline(self.config.cmdline(), &extra)?)
    }

    fn load_and_configure(&self) -> Result<Vec<Vcpu>, BuildError> {
        let mem = &self.memory;
        let kernel = loader::load_kernel(mem, &self.config.kernel)?;
        let initrd = match &self.config.initrd {
            Some(path) => Some(loader::load_initrd(mem, path, &kernel)?),
            None => None,
        };
        let cmdline = self.kernel_cmdline()?;
        let (cmdline_addr, cmdline_size) = loader::write_cmdline(mem, &cmdline)?;
        let params = boot_params::build_boot_params(&BootInfo {
            setup_header: kernel.setup_header,
            cmdline_addr,
            cmdline_size,
            initrd,
            mem_size: self.config.mem_mib * MIB,
        })?;
        boot_params::write_boot_params(mem, &params)?;
        mptable::write(mem, self.config.vcpus)?;
        log::debug!(
            "{} kernel entry {:#x}, command line {:?}",
            kernel.format,
            kernel.entry.0,
            cmdline
                .as_cstring()
                .map(|c| c.into_string().unwrap_or_default())
        );

        let boot = BootSetup {
            kvm: &self.kvm,
            mem,
            entry: kernel.entry,
            vcpu_count: self.config.vcpus,
            template: self.config.cpu_template,
        };
        let mut vcpus = Vec::with_capacity(usize::from(self.config.vcpus));
        for id in 0..self.config.vcpus {
            let mut vcpu = Vcpu::new(&self.vm, id, self.pio_bus.clone(), self.mmio.bus().clone())?;
            vcpu.configure(&boot)?;
            vcpus.push(vcpu);
        }
        Ok(vcpus)
    }
}

/// Opens /dev/kvm and checks that it can run `config`'s machine.
fn open_kvm_for(config: &VmConfig) -> Result<Kvm, BuildError> {
    let kvm = hypervisor::open_kvm()?;
    hypervisor::check_caps(&kvm)?;
    let max = kvm.get_max_vcpus();
    if usize::from(config.vcpus) > max {
        return Err(BuildError::KvmVcpuLimit {
            requested: config.vcpus,
            max,
        });
    }
    Ok(kvm)
}

/// The virtio devices `config` asks for, by kind.
fn configured_virtio_devices(config: &VmConfig) -> Vec<String> {
    let mut names = Vec::new();
    names.extend(config.disks.iter().map(|_| "virtio-blk".to_string()));
    names.extend(config.nets.iter().map(|_| "virtio-net".to_string()));
    if config.vsock.is_some() {
        names.push("virtio-vsock".into());
    }
    names.extend(config.fs.iter().map(|_| "virtio-fs".to_string()));
    if config.rng {
        names.push("virtio-rng".into());
    }
    names
}

/// Kicks vCPU threads until they have all returned or the timeout passes.
fn stop_threads(threads: &[JoinHandle<()>]) -> bool {
    let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
    loop {
        let running: Vec<_> = threads.iter().filter(|t| !t.is_finished()).collect();
        if running.is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        for t in running {
            vcpu::kick(t);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A running VM.
pub struct Vmm {
    threads: Vec<JoinHandle<()>>,
    /// One per vCPU thread, in id order.
    requests: Vec<Sender<VcpuRequest>>,
    /// Answers to a `request_pause` that `pause` has not waited for yet.
    pause_acks: Vec<Receiver<()>>,
    paused: bool,
    stop: StopHandle,
    machine: MachineState,
    /// The `virtio_mmio.device=` of each virtio device: a snapshot cannot hold them yet.
    virtio_devices: Vec<String>,
    legacy: device_manager::LegacyDevices,
    kvm: Kvm,
    // Kept alive until every vCPU thread is gone: KVM maps the memory through the VM.
    vm: Arc<Vm>,
    memory: GuestMemory,
}

impl Vmm {
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Asks every vCPU to leave the guest, without waiting: each stops at its next exit
    /// (the kick makes one at once). `pause` waits for them. Split from it so that a caller
    /// on a device path can ask while a vCPU is inside that device's handler; that vCPU then
    /// stops right after the exit it is handling.
    pub fn request_pause(&mut self) -> Result<(), SnapshotError> {
        if self.paused || !self.pause_acks.is_empty() {
            return Ok(());
        }
        for (sender, thread) in self.requests.iter().zip(&self.threads) {
            let (ack, answer) = mpsc::channel();
            // Sent before the kick: the thread looks for requests right after KVM_RUN.
            if sender.send(VcpuRequest::Pause(ack)).is_err() {
                self.pause_acks.clear();
                self.resume();
                return Err(SnapshotError::NotRunning);
            }
            self.pause_acks.push(answer);
            vcpu::kick(thread);
        }
        Ok(())
    }

    /// Takes every vCPU out of the guest and keeps it out until `resume`. Returns once each
    /// has left KVM_RUN and completed the I/O exit it was in, if any. Devices are not
    /// paused: legacy devices only act on vCPU exits, and a VM with virtio devices cannot be
    /// snapshotted yet.
    pub fn pause(&mut self) -> Result<(), SnapshotError> {
        if self.paused {
            return Ok(());
        }
        self.request_pause()?;
        let acks = std::mem::take(&mut self.pause_acks);
        self.paused = true;
        let deadline = Instant::now() + VCPU_PAUSE_TIMEOUT;
        for (id, (answer, thread)) in acks.iter().zip(&self.threads).enumerate() {
            loop {
                match answer.recv_timeout(Duration::from_millis(1)) {
                    Ok(()) => break,
                    Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                        vcpu::kick(thread)
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        self.resume();
                        return Err(SnapshotError::PauseTimeout {
                            vcpu: id as u8,
                            timeout_ms: VCPU_PAUSE_TIMEOUT.as_millis(),
                        });
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        self.resume();
                        return Err(SnapshotError::NotRunning);
                    }
                }
            }
        }
        Ok(())
    }

    /// Lets paused vCPUs run the guest again.
    pub fn resume(&mut self) {
        for sender in &self.requests {
            let _ = sender.send(VcpuRequest::Resume);
        }
        self.paused = false;
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Writes the paused VM to `files`: guest memory, then the vCPUs', the VM's and the
    /// legacy devices' state. The VM stays paused; `resume` continues it.
    pub fn snapshot(&self, files: &SnapshotFiles) -> Result<(), SnapshotError> {
        if !self.paused {
            return Err(SnapshotError::NotPaused);
        }
        if !self.virtio_devices.is_empty() {
            return Err(SnapshotError::VirtioDevices(self.virtio_devices.join(", ")));
        }
        let support =
            Arc::new(VcpuStateSupport::probe(&self.kvm).map_err(SnapshotError::MsrIndexList)?);
        let mut vcpus = Vec::with_capacity(self.requests.len());
        for (id, sender) in self.requests.iter().enumerate() {
            let vcpu = id as u8;
            let (reply, answer) = mpsc::channel();
            sender
                .send(VcpuRequest::SaveState {
                    support: support.clone(),
                    reply,
                })
                .map_err(|_| SnapshotError::NotRunning)?;
            let state = answer
                .recv()
                .map_err(|_| SnapshotError::NotRunning)?
                .map_err(|source| SnapshotError::Vcpu { vcpu, source })?;
            vcpus.push(state);
        }
        let vm = self.vm.save_state()?;
        snapshot::write(
            files,
            &self.memory,
            self.machine.clone(),
            vm,
            vcpus,
            self.legacy.save_state(),
        )
    }

    /// Blocks until the VM stops for any reason, stops every vCPU and returns why.
    pub fn wait(self) -> VmExit {
        let Vmm {
            threads,
            requests,
            stop,
            vm,
            memory,
            ..
        } = self;
        stop.wait();
        // A paused vCPU thread waits for requests: without a sender it ends.
        drop(requests);
        if stop_threads(&threads) {
            for t in threads {
                let _ = t.join();
            }
        } else {
            log::warn!("some vCPU threads did not stop within {VCPU_STOP_TIMEOUT:?}");
            // A vCPU may still be inside KVM_RUN: its memory must outlive it.
            std::mem::forget(vm);
            std::mem::forget(memory);
        }
        stop.take_reason().unwrap_or(VmExit::GuestReset)
    }
}

/// Boots hand-assembled guests on /dev/kvm (skipped where it is not accessible).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::loader::tests::tiny_elf;
    use crate::vstate::vcpu::VcpuError;
    use std::path::PathBuf;
    use vm_memory::{Bytes, GuestAddress};

    const CODE_ADDR: u64 = 0x20_0000;
    const IDTR_ADDR: u64 = 0x1000;
    const IDT_ADDR: u64 = 0x2000;
    const REPORT_PORT: u64 = 0x90;

    /// lidt [0x1000]; int3; (after:) reset via i8042; hlt;
    /// (handler:) mov rax, [rsp]; out 0x90, eax; iretq; ud2
    const INT3_GUEST: &[u8] = &[
        0x0f, 0x01, 0x1c, 0x25, 0x00, 0x10, 0x00, 0x00, // lidt 0x1000
        0xcc, // int3
        0x66, 0xba, 0x64, 0x00, 0xb0, 0xfe, 0xee, 0xf4, // after: out 0x64, 0xfe; hlt
        0x48, 0x8b, 0x04, 0x24, // handler: mov rax, [rsp]
        0x66, 0xba, 0x90, 0x00, 0xef, // mov dx, 0x90; out dx, eax
        0x48, 0xcf, // iretq
        0x0f, 0x0b, // ud2
    ];
    const AFTER_INT3: u64 = CODE_ADDR + 9;
    const HANDLER: u64 = CODE_ADDR + 0x11;

    /// Reset through the i8042 right away.
    const RESET_GUEST: &[u8] = &[0x66, 0xba, 0x64, 0x00, 0xb0, 0xfe, 0xee, 0xf4];
    /// lidt [0x1000] (an empty IDT); ud2: #UD, #DF, then a triple fault.
    const TRIPLE_FAULT_GUEST: &[u8] = &[0x0f, 0x01, 0x1c, 0x25, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x0b];

    struct Recorder(Arc<Mutex<Vec<u32>>>);
    impl BusDevice for Recorder {
        fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _: u64, _: u64, data: &[u8]) {
            let mut raw = [0u8; 4];
            raw[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
            self.0.lock().unwrap().push(u32::from_le_bytes(raw));
        }
    }

    fn kvm_usable() -> bool {
        match hypervisor::open_kvm() {
            Ok(_) => true,
            Err(e) => {
                eprintln!("skipped: {e}");
                false
            }
        }
    }

    fn guest_file(name: &str, code: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-builder-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, tiny_elf(CODE_ADDR, code)).unwrap();
        path
    }

    fn config(kernel: PathBuf, vcpus: u8) -> VmConfig {
        VmConfig {
            vcpus,
            mem_mib: 16,
            serial: crate::config::SerialOutput::None,
            ..VmConfig::new(kernel)
        }
    }

    /// Runs the VM to its end, failing the test if it takes unreasonably long.
    fn run(builder: VmmBuilder) -> VmExit {
        let vmm = builder.start().unwrap();
        let stop = vmm.stop_handle();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(vmm.wait());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(exit) => exit,
            Err(_) => {
                stop.request(VmExit::GuestReset);
                panic!("the VM did not stop within 60 s");
            }
        }
    }

    #[test]
    fn int3_in_kernel_mode_delivers_a_breakpoint_with_trap_semantics() {
        if !kvm_usable() {
            return;
        }
        let kernel = guest_file("int3.elf", INT3_GUEST);
        let mut builder = VmmBuilder::new(&config(kernel, 1), Instant::now()).unwrap();
        // IDT entry 3: a present 64-bit interrupt gate to the handler, in the boot CS.
        let gate_low = (HANDLER & 0xffff)
            | (u64::from(crate::arch::x86_64::gdt::BOOT_CS) << 16)
            | (0x8e00 << 32)
            | (((HANDLER >> 16) & 0xffff) << 48);
        let mem = builder.memory();
        mem.write_obj(gate_low, GuestAddress(IDT_ADDR + 3 * 16))
            .unwrap();
        mem.write_obj(HANDLER >> 32, GuestAddress(IDT_ADDR + 3 * 16 + 8))
            .unwrap();
        mem.write_obj(16u16 * 4 - 1, GuestAddress(IDTR_ADDR))
            .unwrap();
        mem.write_obj(IDT_ADDR, GuestAddress(IDTR_ADDR + 2))
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        builder
            .pio_bus_mut()
            .insert(Arc::new(Mutex::new(Recorder(seen.clone()))), REPORT_PORT, 4)
            .unwrap();

        let exit = run(builder);
        assert!(matches!(exit, VmExit::GuestReset), "{exit}");
        // The handler saw the address after the int3 and returned there.
        assert_eq!(*seen.lock().unwrap(), vec![AFTER_INT3 as u32]);
    }

    #[test]
    fn triple_fault_ends_the_vm_with_an_error_naming_the_exit() {
        if !kvm_usable() {
            return;
        }
        let kernel = guest_file("triple.elf", TRIPLE_FAULT_GUEST);
        let builder = VmmBuilder::new(&config(kernel, 1), Instant::now()).unwrap();
        builder
            .memory()
            .write_obj([0u8; 10], GuestAddress(IDTR_ADDR))
            .unwrap();
        let exit = run(builder);
        match &exit {
            VmExit::VcpuFailed {
                vcpu: 0,
                error: VcpuError::Shutdown { rip },
            } => assert_eq!(*rip, CODE_ADDR + 8, "RIP of the ud2"),
            other => panic!("unexpected exit: {other}"),
        }
        assert_eq!(exit.exit_code(), crate::exit_code::VM_ERROR);
        assert!(exit.to_string().contains("KVM_EXIT_SHUTDOWN"));
    }

    #[test]
    fn reset_on_the_boot_cpu_stops_every_vcpu() {
        if !kvm_usable() {
            return;
        }
        let kernel = guest_file("reset.elf", RESET_GUEST);
        let builder = VmmBuilder::new(&config(kernel, 4), Instant::now()).unwrap();
        // Application processors sit in KVM_RUN waiting for INIT/SIPI; they must be kicked.
        let started = Instant::now();
        let exit = run(builder);
        assert!(matches!(exit, VmExit::GuestReset), "{exit}");
        assert_eq!(exit.exit_code(), 0);
        assert!(
            started.elapsed() < VCPU_STOP_TIMEOUT,
            "vCPUs were kicked, not timed out"
        );
    }

    #[test]
    fn command_line_gets_devices_then_the_template_parameter() {
        if !kvm_usable() {
            return;
        }
        let text = |b: &VmmBuilder| b.kernel_cmdline().unwrap().as_cstring().unwrap();
        let mut cfg = config("k".into(), 1);
        cfg.cmdline = Some("console=ttyS0".into());
        let mut plain = VmmBuilder::new(&cfg, Instant::now()).unwrap();
        plain.append_cmdline("virtio_mmio.device=4K@0xd0000000:5");
        assert_eq!(
            text(&plain).to_str().unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"
        );

        cfg.cpu_template = crate::arch::x86_64::cpu_template::CpuTemplate::Minimal;
        let minimal = VmmBuilder::new(&cfg, Instant::now()).unwrap();
        let line = text(&minimal).into_string().unwrap();
        assert!(
            line.starts_with("console=ttyS0 clearcpuid=xsave,popcnt,"),
            "{line}"
        );

        cfg.cmdline = Some("console=ttyS0 clearcpuid=popcnt".into());
        let own = VmmBuilder::new(&cfg, Instant::now()).unwrap();
        assert_eq!(
            text(&own).to_str().unwrap(),
            "console=ttyS0 clearcpuid=popcnt"
        );
    }

    #[test]
    fn setup_errors_are_reported_not_panics() {
        if !kvm_usable() {
            return;
        }
        let missing = VmmBuilder::new(&config("/nonexistent/vmlinux".into(), 1), Instant::now())
            .unwrap()
            .start();
        assert!(matches!(
            missing,
            Err(BuildError::Loader(LoaderError::KernelOpen { .. }))
        ));
        let zero = VmmBuilder::new(&config("k".into(), 0), Instant::now());
        assert!(matches!(
            zero,
            Err(BuildError::Config(ConfigError::ZeroVcpus))
        ));
        let huge = VmConfig {
            mem_mib: memory::host_ram_mib() + 1,
            ..config("k".into(), 1)
        };
        assert!(matches!(
            VmmBuilder::new(&huge, Instant::now()),
            Err(BuildError::Memory(MemoryError::ExceedsHost { .. }))
        ));
    }
}
