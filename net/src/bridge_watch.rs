//! Keeping a guest's tap on its bridge when the bridge is deleted and created again while
//! the VM runs (a network restart on the host): the kernel releases the port when the
//! bridge goes, and nothing puts it back, so without this the guest stays cut off.

use std::os::fd::{AsRawFd, RawFd};
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

/// Watches link events for the bridges of `ports`. It runs in its owner's event loop (the
/// VMM's, through [`AsRawFd`] and [`Watcher::on_readable`]), never on a thread of its own:
/// once that loop has ended nothing re-enslaves a tap, so releasing taps after it is safe.
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
            Ok(_) => self.on_readable(),
            Err(_) => Vec::new(),
        }
    }

    /// Reads what the monitor has (call it when [`AsRawFd::as_raw_fd`] is readable) and
    /// re-enslaves what needs it. Returns the ports it put back.
    pub fn on_readable(&mut self) -> Vec<Port> {
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

impl AsRawFd for Watcher {
    fn as_raw_fd(&self) -> RawFd {
        self.monitor.as_raw_fd()
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

impl std::fmt::Display for Port {
    /// What the user hears when the port was put back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bridge {} is back; {} put back on it",
            self.bridge, self.tap
        )
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
    fn the_monitor_fd_wakes_a_poller_and_the_port_says_what_happened() {
        let r = crate::iface::in_new_netns(|| {
            netlink::create_bridge("nvbr1").unwrap();
            let tap = crate::tap::Tap::open(Some("nvport1"), None).unwrap();
            let port = Port {
                tap: tap.name().to_string(),
                bridge: "nvbr1".into(),
            };
            ensure_enslaved(&port).unwrap();
            let mut w = Watcher::new(vec![port]).unwrap();
            netlink::delete_link("nvbr1").unwrap();
            let idx = netlink::create_bridge("nvbr1").unwrap();
            // As an event loop does: wait on the fd (bounded), then handle.
            let mut back = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while back.is_empty() && Instant::now() < deadline {
                if wait(&[w.as_raw_fd()], 1000).unwrap()[0] {
                    back = w.on_readable();
                }
            }
            let master = netlink::link_info("nvport1").unwrap().unwrap().master;
            drop(tap);
            (back, master, idx)
        });
        let Ok((back, master, idx)) = r else {
            eprintln!("skipping: no network namespace");
            return;
        };
        assert_eq!(back.len(), 1);
        assert_eq!(
            back[0].to_string(),
            "bridge nvbr1 is back; nvport1 put back on it"
        );
        assert_eq!(master, Some(idx));
    }
}
