//! IPv4 routes: reading them (what the host already reaches, so that a NAT subnet netvmm
//! picks clashes with none of it, and which interface its default route leaves by), and
//! adding or deleting one through a gateway (`ip route add|del DST/PREFIX via GW`).

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
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

/// One IPv4 route of any table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route4 {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    /// The output interface, when the route has one (multipath routes have several).
    pub oif: Option<u32>,
    pub table: u32,
}

impl Route4 {
    fn from_message(m: &RouteMessage) -> Self {
        let mut r = Route4 {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: m.header.destination_prefix_length,
            oif: None,
            table: u32::from(m.header.table),
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => r.dst = *d,
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Table(t) => r.table = *t,
                _ => {}
            }
        }
        r
    }
}

/// Every IPv4 route in every table (`ip -4 route show table all`).
pub fn ipv4_routes() -> Result<Vec<Route4>> {
    let action = "list the IPv4 routes";
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    let mut conn = Conn::open()?;
    let replies = conn
        .request(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)
        .map_err(|e| e.into_error(action, None))?;
    Ok(replies
        .iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewRoute(m) if m.header.address_family == AddressFamily::Inet => {
                Some(Route4::from_message(m))
            }
            _ => None,
        })
        .collect())
}

/// The main table's IPv4 default route's output interface, if there is such a route.
pub fn default_route_oif(routes: &[Route4]) -> Option<u32> {
    routes
        .iter()
        .find(|r| {
            r.prefix == 0 && r.table == u32::from(RouteHeader::RT_TABLE_MAIN) && r.oif.is_some()
        })
        .and_then(|r| r.oif)
}
