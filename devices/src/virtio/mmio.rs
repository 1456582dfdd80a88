//! The virtio-mmio transport (virtio 1.2, 4.2.2), modern (version 2) registers only.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{status, VirtioDevice, Wake, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
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
/// The status bits a driver writes.
const DRIVER_STATUS_BITS: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK | status::FEATURES_OK | status::FAILED;
/// InterruptStatus bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;
/// The bits a driver sees and acknowledges.
const INT_BITS: u32 = INT_VRING | INT_CONFIG;
/// Never seen by the driver: the kernel (vhost) serves queues now. Its used-buffer eventfds
/// are irqfds of this device's GSI, so the interrupt reaches the guest without this
/// process, which never learns when it fired: InterruptStatus then says "used buffer" on
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
    device: D,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    /// Clones of the queue notification eventfds (the same ones KVM signals through
    /// ioeventfd): a notify that reaches us as an MMIO exit is forwarded there, so queue
    /// work always happens on the event thread.
    queue_evts: Vec<EventFd>,
    activate_evt: EventFd,
    irq: EventFd,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    /// Shared with the transport's `MmioFront`, which serves the interrupt registers
    /// without this transport's lock.
    interrupt_status: Arc<AtomicU32>,
    config_generation: u32,
    active: bool,
}

/// A transport's queues (None: not ready) and its InterruptStatus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingState {
    pub queues: Vec<Option<QueueState>>,
    pub interrupt_status: u32,
}

/// One queue as the driver published it and as the device has consumed it. With EVENT_IDX
/// the two event fields say who is waiting for whom; `None` where guest memory could not
/// be read there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueState {
    /// The driver's avail index: chains it has offered.
    pub avail: Option<u16>,
    /// The device's next avail position: chains it has taken.
    pub taken: u16,
    /// The used ring's index in guest memory: chains returned, by the device or (vhost)
    /// the kernel; the device's own next index where memory cannot be read.
    pub used: u16,
    /// The driver wants an interrupt when `used` passes this (EVENT_IDX only).
    pub used_event: Option<u16>,
    /// The device wants a notification when `avail` passes this (EVENT_IDX only).
    pub avail_event: Option<u16>,
}

impl QueueState {
    fn read(q: &Queue, mem: &GuestMemoryMmap) -> Self {
        let event = |addr: Option<vm_memory::GuestAddress>| -> Option<u16> {
            let value = mem.read_obj::<u16>(addr?).ok().map(u16::from_le);
            value.filter(|_| q.event_idx_enabled())
        };
        Self {
            avail: q.avail_idx(mem, Ordering::Acquire).ok().map(|w| w.0),
            taken: q.next_avail(),
            used: q
                .used_idx(mem, Ordering::Acquire)
                .map_or(q.next_used(), |w| w.0),
            used_event: event(super::used_event_addr(q)),
            avail_event: event(super::avail_event_addr(q)),
        }
    }
}

/// Errors building a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot create virtio queue of size {size}: {reason}")]
    Queue { size: u16, reason: String },
    #[error("cannot create or clone an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("the event loop cannot watch its {what}: {source}")]
    Register {
        what: String,
        source: event_manager::Error,
    },
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `irq` is the eventfd KVM injects as this device's interrupt.
    pub fn new(device: D, mem: GuestMemoryMmap, irq: EventFd) -> Result<Self, TransportError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &size in device.queue_max_sizes() {
            queues.push(Queue::new(size).map_err(|e| TransportError::Queue {
                size,
                reason: e.to_string(),
            })?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?);
        }
        Ok(Self {
            device,
            mem,
            queues,
            queue_evts,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?,
            irq,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            config_generation: 0,
            active: false,
        })
    }

    /// The queue notification eventfds, in queue order, for KVM ioeventfd registration.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    /// Where each ready queue stands and the pending interrupt bits: what a stalled
    /// network is diagnosed from (the VMM prints it at exit).
    pub fn ring_state(&self) -> RingState {
        RingState {
            queues: self
                .queues
                .iter()
                .map(|q| q.ready().then(|| QueueState::read(q, &self.mem)))
                .collect(),
            interrupt_status: self.interrupt_status.load(Ordering::SeqCst) & INT_BITS,
        }
    }

    /// Runs device work for `wake` and raises the interrupt if the device asks for it.
    /// Called on the event thread.
    pub fn wake(&mut self, wake: Wake) {
        if !self.active {
            return;
        }
        let done = self.device.process(wake, &mut self.queues);
        if done.interrupt {
            self.raise(INT_VRING);
        }
        // The rest of a wake-up the budget cut short: notified as the guest would, through
        // the queue's eventfd, so the event loop first serves whatever else is ready.
        for (i, evt) in self.queue_evts.iter().enumerate().take(32) {
            if done.unfinished & (1 << i) != 0 {
                let _ = evt.write(1);
            }
        }
    }

    /// The eventfds the kernel signals when it used buffers (vhost), for KVM to take as
    /// irqfds of this device's interrupt.
    pub fn kernel_interrupts(&self) -> &[EventFd] {
        self.device.used_notifiers()
    }

    fn raise(&mut self, bit: u32) {
        // Set before the eventfd fires: the guest's handler reads it after the interrupt.
        self.interrupt_status.fetch_or(bit, Ordering::SeqCst);
        // A full eventfd counter still means "interrupt pending": nothing is lost.
        let _ = self.irq.write(1);
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
        self.active = false;
    }

    /// Features the driver may accept: VERSION_1 is mandatory (no legacy interface here).
    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        self.driver_features & !offered == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
            && self.device.accepts(self.driver_features)
    }

    /// A status write (virtio 1.2, 2.1 and 3.1.1): the driver only ever adds bits, and
    /// takes them back only by writing 0 (reset). Clearing one otherwise is a driver error
    /// (a driver that drops DRIVER_OK would re-open queue setup under a running device):
    /// the device stops and asks for a reset.
    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's to set; drivers write back what they read.
        let mut value = value & DRIVER_STATUS_BITS;
        let current = self.status & DRIVER_STATUS_BITS;
        if self.status & status::DEVICE_NEEDS_RESET != 0 {
            // Until the reset only FAILED, the driver giving up, is taken.
            self.status |= value & status::FAILED;
            return;
        }
        if current & !value != 0 {
            self.needs_reset();
            return;
        }
        let newly = value & !current;
        if newly & status::FEATURES_OK != 0 && !self.features_acceptable() {
            value &= !status::FEATURES_OK;
        }
        self.status = value;
        if newly & status::FAILED != 0 {
            // The driver gave up on the device: nothing serves its rings any more.
            self.stop();
            return;
        }
        if newly & status::DRIVER_OK != 0 && !self.active {
            self.activate();
        }
    }

    /// Stops the device until the driver resets it, and tells the driver (virtio 1.2,
    /// 2.1.2: DEVICE_NEEDS_RESET comes with a configuration change notification).
    fn needs_reset(&mut self) {
        self.stop();
        self.status |= status::DEVICE_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.raise(INT_CONFIG);
    }

    /// Stops queue work short of a reset: no wake-up reaches the device, and a device
    /// whose queues the kernel serves takes them back from it.
    fn stop(&mut self) {
        self.active = false;
        self.interrupt_status
            .fetch_and(!INT_KERNEL, Ordering::SeqCst);
        self.device.stop();
    }

    fn activate(&mut self) {
        let ready_and_valid = self.status & status::FEATURES_OK != 0
            && self
                .queues
                .iter()
                .all(|q| !q.ready() || q.is_valid(&self.mem));
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let outcome = if ready_and_valid {
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
            self.device
                .activate(self.driver_features, &self.mem)
                .and_then(|()| self.device.start_queues(&self.queues, &self.queue_evts))
        } else {
            Err("queues are not valid in guest memory or features were not accepted".into())
        };
        match outcome {
            Ok(()) => {
                self.active = true;
                if !self.device.used_notifiers().is_empty() {
                    self.interrupt_status.fetch_or(INT_KERNEL, Ordering::SeqCst);
                }
                let _ = self.activate_evt.write(1);
            }
            Err(_) => self.needs_reset(),
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            MAGIC_VALUE => MMIO_MAGIC,
            VERSION => MMIO_VERSION_MODERN,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => visible_status(self.interrupt_status.load(Ordering::SeqCst)),
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        // Queue layout may change only while the driver has not said DRIVER_OK (virtio 1.2,
        // 4.2.2.2: later writes are ignored), and not in a device that awaits its reset.
        let configuring = self.status & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET) == 0;
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM if configuring => {
                // virtio-queue refuses sizes that are zero, too large or not a power of two.
                if let (Some(q), Ok(size)) = (self.selected_queue(), u16::try_from(v)) {
                    q.set_size(size);
                }
            }
            QUEUE_READY if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH
                if configuring =>
            {
                let (low, high) = if offset & 4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                if let Some(q) = self.selected_queue() {
                    match offset & !4 {
                        QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                        QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            QUEUE_NOTIFY if self.active => {
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            INTERRUPT_ACK => {
                self.interrupt_status
                    .fetch_and(!(v & INT_BITS), Ordering::SeqCst);
            }
            STATUS => self.set_status(v),
            _ => {}
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
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

/// Event-loop side of a transport: wakes the device on queue notifications, backend
/// readiness and activation.
pub struct MmioEvents<D: VirtioDevice> {
    transport: Arc<Mutex<MmioTransport<D>>>,
    /// The notifiers of the queues this process serves (by queue index): not those the
    /// kernel serves, which it watches itself (and whose used-buffer eventfds are irqfds).
    queue_evts: Vec<(u32, EventFd)>,
    activate_evt: EventFd,
    backend_fds: Vec<std::os::fd::RawFd>,
    registration: Registration,
}

/// Whether `init` registered everything. event-manager's `init` cannot fail, yet a refused
/// fd (one the loop already watches: the same backend given twice) leaves a NIC deaf; so
/// the first refusal is kept here for whoever added the subscriber to ask.
#[derive(Debug, Clone, Default)]
pub struct Registration(Arc<Mutex<Option<TransportError>>>);

impl Registration {
    pub fn check(&self) -> Result<(), TransportError> {
        lock(&self.0).take().map_or(Ok(()), Err)
    }

    fn note(&self, what: impl FnOnce() -> String, result: Result<(), event_manager::Error>) {
        let mut first = lock(&self.0);
        if let (None, Err(source)) = (&*first, result) {
            *first = Some(TransportError::Register {
                what: what(),
                source,
            });
        }
    }
}

const TOKEN_ACTIVATE: u32 = u32::MAX;
/// Token of backend N: this plus N.
const TOKEN_BACKEND: u32 = 1 << 20;

impl<D: VirtioDevice> MmioEvents<D> {
    pub fn new(transport: Arc<Mutex<MmioTransport<D>>>) -> Result<Self, TransportError> {
        let t = lock(&transport);
        let kernel_served = t.device.used_notifiers().len();
        let queue_evts = t
            .queue_evts
            .iter()
            .enumerate()
            .skip(kernel_served)
            .map(|(i, e)| Ok((i as u32, e.try_clone()?)))
            .collect::<Result<Vec<_>, std::io::Error>>()
            .map_err(TransportError::EventFd)?;
        let activate_evt = t
            .activate_evt
            .try_clone()
            .map_err(TransportError::EventFd)?;
        let backend_fds = t.device.backend_fds();
        drop(t);
        Ok(Self {
            transport,
            queue_evts,
            activate_evt,
            backend_fds,
            registration: Registration::default(),
        })
    }

    /// Where `init` reports a registration the event loop refused.
    pub fn registration(&self) -> Registration {
        self.registration.clone()
    }
}

impl<D: VirtioDevice> MutEventSubscriber for MmioEvents<D> {
    fn init(&mut self, ops: &mut EventOps) {
        let r = &self.registration;
        for (i, evt) in &self.queue_evts {
            let added = ops.add(Events::with_data(evt, *i, EventSet::IN));
            r.note(|| format!("queue {i} notifier"), added);
        }
        let added = ops.add(Events::with_data(
            &self.activate_evt,
            TOKEN_ACTIVATE,
            EventSet::IN,
        ));
        r.note(|| "activation eventfd".into(), added);
        for (i, &fd) in self.backend_fds.iter().enumerate() {
            // Edge-triggered: the device reads until the backend is empty or the guest has
            // no buffers, and a queue notification resumes it; level-triggered would spin
            // while the guest's RX ring is full.
            let added = ops.add(Events::with_data_raw(
                fd,
                TOKEN_BACKEND + i as u32,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ));
            r.note(|| format!("backend fd {fd}"), added);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let wake = match events.data() {
            TOKEN_ACTIVATE => {
                let _ = self.activate_evt.read();
                Wake::Activated
            }
            t if t >= TOKEN_BACKEND => Wake::Backend((t - TOKEN_BACKEND) as u16),
            i => {
                if let Some((_, evt)) = self.queue_evts.iter().find(|(q, _)| *q == i) {
                    let _ = evt.read();
                }
                Wake::Queue(i as u16)
            }
        };
        lock(&self.transport).wake(wake);
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
