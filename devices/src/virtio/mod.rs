//! virtio 1.x devices over the virtio-mmio transport.
//!
//! The transport ([`mmio::MmioTransport`]) owns the queues, the feature negotiation and the
//! interrupt; a device ([`VirtioDevice`]) only says what it offers and does the queue work.
//! vCPU threads touch the transport's registers; queue work runs on the event-loop thread,
//! woken by ioeventfds and the backend fd ([`mmio::MmioEvents`]).

pub mod blk;
pub mod chain;
pub mod core;
pub mod events;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod ring;
pub mod serve;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Feature bits common to all devices.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Where the driver's `used_event` sits: right after the avail ring's entries (virtio 1.2,
/// 2.7.6). `None` if that passes the end of the address space.
pub fn used_event_addr(q: &Queue) -> Option<GuestAddress> {
    q.avail_ring()
        .checked_add(4 + 2 * u64::from(q.size()))
        .map(GuestAddress)
}

/// Where the device's `avail_event` sits: right after the used ring's entries (virtio 1.2,
/// 2.7.8).
pub fn avail_event_addr(q: &Queue) -> Option<GuestAddress> {
    q.used_ring()
        .checked_add(4 + 8 * u64::from(q.size()))
        .map(GuestAddress)
}

/// What woke the device up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The driver notified queue N.
    Queue(u16),
    /// Backend N (queue pair N's) has something (an incoming frame).
    Backend(u16),
    /// The device was just activated: catch up on whatever is pending.
    Activated,
}

/// What one [`VirtioDevice::process`] call did, and what it left for later.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Queues (bit N for queue N) that returned buffers the driver asked to hear about. A
    /// transport with one interrupt (virtio-mmio) raises it for any; one with a vector per
    /// queue (MSI-X) raises each named queue's.
    pub interrupt: u32,
    /// Queues (bit N for queue N) whose work the wake-up's budget
    /// ([`chain::DESCRIPTORS_PER_WAKE`]) cut short. The transport notifies them again
    /// itself, so the rest is done on a later turn of the event loop, after the other
    /// devices and the register accesses waiting for the transport.
    pub unfinished: u32,
}

/// The device-specific half of a virtio device.
pub trait VirtioDevice: Send {
    /// virtio device ID (1 = network).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Reads the device configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Whether the device can work with the `features` the driver accepted (already a
    /// subset of those offered): a combination it cannot serve is refused at FEATURES_OK.
    fn accepts(&self, _features: u64) -> bool {
        true
    }
    /// The driver accepted `features` and set DRIVER_OK. The device keeps `mem` (a
    /// handle that keeps the mapping alive) and works only in it until the next reset, so
    /// that what it holds across wake-ups (pointers into receive buffers) always points
    /// into the memory it was taken from. An error refuses activation (the transport then
    /// asks the driver for a reset).
    fn activate(&mut self, features: u64, mem: &GuestMemoryMmap) -> Result<(), String>;
    /// The driver reset the device.
    fn reset(&mut self);
    /// The device stopped short of a reset (the driver cleared DRIVER_OK, set FAILED, or
    /// the device needs a reset): nothing may touch the guest's rings any more, not even
    /// the kernel (vhost), until the reset. The transport stops waking the device itself.
    fn stop(&mut self) {}
    /// Does the queue work `wake` calls for, at most a wake-up's budget of it, in the
    /// memory given at activation (nothing before it).
    fn process(&mut self, wake: Wake, queues: &mut [Queue]) -> Processed;
    /// The backend descriptors the event loop should watch: number N wakes the device
    /// with [`Wake::Backend`]`(N)`.
    fn backend_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
    /// Called right after a successful `activate`, with the queues as the driver set them
    /// up and their notification eventfds (those KVM signals): a device whose queues the
    /// kernel serves hands them over here. An error refuses activation.
    fn start_queues(
        &mut self,
        _queues: &[Queue],
        _kicks: &[vmm_sys_util::eventfd::EventFd],
    ) -> Result<(), String> {
        Ok(())
    }
    /// Not empty when the kernel serves queues (vhost): the eventfds it signals when it
    /// used buffers of queues 0, 1, ... KVM takes these as irqfds of the device's interrupt,
    /// the event loop watches neither those queues' notifiers nor the backend, and
    /// InterruptStatus says "used buffer" while the kernel serves them; queues past them (a
    /// control queue) stay the device's.
    fn used_notifiers(&self) -> &[vmm_sys_util::eventfd::EventFd] {
        &[]
    }
    /// Makes the kernel-served queues signal used buffers on `irq`, the transport's one
    /// interrupt eventfd (virtio-mmio: one line per device). Several irqfds on one
    /// edge-triggered line lose interrupts: KVM merges a second eventfd's edge into the
    /// first's while the line is still high, after the guest's handler may already have
    /// looked at the second queue and found nothing.
    fn share_used_notifier(
        &mut self,
        _irq: &vmm_sys_util::eventfd::EventFd,
    ) -> std::io::Result<()> {
        Ok(())
    }
}
