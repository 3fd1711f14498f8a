//! The virtio-mmio transport, version 2 (virtio 1.x, "modern" devices only).
//!
//! One `MmioTransport` per device, placed on the MMIO bus at a 4 KiB window. It implements the
//! register file of the virtio specification (section 4.2.2): feature negotiation, queue
//! configuration, the device status state machine, interrupt status/acknowledge and the
//! configuration space. Queue notifications normally never reach it: the VMM registers each
//! queue's eventfd as a KVM ioeventfd on `base + QUEUE_NOTIFY_OFFSET` with the queue index as
//! datamatch (see [`MmioTransport::queue_evts`]); a notify write that does reach the bus is
//! forwarded to the same eventfd. Interrupts leave through the irqfd of [`IrqTrigger`].

use std::sync::{Arc, Mutex, MutexGuard};

use log::{error, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{InterruptKind, IrqTrigger, VirtioDevice, VirtioInterrupt};
use super::VIRTIO_F_VERSION_1;
use crate::devices::bus::BusDevice;

/// Size of the MMIO window of one device (registers + configuration space).
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, where the ioeventfds go.
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

/// "virt" in little endian.
const MMIO_MAGIC: u32 = 0x7472_6976;
const MMIO_VERSION: u32 = 2;
/// Largest split virtqueue the specification allows.
const MAX_QUEUE_SIZE: u16 = 32768;
/// The PCI-SIG vendor id space does not apply to MMIO; any value identifies the implementer.
const VENDOR_ID: u32 = 0x5342_4d56; // "VMBS"
const CONFIG_SPACE_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;

/// Errors building a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("device declares an invalid queue size {size} for queue {index} (must be a power of two up to 32768)")]
    InvalidQueueSize { index: usize, size: u16 },
    #[error("device declares no queues")]
    NoQueues,
    #[error("device does not offer VIRTIO_F_VERSION_1; legacy devices are not supported")]
    LegacyDevice,
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// The virtio-mmio register file in front of one device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<IrqTrigger>,
    queues: Vec<QueueConfig>,
    queue_evts: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    acked_beyond_64: bool,
    queue_sel: u32,
    config_generation: u32,
}

impl MmioTransport {
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Self, MmioError> {
        let (max_sizes, features) = {
            let dev = lock(&device);
            (dev.queue_max_sizes().to_vec(), dev.avail_features())
        };
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(MmioError::LegacyDevice);
        }
        if max_sizes.is_empty() {
            return Err(MmioError::NoQueues);
        }
        let queues = max_sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
                    return Err(MmioError::InvalidQueueSize { index, size });
                }
                Ok(QueueConfig::new(size))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let queue_evts = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(IrqTrigger::new().map_err(MmioError::EventFd)?),
            queues,
            queue_evts,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            acked_beyond_64: false,
            queue_sel: 0,
            config_generation: 0,
        })
    }

    /// One eventfd per queue, in queue order: register `queue_evts()[i]` as a KVM ioeventfd at
    /// `base + QUEUE_NOTIFY_OFFSET`, 4 bytes, datamatch `i as u32`.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The interrupt of this device; register `interrupt().irq_evt()` as the irqfd of its GSI.
    pub fn interrupt(&self) -> &Arc<IrqTrigger> {
        &self.interrupt
    }

    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue, if the driver may still change it: after FEATURES_OK, before
    /// DRIVER_OK, and while the queue is not ready.
    fn configurable_queue(&mut self) -> Option<&mut QueueConfig> {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0
            || self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            || self.status & VIRTIO_CONFIG_S_FAILED != 0
        {
            warn!(
                "virtio-mmio: queue configured in device status {:#x}; ignored",
                self.status
            );
            return None;
        }
        let sel = self.queue_sel as usize;
        match self.queues.get_mut(sel) {
            Some(q) if !q.ready => Some(q),
            Some(_) => {
                warn!("virtio-mmio: queue {sel} changed while ready; ignored");
                None
            }
            None => {
                warn!("virtio-mmio: queue {sel} does not exist; write ignored");
                None
            }
        }
    }

    /// Applies a driver write to the selected queue, if it may still change (see
    /// [`Self::configurable_queue`]).
    fn configure_queue(&mut self, change: impl FnOnce(&mut QueueConfig)) {
        if let Some(q) = self.configurable_queue() {
            change(q);
        }
    }

    fn read_register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => lock(&self.device).device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = lock(&self.device).avail_features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size.into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready.into()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // No shared memory regions: a length of all ones says "absent".
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            _ => {
                warn!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            // Validated when the driver sets QueueReady.
            VIRTIO_MMIO_QUEUE_NUM => self.configure_queue(|q| q.size = value),
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                self.configure_queue(|q| set_low(&mut q.desc_table, value))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                self.configure_queue(|q| set_high(&mut q.desc_table, value))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                self.configure_queue(|q| set_low(&mut q.avail_ring, value))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                self.configure_queue(|q| set_high(&mut q.avail_ring, value))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW => {
                self.configure_queue(|q| set_low(&mut q.used_ring, value))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH => {
                self.configure_queue(|q| set_high(&mut q.used_ring, value))
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_SHM_SEL => {}
            VIRTIO_MMIO_GUEST_PAGE_SIZE | VIRTIO_MMIO_QUEUE_ALIGN | VIRTIO_MMIO_QUEUE_PFN => {
                // Version 1 (legacy) layout: a legacy driver reads Version 2 and gives up
                // before touching these; one that writes them anyway gets nothing.
                warn!("virtio-mmio: legacy register {offset:#x} written; legacy layout is not supported");
            }
            _ => warn!("virtio-mmio: write to read-only or unknown register {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_DRIVER == 0
            || self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
        {
            warn!(
                "virtio-mmio: driver features written in status {:#x}; ignored",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => set_low(&mut self.acked_features, value),
            1 => set_high(&mut self.acked_features, value),
            // Feature pages beyond 64 bits offer nothing; a driver acking any bit there asks
            // for something we never offered, which FEATURES_OK will refuse.
            _ => self.acked_beyond_64 |= value != 0,
        }
    }

    fn avail_features(&self) -> u64 {
        lock(&self.device).avail_features()
    }

    fn write_queue_ready(&mut self, value: u32) {
        let sel = self.queue_sel as usize;
        if value == 0 {
            // Clearing ready is only meaningful with VIRTIO_F_RING_RESET, which is not offered;
            // before DRIVER_OK it simply undoes an earlier ready.
            if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.ready = false;
                }
            } else {
                warn!("virtio-mmio: queue {sel} disabled after DRIVER_OK; ignored");
            }
            return;
        }
        let mem = self.mem.clone();
        let Some(q) = self.configurable_queue() else {
            return;
        };
        if let Err(problem) = q.build(&mem) {
            error!("virtio-mmio: queue {sel} refused: {problem}");
            self.set_needs_reset();
            return;
        }
        q.ready = true;
    }

    fn notify(&self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            warn!("virtio-mmio: queue {value} notified before DRIVER_OK; ignored");
            return;
        }
        match self.queue_evts.get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    error!("virtio-mmio: cannot signal queue {value}: {e}");
                }
            }
            None => warn!("virtio-mmio: notify for queue {value}, which does not exist"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // The driver only ever adds bits (4.2.3.1 / 3.1.1); clearing any is a protocol error
        // that leaves the status untouched. NEEDS_RESET is the device's bit, not the driver's.
        let value = value & !VIRTIO_CONFIG_S_NEEDS_RESET | (old & VIRTIO_CONFIG_S_NEEDS_RESET);
        if value & old != old {
            warn!("virtio-mmio: status {value:#x} would clear bits of {old:#x}; ignored");
            return;
        }
        let added = value & !old;
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            // The driver gave up: keep the bits, stop nothing until it resets the device.
            self.status = value;
            return;
        }
        // Each step requires the previous one.
        const ORDER: [u32; 4] = [
            VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_DRIVER,
            VIRTIO_CONFIG_S_FEATURES_OK,
            VIRTIO_CONFIG_S_DRIVER_OK,
        ];
        let known = ORDER.iter().fold(
            VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET,
            |a, b| a | b,
        );
        if value & !known != 0 {
            warn!("virtio-mmio: unknown status bits in {value:#x}; ignored");
            return;
        }
        for (i, bit) in ORDER.iter().enumerate() {
            if value & bit != 0 && i > 0 && value & ORDER[i - 1] == 0 {
                warn!("virtio-mmio: status {value:#x} skips a step; ignored");
                return;
            }
        }
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let avail = self.avail_features();
            let acked = self.acked_features;
            if acked & !avail != 0 || acked & VIRTIO_F_VERSION_1 == 0 || self.acked_beyond_64 {
                // The spec's answer: leave FEATURES_OK clear; the driver reads it back and
                // knows the features were refused.
                warn!(
                    "virtio-mmio: driver features {acked:#x} refused (offered {avail:#x}, VERSION_1 required)"
                );
                self.status = value & !VIRTIO_CONFIG_S_FEATURES_OK;
                return;
            }
        }
        self.status = value;
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let queue_evts = match self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(evts) => evts,
            Err(e) => {
                error!("virtio-mmio: cannot duplicate queue eventfds: {e}");
                self.set_needs_reset();
                return;
            }
        };
        let queues = match self
            .queues
            .iter()
            .map(|q| q.build(&self.mem))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(queues) => queues,
            Err(problem) => {
                error!("virtio-mmio: cannot activate: {problem}");
                self.set_needs_reset();
                return;
            }
        };
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        let result = lock(&self.device).activate(
            self.mem.clone(),
            interrupt,
            queues,
            queue_evts,
            self.acked_features,
        );
        if let Err(e) = result {
            error!("virtio-mmio: device activation failed: {e}");
            self.set_needs_reset();
        }
    }

    /// The device hit an error it cannot recover from without a driver reset.
    fn set_needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if let Err(e) = self.interrupt.trigger(InterruptKind::Config) {
                error!("virtio-mmio: cannot raise config interrupt: {e}");
            }
        }
    }

    fn reset(&mut self) {
        let mut dev = lock(&self.device);
        if dev.is_activated() && !dev.reset() {
            drop(dev);
            error!("virtio-mmio: device cannot be reset");
            self.set_needs_reset();
            return;
        }
        drop(dev);
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        // A notification that raced with the reset must not wake the next activation.
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.interrupt.clear();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.acked_beyond_64 = false;
        self.queue_sel = 0;
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

/// What the driver wrote into one queue's registers. Turned into a `virtio_queue::Queue` only
/// once validated, so that a half-written or misaligned address is never used.
#[derive(Clone, Copy, Debug)]
struct QueueConfig {
    max_size: u16,
    size: u32,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    ready: bool,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size.into(),
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            ready: false,
        }
    }

    /// The queue the device gets. A queue the driver did not enable comes out not ready;
    /// an enabled one has passed the size, alignment and guest-memory checks.
    fn build(&self, mem: &GuestMemoryMmap) -> Result<Queue, String> {
        let mut q = Queue::new(self.max_size).map_err(|e| format!("max size: {e}"))?;
        let size = u16::try_from(self.size)
            .ok()
            .filter(|s| *s != 0 && *s <= self.max_size && s.is_power_of_two())
            .ok_or_else(|| format!("size {} (max {})", self.size, self.max_size))?;
        q.try_set_size(size)
            .map_err(|e| format!("size {size}: {e}"))?;
        q.try_set_desc_table_address(GuestAddress(self.desc_table))
            .map_err(|_| {
                format!(
                    "descriptor table at {:#x} is not 16-byte aligned",
                    self.desc_table
                )
            })?;
        q.try_set_avail_ring_address(GuestAddress(self.avail_ring))
            .map_err(|_| {
                format!(
                    "available ring at {:#x} is not 2-byte aligned",
                    self.avail_ring
                )
            })?;
        q.try_set_used_ring_address(GuestAddress(self.used_ring))
            .map_err(|_| format!("used ring at {:#x} is not 4-byte aligned", self.used_ring))?;
        // is_valid checks that each area lies in guest memory; it wants the queue ready.
        q.set_ready(true);
        if !q.is_valid(mem) {
            return Err(format!(
                "rings (desc {:#x}, avail {:#x}, used {:#x}, size {size}) are outside guest memory",
                self.desc_table, self.avail_ring, self.used_ring
            ));
        }
        q.set_ready(self.ready);
        Ok(q)
    }
}

fn set_low(reg: &mut u64, value: u32) {
    *reg = (*reg & !0xffff_ffff) | u64::from(value);
}

fn set_high(reg: &mut u64, value: u32) {
    *reg = (*reg & 0xffff_ffff) | (u64::from(value) << 32);
}

fn lock<'a>(
    dev: &'a Arc<Mutex<dyn VirtioDevice + 'static>>,
) -> MutexGuard<'a, dyn VirtioDevice + 'static> {
    // A device that panicked on the event loop left its state as it was; the transport can
    // still answer register accesses and let the driver reset it.
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn!(
                "virtio-mmio: {}-byte read at register offset {offset:#x}; registers are 32-bit",
                data.len()
            );
            data.fill(0);
            return;
        }
        let value = self.read_register(offset as u32);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if self.status & VIRTIO_CONFIG_S_DRIVER == 0 {
                warn!("virtio-mmio: config space written before DRIVER; ignored");
                return;
            }
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn!(
                "virtio-mmio: {}-byte write at register offset {offset:#x}; registers are 32-bit",
                data.len()
            );
            return;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_register(offset as u32, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{test_memory, DriverQueue};
    use crate::devices::virtio::ActivateError;
    use vm_memory::GuestAddress;

    const F_EXTRA: u64 = 1 << 3;

    #[derive(Default)]
    struct MockDevice {
        config: [u8; 8],
        activations: Vec<(u64, Vec<u16>, usize)>,
        active: bool,
        resets: usize,
        fail_activate: bool,
        refuse_reset: bool,
    }

    impl VirtioDevice for MockDevice {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | F_EXTRA
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = *self.config.get(offset as usize + i).unwrap_or(&0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                if let Some(c) = self.config.get_mut(offset as usize + i) {
                    *c = *b;
                }
            }
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            _interrupt: Arc<dyn VirtioInterrupt>,
            queues: Vec<Queue>,
            queue_evts: Vec<EventFd>,
            acked_features: u64,
        ) -> Result<(), ActivateError> {
            if self.fail_activate {
                return Err(ActivateError::Backend("mock refuses".into()));
            }
            self.activations.push((
                acked_features,
                queues.iter().map(|q| q.size()).collect(),
                queue_evts.len(),
            ));
            self.active = true;
            Ok(())
        }
        fn is_activated(&self) -> bool {
            self.active
        }
        fn reset(&mut self) -> bool {
            if self.refuse_reset {
                return false;
            }
            self.active = false;
            self.resets += 1;
            true
        }
    }

    struct Fixture {
        mem: GuestMemoryMmap,
        dev: Arc<Mutex<MockDevice>>,
        t: MmioTransport,
    }

    fn fixture() -> Fixture {
        let mem = test_memory(0x20000);
        let dev = Arc::new(Mutex::new(MockDevice {
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            ..Default::default()
        }));
        let t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
        Fixture { mem, dev, t }
    }

    fn rd(t: &mut MmioTransport, off: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(0, off as u64, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u32, v: u32) {
        t.write(0, off as u64, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features: u64) {
        wr(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        wr(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        );
    }

    const UP_TO_FEATURES_OK: u32 =
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;

    fn setup_queue(t: &mut MmioTransport, index: u32, dq: &DriverQueue) {
        wr(t, VIRTIO_MMIO_QUEUE_SEL, index);
        wr(t, VIRTIO_MMIO_QUEUE_NUM, dq.size() as u32);
        let set = |t: &mut MmioTransport, lo: u32, addr: GuestAddress| {
            wr(t, lo, addr.0 as u32);
            wr(t, lo + 4, (addr.0 >> 32) as u32);
        };
        set(t, VIRTIO_MMIO_QUEUE_DESC_LOW, dq.desc_table());
        set(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, dq.avail_ring());
        set(t, VIRTIO_MMIO_QUEUE_USED_LOW, dq.used_ring());
        wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }

    #[test]
    fn identification_registers() {
        let mut f = fixture();
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_DEVICE_ID), 2);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
    }

    #[test]
    fn feature_pages() {
        let mut f = fixture();
        wr(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES), F_EXTRA as u32);
        wr(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES), 1); // VERSION_1 is bit 32
        wr(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
    }

    #[test]
    fn non_32bit_register_access_is_ignored() {
        let mut f = fixture();
        let mut b = [0xffu8; 2];
        f.t.read(0, VIRTIO_MMIO_MAGIC_VALUE as u64, &mut b);
        assert_eq!(b, [0, 0]);
        f.t.write(0, VIRTIO_MMIO_STATUS as u64, &[1]);
        assert_eq!(f.t.status(), 0);
        // Misaligned 4-byte access.
        f.t.write(0, VIRTIO_MMIO_STATUS as u64 + 1, &[1, 0, 0, 0]);
        assert_eq!(f.t.status(), 0);
    }

    #[test]
    fn features_ok_requires_version_1() {
        let mut f = fixture();
        negotiate(&mut f.t, F_EXTRA);
        assert_eq!(
            rd(&mut f.t, VIRTIO_MMIO_STATUS),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
        );
    }

    #[test]
    fn features_ok_refuses_unoffered_features() {
        let mut f = fixture();
        negotiate(&mut f.t, VIRTIO_F_VERSION_1 | 1 << 5);
        assert_eq!(
            rd(&mut f.t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );

        // A bit acked in a feature page beyond 64 is refused too.
        let mut f = fixture();
        wr(&mut f.t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        wr(&mut f.t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
        wr(&mut f.t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&mut f.t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(&mut f.t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&mut f.t, VIRTIO_MMIO_STATUS, UP_TO_FEATURES_OK);
        assert_eq!(
            rd(&mut f.t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
    }

    #[test]
    fn features_are_frozen_after_features_ok() {
        let mut f = fixture();
        negotiate(&mut f.t, VIRTIO_F_VERSION_1);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_STATUS), UP_TO_FEATURES_OK);
        wr(&mut f.t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(&mut f.t, VIRTIO_MMIO_DRIVER_FEATURES, F_EXTRA as u32);
        let dq0 = DriverQueue::new(&f.mem, GuestAddress(0x1000), 16);
        let dq1 = DriverQueue::new(&f.mem, GuestAddress(0x3000), 8);
        setup_queue(&mut f.t, 0, &dq0);
        setup_queue(&mut f.t, 1, &dq1);
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            UP_TO_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert_eq!(f.dev.lock().unwrap().activations[0].0, VIRTIO_F_VERSION_1);
    }

    #[test]
    fn status_must_follow_the_init_sequence() {
        let mut f = fixture();
        // DRIVER without ACKNOWLEDGE.
        wr(&mut f.t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(f.t.status(), 0);
        // DRIVER_OK straight after ACKNOWLEDGE|DRIVER.
        wr(&mut f.t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert_eq!(f.t.status(), VIRTIO_CONFIG_S_ACKNOWLEDGE);
        assert!(f.dev.lock().unwrap().activations.is_empty());
        // Clearing a bit without a reset.
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        wr(&mut f.t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(
            f.t.status(),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
        );
        // FAILED is accepted at any point.
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FAILED,
        );
        assert_ne!(f.t.status() & VIRTIO_CONFIG_S_FAILED, 0);
        // Unknown bits.
        let mut f = fixture();
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | 0x10,
        );
        assert_eq!(f.t.status(), 0);
    }

    #[test]
    fn full_init_activates_with_queues_and_eventfds() {
        let mut f = fixture();
        negotiate(&mut f.t, VIRTIO_F_VERSION_1 | F_EXTRA);
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 2);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        let dq0 = DriverQueue::new(&f.mem, GuestAddress(0x1000), 8);
        let dq1 = DriverQueue::new(&f.mem, GuestAddress(0x3000), 8);
        setup_queue(&mut f.t, 0, &dq0);
        setup_queue(&mut f.t, 1, &dq1);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 1);
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            UP_TO_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert_eq!(f.t.status(), UP_TO_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
        let dev = f.dev.lock().unwrap();
        assert_eq!(
            dev.activations,
            vec![(VIRTIO_F_VERSION_1 | F_EXTRA, vec![8, 8], 2)]
        );
    }

    #[test]
    fn queue_setup_checks_size_alignment_and_memory() {
        let mut f = fixture();
        // Before FEATURES_OK queue writes are ignored.
        let dq = DriverQueue::new(&f.mem, GuestAddress(0x1000), 8);
        setup_queue(&mut f.t, 0, &dq);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 0);

        negotiate(&mut f.t, VIRTIO_F_VERSION_1);
        // Size not a power of two.
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 0);
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_NUM, 6);
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert_ne!(f.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);

        let bad_layouts: [(u32, u64); 3] = [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1008),        // misaligned table
            (VIRTIO_MMIO_QUEUE_USED_LOW, 0x1_0000_0000), // above guest memory
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x20000 - 4),  // runs off the end of memory
        ];
        for (reg, addr) in bad_layouts {
            let mut f = fixture();
            negotiate(&mut f.t, VIRTIO_F_VERSION_1);
            let dq = DriverQueue::new(&f.mem, GuestAddress(0x1000), 8);
            setup_queue(&mut f.t, 0, &dq);
            assert_eq!(rd(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 1);
            wr(&mut f.t, VIRTIO_MMIO_QUEUE_READY, 0);
            wr(&mut f.t, reg, addr as u32);
            wr(&mut f.t, reg + 4, (addr >> 32) as u32);
            wr(&mut f.t, VIRTIO_MMIO_QUEUE_READY, 1);
            assert_eq!(
                rd(&mut f.t, VIRTIO_MMIO_QUEUE_READY),
                0,
                "reg {reg:#x} addr {addr:#x}"
            );
            assert_ne!(f.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        }
    }

    #[test]
    fn queue_is_frozen_after_driver_ok() {
        let mut f = fixture();
        negotiate(&mut f.t, VIRTIO_F_VERSION_1);
        let dq0 = DriverQueue::new(&f.mem, GuestAddress(0x1000), 8);
        let dq1 = DriverQueue::new(&f.mem, GuestAddress(0x3000), 8);
        setup_queue(&mut f.t, 0, &dq0);
        setup_queue(&mut f.t, 1, &dq1);
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            UP_TO_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 0);
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_READY, 0);
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(f.t.queues[0].desc_table, 0x1000);
    }

    #[test]
    fn failed_activation_sets_needs_reset_and_config_interrupt() {
        let mut f = fixture();
        f.dev.lock().unwrap().fail_activate = true;
        negotiate(&mut f.t, VIRTIO_F_VERSION_1);
        let dq0 = DriverQueue::new(&f.mem, GuestAddress(0x1000), 8);
        let dq1 = DriverQueue::new(&f.mem, GuestAddress(0x3000), 8);
        setup_queue(&mut f.t, 0, &dq0);
        setup_queue(&mut f.t, 1, &dq1);
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            UP_TO_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert_ne!(f.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(
            rd(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_CONFIG
        );
        // The driver cannot clear NEEDS_RESET by rewriting the status.
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            UP_TO_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert_ne!(f.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        wr(&mut f.t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(f.t.status(), 0);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let mut f = fixture();
        f.t.interrupt().trigger(InterruptKind::Queue).unwrap();
        f.t.interrupt().trigger(InterruptKind::Config).unwrap();
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
        assert_eq!(f.t.interrupt().irq_evt().read().unwrap(), 2);
        wr(&mut f.t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(
            rd(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_CONFIG
        );
    }

    #[test]
    fn notify_reaching_the_bus_signals_the_queue_eventfd() {
        let mut f = fixture();
        // Before DRIVER_OK a notify is dropped.
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert!(f.t.queue_evts()[1].read().is_err());
        negotiate(&mut f.t, VIRTIO_F_VERSION_1);
        let dq0 = DriverQueue::new(&f.mem, GuestAddress(0x1000), 8);
        let dq1 = DriverQueue::new(&f.mem, GuestAddress(0x3000), 8);
        setup_queue(&mut f.t, 0, &dq0);
        setup_queue(&mut f.t, 1, &dq1);
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            UP_TO_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert_eq!(f.t.queue_evts()[1].read().unwrap(), 1);
        assert!(f.t.queue_evts()[0].read().is_err());
        // Out-of-range queue index: ignored.
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
    }

    #[test]
    fn config_space_access_and_generation() {
        let mut f = fixture();
        let mut b = [0u8; 2];
        f.t.read(0, 0x102, &mut b);
        assert_eq!(b, [3, 4]);
        let mut b = [0xaau8; 4];
        f.t.read(0, 0x106, &mut b);
        assert_eq!(b, [7, 8, 0, 0]);
        // Written before DRIVER: ignored.
        f.t.write(0, 0x100, &[9]);
        assert_eq!(f.dev.lock().unwrap().config[0], 1);
        let gen = rd(&mut f.t, VIRTIO_MMIO_CONFIG_GENERATION);
        wr(&mut f.t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        f.t.write(0, 0x100, &[9]);
        assert_eq!(f.dev.lock().unwrap().config[0], 9);
        assert_ne!(rd(&mut f.t, VIRTIO_MMIO_CONFIG_GENERATION), gen);
    }

    #[test]
    fn reset_returns_to_initial_state_and_allows_reactivation() {
        let mut f = fixture();
        negotiate(&mut f.t, VIRTIO_F_VERSION_1 | F_EXTRA);
        let dq0 = DriverQueue::new(&f.mem, GuestAddress(0x1000), 8);
        let dq1 = DriverQueue::new(&f.mem, GuestAddress(0x3000), 8);
        setup_queue(&mut f.t, 0, &dq0);
        setup_queue(&mut f.t, 1, &dq1);
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            UP_TO_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        f.t.interrupt().trigger(InterruptKind::Queue).unwrap();
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);

        wr(&mut f.t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(f.t.status(), 0);
        assert_eq!(f.dev.lock().unwrap().resets, 1);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert!(f.t.queue_evts()[0].read().is_err(), "stale notify drained");
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(f.t.queues[0].size, 16);

        negotiate(&mut f.t, VIRTIO_F_VERSION_1);
        setup_queue(&mut f.t, 0, &dq0);
        setup_queue(&mut f.t, 1, &dq1);
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            UP_TO_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        let dev = f.dev.lock().unwrap();
        assert_eq!(dev.activations.len(), 2);
        assert_eq!(dev.activations[1].0, VIRTIO_F_VERSION_1);
    }

    #[test]
    fn device_that_cannot_reset_reports_needs_reset() {
        let mut f = fixture();
        negotiate(&mut f.t, VIRTIO_F_VERSION_1);
        let dq0 = DriverQueue::new(&f.mem, GuestAddress(0x1000), 8);
        let dq1 = DriverQueue::new(&f.mem, GuestAddress(0x3000), 8);
        setup_queue(&mut f.t, 0, &dq0);
        setup_queue(&mut f.t, 1, &dq1);
        wr(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            UP_TO_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        f.dev.lock().unwrap().refuse_reset = true;
        wr(&mut f.t, VIRTIO_MMIO_STATUS, 0);
        assert_ne!(f.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }

    #[test]
    fn legacy_registers_and_devices_are_rejected() {
        let mut f = fixture();
        wr(&mut f.t, VIRTIO_MMIO_GUEST_PAGE_SIZE, 4096);
        wr(&mut f.t, VIRTIO_MMIO_QUEUE_PFN, 1);
        assert_eq!(f.t.queues[0].desc_table, 0);
        assert_eq!(rd(&mut f.t, VIRTIO_MMIO_QUEUE_PFN), 0);

        struct Legacy;
        impl VirtioDevice for Legacy {
            fn device_type(&self) -> u32 {
                4
            }
            fn queue_max_sizes(&self) -> &[u16] {
                &[8]
            }
            fn avail_features(&self) -> u64 {
                0
            }
            fn read_config(&self, _: u64, _: &mut [u8]) {}
            fn write_config(&mut self, _: u64, _: &[u8]) {}
            fn activate(
                &mut self,
                _: GuestMemoryMmap,
                _: Arc<dyn VirtioInterrupt>,
                _: Vec<Queue>,
                _: Vec<EventFd>,
                _: u64,
            ) -> Result<(), ActivateError> {
                Ok(())
            }
            fn is_activated(&self) -> bool {
                false
            }
            fn reset(&mut self) -> bool {
                true
            }
        }
        assert!(matches!(
            MmioTransport::new(f.mem.clone(), Arc::new(Mutex::new(Legacy))),
            Err(MmioError::LegacyDevice)
        ));
    }
}
