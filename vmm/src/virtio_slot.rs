//! Putting virtio devices on the machine, over the transport the VM uses:
//!
//! - virtio-mmio: a register window and a GSI per slot, the notify register on
//!   ioeventfds, the interrupt on one irqfd (which the kernel also signals for queues it
//!   serves); the ACPI DSDT describes every slot.
//! - virtio-pci: a function on bus 0 with BAR 0 in the PCI window, each queue's notify
//!   address on an ioeventfd, a GSI per MSI-X vector; the DSDT describes the host bridge.
//!
//! Either way the queue work runs on the device event loop. NICs are placed first, disks
//! after them.

use std::sync::{Arc, Mutex};

use devices::bus::{lock, Bus};
use devices::pci::msix::MsiRoutes;
use devices::pci::{NotifyEvents, PciBus, PciConfigIo, PciFunction, PciMmioWindow};
use devices::virtio::core::RingState;
use devices::virtio::events::Transport;
use devices::virtio::mmio::{MmioEvents, MmioFront, MmioTransport, QUEUE_NOTIFY};
use devices::virtio::pci::{PciEvents, PciTransport, PciTransportError, BAR_SIZE};
use devices::virtio::VirtioDevice;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{PciHostBridge, VirtioMmioSlot};
use crate::config::VirtioTransport;
use crate::layout::{
    IOAPIC_PINS, MMIO_DEVICES_START, MMIO_DEVICE_SIZE, MSI_GSI_START, PCI_CONFIG_PORT,
    PCI_CONFIG_PORT_LEN, PCI_MMIO_SIZE, PCI_MMIO_START, VIRTIO_GSI_START,
};
use crate::msi::MsiRouter;

/// The event loop that runs every virtio device's queue work.
pub type DeviceEventManager = EventManager<Box<dyn MutEventSubscriber + Send>>;

/// The most virtio devices: one GSI each on virtio-mmio, from VIRTIO_GSI_START to the last
/// IOAPIC pin. (PCI bus 0 would take 31; the one limit keeps `--net`/`--disk` counts valid
/// whichever transport runs them.)
pub const MAX_DEVICES: usize = (IOAPIC_PINS - VIRTIO_GSI_START) as usize;
const _: () = assert!(MAX_DEVICES < devices::pci::DEVICES_PER_BUS);
const _: () = assert!(MAX_DEVICES as u64 * BAR_SIZE <= PCI_MMIO_SIZE);

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Transport(#[from] devices::virtio::core::TransportError),
    #[error(transparent)]
    PciTransport(#[from] PciTransportError),
    #[error(transparent)]
    Pci(#[from] devices::pci::PciError),
    #[error("cannot map its registers: {0}")]
    Bus(#[from] devices::bus::BusError),
    #[error("no room for another virtio device: the most is {MAX_DEVICES}")]
    Full,
    #[error("cannot set up the device event loop: {0}")]
    EventLoop(String),
}

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> WireError {
    move |source| WireError::Kvm { what, source }
}

/// Queue notifications on KVM ioeventfds, inside the PCI window only: a BAR the driver put
/// elsewhere reaches no function (the window is where the bus decodes BARs), and its
/// ioeventfds would shadow whatever sits there, KVM's own IOAPIC or LAPIC included.
struct KvmNotify(Arc<VmFd>);

impl NotifyEvents for KvmNotify {
    fn attach(&self, evt: &EventFd, addr: u64, data: u16) -> Result<(), String> {
        let window = PCI_MMIO_START..PCI_MMIO_START + PCI_MMIO_SIZE;
        if !window.contains(&addr) {
            return Err(format!(
                "{addr:#x} is outside the PCI window {:#x}-{:#x}",
                window.start,
                window.end - 1
            ));
        }
        self.0
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), data)
            .map_err(|e| e.to_string())
    }

    fn detach(&self, evt: &EventFd, addr: u64, data: u16) -> Result<(), String> {
        self.0
            .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), data)
            .map_err(|e| e.to_string())
    }
}

/// A placed device, for counters and reports.
pub enum Placed<D: VirtioDevice> {
    Mmio(Arc<Mutex<MmioTransport<D>>>),
    Pci(Arc<Mutex<PciTransport<D>>>),
}

impl<D: VirtioDevice> Placed<D> {
    /// The transport it sits on.
    pub fn transport(&self) -> VirtioTransport {
        match self {
            Placed::Mmio(_) => VirtioTransport::Mmio,
            Placed::Pci(_) => VirtioTransport::Pci,
        }
    }

    /// Why the hypervisor refused part of the transport's setup the guest asked for, if
    /// it did (virtio-mmio asks nothing of it after placing).
    pub fn fault(&self) -> Option<String> {
        match self {
            Placed::Mmio(_) => None,
            Placed::Pci(t) => lock(t).fault().map(str::to_owned),
        }
    }

    /// Runs `f` on the device and where its rings stand, under the transport's lock.
    pub fn inspect<R>(&self, f: impl FnOnce(&D, RingState) -> R) -> R {
        match self {
            Placed::Mmio(t) => {
                let t = lock(t);
                f(t.device(), t.ring_state())
            }
            Placed::Pci(t) => {
                let t = lock(t);
                f(t.device(), t.ring_state())
            }
        }
    }
}

/// What placing every device left for the rest of the machine.
pub struct Placement {
    /// The event loop, when there is a device for it to serve.
    pub events: Option<DeviceEventManager>,
    /// virtio-mmio windows for the DSDT.
    pub mmio_slots: Vec<VirtioMmioSlot>,
    /// The PCI host bridge for the DSDT, when devices sit on PCI.
    pub pci: Option<PciHostBridge>,
}

/// Places devices one after the other.
pub struct Placer<'a> {
    transport: VirtioTransport,
    vm: &'a Arc<VmFd>,
    mem: &'a GuestMemoryMmap,
    mmio: &'a mut Bus,
    em: DeviceEventManager,
    placed: usize,
    mmio_slots: Vec<VirtioMmioSlot>,
    pci: PciBus,
    routes: Arc<MsiRouter>,
    next_gsi: u32,
}

impl<'a> Placer<'a> {
    pub fn new(
        transport: VirtioTransport,
        vm: &'a Arc<VmFd>,
        mem: &'a GuestMemoryMmap,
        mmio: &'a mut Bus,
    ) -> Result<Self, WireError> {
        Ok(Self {
            transport,
            vm,
            mem,
            mmio,
            em: DeviceEventManager::new().map_err(|e| WireError::EventLoop(format!("{e:?}")))?,
            placed: 0,
            mmio_slots: Vec::new(),
            pci: PciBus::new(),
            routes: Arc::new(MsiRouter::new(vm.clone())),
            next_gsi: MSI_GSI_START,
        })
    }

    /// Devices placed so far.
    pub fn count(&self) -> usize {
        self.placed
    }

    /// Places `device` under `name`, the next slot or PCI device.
    pub fn place<D: VirtioDevice + 'static>(
        &mut self,
        name: &str,
        device: D,
    ) -> Result<Placed<D>, WireError> {
        if self.placed >= MAX_DEVICES {
            return Err(WireError::Full);
        }
        let placed = match self.transport {
            VirtioTransport::Mmio => Placed::Mmio(self.place_mmio(name, device)?),
            VirtioTransport::Pci => Placed::Pci(self.place_pci(device)?),
        };
        self.placed += 1;
        Ok(placed)
    }

    fn subscribe<S: MutEventSubscriber + Send + 'static>(
        &mut self,
        events: S,
        registration: devices::virtio::events::Registration,
    ) -> Result<(), WireError> {
        self.em.add_subscriber(Box::new(events));
        Ok(registration.check()?)
    }

    fn place_mmio<D: VirtioDevice + 'static>(
        &mut self,
        name: &str,
        device: D,
    ) -> Result<Arc<Mutex<MmioTransport<D>>>, WireError> {
        let slot = self.placed;
        let addr = MMIO_DEVICES_START + slot as u64 * MMIO_DEVICE_SIZE;
        let gsi = VIRTIO_GSI_START + slot as u32;
        let irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(devices::virtio::core::TransportError::EventFd)?;
        self.vm
            .register_irqfd(&irq, gsi)
            .map_err(kvm("register its irqfd"))?;
        // vhost signals used buffers on this same eventfd: one irqfd per line.
        let transport = MmioTransport::new(device, self.mem.clone(), irq)?;
        for (q, evt) in transport.queue_events().iter().enumerate() {
            self.vm
                .register_ioevent(evt, &IoEventAddress::Mmio(addr + QUEUE_NOTIFY), q as u32)
                .map_err(kvm("register its queue ioeventfd"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio.insert(
            name,
            addr,
            MMIO_DEVICE_SIZE,
            Arc::new(Mutex::new(MmioFront::new(transport.clone()))),
        )?;
        let events = MmioEvents::new(transport.clone())?;
        let registration = events.registration();
        self.subscribe(events, registration)?;
        self.mmio_slots.push(VirtioMmioSlot {
            addr,
            size: MMIO_DEVICE_SIZE,
            gsi,
        });
        Ok(transport)
    }

    fn place_pci<D: VirtioDevice + 'static>(
        &mut self,
        device: D,
    ) -> Result<Arc<Mutex<PciTransport<D>>>, WireError> {
        let bar = PCI_MMIO_START + self.placed as u64 * BAR_SIZE;
        let vectors = PciTransport::<D>::vectors_for(device.queue_max_sizes().len())?;
        let routes: Arc<dyn MsiRoutes> = self.routes.clone();
        let notify: Arc<dyn NotifyEvents> = Arc::new(KvmNotify(self.vm.clone()));
        let transport = PciTransport::new(
            device,
            self.mem.clone(),
            bar as u32,
            self.next_gsi,
            routes,
            notify,
        )?;
        self.next_gsi += u32::from(vectors);
        let transport = Arc::new(Mutex::new(transport));
        let function: Arc<Mutex<dyn PciFunction>> = transport.clone();
        self.pci.add(function)?;
        let events = PciEvents::new(transport.clone())?;
        let registration = events.registration();
        self.subscribe(events, registration)?;
        Ok(transport)
    }

    /// Puts the PCI bus's ports on `pio` and its window on the MMIO bus, when devices sit
    /// on PCI.
    pub fn finish(self, pio: &mut Bus) -> Result<Placement, WireError> {
        let pci = if self.transport == VirtioTransport::Pci && self.placed > 0 {
            let bus = Arc::new(self.pci);
            pio.insert(
                "pci-config",
                u64::from(PCI_CONFIG_PORT),
                PCI_CONFIG_PORT_LEN,
                Arc::new(Mutex::new(PciConfigIo::new(bus.clone()))),
            )?;
            self.mmio.insert(
                "pci-window",
                PCI_MMIO_START,
                PCI_MMIO_SIZE,
                Arc::new(Mutex::new(PciMmioWindow::new(bus, PCI_MMIO_START))),
            )?;
            Some(PciHostBridge {
                mmio_base: PCI_MMIO_START,
                mmio_size: PCI_MMIO_SIZE,
            })
        } else {
            None
        };
        Ok(Placement {
            events: (self.placed > 0).then_some(self.em),
            mmio_slots: self.mmio_slots,
            pci,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_notify_places_one_ioeventfd_per_address_and_data_in_the_window() {
        let vm = match kvm_ioctls::Kvm::new().and_then(|k| k.create_vm()) {
            Ok(vm) => Arc::new(vm),
            Err(e) => {
                eprintln!("skipping: /dev/kvm unusable here: {e}");
                return;
            }
        };
        let notify = KvmNotify(vm);
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let at = PCI_MMIO_START + 0x3004;
        notify.attach(&evt, at, 1).unwrap();
        // KVM holds it: the same place and data again is refused, as is a second removal.
        assert!(notify.attach(&evt, at, 1).is_err());
        notify.attach(&evt, at, 2).unwrap();
        notify.detach(&evt, at, 1).unwrap();
        assert!(notify.detach(&evt, at, 1).is_err());
        notify.attach(&evt, at, 1).unwrap();
        let refused = notify.attach(&evt, 0xfec0_0000, 0).unwrap_err();
        assert!(refused.contains("outside the PCI window"), "{refused}");
    }
}
