//! Keeping a guest's tap on its bridge when the bridge is deleted and created again while
//! the VM runs (a network restart on the host): the kernel releases the port when the
//! bridge goes, and nothing puts it back, so without this the guest stays cut off.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::netlink::{self, LinkEvent, LinkMonitor, NetlinkError};

/// One tap that belongs on one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub tap: String,
    pub bridge: String,
}

/// Puts `port.tap` back on `port.bridge` if the bridge exists and the tap is not on it.
/// Returns whether it had to.
pub fn ensure_enslaved(port: &Port) -> Result<bool, NetlinkError> {
    let Some(bridge) = netlink::link_info(port.bridge.as_str())? else {
        return Ok(false);
    };
    if !bridge.is_bridge() {
        return Ok(false);
    }
    let Some(tap) = netlink::link_info(port.tap.as_str())? else {
        return Ok(false);
    };
    if tap.master == Some(bridge.index) {
        return Ok(false);
    }
    netlink::set_master(port.tap.as_str(), bridge.index)?;
    netlink::set_up(port.tap.as_str())?;
    Ok(true)
}

/// Watches link events for the bridges of `ports`.
pub struct Watcher {
    monitor: LinkMonitor,
    ports: Vec<Port>,
}

impl Watcher {
    pub fn new(ports: Vec<Port>) -> Result<Self, NetlinkError> {
        Ok(Self {
            monitor: LinkMonitor::open()?,
            ports,
        })
    }

    /// Waits up to `timeout` for link events and re-enslaves what needs it. Returns the
    /// ports it put back.
    pub fn step(&mut self, timeout: Duration) -> Vec<Port> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        match wait(&[self.monitor.as_raw_fd()], ms) {
            Ok(_) => self.handle(),
            Err(_) => Vec::new(),
        }
    }

    /// Reads what the monitor has and re-enslaves what needs it. Returns the ports it put
    /// back.
    fn handle(&mut self) -> Vec<Port> {
        let events = self
            .monitor
            .poll_events()
            .unwrap_or_else(|_| vec![LinkEvent::Lost]);
        let relevant = events.iter().any(|e| match e {
            LinkEvent::New(l) => self
                .ports
                .iter()
                .any(|p| p.bridge == l.name || p.tap == l.name),
            LinkEvent::Del(_) => false,
            LinkEvent::Lost => true,
        });
        if !relevant {
            return Vec::new();
        }
        self.ports
            .iter()
            .filter(|p| ensure_enslaved(p).unwrap_or(false))
            .cloned()
            .collect()
    }
}

/// poll(2) for readability on `fds`, `ms` milliseconds at most (-1: no limit); EINTR
/// counts as nothing ready. Returns which fds are readable.
fn wait(fds: &[RawFd], ms: i32) -> std::io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a valid array of pollfd, its length passed with it, alive for
    // the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

/// What the watcher thread has to tell.
#[derive(Debug)]
pub enum Notice {
    /// A bridge came back and the tap was put back on it.
    PutBack(Port),
    /// The watcher could not wait any more and stopped (taps are no longer put back).
    Failed(std::io::Error),
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::PutBack(p) => {
                write!(f, "bridge {} is back; {} put back on it", p.bridge, p.tap)
            }
            Notice::Failed(e) => write!(f, "stopped watching the bridges: {e}"),
        }
    }
}

/// A watcher running on a thread of its own, woken only by link notifications (the
/// netlink monitor) or by [`Running::stop`]. Dropping it stops it and waits for the
/// thread, so that once it is gone no tap is put back on a bridge any more: whatever
/// releases taps must drop it first.
#[derive(Debug)]
pub struct Running {
    /// An eventfd, shared with the thread so that it stays open for as long as the
    /// thread may poll it.
    stop: Arc<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops the watcher and waits until its thread has ended (a step under way finishes
    /// first). Idempotent.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to our eventfd.
        let n = unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        // An eventfd write only fails when its counter would overflow, which one write
        // cannot do; were it to fail anyway, join would hang, so the thread is left be.
        if n == 8 {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the watcher thread runs first, before it touches any socket; an error keeps it
/// from watching and is [`spawn`]'s error. The VMM confines the thread here (its seccomp
/// filter and capabilities).
pub type ThreadStart = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

static THREAD_START: Mutex<Option<ThreadStart>> = Mutex::new(None);

/// Sets (or with None clears) what watcher threads started from now on run first.
pub fn set_thread_start(start: Option<ThreadStart>) {
    *THREAD_START.lock().unwrap_or_else(|e| e.into_inner()) = start;
}

/// Starts a watcher for `ports` on its own thread; `notify` hears what it did. None when
/// there is nothing to watch. Returns once the thread has run its [`ThreadStart`].
pub fn spawn(
    ports: Vec<Port>,
    mut notify: impl FnMut(Notice) + Send + 'static,
) -> Result<Option<Running>, NetlinkError> {
    if ports.is_empty() {
        return Ok(None);
    }
    let mut w = Watcher::new(ports)?;
    // SAFETY: plain eventfd(2); the result is checked before use.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let stop = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
    let stop_here = stop.clone();
    let start = THREAD_START
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (started_tx, started) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("netvmm-bridges".into())
        .spawn(move || {
            let first = start.map_or(Ok(()), |f| f());
            let ok = first.is_ok();
            let _ = started_tx.send(first);
            if ok {
                watch(&mut w, &stop_here, &mut notify);
            }
        })
        .map_err(NetlinkError::Socket)?;
    let started = started
        .recv()
        .unwrap_or_else(|_| Err("the thread ended at once".into()));
    if let Err(reason) = started {
        let _ = thread.join();
        return Err(NetlinkError::BadArgument {
            action: "start the bridge watcher thread".into(),
            reason,
        });
    }
    Ok(Some(Running {
        stop,
        thread: Some(thread),
    }))
}

/// The watcher thread's loop, until `stop` is written or waiting fails.
fn watch(w: &mut Watcher, stop: &OwnedFd, notify: &mut impl FnMut(Notice)) {
    loop {
        match wait(&[stop.as_raw_fd(), w.monitor.as_raw_fd()], -1) {
            Ok(ready) if ready[0] => return,
            Ok(ready) if ready[1] => w
                .handle()
                .into_iter()
                .for_each(|p| notify(Notice::PutBack(p))),
            Ok(_) => {}
            Err(e) => return notify(Notice::Failed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn tap_goes_back_on_a_recreated_bridge() {
        let r = crate::iface::in_new_netns(|| {
            netlink::create_bridge("nvbr0").unwrap();
            let tap = crate::tap::Tap::open(Some("nvport0"), None).unwrap();
            let port = Port {
                tap: tap.name().to_string(),
                bridge: "nvbr0".into(),
            };
            assert!(ensure_enslaved(&port).unwrap(), "first enslave");
            assert!(!ensure_enslaved(&port).unwrap(), "already there");
            let mut w = Watcher::new(vec![port.clone()]).unwrap();
            netlink::delete_link("nvbr0").unwrap();
            let master = netlink::link_info("nvport0").unwrap().unwrap().master;
            assert_eq!(master, None, "the kernel released the port");
            // Nothing to do while the bridge is away.
            assert!(w.step(Duration::from_millis(100)).is_empty());
            let idx = netlink::create_bridge("nvbr0").unwrap();
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut back = Vec::new();
            while back.is_empty() && Instant::now() < deadline {
                back = w.step(Duration::from_millis(200));
            }
            let info = netlink::link_info("nvport0").unwrap().unwrap();
            drop(tap);
            (back, info.master, idx, info.admin_up)
        });
        let Ok((back, master, idx, up)) = r else {
            eprintln!("skipping: no network namespace");
            return;
        };
        assert_eq!(back.len(), 1);
        assert_eq!(master, Some(idx));
        assert!(up);
    }

    #[test]
    fn a_running_watcher_wakes_on_the_notification_and_stops_when_dropped() {
        let r = crate::iface::in_new_netns(|| {
            netlink::create_bridge("nvbr1").unwrap();
            let tap = crate::tap::Tap::open(Some("nvport1"), None).unwrap();
            let port = Port {
                tap: tap.name().to_string(),
                bridge: "nvbr1".into(),
            };
            ensure_enslaved(&port).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let running = spawn(vec![port], move |n| {
                let _ = tx.send(n.to_string());
            })
            .unwrap()
            .expect("a port to watch");
            netlink::delete_link("nvbr1").unwrap();
            let idx = netlink::create_bridge("nvbr1").unwrap();
            // Bounded so that a watcher that never wakes fails instead of hanging.
            let notice = rx.recv_timeout(Duration::from_secs(10));
            let master = netlink::link_info("nvport1").unwrap().unwrap().master;
            drop(running);
            // Joined: the thread, and with it the notifier, is gone.
            let after_stop = rx.try_recv();
            drop(tap);
            let gone = after_stop == Err(std::sync::mpsc::TryRecvError::Disconnected);
            (notice, master, idx, gone)
        });
        let Ok((notice, master, idx, gone)) = r else {
            eprintln!("skipping: no network namespace");
            return;
        };
        assert_eq!(
            notice.unwrap(),
            "bridge nvbr1 is back; nvport1 put back on it"
        );
        assert_eq!(master, Some(idx));
        assert!(gone, "the watcher thread outlived its drop");
    }

    #[test]
    fn nothing_to_watch_starts_no_thread() {
        assert!(spawn(Vec::new(), |_| {}).unwrap().is_none());
    }
}
