//! Event-loop side of a transport: wakes the device on queue notifications, backend
//! readiness and activation. The same for every transport: only what a wake-up's
//! interrupt looks like differs, and that is [`Transport::wake`]'s.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::core::{TransportError, VirtioCore};
use super::{VirtioDevice, Wake};
use crate::bus::lock;

/// A transport the event loop can wake.
pub trait Transport: Send {
    type Device: VirtioDevice;
    fn core(&self) -> &VirtioCore<Self::Device>;
    /// Runs device work for `wake` and raises the interrupts it asks for.
    fn wake(&mut self, wake: Wake);

    /// The queue notification eventfds, in queue order, for KVM ioeventfd registration.
    fn queue_events(&self) -> &[EventFd] {
        self.core().queue_events()
    }

    fn device(&self) -> &Self::Device {
        self.core().device()
    }

    fn is_active(&self) -> bool {
        self.core().is_active()
    }

    fn status(&self) -> u32 {
        self.core().status()
    }
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

/// The event loop's subscriber for one transport.
pub struct QueueEvents<T: Transport> {
    transport: Arc<Mutex<T>>,
    /// The notifiers of the queues this process serves (by queue index): not those the
    /// kernel serves, which it watches itself (and whose used-buffer eventfds are irqfds).
    queue_evts: Vec<(u32, EventFd)>,
    activate_evt: EventFd,
    backend_fds: Vec<RawFd>,
    registration: Registration,
}

impl<T: Transport> QueueEvents<T> {
    pub fn new(transport: Arc<Mutex<T>>) -> Result<Self, TransportError> {
        let t = lock(&transport);
        let core = t.core();
        let kernel_served = core.kernel_interrupts().len();
        let queue_evts = core
            .queue_events()
            .iter()
            .enumerate()
            .skip(kernel_served)
            .map(|(i, e)| Ok((i as u32, e.try_clone()?)))
            .collect::<Result<Vec<_>, std::io::Error>>()
            .map_err(TransportError::EventFd)?;
        let activate_evt = core
            .activate_evt
            .try_clone()
            .map_err(TransportError::EventFd)?;
        let backend_fds = core.device().backend_fds();
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

impl<T: Transport> MutEventSubscriber for QueueEvents<T> {
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
