//! Guest NICs: one virtio-net device per `--net`, each on its own virtio-mmio window and
//! GSI, its notify register wired to an ioeventfd, its interrupt to an irqfd, and its queue
//! work on the network event-loop thread.

use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::virtio::mmio::{MmioEvents, MmioTransport, TransportError, QUEUE_NOTIFY};
use devices::virtio::net::Net;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use net::spec::BackendSpec;
use net::{MacAddr, NetSpec, Tap, TapError};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::VirtioMmioSlot;
use crate::layout::{IOAPIC_PINS, MMIO_DEVICES_START, MMIO_DEVICE_SIZE, VIRTIO_GSI_START};

#[derive(Debug, thiserror::Error)]
pub enum NicError {
    #[error("eth{index}: {source}")]
    Backend { index: usize, source: TapError },
    #[error("too many --net options: at most {max} NICs fit the interrupt lines")]
    TooMany { max: usize },
    #[error("eth{index}: cannot {what}: {source}")]
    Kvm {
        index: usize,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("eth{index}: {source}")]
    Transport {
        index: usize,
        source: TransportError,
    },
    #[error("cannot set up the network event loop: {0}")]
    EventLoop(String),
    #[error("eth{index}: cannot map its registers: {source}")]
    Bus {
        index: usize,
        source: devices::bus::BusError,
    },
}

/// What the user should know about one NIC.
#[derive(Debug, Clone)]
pub struct NicInfo {
    pub guest_name: String,
    pub host_name: String,
    pub created: bool,
    pub mac: MacAddr,
}

impl std::fmt::Display for NicInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (mac {}) <-> tap {}{}",
            self.guest_name,
            self.mac,
            self.host_name,
            if self.created {
                " (created, removed at exit)"
            } else {
                " (existing, left as found)"
            }
        )
    }
}

pub type NetEventManager = EventManager<Box<dyn MutEventSubscriber + Send>>;

/// The built NICs: their ACPI descriptions, what to tell the user, and the event loop
/// that will run their queues.
#[derive(Default)]
pub struct Nics {
    pub slots: Vec<VirtioMmioSlot>,
    pub infos: Vec<NicInfo>,
    pub events: Option<NetEventManager>,
}

/// The most NICs: one GSI each, from VIRTIO_GSI_START to the last IOAPIC pin.
pub const MAX_NICS: usize = (IOAPIC_PINS - VIRTIO_GSI_START) as usize;

fn open_backend(spec: &NetSpec) -> Result<Tap, TapError> {
    match &spec.backend {
        BackendSpec::Tap { name, host_ip } => Tap::open(name.as_deref(), *host_ip),
        BackendSpec::Fd(fd) => Tap::from_fd(*fd),
    }
}

/// Builds every NIC. Backends are opened first, so that a bad `--net` fails before KVM
/// state is touched, and a created tap vanishes with its fd on any later error.
pub fn build(
    specs: &[NetSpec],
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
) -> Result<Nics, NicError> {
    if specs.is_empty() {
        return Ok(Nics::default());
    }
    if specs.len() > MAX_NICS {
        return Err(NicError::TooMany { max: MAX_NICS });
    }
    let taps = specs
        .iter()
        .enumerate()
        .map(|(index, s)| open_backend(s).map_err(|source| NicError::Backend { index, source }))
        .collect::<Result<Vec<_>, _>>()?;
    let mut em = NetEventManager::new().map_err(|e| NicError::EventLoop(format!("{e:?}")))?;
    let mut slots = Vec::new();
    let mut infos = Vec::new();
    for (index, (spec, tap)) in specs.iter().zip(taps).enumerate() {
        let addr = MMIO_DEVICES_START + index as u64 * MMIO_DEVICE_SIZE;
        let gsi = VIRTIO_GSI_START + index as u32;
        let mac = spec
            .mac
            .unwrap_or_else(|| MacAddr::derived(&format!("{index}:{}", tap.name())));
        infos.push(NicInfo {
            guest_name: format!("eth{index}"),
            host_name: tap.name().to_string(),
            created: tap.created(),
            mac,
        });
        let kvm = |what| {
            move |source| NicError::Kvm {
                index,
                what,
                source,
            }
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| NicError::Transport {
            index,
            source: TransportError::EventFd(e),
        })?;
        vm.register_irqfd(&irq, gsi)
            .map_err(kvm("register its irqfd"))?;
        let transport = MmioTransport::new(Net::new(tap, mac.0), mem.clone(), irq)
            .map_err(|source| NicError::Transport { index, source })?;
        for (q, evt) in transport.queue_events().iter().enumerate() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(addr + QUEUE_NOTIFY), q as u32)
                .map_err(kvm("register its queue ioeventfd"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(
            &format!("eth{index}"),
            addr,
            MMIO_DEVICE_SIZE,
            transport.clone(),
        )
        .map_err(|source| NicError::Bus { index, source })?;
        let events =
            MmioEvents::new(transport).map_err(|source| NicError::Transport { index, source })?;
        em.add_subscriber(Box::new(events));
        slots.push(VirtioMmioSlot {
            addr,
            size: MMIO_DEVICE_SIZE,
            gsi,
        });
    }
    Ok(Nics {
        slots,
        infos,
        events: Some(em),
    })
}

/// Runs the network event loop on a thread of its own until the process ends.
pub fn spawn_event_loop(mut em: NetEventManager) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("netvmm-net".into())
        .spawn(move || loop {
            // An epoll error here (EINTR aside) would repeat forever; back off instead of
            // spinning a core.
            if em.run().is_err() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })
        .map(|_| ())
}
