//! The virtio-pci transport (virtio 1.2, 4.1), modern interface only, with MSI-X: a
//! vector per queue, so an interrupt says which queue it is for and the driver reads no
//! status register, and each queue's notification address of its own (an ioeventfd that
//! matches the queue's index, which the driver writes there). The ioeventfds follow BAR 0:
//! they sit where the BAR decodes, and nowhere while memory decoding is off.
//!
//! BAR 0 (32-bit memory) holds, at fixed offsets: the common configuration, the ISR byte,
//! the device configuration, the notification addresses, the MSI-X table and its
//! pending-bit array. There is no INTx pin: a driver that does not enable MSI-X gets no
//! interrupts (Linux's virtio_pci enables it whenever the platform has MSI).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::core::{Ring, RingState, StatusChange, TransportError, VirtioCore};
use super::events::{QueueEvents, Transport};
use super::{VirtioDevice, Wake};
use crate::pci::config::{ConfigSpace, Identity};
use crate::pci::config::{BAR0, COMMAND};
use crate::pci::msix::{
    MsiRoutes, Msix, MsixError, CONTROL_ENABLE, CONTROL_FUNCTION_MASK, NO_VECTOR,
};
use crate::pci::{NotifyEvents, PciFunction};

/// The PCI vendor of virtio devices; a modern device's ID is 0x1040 plus its virtio type.
const VIRTIO_VENDOR: u16 = 0x1af4;
const MODERN_DEVICE_BASE: u16 = 0x1040;

/// BAR 0's layout.
pub const COMMON_OFFSET: u64 = 0x0000;
const COMMON_LEN: u64 = 0x40;
pub const ISR_OFFSET: u64 = 0x1000;
const ISR_LEN: u64 = 4;
pub const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x1000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
pub const BAR_SIZE: u64 = 0x8000;
/// The most vectors the table's page holds; also bounds the queues (a vector each, and
/// one for configuration changes).
pub const MAX_VECTORS: u16 = 256;
const _: () = assert!(MSIX_TABLE_OFFSET + MAX_VECTORS as u64 * 16 <= MSIX_PBA_OFFSET);
const _: () =
    assert!(NOTIFY_OFFSET + (MAX_VECTORS as u64) * NOTIFY_MULTIPLIER as u64 <= MSIX_TABLE_OFFSET);

/// virtio_pci_cap cfg_type values (4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;

/// ISR bits (4.1.4.5).
const ISR_QUEUE: u32 = 1;
const ISR_CONFIG: u32 = 2;

/// Common configuration fields (4.1.4.3), by offset and width.
mod common {
    pub const DEVICE_FEATURE_SELECT: (u64, usize) = (0x00, 4);
    pub const DEVICE_FEATURE: (u64, usize) = (0x04, 4);
    pub const DRIVER_FEATURE_SELECT: (u64, usize) = (0x08, 4);
    pub const DRIVER_FEATURE: (u64, usize) = (0x0c, 4);
    pub const CONFIG_MSIX_VECTOR: (u64, usize) = (0x10, 2);
    pub const NUM_QUEUES: (u64, usize) = (0x12, 2);
    pub const DEVICE_STATUS: (u64, usize) = (0x14, 1);
    pub const CONFIG_GENERATION: (u64, usize) = (0x15, 1);
    pub const QUEUE_SELECT: (u64, usize) = (0x16, 2);
    pub const QUEUE_SIZE: (u64, usize) = (0x18, 2);
    pub const QUEUE_MSIX_VECTOR: (u64, usize) = (0x1a, 2);
    pub const QUEUE_ENABLE: (u64, usize) = (0x1c, 2);
    pub const QUEUE_NOTIFY_OFF: (u64, usize) = (0x1e, 2);
    /// queue_desc, queue_driver, queue_device: 64 bits each, written as two dwords.
    pub const QUEUE_RINGS: u64 = 0x20;
    pub const QUEUE_RINGS_END: u64 = 0x38;
}

/// Errors building a virtio-pci function.
#[derive(Debug, thiserror::Error)]
pub enum PciTransportError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Msix(#[from] MsixError),
    #[error("cannot place queue {queue}'s notification at {addr:#x}: {reason}")]
    Notify {
        queue: usize,
        addr: u64,
        reason: String,
    },
    #[error("a virtio-pci function has at most {max} vectors; this device needs {needed}")]
    TooManyQueues { needed: usize, max: u16 },
}

/// Where a function's configuration space has its capabilities.
struct Caps {
    msix: usize,
    pci_cfg: usize,
}

/// A virtio device as a PCI function.
pub struct PciTransport<D: VirtioDevice> {
    core: VirtioCore<D>,
    config: ConfigSpace,
    caps: Caps,
    msix: Msix,
    config_vector: u16,
    queue_vectors: Vec<u16>,
    /// ISR bits; read and cleared by the driver (only a driver without MSI-X needs them).
    isr: Arc<AtomicU32>,
    /// Whether the kernel serves queues now (from DRIVER_OK to a reset or a stop).
    kernel_serving: bool,
    /// The kernel-served queues' used-buffer eventfds bound to their vectors' GSIs: while
    /// the kernel serves them and their vector is unmasked.
    kernel_bound: Vec<(usize, u32)>,
    notify: Arc<dyn NotifyEvents>,
    /// Where the queues' notification ioeventfds are attached: BAR 0's notification area
    /// while the BAR decodes.
    notify_at: Option<u64>,
    /// The last move of the ioeventfds the hypervisor refused (kicks then reach the
    /// transport through the BAR, slower).
    notify_error: Option<String>,
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let len = 16 + extra.len() as u8;
    let mut c = vec![CAP_VENDOR, 0, len, cfg_type, 0, 0, 0, 0];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    c.extend_from_slice(extra);
    c
}

impl<D: VirtioDevice> PciTransport<D> {
    /// `bar` is BAR 0's initial address (a multiple of [`BAR_SIZE`]); the vectors get GSIs
    /// `gsi_base..gsi_base + vectors()`; `notify` places the queues' ioeventfds once the
    /// driver turns memory decoding on.
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        bar: u32,
        gsi_base: u32,
        routes: Arc<dyn MsiRoutes>,
        notify: Arc<dyn NotifyEvents>,
    ) -> Result<Self, PciTransportError> {
        let queues = device.queue_max_sizes().len();
        let vectors = Self::vectors_for(queues)?;
        let device_type = device.device_type();
        let class = match device_type {
            1 => 0x02_00_00, // network controller
            2 => 0x01_80_00, // mass storage, other
            _ => 0xff_00_00,
        };
        let mut config = ConfigSpace::new(Identity {
            vendor: VIRTIO_VENDOR,
            device: MODERN_DEVICE_BASE + device_type as u16,
            // Revision 1: a modern-only (non-transitional) device.
            revision: 1,
            class,
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: 0x1100,
        });
        config.set_bar0(bar, BAR_SIZE as u32);
        let caps =
            Self::add_caps(&mut config, vectors).ok_or(PciTransportError::TooManyQueues {
                needed: queues + 1,
                max: MAX_VECTORS,
            })?;
        Ok(Self {
            core: VirtioCore::new(device, mem)?,
            config,
            caps,
            msix: Msix::new(vectors, gsi_base, routes)?,
            config_vector: NO_VECTOR,
            queue_vectors: vec![NO_VECTOR; queues],
            isr: Arc::new(AtomicU32::new(0)),
            kernel_serving: false,
            kernel_bound: Vec::new(),
            notify,
            notify_at: None,
            notify_error: None,
        })
    }

    /// A vector per queue and one for configuration changes.
    pub fn vectors_for(queues: usize) -> Result<u16, PciTransportError> {
        u16::try_from(queues + 1)
            .ok()
            .filter(|&v| v <= MAX_VECTORS)
            .ok_or(PciTransportError::TooManyQueues {
                needed: queues + 1,
                max: MAX_VECTORS,
            })
    }

    fn add_caps(config: &mut ConfigSpace, vectors: u16) -> Option<Caps> {
        let mut msix = vec![CAP_MSIX, 0];
        msix.extend_from_slice(&(vectors - 1).to_le_bytes());
        // Table and PBA in BAR 0 (BIR 0 in the low bits).
        msix.extend_from_slice(&(MSIX_TABLE_OFFSET as u32).to_le_bytes());
        msix.extend_from_slice(&(MSIX_PBA_OFFSET as u32).to_le_bytes());
        let control_writable = (CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes();
        let msix =
            config.add_capability(&msix, &[0, 0, control_writable[0], control_writable[1]])?;
        config.add_capability(&vendor_cap(CAP_COMMON, COMMON_OFFSET, COMMON_LEN, &[]), &[])?;
        config.add_capability(&vendor_cap(CAP_ISR, ISR_OFFSET, ISR_LEN, &[]), &[])?;
        config.add_capability(&vendor_cap(CAP_DEVICE, DEVICE_OFFSET, DEVICE_LEN, &[]), &[])?;
        let notify_len = u64::from(vectors) * u64::from(NOTIFY_MULTIPLIER);
        config.add_capability(
            &vendor_cap(
                CAP_NOTIFY,
                NOTIFY_OFFSET,
                notify_len,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        )?;
        // The configuration access window (4.1.4.9): bar, offset and length are the
        // driver's to set, pci_cfg_data reaches BAR 0 there.
        let mut writable = vec![0u8; 20];
        writable[4] = 0xff;
        writable[8..16].fill(0xff);
        let pci_cfg = config.add_capability(&vendor_cap(CAP_PCI_CFG, 0, 0, &[0; 4]), &writable)?;
        Some(Caps { msix, pci_cfg })
    }

    /// BAR 0's address as the driver left it (decoding or not).
    pub fn bar_address(&self) -> u64 {
        self.config.bar0().0
    }

    /// Where each ready queue stands; the interrupt bits are the ISR's, with bit 0 also
    /// set while a vector waits behind a mask.
    pub fn ring_state(&self) -> RingState {
        let isr = self.isr.load(Ordering::SeqCst) | u32::from(self.msix.any_pending());
        self.core.ring_state(isr)
    }

    /// Why the hypervisor last refused an MSI-X route or a move of the queue
    /// notifications, if it ever did.
    pub fn fault(&self) -> Option<&str> {
        self.msix
            .route_error
            .as_deref()
            .or(self.notify_error.as_deref())
    }

    /// Where queue `q` is notified when BAR 0's notification area is at `area`.
    fn notify_addr(area: u64, q: usize) -> u64 {
        area + q as u64 * u64::from(NOTIFY_MULTIPLIER)
    }

    /// Moves the queues' ioeventfds to where BAR 0 decodes now (after the driver wrote the
    /// BAR or the command register): left at an old address they would catch the kicks of
    /// whatever function the driver put there next.
    fn follow_bar(&mut self) -> Result<(), PciTransportError> {
        let wanted = self.bar().map(|(addr, _)| addr + NOTIFY_OFFSET);
        if wanted == self.notify_at {
            return Ok(());
        }
        let evts = self.core.queue_events();
        if let Some(area) = self.notify_at.take() {
            for (q, evt) in evts.iter().enumerate() {
                // One that will not go stays signalling an eventfd nobody else reads.
                let _ = self
                    .notify
                    .detach(evt, Self::notify_addr(area, q), q as u16);
            }
        }
        let Some(area) = wanted else {
            return Ok(());
        };
        for (q, evt) in evts.iter().enumerate() {
            let addr = Self::notify_addr(area, q);
            if let Err(reason) = self.notify.attach(evt, addr, q as u16) {
                for (done, evt) in evts.iter().enumerate().take(q) {
                    let _ = self
                        .notify
                        .detach(evt, Self::notify_addr(area, done), done as u16);
                }
                return Err(PciTransportError::Notify {
                    queue: q,
                    addr,
                    reason,
                });
            }
        }
        self.notify_at = Some(area);
        Ok(())
    }

    fn raise_queues(&mut self, queues: u32) {
        self.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
        for (q, &vector) in self.queue_vectors.iter().enumerate().take(32) {
            if queues & (1 << q) != 0 && vector != NO_VECTOR {
                self.msix.signal(vector);
            }
        }
    }

    fn raise_config(&mut self) {
        self.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        if self.config_vector != NO_VECTOR {
            self.msix.signal(self.config_vector);
        }
    }

    /// Binds the kernel-served queues' used-buffer eventfds to their vectors' GSIs, so
    /// that vhost interrupts the guest without this process.
    fn bind_kernel(&mut self) -> Result<(), String> {
        self.kernel_serving = true;
        self.sync_kernel()
    }

    fn unbind_kernel(&mut self) {
        self.kernel_serving = false;
        let _ = self.sync_kernel();
    }

    /// Binds each kernel-served queue's eventfd to its vector's GSI while the vector
    /// delivers, and unbinds it while the vector is masked: the kernel's signals then
    /// wait in the eventfd's counter, which KVM checks when the irqfd is bound again, so
    /// an unmask delivers what came in meanwhile (as a pending bit would; the PBA does not
    /// show it).
    fn sync_kernel(&mut self) -> Result<(), String> {
        let notifiers = self.core.kernel_interrupts();
        let wanted: Vec<(usize, u32)> = if self.kernel_serving {
            (0..notifiers.len())
                .filter_map(|q| {
                    let vector = self.queue_vectors.get(q).copied().unwrap_or(NO_VECTOR);
                    let gsi = self.msix.gsi(vector)?;
                    self.msix.delivers(vector).then_some((q, gsi))
                })
                .collect()
        } else {
            Vec::new()
        };
        let routes = self.msix.routes();
        self.kernel_bound.retain(|bound| {
            if wanted.contains(bound) {
                return true;
            }
            if let Some(evt) = notifiers.get(bound.0) {
                let _ = routes.unbind(evt, bound.1);
            }
            false
        });
        for &(q, gsi) in &wanted {
            if self.kernel_bound.contains(&(q, gsi)) {
                continue;
            }
            if let Some(evt) = notifiers.get(q) {
                routes.bind(evt, gsi)?;
                self.kernel_bound.push((q, gsi));
            }
        }
        Ok(())
    }

    /// After the driver changed a mask: the kernel's eventfds follow it. A bind KVM
    /// refuses leaves that queue silent and is reported as a route error.
    fn masks_changed(&mut self) {
        if let Err(e) = self.sync_kernel() {
            self.msix.route_error = Some(format!("a kernel-served queue's vector: {e}"));
        }
    }

    fn set_status(&mut self, value: u32) {
        let mut change = self.core.set_status(value);
        if change == StatusChange::Activated && self.bind_kernel().is_err() {
            self.unbind_kernel();
            change = self.core.fail_activation();
        }
        match change {
            StatusChange::None | StatusChange::Activated => {}
            StatusChange::Reset => {
                self.unbind_kernel();
                self.isr.store(0, Ordering::SeqCst);
                self.config_vector = NO_VECTOR;
                self.queue_vectors.fill(NO_VECTOR);
            }
            StatusChange::Stopped => self.unbind_kernel(),
            StatusChange::NeedsReset => {
                self.unbind_kernel();
                self.raise_config();
            }
        }
    }

    /// A vector the driver asks for: one the table has, or NO_VECTOR (which it reads back
    /// and so learns the request failed).
    fn vector(&self, v: u32) -> u16 {
        u16::try_from(v)
            .ok()
            .filter(|&v| v < self.msix.vectors())
            .unwrap_or(NO_VECTOR)
    }

    fn read_common(&self, field: (u64, usize)) -> u32 {
        let core = &self.core;
        let selected = core.selected_queue();
        let queue = core.queue_sel as usize;
        match field {
            common::DEVICE_FEATURE_SELECT => core.device_features_sel,
            common::DEVICE_FEATURE => core.device_features_word(),
            common::DRIVER_FEATURE_SELECT => core.driver_features_sel,
            common::DRIVER_FEATURE => core.driver_features_word(),
            common::CONFIG_MSIX_VECTOR => u32::from(self.config_vector),
            common::NUM_QUEUES => core.queues().len() as u32,
            common::DEVICE_STATUS => core.status() & 0xff,
            common::CONFIG_GENERATION => core.config_generation() & 0xff,
            common::QUEUE_SELECT => core.queue_sel & 0xffff,
            common::QUEUE_SIZE => selected.map_or(0, |q| u32::from(q.size())),
            common::QUEUE_MSIX_VECTOR => {
                u32::from(self.queue_vectors.get(queue).copied().unwrap_or(NO_VECTOR))
            }
            common::QUEUE_ENABLE => selected.map_or(0, |q| u32::from(q.ready())),
            common::QUEUE_NOTIFY_OFF => selected.map_or(0, |_| core.queue_sel & 0xffff),
            (o, 4) if (common::QUEUE_RINGS..common::QUEUE_RINGS_END).contains(&o) => {
                let Some(q) = selected else { return 0 };
                let addr = match (o - common::QUEUE_RINGS) / 8 {
                    0 => q.desc_table(),
                    1 => q.avail_ring(),
                    _ => q.used_ring(),
                };
                if o % 8 == 0 {
                    addr as u32
                } else {
                    (addr >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_common(&mut self, field: (u64, usize), v: u32) {
        let queue = self.core.queue_sel as usize;
        match field {
            common::DEVICE_FEATURE_SELECT => self.core.device_features_sel = v,
            common::DRIVER_FEATURE_SELECT => self.core.driver_features_sel = v,
            common::DRIVER_FEATURE => self.core.set_driver_features_word(v),
            common::CONFIG_MSIX_VECTOR => self.config_vector = self.vector(v),
            common::DEVICE_STATUS => self.set_status(v),
            common::QUEUE_SELECT => self.core.queue_sel = v,
            common::QUEUE_SIZE => {
                if let Some(q) = self.core.configurable_queue() {
                    // virtio-queue refuses sizes that are zero, too large or not a power
                    // of two.
                    q.set_size(v as u16);
                }
            }
            common::QUEUE_MSIX_VECTOR => {
                let vector = self.vector(v);
                if self.core.configurable_queue().is_some() {
                    if let Some(slot) = self.queue_vectors.get_mut(queue) {
                        *slot = vector;
                    }
                }
            }
            // Only 1 may be written (4.1.4.3.2); a queue is disabled by a reset.
            common::QUEUE_ENABLE if v == 1 => {
                if let Some(q) = self.core.configurable_queue() {
                    q.set_ready(true);
                }
            }
            (o, 4) if (common::QUEUE_RINGS..common::QUEUE_RINGS_END).contains(&o) => {
                let ring = match (o - common::QUEUE_RINGS) / 8 {
                    0 => Ring::Desc,
                    1 => Ring::Driver,
                    _ => Ring::Device,
                };
                let (low, high) = if o % 8 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                self.core.set_ring_address(ring, low, high);
            }
            _ => {}
        }
    }

    fn read_bar(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        let within = |start: u64, size: u64| {
            offset >= start
                && offset
                    .checked_add(len)
                    .is_some_and(|end| end <= start + size)
        };
        if within(COMMON_OFFSET, COMMON_LEN) {
            let v = self.read_common((offset - COMMON_OFFSET, data.len()));
            // A wider access (the guest's choice) reads zeros above the register.
            let n = data.len().min(4);
            data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
        } else if within(ISR_OFFSET, ISR_LEN) {
            // Reading the ISR acknowledges it (4.1.4.5).
            let v = self.isr.swap(0, Ordering::SeqCst);
            if offset == ISR_OFFSET {
                data[0] = v as u8;
            }
        } else if within(DEVICE_OFFSET, DEVICE_LEN) {
            self.core.device().read_config(offset - DEVICE_OFFSET, data);
        } else if within(MSIX_TABLE_OFFSET, Msix::table_size(self.msix.vectors())) {
            self.msix.read_table(offset - MSIX_TABLE_OFFSET, data);
        } else if within(MSIX_PBA_OFFSET, Msix::pba_size(self.msix.vectors())) {
            self.msix.read_pba(offset - MSIX_PBA_OFFSET, data);
        }
    }

    fn write_bar(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let within = |start: u64, size: u64| {
            offset >= start
                && offset
                    .checked_add(len)
                    .is_some_and(|end| end <= start + size)
        };
        let value = || {
            let mut b = [0u8; 4];
            b[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
            u32::from_le_bytes(b)
        };
        let notify_len = u64::from(self.msix.vectors()) * u64::from(NOTIFY_MULTIPLIER);
        if within(COMMON_OFFSET, COMMON_LEN) && data.len() <= 4 {
            self.write_common((offset - COMMON_OFFSET, data.len()), value());
        } else if within(NOTIFY_OFFSET, notify_len) {
            // Reaches here only where no ioeventfd took it: a write of another width or
            // value, or one the hypervisor would not place.
            let queue = (offset - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER);
            self.core.notify(queue as u32);
        } else if within(MSIX_TABLE_OFFSET, Msix::table_size(self.msix.vectors())) {
            self.msix.write_table(offset - MSIX_TABLE_OFFSET, data);
            self.masks_changed();
        }
        // The device configuration of our devices is read-only; the ISR and PBA too.
    }

    /// The configuration access window: where the driver pointed it in BAR 0.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let at = self.caps.pci_cfg;
        let bar = self.config.dword(at + 4) & 0xff;
        let offset = u64::from(self.config.dword(at + 8));
        let length = self.config.dword(at + 12) as usize;
        (bar == 0 && matches!(length, 1 | 2 | 4)).then_some((offset, length))
    }
}

impl<D: VirtioDevice> PciFunction for PciTransport<D> {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        let cfg_data = self.caps.pci_cfg + 16;
        if offset == cfg_data && data.len() == 4 {
            data.fill(0);
            if let Some((at, len)) = self.pci_cfg_window() {
                self.read_bar(at, &mut data[..len]);
            }
            return;
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let cfg_data = self.caps.pci_cfg + 16;
        if offset == cfg_data && data.len() == 4 {
            if let Some((at, len)) = self.pci_cfg_window() {
                self.write_bar(at, &data[..len]);
            }
            return;
        }
        self.config.write(offset, data);
        let touches = |field: usize, len: usize| {
            offset < field + len && offset.saturating_add(data.len()) > field
        };
        if touches(COMMAND, 2) || touches(BAR0, 4) {
            if let Err(e) = self.follow_bar() {
                self.notify_error = Some(e.to_string());
            }
        }
        // Message control sits in the upper half of the capability's first dword.
        let control = self.caps.msix + 2;
        if offset <= control + 1 && offset.saturating_add(data.len()) > control {
            self.msix.set_control(self.config.word(control));
            self.masks_changed();
        }
    }

    fn bar(&self) -> Option<(u64, u64)> {
        let (addr, decoding) = self.config.bar0();
        decoding.then_some((addr, BAR_SIZE))
    }

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        if data.is_empty() || data.len() > 8 {
            data.fill(0);
            return;
        }
        self.read_bar(offset, data);
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() || data.len() > 8 {
            return;
        }
        self.write_bar(offset, data);
    }
}

impl<D: VirtioDevice> Transport for PciTransport<D> {
    type Device = D;

    fn core(&self) -> &VirtioCore<D> {
        &self.core
    }

    fn wake(&mut self, wake: Wake) {
        let queues = self.core.wake(wake);
        if queues != 0 {
            self.raise_queues(queues);
        }
    }
}

/// The event loop's subscriber for a virtio-pci transport.
pub type PciEvents<D> = QueueEvents<PciTransport<D>>;

#[cfg(test)]
#[path = "pci_tests.rs"]
mod tests;
