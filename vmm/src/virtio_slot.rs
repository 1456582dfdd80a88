//! Putting one virtio device on the machine: the virtio-mmio window and GSI of its slot,
//! its notify register on ioeventfds, its interrupt on an irqfd (and, for queues the
//! kernel serves, on the kernel's own used-buffer eventfds as well), its queue work on the
//! device event loop. NICs take the first slots, disks the ones after them; the ACPI DSDT
//! describes every slot.

use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::virtio::mmio::{MmioEvents, MmioFront, MmioTransport, TransportError, QUEUE_NOTIFY};
use devices::virtio::VirtioDevice;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::VirtioMmioSlot;
use crate::layout::{IOAPIC_PINS, MMIO_DEVICES_START, MMIO_DEVICE_SIZE, VIRTIO_GSI_START};

/// The event loop that runs every virtio device's queue work.
pub type DeviceEventManager = EventManager<Box<dyn MutEventSubscriber + Send>>;

/// The most virtio devices: one GSI each, from VIRTIO_GSI_START to the last IOAPIC pin.
pub const MAX_DEVICES: usize = (IOAPIC_PINS - VIRTIO_GSI_START) as usize;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot map its registers: {0}")]
    Bus(#[from] devices::bus::BusError),
}

/// A wired device: its transport (for counters and reports) and its slot for the DSDT.
pub type Wired<D> = (Arc<Mutex<MmioTransport<D>>>, VirtioMmioSlot);

/// Wires `device` into slot `slot` under `name`.
pub fn wire<D: VirtioDevice + 'static>(
    slot: usize,
    name: &str,
    device: D,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    em: &mut DeviceEventManager,
) -> Result<Wired<D>, WireError> {
    let addr = MMIO_DEVICES_START + slot as u64 * MMIO_DEVICE_SIZE;
    let gsi = VIRTIO_GSI_START + slot as u32;
    let kvm = |what| move |source| WireError::Kvm { what, source };
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?;
    vm.register_irqfd(&irq, gsi)
        .map_err(kvm("register its irqfd"))?;
    let transport = MmioTransport::new(device, mem.clone(), irq)?;
    // vhost's used-buffer eventfds interrupt the guest straight from the kernel.
    for evt in transport.kernel_interrupts() {
        vm.register_irqfd(evt, gsi)
            .map_err(kvm("register a vhost-net call eventfd as its irqfd"))?;
    }
    for (q, evt) in transport.queue_events().iter().enumerate() {
        vm.register_ioevent(evt, &IoEventAddress::Mmio(addr + QUEUE_NOTIFY), q as u32)
            .map_err(kvm("register its queue ioeventfd"))?;
    }
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(
        name,
        addr,
        MMIO_DEVICE_SIZE,
        Arc::new(Mutex::new(MmioFront::new(transport.clone()))),
    )?;
    let events = MmioEvents::new(transport.clone())?;
    let registration = events.registration();
    em.add_subscriber(Box::new(events));
    registration.check()?;
    Ok((
        transport,
        VirtioMmioSlot {
            addr,
            size: MMIO_DEVICE_SIZE,
            gsi,
        },
    ))
}
