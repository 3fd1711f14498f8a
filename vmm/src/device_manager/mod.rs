//! The devices of a VM being built: the legacy devices on the port I/O bus, and virtio
//! devices each in a virtio-mmio slot (address window + interrupt line) of the MMIO bus
//! (`virtio.rs`). The builder calls it; it knows nothing of the builder.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::arch::x86_64::layout::{
    BOOT_COMPLETE_PORT, IRQ_DEVICE_FIRST, IRQ_DEVICE_LAST, IRQ_SERIAL_COM1, VIRTIO_MMIO_END,
    VIRTIO_MMIO_SLOT_SIZE, VIRTIO_MMIO_START,
};
use crate::config::SerialOutput;
use crate::devices::bus::{Bus, BusDevice, BusError};
use crate::devices::legacy::{
    i8042, port_sink, serial, BootComplete, PortSink, SerialDevice, SerialDeviceState, I8042,
};
use crate::vstate::stop::{StopHandle, VmExit};
use crate::vstate::vm::{Vm, VmError};

pub mod virtio;

/// A device's place on the MMIO bus and its interrupt line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    pub addr: u64,
    pub len: u64,
    pub irq: u32,
}

impl MmioSlot {
    /// How the Linux virtio-mmio driver learns about the device without a device tree.
    pub fn cmdline_param(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.len / 1024,
            self.addr,
            self.irq
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("no free virtio-mmio slot left (address window or interrupt lines exhausted)")]
    NoMmioSlot,
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("serial output {path}: {source}")]
    SerialFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("serial device: {0}")]
    Serial(std::io::Error),
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// Hands out consecutive MMIO windows and IRQs 5..=23.
#[derive(Debug)]
pub struct MmioAllocator {
    next_addr: u64,
    next_irq: u32,
}

impl Default for MmioAllocator {
    fn default() -> Self {
        Self {
            next_addr: VIRTIO_MMIO_START,
            next_irq: IRQ_DEVICE_FIRST,
        }
    }
}

impl MmioAllocator {
    pub fn allocate(&mut self) -> Result<MmioSlot, DeviceManagerError> {
        if self.next_irq > IRQ_DEVICE_LAST
            || self.next_addr + VIRTIO_MMIO_SLOT_SIZE > VIRTIO_MMIO_END
        {
            return Err(DeviceManagerError::NoMmioSlot);
        }
        let slot = MmioSlot {
            addr: self.next_addr,
            len: VIRTIO_MMIO_SLOT_SIZE,
            irq: self.next_irq,
        };
        self.next_addr += VIRTIO_MMIO_SLOT_SIZE;
        self.next_irq += 1;
        Ok(slot)
    }
}

/// The MMIO bus and its slots, and the command-line parameters that announce them.
#[derive(Default)]
pub struct MmioDeviceManager {
    bus: Bus,
    slots: MmioAllocator,
    cmdline: Vec<String>,
}

impl MmioDeviceManager {
    /// What vCPUs dispatch MMIO exits to.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// `virtio_mmio.device=` for each placed device, in slot order.
    pub fn cmdline_params(&self) -> &[String] {
        &self.cmdline
    }

    /// Places `device` in the next slot and announces it on the command line; the caller
    /// wires the slot's interrupt and notification eventfds.
    pub fn place(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<MmioSlot, DeviceManagerError> {
        let slot = self.slots.allocate()?;
        self.bus.insert(device, slot.addr, slot.len)?;
        self.cmdline.push(slot.cmdline_param());
        Ok(slot)
    }
}

fn serial_out(output: &SerialOutput) -> Result<Box<dyn Write + Send>, DeviceManagerError> {
    Ok(match output {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::None => Box::new(std::io::sink()),
        SerialOutput::File(path) => {
            Box::new(
                File::create(path).map_err(|source| DeviceManagerError::SerialFile {
                    path: path.clone(),
                    source,
                })?,
            )
        }
    })
}

/// The legacy devices every VM has, already on `pio`.
pub struct LegacyDevices {
    pub serial: Arc<Mutex<SerialDevice>>,
}

/// The state of the legacy devices that have any: the i8042 (reset only), the boot-complete
/// port and the absorbed ports keep none the guest can observe.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LegacyDevicesState {
    pub serial: SerialDeviceState,
}

impl LegacyDevices {
    /// Read while the vCPUs are paused: only vCPU threads touch these devices.
    pub fn save_state(&self) -> LegacyDevicesState {
        LegacyDevicesState {
            serial: self
                .serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .save_state(),
        }
    }
}

/// Puts the legacy devices on `pio`, in their power-on state or, restoring a snapshot, in
/// `state`.
pub fn attach_legacy_devices(
    vm: &Vm,
    pio: &mut Bus,
    serial_output: &SerialOutput,
    stop: &StopHandle,
    start: Instant,
    state: Option<&LegacyDevicesState>,
) -> Result<LegacyDevices, DeviceManagerError> {
    let out = serial_out(serial_output)?;
    let serial = match state {
        Some(state) => SerialDevice::from_state(out, &state.serial),
        None => SerialDevice::new(out),
    }
    .map_err(DeviceManagerError::Serial)?;
    vm.register_irqfd(serial.interrupt_evt(), IRQ_SERIAL_COM1)?;
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(serial.clone(), serial::COM1_PORT, serial::COM_PORT_LEN)?;

    let reset_stop = stop.clone();
    let i8042 = Arc::new(Mutex::new(I8042::new(Box::new(move || {
        reset_stop.request(VmExit::GuestReset)
    }))));
    pio.insert(i8042.clone(), i8042::DATA_PORT, 1)?;
    pio.insert(i8042, i8042::COMMAND_PORT, 1)?;

    let boot = Arc::new(Mutex::new(BootComplete::new(
        start,
        Box::new(std::io::stderr()),
    )));
    pio.insert(boot, u64::from(BOOT_COMPLETE_PORT), 4)?;

    let sink = Arc::new(Mutex::new(PortSink));
    for &(base, len) in port_sink::SINK_RANGES {
        pio.insert(sink.clone(), base, len)?;
    }
    Ok(LegacyDevices { serial })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_consecutive_pages_with_their_own_irq() {
        let mut alloc = MmioAllocator::default();
        let a = alloc.allocate().unwrap();
        let b = alloc.allocate().unwrap();
        assert_eq!(
            a,
            MmioSlot {
                addr: 0xd000_0000,
                len: 0x1000,
                irq: 5
            }
        );
        assert_eq!(b.addr, 0xd000_1000);
        assert_eq!(b.irq, 6);
        assert_eq!(a.cmdline_param(), "virtio_mmio.device=4K@0xd0000000:5");
    }

    #[test]
    fn running_out_of_irqs_is_an_error() {
        let mut alloc = MmioAllocator::default();
        let n = (IRQ_DEVICE_FIRST..=IRQ_DEVICE_LAST).count();
        for _ in 0..n {
            alloc.allocate().unwrap();
        }
        assert!(matches!(
            alloc.allocate(),
            Err(DeviceManagerError::NoMmioSlot)
        ));
    }

    #[test]
    fn serial_file_errors_name_the_path() {
        let err = serial_out(&SerialOutput::File("/nonexistent/dir/console".into()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/dir/console"));
    }
}
