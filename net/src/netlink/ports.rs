//! A link's place in the world: hairpin on a bridge port, and moving it to another
//! network namespace.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_route::link::{
    InfoBridgePort, InfoPortData, InfoPortKind, LinkAttribute, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::conn::Conn;
use super::error::Result;
use super::LinkRef;

/// Hairpin mode of bridge port `dev` (`bridge link set dev DEV hairpin on|off`): frames may
/// leave by the port they came in on, as a VEPA switch does.
pub fn set_hairpin<'a>(dev: impl Into<LinkRef<'a>>, on: bool) -> Result<()> {
    let dev = dev.into();
    let action = format!("turn hairpin {} on {dev}", if on { "on" } else { "off" });
    let mut conn = Conn::open()?;
    let index = conn.index_for(&action, dev)?;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    // Port data is applied by RTM_NEWLINK on an existing link (the kernel's
    // slave_changelink), not by RTM_SETLINK.
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        NlLinkInfo::PortKind(InfoPortKind::Bridge),
        NlLinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
            on,
        )])),
    ]));
    conn.request(RouteNetlinkMessage::NewLink(msg), 0)
        .map(|_| ())
        .map_err(|e| e.into_error(&action, Some(dev)))
}

/// Moves `dev` into the network namespace `netns` (an nsfs file descriptor), as
/// `ip link set DEV netns NAME` does.
pub fn move_to_netns<'a>(dev: impl Into<LinkRef<'a>>, netns: BorrowedFd<'_>) -> Result<()> {
    let dev = dev.into();
    let action = format!("move {dev} to another network namespace");
    Conn::open()?
        .set_link(dev, None, vec![LinkAttribute::NetNsFd(netns.as_raw_fd())])
        .map_err(|e| e.into_error(&action, Some(dev)))
}
