//! vCPUs: boot-time configuration, one thread each, and the exit dispatch loop.

use std::cell::Cell;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_msr_entry, kvm_run, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::GuestAddress;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::memory::GuestMemory;
use super::stop::{StopHandle, VmExit};
use super::vm::Vm;
use crate::arch::x86_64::{cpu_template::CpuTemplate, cpuid, regs};
use crate::devices::bus::Bus;
use crate::snapshot::vcpu::{FpuState, VcpuState, VcpuStateSupport};

/// `KVM_INTERNAL_ERROR_EMULATION`: the in-kernel instruction emulator gave up.
const INTERNAL_ERROR_EMULATION: u32 = 1;
/// `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES` in `data[0]`.
const EMULATION_FLAG_INSN_BYTES: u64 = 1;
const INT3_OPCODE: u8 = 0xcc;
const BREAKPOINT_VECTOR: u8 = 3;

/// A shutdown reported at the reset vector says nothing about where the guest failed: on AMD,
/// KVM re-initialises a vCPU that shut down before it returns to the VMM.
fn reset_vector_note(rip: u64) -> &'static str {
    if rip == 0xfff0 {
        " (the reset vector: KVM on AMD resets a vCPU that shut down, so where the guest \
         failed is not known)"
    } else {
        ""
    }
}

/// Called with the vCPU id on each vCPU thread before it runs the guest.
pub type VcpuThreadInit = std::sync::Arc<dyn Fn(u8) -> Result<(), String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU {id} failed: {source}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    #[error("CPUID: {0}")]
    Cpuid(#[from] cpuid::CpuidError),
    #[error("{what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {total} boot MSRs (first refused: {first:#x})")]
    Msrs {
        set: usize,
        total: usize,
        first: u32,
    },
    #[error("boot state: {0}")]
    BootState(#[from] regs::RegsError),
    #[error("KVM_EXIT_INTERNAL_ERROR (emulation failure) at RIP {rip:#x}, instruction bytes [{}]", hex(.insn))]
    EmulationFailure { rip: u64, insn: Vec<u8> },
    #[error("KVM_EXIT_INTERNAL_ERROR suberror {suberror} at RIP {rip:#x}, data {data:x?}")]
    InternalError {
        suberror: u32,
        rip: u64,
        data: Vec<u64>,
    },
    #[error("KVM_EXIT_FAIL_ENTRY (hardware entry failure reason {reason:#x} on CPU {cpu}) at RIP {rip:#x}")]
    FailEntry { reason: u64, cpu: u32, rip: u64 },
    #[error("KVM_EXIT_SHUTDOWN (triple fault) at RIP {rip:#x}{}", reset_vector_note(*rip))]
    Shutdown { rip: u64 },
    #[error("unhandled vCPU exit {exit} at RIP {rip:#x}")]
    UnhandledExit { exit: String, rip: u64 },
    #[error("KVM_RUN failed: {0}")]
    Run(kvm_ioctls::Error),
    #[error("cannot spawn the vCPU thread: {0}")]
    Spawn(std::io::Error),
    #[error("vCPU thread set-up failed: {0}")]
    ThreadInit(String),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("KVM refused MSR {index:#x} of the snapshot (KVM_SET_MSRS set {set} of {total})")]
    RestoreMsrs {
        index: u32,
        set: usize,
        total: usize,
    },
    #[error("the snapshot holds {count} MSRs, more than KVM_SET_MSRS takes at once")]
    TooManyMsrs { count: usize },
    #[error("the snapshot's CPUID has {count} entries, more than KVM_SET_CPUID2 takes")]
    TooManyCpuidEntries { count: usize },
    #[error("the vCPU state can only be read while the VM is paused")]
    NotPaused,
    #[error("KVM_RUN to complete the pending I/O before reading the state returned an exit ({0}) instead of EINTR")]
    PendingIo(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Ioctl { what, source }
}

thread_local! {
    /// The `kvm_run` page of the vCPU running on this thread, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only an atomic-enough byte store: async-signal-safe. Setting immediate_exit closes the
    // window between "checked the stop flag" and "entered KVM_RUN".
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is the mapped kvm_run of this thread's vCPU, set while the
        // VcpuFd is alive and cleared before it is dropped.
        unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
    }
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal);
    });
    result
}

/// Registers `fd`'s kvm_run with the kick handler for the current thread.
pub struct KickGuard;

impl KickGuard {
    pub fn arm(fd: &mut VcpuFd) -> Self {
        let run: *mut kvm_run = fd.get_kvm_run();
        KVM_RUN.with(|p| p.set(run));
        KickGuard
    }
}

impl Drop for KickGuard {
    fn drop(&mut self) {
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }
}

/// Everything a vCPU needs to boot the kernel.
pub struct BootSetup<'a> {
    pub kvm: &'a Kvm,
    pub mem: &'a GuestMemory,
    pub entry: GuestAddress,
    pub vcpu_count: u8,
    pub template: CpuTemplate,
}

pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    pio: Bus,
    mmio: Bus,
}

/// What the thread that owns the VM asks of a vCPU thread. A request is noticed between two
/// KVM_RUNs; the sender kicks the thread out of KVM_RUN so that it is noticed at once.
pub enum VcpuRequest {
    /// Leave the guest, complete any I/O exit KVM still has half done, answer on the channel
    /// and wait for further requests.
    Pause(Sender<()>),
    /// Read the state (only while paused).
    SaveState {
        support: Arc<VcpuStateSupport>,
        reply: Sender<Result<VcpuState, VcpuError>>,
    },
    /// Run the guest again.
    Resume,
}

/// What the loop does after an exit.
enum Next {
    Continue,
    /// KVM_RUN returned for a signal: the kick that comes with every request, among others.
    Kicked,
    Internal,
    Fail(VcpuError),
}

impl Vcpu {
    pub fn new(vm: &Vm, id: u8, pio: Bus, mmio: Bus) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Vcpu { id, fd, pio, mmio })
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// CPUID, MSRs, registers, FPU and LAPIC for the 64-bit Linux entry. Application
    /// processors get the same state; with an in-kernel LAPIC they wait for INIT/SIPI.
    pub fn configure(&mut self, boot: &BootSetup) -> Result<(), VcpuError> {
        let mut cpuid: CpuId = boot
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VcpuError::SupportedCpuid)?;
        cpuid::normalize(&mut cpuid, self.id, boot.vcpu_count)?;
        boot.template.apply(&mut cpuid);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(ioctl("KVM_SET_CPUID2"))?;

        let entries = regs::boot_msrs();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Msrs {
            set: 0,
            total: entries.len(),
            first: entries[0].index,
        })?;
        let set = self.fd.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(VcpuError::Msrs {
                set,
                total: entries.len(),
                first: entries[set].index,
            });
        }

        self.fd
            .set_regs(&regs::boot_regs(boot.entry))
            .map_err(ioctl("KVM_SET_REGS"))?;
        let mut sregs = self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        regs::setup_boot_sregs(boot.mem, &mut sregs)?;
        self.fd.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(ioctl("KVM_SET_FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
        regs::set_lint(&mut lapic);
        self.fd.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))?;
        Ok(())
    }

    /// Reads the whole state of a vCPU that is out of KVM_RUN. KVM finishes an I/O or MMIO
    /// exit (the value of an `in`, the instruction pointer after it) only when KVM_RUN is
    /// entered again, so that is done first, with immediate_exit set so no guest code runs.
    pub fn save_state(&mut self, support: &VcpuStateSupport) -> Result<VcpuState, VcpuError> {
        self.complete_pending_io()?;
        let fd = &self.fd;
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_CPUID2"))?;
        let xsave = if support.xsave {
            Some(fd.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?)
        } else {
            None
        };
        let xcrs = if support.xcrs {
            Some(fd.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?)
        } else {
            None
        };
        let tsc_khz = fd.get_tsc_khz().ok();
        Ok(VcpuState {
            id: self.id,
            cpuid: cpuid.as_slice().to_vec(),
            regs: fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?,
            fpu: FpuState::from(&fd.get_fpu().map_err(ioctl("KVM_GET_FPU"))?),
            xsave,
            xcrs,
            lapic: fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?,
            msrs: self.read_msrs(&support.msrs)?,
            mp_state: fd.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?,
            vcpu_events: fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?,
            debugregs: fd.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?,
            tsc_khz,
        })
    }

    /// Puts `state` into a freshly created vCPU, in the order KVM needs: CPUID before
    /// anything it is checked against; segment and control registers (which set the mode
    /// and the APIC base) before the general registers and the LAPIC; FPU then XSAVE (the
    /// latter wins where both hold x87/SSE); MSRs with the TSC first; pending events and
    /// the run state last, since setting registers may clear them.
    pub fn restore_state(&mut self, state: &VcpuState) -> Result<(), VcpuError> {
        let fd = &self.fd;
        let cpuid =
            CpuId::from_entries(&state.cpuid).map_err(|_| VcpuError::TooManyCpuidEntries {
                count: state.cpuid.len(),
            })?;
        fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
        if let Some(khz) = state.tsc_khz {
            if fd.get_tsc_khz().ok() != Some(khz) {
                fd.set_tsc_khz(khz).map_err(ioctl("KVM_SET_TSC_KHZ"))?;
            }
        }
        fd.set_sregs(&state.sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        fd.set_regs(&state.regs).map_err(ioctl("KVM_SET_REGS"))?;
        fd.set_fpu(&(&state.fpu).into())
            .map_err(ioctl("KVM_SET_FPU"))?;
        if let Some(xsave) = &state.xsave {
            // SAFETY: the VMM never enables dynamically sized XSAVE features (no
            // ARCH_REQ_XCOMP_GUEST_PERM), so KVM reads no more than the 4096 bytes of the
            // legacy kvm_xsave that `xsave` is.
            unsafe { fd.set_xsave(xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
        }
        if let Some(xcrs) = &state.xcrs {
            fd.set_xcrs(xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
        }
        fd.set_debug_regs(&state.debugregs)
            .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&state.lapic).map_err(ioctl("KVM_SET_LAPIC"))?;
        let msrs = Msrs::from_entries(&state.msrs).map_err(|_| VcpuError::TooManyMsrs {
            count: state.msrs.len(),
        })?;
        let set = fd.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        if set != state.msrs.len() {
            return Err(VcpuError::RestoreMsrs {
                index: state.msrs[set].index,
                set,
                total: state.msrs.len(),
            });
        }
        fd.set_vcpu_events(&state.vcpu_events)
            .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
        fd.set_mp_state(state.mp_state)
            .map_err(ioctl("KVM_SET_MP_STATE"))?;
        Ok(())
    }

    /// Reads every MSR of `indices` that KVM lets this vCPU read. KVM_GET_MSRS stops at the
    /// first MSR it cannot read and says how many it did read, so that one is dropped and
    /// the rest is asked for again.
    fn read_msrs(&self, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuError> {
        let mut read = Vec::with_capacity(indices.len());
        let mut rest = indices;
        while !rest.is_empty() {
            let entries: Vec<kvm_msr_entry> = rest
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries)
                .map_err(|_| VcpuError::TooManyMsrs { count: rest.len() })?;
            let n = self.fd.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
            read.extend_from_slice(&msrs.as_slice()[..n]);
            if n < rest.len() {
                log::debug!(
                    "vCPU {}: MSR {:#x} is not readable, left out of the snapshot",
                    self.id,
                    rest[n]
                );
            }
            rest = &rest[(n + 1).min(rest.len())..];
        }
        Ok(read)
    }

    fn complete_pending_io(&mut self) -> Result<(), VcpuError> {
        self.fd.set_kvm_immediate_exit(1);
        let result = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(VcpuError::Run(e)),
            Ok(exit) => Err(VcpuError::PendingIo(format!("{exit:?}"))),
        };
        self.fd.set_kvm_immediate_exit(0);
        result
    }

    /// Starts the vCPU on its own thread. The thread ends when the VM stops; an error it hits
    /// stops the VM. `requests` pauses it, reads its state and resumes it; when its sender is
    /// dropped the thread keeps running the guest (or, if paused, ends).
    pub fn spawn(
        self,
        stop: StopHandle,
        init: Option<VcpuThreadInit>,
        requests: Receiver<VcpuRequest>,
    ) -> Result<JoinHandle<()>, VcpuError> {
        install_kick_handler()?;
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let mut vcpu = self;
                if let Some(init) = init {
                    if let Err(message) = init(id) {
                        stop.request(VmExit::VcpuFailed {
                            vcpu: id,
                            error: VcpuError::ThreadInit(message),
                        });
                        return;
                    }
                }
                if let Err(error) = vcpu.run_loop(&stop, &requests) {
                    stop.request(VmExit::VcpuFailed { vcpu: id, error });
                }
            })
            .map_err(VcpuError::Spawn)
    }

    /// Runs until the VM is asked to stop (Ok) or this vCPU hits an unhandled exit (Err).
    pub fn run_loop(
        &mut self,
        stop: &StopHandle,
        requests: &Receiver<VcpuRequest>,
    ) -> Result<(), VcpuError> {
        let _kick = KickGuard::arm(&mut self.fd);
        let mut controlled = true;
        // Requests are looked for only after a kick (each is sent before its kick), not on
        // every exit.
        let mut kicked = true;
        loop {
            if stop.is_stopping() {
                return Ok(());
            }
            if controlled && std::mem::take(&mut kicked) {
                match requests.try_recv() {
                    Ok(VcpuRequest::Pause(ack)) => {
                        if !self.paused(stop, requests, ack)? {
                            return Ok(());
                        }
                    }
                    // Not paused: there is no consistent state to read.
                    Ok(VcpuRequest::SaveState { reply, .. }) => {
                        let _ = reply.send(Err(VcpuError::NotPaused));
                    }
                    Ok(VcpuRequest::Resume) | Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => controlled = false,
                }
            }
            match self.run_once() {
                Next::Continue => {}
                Next::Kicked => kicked = true,
                Next::Internal => self.handle_internal_error()?,
                Next::Fail(e) => return Err(e),
            }
        }
    }

    /// Out of the guest until told to resume (true) or until the VM stops or the controller
    /// is gone (false).
    fn paused(
        &mut self,
        stop: &StopHandle,
        requests: &Receiver<VcpuRequest>,
        ack: Sender<()>,
    ) -> Result<bool, VcpuError> {
        self.complete_pending_io()?;
        let _ = ack.send(());
        loop {
            match requests.recv() {
                Ok(VcpuRequest::Pause(ack)) => {
                    let _ = ack.send(());
                }
                Ok(VcpuRequest::SaveState { support, reply }) => {
                    let _ = reply.send(self.save_state(&support));
                }
                Ok(VcpuRequest::Resume) => return Ok(!stop.is_stopping()),
                Err(_) => return Ok(false),
            }
        }
    }

    fn run_once(&mut self) -> Next {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return Next::Kicked;
            }
            Err(e) => return Next::Fail(VcpuError::Run(e)),
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                if !self.pio.read(u64::from(port), data) {
                    // Nothing decodes this port: the bus floats high.
                    data.fill(0xff);
                }
                Next::Continue
            }
            VcpuExit::IoOut(port, data) => {
                if !self.pio.write(u64::from(port), data) {
                    log::trace!("unclaimed write to port {port:#x}: {data:x?}");
                }
                Next::Continue
            }
            VcpuExit::MmioRead(addr, data) => {
                if !self.mmio.read(addr, data) {
                    log::debug!("unclaimed MMIO read at {addr:#x}");
                    data.fill(0xff);
                }
                Next::Continue
            }
            VcpuExit::MmioWrite(addr, data) => {
                if !self.mmio.write(addr, data) {
                    log::debug!("unclaimed MMIO write at {addr:#x}: {data:x?}");
                }
                Next::Continue
            }
            VcpuExit::Intr => Next::Kicked,
            VcpuExit::InternalError => Next::Internal,
            VcpuExit::Shutdown => Next::Fail(VcpuError::Shutdown { rip: self.rip() }),
            VcpuExit::FailEntry(reason, cpu) => Next::Fail(VcpuError::FailEntry {
                reason,
                cpu,
                rip: self.rip(),
            }),
            other => {
                let exit = format!("{other:?}");
                Next::Fail(VcpuError::UnhandledExit {
                    exit,
                    rip: self.rip(),
                })
            }
        }
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(u64::MAX)
    }

    /// An emulation failure on `int3` is answered by delivering #BP, as the CPU would have
    /// done; anything else ends the VM with the instruction bytes KVM reported.
    fn handle_internal_error(&mut self) -> Result<(), VcpuError> {
        // SAFETY: reading the `internal` member is what KVM_EXIT_INTERNAL_ERROR means.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let data = internal.data[..ndata].to_vec();
        let rip = self.rip();
        if internal.suberror != INTERNAL_ERROR_EMULATION {
            return Err(VcpuError::InternalError {
                suberror: internal.suberror,
                rip,
                data,
            });
        }
        let insn = emulation_failure_bytes(&data);
        if insn.first() == Some(&INT3_OPCODE) {
            log::debug!("vCPU {}: delivering #BP for int3 at {rip:#x}", self.id);
            return self.deliver_breakpoint();
        }
        Err(VcpuError::EmulationFailure { rip, insn })
    }

    /// #BP is a trap: the saved RIP points after the `int3`.
    fn deliver_breakpoint(&mut self) -> Result<(), VcpuError> {
        let mut regs = self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        regs.rip += 1;
        self.fd.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
        let mut events = self
            .fd
            .get_vcpu_events()
            .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
        events.exception.injected = 1;
        events.exception.nr = BREAKPOINT_VECTOR;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        self.fd
            .set_vcpu_events(&events)
            .map_err(ioctl("KVM_SET_VCPU_EVENTS"))
    }
}

/// Instruction bytes of an emulation-failure exit: `data[0]` holds flags, byte 0 of `data[1]`
/// the length, and the bytes follow it.
pub fn emulation_failure_bytes(data: &[u64]) -> Vec<u8> {
    if data.len() < 2 || data[0] & EMULATION_FLAG_INSN_BYTES == 0 {
        return Vec::new();
    }
    let raw: Vec<u8> = data[1..].iter().flat_map(|w| w.to_le_bytes()).collect();
    let len = usize::from(raw[0]).min(raw.len() - 1).min(15);
    raw[1..=len].to_vec()
}

/// Sends the kick signal to a vCPU thread that may be inside KVM_RUN.
pub fn kick(handle: &JoinHandle<()>) {
    if !handle.is_finished() {
        let _ = handle.kill(kick_signal());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_bytes_follow_the_length_byte() {
        // flags = has bytes; data[1] = len 2, bytes cc 90; data[2] continues the bytes.
        let data = [1u64, 0x0000_0000_0090_cc02, 0];
        assert_eq!(emulation_failure_bytes(&data), vec![0xcc, 0x90]);
        let long = [
            1u64,
            u64::from_le_bytes([15, 1, 2, 3, 4, 5, 6, 7]),
            u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]),
        ];
        assert_eq!(
            emulation_failure_bytes(&long),
            (1..=15).collect::<Vec<u8>>()
        );
        assert!(
            emulation_failure_bytes(&[0, 0x0102]).is_empty(),
            "no flag, no bytes"
        );
        assert!(emulation_failure_bytes(&[1]).is_empty());
        // A length larger than the data is clamped, never out of bounds.
        assert_eq!(emulation_failure_bytes(&[1, 0xff]).len(), 7);
    }

    #[test]
    fn errors_name_exit_rip_and_bytes() {
        let e = VcpuError::EmulationFailure {
            rip: 0xffff_ffff_8100_0000,
            insn: vec![0xf3, 0x0f, 0xb8, 0xc0],
        };
        assert_eq!(
            e.to_string(),
            "KVM_EXIT_INTERNAL_ERROR (emulation failure) at RIP 0xffffffff81000000, instruction bytes [f3 0f b8 c0]"
        );
        assert_eq!(
            VcpuError::Shutdown { rip: 0x10 }.to_string(),
            "KVM_EXIT_SHUTDOWN (triple fault) at RIP 0x10"
        );
        assert!(VcpuError::Shutdown { rip: 0xfff0 }
            .to_string()
            .contains("the reset vector"));
    }
}
