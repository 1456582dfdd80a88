//! How devices and vCPUs tell the VMM that the machine is done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// Why the virtual machine stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// ACPI S5 written to the sleep control register (guest `poweroff`).
    PowerOff,
    /// Reset through the i8042 (guest `reboot`: netvmm gives the kernel `reboot=k`).
    Reset,
    /// The guest kernel panicked and said so through pvpanic.
    GuestPanic,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN): the guest crashed, since its reboot goes
    /// through the i8042 and never ends this way.
    TripleFault { cpu: u8 },
    /// The guest wrote this status to the exit device (port 0xf4).
    GuestStatus(u8),
    /// A vCPU hit something the VMM cannot continue from; the text names the vCPU and cause.
    Fault(String),
}

/// A cloneable handle to report the machine's end; the first report wins. The report
/// also makes [`ExitSignal::wake_fd`] readable, so that the VMM's event loop wakes for it.
#[derive(Clone)]
pub struct ExitSignal {
    tx: Arc<Mutex<Option<Sender<VmExit>>>>,
    fired: Arc<AtomicBool>,
    wake: Arc<EventFd>,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<(Self, Receiver<VmExit>)> {
        let (tx, rx) = channel();
        Ok((
            Self {
                tx: Arc::new(Mutex::new(Some(tx))),
                fired: Arc::new(AtomicBool::new(false)),
                wake: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
            },
            rx,
        ))
    }

    /// Reports `exit` unless another reason was reported before.
    pub fn signal(&self, exit: VmExit) {
        self.fired.store(true, Ordering::SeqCst);
        if let Some(tx) = crate::bus::lock(&self.tx).take() {
            // The receiver is gone only when the VMM is already shutting down.
            let _ = tx.send(exit);
            // A counter that cannot overflow from one write; nothing else to do on error.
            let _ = self.wake.write(1);
        }
    }

    /// Stops the machine for a reason of the VMM's own (a timeout, a signal): every vCPU
    /// stops at its next exit, and no device report counts any more.
    pub fn halt(&self) {
        self.fired.store(true, Ordering::SeqCst);
        crate::bus::lock(&self.tx).take();
    }

    /// Readable once the machine's end was reported.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }
}

impl ExitSignal {
    /// Whether the machine's end was reported: a vCPU that sees this stops at once, so that
    /// a guest which powered off does not run on past its own power-off.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let (sig, rx) = ExitSignal::new().unwrap();
        let other = sig.clone();
        assert!(!other.fired());
        assert!(sig.wake_fd().read().is_err(), "readable before any report");
        sig.signal(VmExit::GuestPanic);
        assert!(other.fired());
        other.signal(VmExit::PowerOff);
        assert_eq!(rx.recv().unwrap(), VmExit::GuestPanic);
        assert!(rx.try_recv().is_err());
        assert_eq!(
            sig.wake_fd().read().unwrap(),
            1,
            "one wake-up for the first report"
        );
    }

    #[test]
    fn a_halt_stops_vcpus_and_later_reports_are_ignored() {
        let (sig, rx) = ExitSignal::new().unwrap();
        sig.halt();
        assert!(sig.fired());
        sig.signal(VmExit::PowerOff);
        assert!(rx.try_recv().is_err());
        assert!(sig.wake_fd().read().is_err());
    }
}
