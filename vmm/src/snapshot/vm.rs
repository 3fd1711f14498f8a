//! What the VM-wide KVM state is made of in a snapshot: the in-kernel interrupt controllers,
//! the PIT and the KVM clock.

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// KVM_GET_IRQCHIP with chip_id KVM_IRQCHIP_PIC_MASTER.
    pub pic_master: kvm_irqchip,
    /// KVM_GET_IRQCHIP with chip_id KVM_IRQCHIP_PIC_SLAVE.
    pub pic_slave: kvm_irqchip,
    /// KVM_GET_IRQCHIP with chip_id KVM_IRQCHIP_IOAPIC.
    pub ioapic: kvm_irqchip,
    /// KVM_GET_PIT2.
    pub pit: kvm_pit_state2,
    /// KVM_GET_CLOCK: the kvmclock value the guest saw when it was paused.
    pub clock: kvm_clock_data,
}
