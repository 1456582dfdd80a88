//! IPv4 routes through a gateway: `ip route add|del DST/PREFIX via GW`.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::conn::Conn;
use super::error::{NetlinkError, Result};

fn route_message(dst: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = prefix;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    msg.attributes = vec![
        RouteAttribute::Destination(RouteAddress::from(IpAddr::V4(dst))),
        RouteAttribute::Gateway(RouteAddress::from(IpAddr::V4(gateway))),
    ];
    msg
}

fn check_prefix(action: &str, prefix: u8) -> Result<()> {
    if prefix > 32 {
        return Err(NetlinkError::BadArgument {
            action: action.to_string(),
            reason: format!("prefix length {prefix} is over 32"),
        });
    }
    Ok(())
}

/// Routes `dst/prefix` via `gateway` in the main table.
pub fn add_route_v4(dst: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Result<()> {
    let action = format!("add the route {dst}/{prefix} via {gateway}");
    check_prefix(&action, prefix)?;
    Conn::open()?
        .request(
            RouteNetlinkMessage::NewRoute(route_message(dst, prefix, gateway)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(|_| ())
        .map_err(|e| e.into_error(&action, None))
}

/// Removes the route `dst/prefix` via `gateway` from the main table.
pub fn delete_route_v4(dst: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Result<()> {
    let action = format!("delete the route {dst}/{prefix} via {gateway}");
    check_prefix(&action, prefix)?;
    Conn::open()?
        .request(
            RouteNetlinkMessage::DelRoute(route_message(dst, prefix, gateway)),
            0,
        )
        .map(|_| ())
        .map_err(|e| e.into_error(&action, None))
}
