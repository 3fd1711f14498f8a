//! The KVM VM: memory slots, in-kernel interrupt controllers and PIT, irqfd/ioeventfd.

use kvm_bindings::{
    kvm_irqchip, kvm_pit_config, kvm_userspace_memory_region, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::memory::GuestMemory;
use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::snapshot::vm::VmState;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM_CREATE_VM failed: {0}")]
    Create(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    TssAddress(kvm_ioctls::Error),
    #[error("KVM_SET_IDENTITY_MAP_ADDR failed: {0}")]
    IdentityMap(kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    Irqchip(kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2 failed: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("cannot get the host address of guest region at {addr:#x}: {source}")]
    HostAddress {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error("KVM_SET_USER_MEMORY_REGION for {addr:#x}+{size:#x} failed: {source}")]
    MemorySlot {
        addr: u64,
        size: u64,
        source: kvm_ioctls::Error,
    },
    #[error("KVM_IRQFD for GSI {gsi} failed: {source}")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
    #[error("KVM_IOEVENTFD at {addr:#x} failed: {source}")]
    Ioeventfd {
        addr: u64,
        source: kvm_ioctls::Error,
    },
    /// Reading or writing VM state for a snapshot; `ioctl` names the call (and the chip).
    #[error("{ioctl} failed: {source}")]
    State {
        ioctl: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn state_error(ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::State { ioctl, source }
}

pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates a VM with the in-kernel IOAPIC/PIC/LAPICs and PIT. These must exist before any
    /// vCPU is created.
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(VmError::IdentityMap)?;
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(VmError::TssAddress)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        // The speaker port (0x61) is answered in the kernel so that the PIT calibration loop
        // Linux runs does not exit to us.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Vm { fd })
    }

    /// Hands every region of `mem` to KVM, one slot each.
    pub fn register_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let addr = region.start_addr().raw_value();
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|source| VmError::HostAddress { addr, source })?;
            let size = region.len();
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: addr,
                memory_size: size,
                userspace_addr: host as u64,
            };
            // SAFETY: the host range belongs to `mem`, which the caller keeps alive for as
            // long as the VM exists (both live in the same `Vmm`).
            unsafe { self.fd.set_user_memory_region(desc) }
                .map_err(|source| VmError::MemorySlot { addr, size, source })?;
        }
        Ok(())
    }

    /// Makes writes to `evt` raise interrupt line `gsi` (edge triggered through the IOAPIC).
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// Makes guest writes of any value to MMIO address `addr` signal `evt` in the kernel,
    /// without a vCPU exit (virtio queue notifications).
    pub fn register_mmio_ioevent(&self, evt: &EventFd, addr: u64) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), kvm_ioctls::NoDatamatch)
            .map_err(|source| VmError::Ioeventfd { addr, source })
    }

    /// Like `register_mmio_ioevent`, but only for writes of `datamatch` (e.g. a queue index).
    pub fn register_mmio_ioevent_datamatch(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| VmError::Ioeventfd { addr, source })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The in-kernel PICs, IOAPIC, PIT and clock. The vCPUs must be paused, or the state read
    /// is not one the guest was ever in.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let chip = |chip_id, ioctl| {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map(|()| chip)
                .map_err(state_error(ioctl))
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
            pit: self.fd.get_pit2().map_err(state_error("KVM_GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(state_error("KVM_GET_CLOCK"))?,
        })
    }

    /// Puts back what `save_state` read, into a VM made by `new` (which created the irqchip
    /// and the PIT these calls fill in).
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        self.fd
            .set_irqchip(&state.pic_master)
            .map_err(state_error("KVM_SET_IRQCHIP (PIC master)"))?;
        self.fd
            .set_irqchip(&state.pic_slave)
            .map_err(state_error("KVM_SET_IRQCHIP (PIC slave)"))?;
        self.fd
            .set_irqchip(&state.ioapic)
            .map_err(state_error("KVM_SET_IRQCHIP (IOAPIC)"))?;
        self.fd
            .set_pit2(&state.pit)
            .map_err(state_error("KVM_SET_PIT2"))?;
        // Without KVM_CLOCK_REALTIME the clock resumes where it was paused rather than
        // jumping by however long the snapshot sat on disk; the other flags only describe
        // what KVM_GET_CLOCK filled in.
        let clock = kvm_bindings::kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(state_error("KVM_SET_CLOCK"))
    }
}
