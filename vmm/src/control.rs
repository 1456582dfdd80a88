//! The VMM's own event loop, on the main thread while the guest runs (Firecracker's VMM
//! thread has one too): the machine's end, SIGINT/SIGTERM/SIGHUP, the `--timeout` (a
//! timerfd), stdin for the console and the bridge monitor (a netlink socket) are all
//! subscribers of one event-manager loop, which sleeps until one of them has something.
//!
//! The devices' queues run in a loop of their own on the device thread: that thread parses
//! what the guest writes and holds no capability, while this one may keep CAP_NET_ADMIN
//! (to put a tap back on a re-created bridge, and to release interfaces at the end). A
//! single loop would give the guest-facing code that capability.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::bus::lock;
use devices::exit::{ExitSignal, VmExit};
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::timerfd::TimerFd;

use crate::console::{ConsoleSink, StdinFeed};
use crate::notice::{Notice, Notices};
use crate::vm::Outcome;

/// The signals that stop the VM (and run every cleanup) instead of killing netvmm.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot {what}: {source:?}")]
    Loop {
        what: &'static str,
        source: event_manager::Error,
    },
}

/// The stop signals, delivered as readability of a pipe (signal-hook writes a byte from
/// its handler), with the number of the last one that came.
pub struct StopSignals {
    wake: File,
    last: Arc<AtomicUsize>,
}

impl StopSignals {
    /// Installs the handlers, for the rest of the process's life: a signal during the
    /// cleanup after the loop must not kill netvmm half-way either.
    pub fn install() -> std::io::Result<Self> {
        let (reader, writer) = std::io::pipe()?;
        let last = Arc::new(AtomicUsize::new(0));
        for sig in STOP_SIGNALS {
            // The flag first: signal-hook runs a signal's actions in registration order,
            // so that the loop, woken by the pipe, finds the number already stored.
            signal_hook::flag::register_usize(sig, last.clone(), sig as usize)?;
            signal_hook::low_level::pipe::register(sig, writer.try_clone()?)?;
        }
        Ok(Self {
            wake: File::from(OwnedFd::from(reader)),
            last,
        })
    }

    /// Blocks the stop signals in the calling thread, so that they reach the main thread
    /// (and its handler) only: other threads' seccomp filters need not allow the handler.
    pub fn block_in_this_thread() -> std::io::Result<()> {
        let set = vmm_sys_util::signal::create_sigset(&STOP_SIGNALS)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: `set` is an initialised sigset; the old mask is not asked for.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        match rc {
            0 => Ok(()),
            e => Err(std::io::Error::from_raw_os_error(e)),
        }
    }

    /// The signal that came, if one did; empties the pipe.
    fn take(&mut self) -> Option<i32> {
        let mut buf = [0u8; 64];
        // Readable, so one read does not block; what it holds is only a wake-up.
        let _ = self.wake.read(&mut buf);
        match self.last.load(Ordering::SeqCst) {
            0 => None,
            s => i32::try_from(s).ok(),
        }
    }
}

/// What the loop watches.
pub struct Sources {
    pub exit: ExitSignal,
    pub exit_rx: Receiver<VmExit>,
    pub signals: StopSignals,
    /// When `--timeout` expires.
    pub deadline: Option<Instant>,
    pub stdin: Option<StdinFeed<ConsoleSink>>,
    pub bridges: Option<net::bridge_watch::Watcher>,
    pub notices: Notices,
}

/// The loop's one subscriber: it owns every source and decides the outcome.
struct Control {
    sources: Sources,
    timer: Option<TimerFd>,
    outcome: Option<Outcome>,
    failed: Option<ControlError>,
}

impl Control {
    fn new(sources: Sources) -> Result<Self, ControlError> {
        let mut outcome = None;
        let timer = match sources.deadline {
            None => None,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    outcome = Some(Outcome::TimedOut);
                }
                let mut timer = TimerFd::new().map_err(|e| ControlError::Io {
                    what: "create the timeout's timerfd",
                    source: e.into(),
                })?;
                // A zero duration would disarm the timer; the outcome is decided already.
                timer
                    .reset(left.max(Duration::from_nanos(1)), None)
                    .map_err(|e| ControlError::Io {
                        what: "arm the timeout's timerfd",
                        source: e.into(),
                    })?;
                Some(timer)
            }
        };
        Ok(Self {
            sources,
            timer,
            outcome,
            failed: None,
        })
    }

    fn register(&mut self, ops: &mut EventOps) -> Result<(), ControlError> {
        let add = |ops: &mut EventOps, fd: &dyn AsRawFd, what| {
            ops.add(Events::new_raw(fd.as_raw_fd(), EventSet::IN))
                .map_err(|source| ControlError::Loop { what, source })
        };
        add(ops, self.sources.exit.wake_fd(), "watch for the VM's end")?;
        add(ops, &self.sources.signals.wake, "watch for signals")?;
        if let Some(timer) = &self.timer {
            add(ops, timer, "watch the timeout")?;
        }
        if let Some(w) = &self.sources.bridges {
            add(ops, w, "watch the bridges")?;
        }
        if let Some(feed) = &mut self.sources.stdin {
            let quit = feed.init(ops).map_err(|source| ControlError::Loop {
                what: "watch stdin",
                source,
            })?;
            if quit {
                self.outcome.get_or_insert(Outcome::Signalled(libc::SIGINT));
            }
        }
        Ok(())
    }
}

impl MutEventSubscriber for Control {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.register(ops) {
            self.failed = Some(e);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let s = &mut self.sources;
        let decided = if fd == s.exit.wake_fd().as_raw_fd() {
            // Non-blocking; the channel holds the reason.
            let _ = s.exit.wake_fd().read();
            match s.exit_rx.try_recv() {
                Ok(end) => Some(Outcome::Exited(end)),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    Some(Outcome::Exited(VmExit::Fault("all vCPUs stopped".into())))
                }
            }
        } else if fd == s.signals.wake.as_raw_fd() {
            s.signals.take().map(Outcome::Signalled)
        } else if self.timer.as_ref().is_some_and(|t| t.as_raw_fd() == fd) {
            Some(Outcome::TimedOut)
        } else if let Some(w) = s.bridges.as_mut().filter(|w| w.as_raw_fd() == fd) {
            for port in w.on_readable() {
                (s.notices)(Notice::BridgeBack(port));
            }
            None
        } else if let Some(feed) = s.stdin.as_mut().filter(|f| f.owns(fd)) {
            // Ctrl-A x: as a Ctrl-C would.
            feed.process(fd, ops)
                .then_some(Outcome::Signalled(libc::SIGINT))
        } else {
            None
        };
        if let Some(outcome) = decided {
            self.outcome.get_or_insert(outcome);
        }
    }
}

/// The VMM's event loop, with every source registered: built before the main thread
/// enters its sandbox (creating the epoll and the timerfd is not on its list), run after.
pub struct ControlLoop {
    em: EventManager<Arc<Mutex<Control>>>,
    control: Arc<Mutex<Control>>,
}

impl ControlLoop {
    pub fn new(sources: Sources) -> Result<Self, ControlError> {
        let control = Arc::new(Mutex::new(Control::new(sources)?));
        let mut em =
            EventManager::<Arc<Mutex<Control>>>::new().map_err(|source| ControlError::Loop {
                what: "create the VMM's event loop",
                source,
            })?;
        em.add_subscriber(control.clone());
        if let Some(e) = lock(&control).failed.take() {
            return Err(e);
        }
        Ok(Self { em, control })
    }

    /// Runs until the VM ends, a stop signal comes, the timeout expires or the user quits
    /// from the console. Returns with every source closed: nothing watches the bridges any
    /// more, so the caller may release the interfaces.
    pub fn run(mut self) -> Result<Outcome, ControlError> {
        loop {
            if let Some(outcome) = lock(&self.control).outcome.take() {
                return Ok(outcome);
            }
            // Ok(0) after EINTR (a signal whose pipe byte the next round reads).
            self.em.run().map_err(|source| ControlError::Loop {
                what: "wait in the VMM's event loop",
                source,
            })?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(deadline: Option<Instant>) -> (Sources, ExitSignal) {
        let (exit, exit_rx) = ExitSignal::new().unwrap();
        let s = Sources {
            exit: exit.clone(),
            exit_rx,
            signals: StopSignals::install().unwrap(),
            deadline,
            stdin: None,
            bridges: None,
            notices: crate::notice::ignore(),
        };
        (s, exit)
    }

    #[test]
    fn the_first_report_of_the_machine_ends_the_loop() {
        let (s, exit) = sources(Some(Instant::now() + Duration::from_secs(60)));
        let reporter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            exit.signal(VmExit::GuestStatus(7));
            exit.signal(VmExit::PowerOff);
        });
        assert_eq!(
            ControlLoop::new(s).unwrap().run().unwrap(),
            Outcome::Exited(VmExit::GuestStatus(7))
        );
        reporter.join().unwrap();
    }

    #[test]
    fn the_timeout_fires_from_the_timerfd_and_a_past_deadline_at_once() {
        let (s, _exit) = sources(Some(Instant::now() + Duration::from_millis(80)));
        let t = Instant::now();
        assert_eq!(
            ControlLoop::new(s).unwrap().run().unwrap(),
            Outcome::TimedOut
        );
        assert!(
            t.elapsed() >= Duration::from_millis(70),
            "{:?}",
            t.elapsed()
        );
        let (s, _exit) = sources(Some(Instant::now() - Duration::from_secs(1)));
        assert_eq!(
            ControlLoop::new(s).unwrap().run().unwrap(),
            Outcome::TimedOut
        );
    }

    #[test]
    fn a_stop_signal_is_named_in_the_outcome() {
        // In a child process: the handlers are for the process's life.
        if std::env::var_os("NETVMM_CONTROL_CHILD").is_some() {
            let (s, _exit) = sources(None);
            // SAFETY: raise only sends a signal to this thread, whose handler is installed.
            unsafe { libc::raise(libc::SIGTERM) };
            assert_eq!(
                ControlLoop::new(s).unwrap().run().unwrap(),
                Outcome::Signalled(libc::SIGTERM)
            );
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "control::tests::a_stop_signal_is_named_in_the_outcome",
                "--test-threads=1",
            ])
            .env("NETVMM_CONTROL_CHILD", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
