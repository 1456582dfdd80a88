//! The virtio-mmio transport (virtio 1.2, 4.2.2), modern (version 2) registers only.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use super::core::{QueueState, RingState, TransportError};
use super::core::{Ring, StatusChange, VirtioCore};
pub use super::events::{QueueEvents, Registration, Transport};
use super::{VirtioDevice, Wake};
use crate::bus::{lock, BusDevice};

const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
/// Offset of the notify register: ioeventfds are registered at `base + QUEUE_NOTIFY`.
pub const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION_MODERN: u32 = 2;
/// "NVMM", little-endian: not a PCI vendor, just recognisable.
const VENDOR: u32 = 0x4d4d_564e;
/// InterruptStatus bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;
/// The bits a driver sees and acknowledges.
const INT_BITS: u32 = INT_VRING | INT_CONFIG;
/// Never seen by the driver: the kernel (vhost) serves queues now. It signals used buffers
/// on this device's own interrupt eventfd (an irqfd), so the interrupt reaches the guest
/// without this process, which never learns when it fired: InterruptStatus then says "used buffer" on
/// every read, and the driver looks at its queues (a look that finds nothing is harmless).
const INT_KERNEL: u32 = 1 << 31;

/// What the driver reads in InterruptStatus, from the shared word.
fn visible_status(word: u32) -> u32 {
    let bits = word & INT_BITS;
    if word & INT_KERNEL != 0 {
        bits | INT_VRING
    } else {
        bits
    }
}

/// A virtio device as seen through its MMIO window.
pub struct MmioTransport<D: VirtioDevice> {
    core: VirtioCore<D>,
    irq: EventFd,
    /// Shared with the transport's `MmioFront`, which serves the interrupt registers
    /// without this transport's lock.
    interrupt_status: Arc<AtomicU32>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `irq` is the eventfd KVM injects as this device's interrupt.
    pub fn new(mut device: D, mem: GuestMemoryMmap, irq: EventFd) -> Result<Self, TransportError> {
        device
            .share_used_notifier(&irq)
            .map_err(TransportError::EventFd)?;
        Ok(Self {
            core: VirtioCore::new(device, mem)?,
            irq,
            interrupt_status: Arc::new(AtomicU32::new(0)),
        })
    }

    /// Where each ready queue stands and the pending interrupt bits: what a stalled
    /// network is diagnosed from (the VMM prints it at exit).
    pub fn ring_state(&self) -> RingState {
        self.core
            .ring_state(self.interrupt_status.load(Ordering::SeqCst) & INT_BITS)
    }

    fn raise(&mut self, bit: u32) {
        // Set before the eventfd fires: the guest's handler reads it after the interrupt.
        self.interrupt_status.fetch_or(bit, Ordering::SeqCst);
        // A full eventfd counter still means "interrupt pending": nothing is lost.
        let _ = self.irq.write(1);
    }

    fn set_status(&mut self, value: u32) {
        match self.core.set_status(value) {
            StatusChange::None => {}
            StatusChange::Reset => self.interrupt_status.store(0, Ordering::SeqCst),
            StatusChange::Activated => {
                if !self.core.kernel_interrupts().is_empty() {
                    self.interrupt_status.fetch_or(INT_KERNEL, Ordering::SeqCst);
                }
            }
            StatusChange::Stopped => {
                self.interrupt_status
                    .fetch_and(!INT_KERNEL, Ordering::SeqCst);
            }
            StatusChange::NeedsReset => {
                self.interrupt_status
                    .fetch_and(!INT_KERNEL, Ordering::SeqCst);
                self.raise(INT_CONFIG);
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let core = &self.core;
        match offset {
            MAGIC_VALUE => MMIO_MAGIC,
            VERSION => MMIO_VERSION_MODERN,
            DEVICE_ID => core.device().device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => core.device_features_word(),
            QUEUE_NUM_MAX => core.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => core.selected_queue().map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => visible_status(self.interrupt_status.load(Ordering::SeqCst)),
            STATUS => core.status(),
            CONFIG_GENERATION => core.config_generation(),
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let core = &mut self.core;
        match offset {
            DEVICE_FEATURES_SEL => core.device_features_sel = v,
            DRIVER_FEATURES_SEL => core.driver_features_sel = v,
            DRIVER_FEATURES => core.set_driver_features_word(v),
            QUEUE_SEL => core.queue_sel = v,
            QUEUE_NUM => {
                // virtio-queue refuses sizes that are zero, too large or not a power of two.
                if let (Some(q), Ok(size)) = (core.configurable_queue(), u16::try_from(v)) {
                    q.set_size(size);
                }
            }
            QUEUE_READY => {
                if let Some(q) = core.configurable_queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                let (low, high) = if offset & 4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                let ring = match offset & !4 {
                    QUEUE_DESC_LOW => Ring::Desc,
                    QUEUE_DRIVER_LOW => Ring::Driver,
                    _ => Ring::Device,
                };
                core.set_ring_address(ring, low, high);
            }
            QUEUE_NOTIFY => core.notify(v),
            INTERRUPT_ACK => {
                self.interrupt_status
                    .fetch_and(!(v & INT_BITS), Ordering::SeqCst);
            }
            STATUS => self.set_status(v),
            _ => {}
        }
    }
}

impl<D: VirtioDevice> Transport for MmioTransport<D> {
    type Device = D;

    fn core(&self) -> &VirtioCore<D> {
        &self.core
    }

    fn wake(&mut self, wake: Wake) {
        if self.core.wake(wake) != 0 {
            self.raise(INT_VRING);
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.core.device().read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32 bits wide and accessed as such; anything else reads as zero.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            // Our devices' configuration spaces are read-only.
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset.is_multiple_of(4) {
            self.write_reg(offset, u32::from_le_bytes(bytes));
        }
    }
}

/// What the vCPUs see of a transport: InterruptStatus and InterruptAck, which the guest
/// touches on every interrupt, are served from the shared atomic without the transport's
/// lock, which the event thread holds while it moves a burst of frames; every other
/// register goes to the transport under its lock.
pub struct MmioFront<D: VirtioDevice> {
    transport: Arc<Mutex<MmioTransport<D>>>,
    interrupt_status: Arc<AtomicU32>,
}

impl<D: VirtioDevice> MmioFront<D> {
    pub fn new(transport: Arc<Mutex<MmioTransport<D>>>) -> Self {
        let interrupt_status = lock(&transport).interrupt_status.clone();
        Self {
            transport,
            interrupt_status,
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioFront<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == INTERRUPT_STATUS && data.len() == 4 {
            let v = visible_status(self.interrupt_status.load(Ordering::SeqCst));
            data.copy_from_slice(&v.to_le_bytes());
            return;
        }
        lock(&self.transport).read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == INTERRUPT_ACK {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                self.interrupt_status
                    .fetch_and(!(u32::from_le_bytes(bytes) & INT_BITS), Ordering::SeqCst);
            }
            return;
        }
        lock(&self.transport).write(offset, data);
    }
}

/// The event loop's subscriber for a virtio-mmio transport.
pub type MmioEvents<D> = QueueEvents<MmioTransport<D>>;

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
