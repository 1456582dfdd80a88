//! Keeping a guest's tap on its bridge when the bridge is deleted and created again while
//! the VM runs (a network restart on the host): the kernel releases the port when the
//! bridge goes, and nothing puts it back, so without this the guest stays cut off.

use std::os::fd::AsRawFd;
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
        let mut pfd = libc::pollfd {
            fd: self.monitor.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
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

/// Runs a watcher on its own thread for the life of the process, telling the user on
/// stderr when it puts a tap back.
pub fn spawn(ports: Vec<Port>) -> Result<(), NetlinkError> {
    if ports.is_empty() {
        return Ok(());
    }
    let mut w = Watcher::new(ports)?;
    let spawned = std::thread::Builder::new()
        .name("netvmm-bridges".into())
        .spawn(move || loop {
            for p in w.step(Duration::from_secs(1)) {
                eprintln!(
                    "netvmm: bridge {} is back; {} put back on it",
                    p.bridge, p.tap
                );
            }
        });
    spawned.map(|_| ()).map_err(NetlinkError::Socket)
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
}
