//! Link notifications (RTMGRP_LINK) for an epoll loop.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::conn::split_datagram;
use super::error::{NetlinkError, Result};
use super::links::LinkInfo;
#[cfg(doc)]
use super::{link_info, list_links};

/// `RTMGRP_LINK` from <linux/rtnetlink.h>: the multicast group of link notifications.
const RTMGRP_LINK: u32 = 1;

/// One link notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// RTM_NEWLINK: a link appeared or changed (flags, master, name, ...); carries the
    /// link's whole new state.
    New(LinkInfo),
    /// RTM_DELLINK: the link is gone.
    Del(LinkInfo),
    /// The kernel dropped notifications (the socket's buffer overflowed): re-read the
    /// state with [`list_links`].
    Lost,
}

/// A NETLINK_ROUTE socket subscribed to link notifications (RTMGRP_LINK), non-blocking,
/// for an epoll loop: wait for its fd to be readable, then call [`poll_events`].
///
/// Only AF_UNSPEC messages are reported: the bridge also sends AF_BRIDGE RTM_NEWLINK /
/// RTM_DELLINK about its ports joining and leaving, which are not link creations or
/// deletions (a port leaving a bridge shows up as `New` with `master == None`).
///
/// [`poll_events`]: LinkMonitor::poll_events
pub struct LinkMonitor {
    sock: Socket,
}

impl LinkMonitor {
    /// Subscribes to the link notifications of the calling thread's network namespace.
    /// To start from a known state without a gap, open the monitor first, then read the
    /// current links with [`list_links`] / [`link_info`].
    pub fn open() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind(&SocketAddr::new(0, RTMGRP_LINK))
            .map_err(NetlinkError::Socket)?;
        sock.set_non_blocking(true).map_err(NetlinkError::Socket)?;
        // Best effort (capped by net.core.rmem_max): fewer lost bursts, e.g. when a bridge
        // with many ports goes away. Losses are reported as LinkEvent::Lost anyway.
        let _ = sock.set_rx_buf_sz(1 << 20 as libc::c_int);
        Ok(LinkMonitor { sock })
    }

    /// Every notification that has arrived, without blocking (empty if none).
    pub fn poll_events(&mut self) -> Result<Vec<LinkEvent>> {
        let action = "read link notifications";
        let mut events = Vec::new();
        loop {
            let data = match self.sock.recv_from_full() {
                Ok((data, _)) => data,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(events),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    events.push(LinkEvent::Lost);
                    continue;
                }
                Err(source) => {
                    return Err(NetlinkError::Kernel {
                        action: action.into(),
                        source,
                        extack: None,
                    })
                }
            };
            // A truncated tail is dropped: the messages before it still count.
            for chunk in split_datagram(&data).0 {
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(chunk).map_err(|e| {
                        NetlinkError::Protocol {
                            action: action.into(),
                            reason: e.to_string(),
                        }
                    })?;
                match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m))
                        if m.header.interface_family == AddressFamily::Unspec =>
                    {
                        events.push(LinkEvent::New(LinkInfo::from_message(&m)))
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m))
                        if m.header.interface_family == AddressFamily::Unspec =>
                    {
                        events.push(LinkEvent::Del(LinkInfo::from_message(&m)))
                    }
                    NetlinkPayload::Overrun(_) => events.push(LinkEvent::Lost),
                    _ => {}
                }
            }
        }
    }
}

impl AsRawFd for LinkMonitor {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for LinkMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl fmt::Debug for LinkMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkMonitor")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}
