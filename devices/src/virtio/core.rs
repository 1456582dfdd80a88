//! What every virtio transport shares: the queues, feature negotiation, the device status
//! state machine (virtio 1.2, 2.1 and 3.1.1) and running the device's queue work. A
//! transport (virtio-mmio, virtio-pci) decodes its own registers onto this and delivers the
//! interrupts the way its bus does.

use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{status, Processed, VirtioDevice, Wake, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

/// The status bits a driver writes.
const DRIVER_STATUS_BITS: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK | status::FEATURES_OK | status::FAILED;

/// A transport's queues (None: not ready) and its pending interrupt bits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingState {
    pub queues: Vec<Option<QueueState>>,
    /// Each queue's wake-ups and interrupts since the VM started (all queues, ready or not).
    pub counts: Vec<QueueCounts>,
    /// Wake-ups by each backend (its fd became readable), since the VM started.
    pub backend_wakes: Vec<u64>,
    /// virtio-mmio's InterruptStatus, virtio-pci's ISR; with MSI-X, bit 0 says that a vector
    /// is pending behind a mask.
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

/// How busy one queue kept the event loop and the driver. A notification per chain and an
/// interrupt per used buffer is a device and driver waking each other for every frame, and
/// each of those is a VM exit or an injected interrupt: what a slow (nested) host pays most
/// for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Runs of the queue's work on its notifier: the driver's notifications and the
    /// device's own resumptions (an eventfd merges those that arrive together).
    pub wakes: u64,
    /// Wake-ups the budget cut short, which the device resumed through the notifier.
    pub resumed: u64,
    /// Interrupts the device asked for on this queue's behalf.
    pub interrupts: u64,
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

/// What a status write did, for the transport to act on with its interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    /// Nothing the transport needs to know.
    None,
    /// The driver reset the device.
    Reset,
    /// The device went live (DRIVER_OK accepted).
    Activated,
    /// The driver gave up (FAILED): the device stopped.
    Stopped,
    /// The device stopped and asks for a reset: the transport sends a configuration change
    /// interrupt (virtio 1.2, 2.1.2).
    NeedsReset,
}

/// Which ring address of the selected queue a register sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    Desc,
    Driver,
    Device,
}

/// The transport-independent state of one virtio device.
pub struct VirtioCore<D: VirtioDevice> {
    pub(super) device: D,
    pub(super) mem: GuestMemoryMmap,
    pub(super) queues: Vec<Queue>,
    /// The queue notification eventfds (those KVM signals through ioeventfd): a notify that
    /// reaches the transport as an exit is forwarded there, so queue work always happens on
    /// the event thread.
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) activate_evt: EventFd,
    pub(super) device_features_sel: u32,
    pub(super) driver_features_sel: u32,
    pub(super) driver_features: u64,
    pub(super) queue_sel: u32,
    pub(super) status: u32,
    pub(super) config_generation: u32,
    pub(super) active: bool,
    /// Indexed by queue; kept over resets, like the device's frame counters.
    counts: Vec<QueueCounts>,
    backend_wakes: Vec<u64>,
}

impl<D: VirtioDevice> VirtioCore<D> {
    pub fn new(device: D, mem: GuestMemoryMmap) -> Result<Self, TransportError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &size in device.queue_max_sizes() {
            queues.push(Queue::new(size).map_err(|e| TransportError::Queue {
                size,
                reason: e.to_string(),
            })?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?);
        }
        let queues_len = queues.len();
        Ok(Self {
            device,
            mem,
            queues,
            queue_evts,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            active: false,
            counts: vec![QueueCounts::default(); queues_len],
            backend_wakes: Vec::new(),
        })
    }

    /// Where each ready queue stands, with the transport's pending interrupt bits.
    pub fn ring_state(&self, interrupt_status: u32) -> RingState {
        RingState {
            queues: self
                .queues
                .iter()
                .map(|q| q.ready().then(|| QueueState::read(q, &self.mem)))
                .collect(),
            counts: self.counts.clone(),
            backend_wakes: self.backend_wakes.clone(),
            interrupt_status,
        }
    }

    /// Runs device work for `wake`; returns which queues want an interrupt. Called on the
    /// event thread.
    pub fn wake(&mut self, wake: Wake) -> u32 {
        if !self.active {
            return 0;
        }
        match wake {
            Wake::Queue(i) => {
                if let Some(c) = self.counts.get_mut(usize::from(i)) {
                    c.wakes += 1;
                }
            }
            Wake::Backend(b) => {
                let b = usize::from(b);
                if self.backend_wakes.len() <= b {
                    self.backend_wakes.resize(b + 1, 0);
                }
                self.backend_wakes[b] += 1;
            }
            Wake::Activated => {}
        }
        let done: Processed = self.device.process(wake, &mut self.queues);
        // The rest of a wake-up the budget cut short: notified as the guest would, through
        // the queue's eventfd, so the event loop first serves whatever else is ready.
        for (i, (evt, c)) in self.queue_evts.iter().zip(&mut self.counts).enumerate() {
            let bit = 1u32.checked_shl(i as u32).unwrap_or(0);
            if done.unfinished & bit != 0 {
                c.resumed += 1;
                let _ = evt.write(1);
            }
            if done.interrupt & bit != 0 {
                c.interrupts += 1;
            }
        }
        done.interrupt
    }

    /// The word of the offered features the driver selected.
    pub fn device_features_word(&self) -> u32 {
        match self.device_features_sel {
            0 => self.device.features() as u32,
            1 => (self.device.features() >> 32) as u32,
            _ => 0,
        }
    }

    /// A write of the selected word of the driver's features: taken until FEATURES_OK.
    pub fn set_driver_features_word(&mut self, v: u32) {
        if self.status & status::FEATURES_OK != 0 {
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
    }

    /// The word of the accepted features the driver selected (virtio-pci reads them back).
    pub fn driver_features_word(&self) -> u32 {
        match self.driver_features_sel {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    pub fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue, while its layout may still change: only before DRIVER_OK
    /// (virtio 1.2, 4.2.2.2 and 4.1.4.3.2: later writes are ignored), and not in a device
    /// that awaits its reset.
    pub fn configurable_queue(&mut self) -> Option<&mut Queue> {
        let configuring = self.status & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET) == 0;
        if !configuring {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Sets one half (`low` or `high`) of a ring address of the selected queue.
    pub fn set_ring_address(&mut self, ring: Ring, low: Option<u32>, high: Option<u32>) {
        if let Some(q) = self.configurable_queue() {
            match ring {
                Ring::Desc => q.set_desc_table_address(low, high),
                Ring::Driver => q.set_avail_ring_address(low, high),
                Ring::Device => q.set_used_ring_address(low, high),
            }
        }
    }

    /// The driver's notification of queue `index` that reached the transport as an exit.
    pub fn notify(&self, index: u32) {
        if !self.active {
            return;
        }
        if let Some(evt) = self.queue_evts.get(index as usize) {
            let _ = evt.write(1);
        }
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
    pub fn set_status(&mut self, value: u32) -> StatusChange {
        if value == 0 {
            self.reset();
            return StatusChange::Reset;
        }
        // DEVICE_NEEDS_RESET is the device's to set; drivers write back what they read.
        let mut value = value & DRIVER_STATUS_BITS;
        let current = self.status & DRIVER_STATUS_BITS;
        if self.status & status::DEVICE_NEEDS_RESET != 0 {
            // Until the reset only FAILED, the driver giving up, is taken.
            self.status |= value & status::FAILED;
            return StatusChange::None;
        }
        if current & !value != 0 {
            return self.needs_reset();
        }
        let newly = value & !current;
        if newly & status::FEATURES_OK != 0 && !self.features_acceptable() {
            value &= !status::FEATURES_OK;
        }
        self.status = value;
        if newly & status::FAILED != 0 {
            // The driver gave up on the device: nothing serves its rings any more.
            self.stop();
            return StatusChange::Stopped;
        }
        if newly & status::DRIVER_OK != 0 && !self.active {
            return self.activate();
        }
        StatusChange::None
    }

    /// Stops the device until the driver resets it.
    fn needs_reset(&mut self) -> StatusChange {
        self.stop();
        self.status |= status::DEVICE_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        StatusChange::NeedsReset
    }

    /// Stops queue work short of a reset: no wake-up reaches the device, and a device
    /// whose queues the kernel serves takes them back from it.
    fn stop(&mut self) {
        self.active = false;
        self.device.stop();
    }

    fn activate(&mut self) -> StatusChange {
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
                let _ = self.activate_evt.write(1);
                StatusChange::Activated
            }
            Err(_) => self.needs_reset(),
        }
    }

    /// The transport could not wire what activation needs (the kernel's interrupts): the
    /// device stops and asks for a reset.
    pub fn fail_activation(&mut self) -> StatusChange {
        self.needs_reset()
    }

    /// Whether the kernel serves queues (vhost): their used-buffer eventfds.
    pub fn kernel_interrupts(&self) -> &[EventFd] {
        self.device.used_notifiers()
    }

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

    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }
}
