//! The IPv4 neighbour (ARP) table: list it, and flush what the kernel learnt
//! (`ip neigh flush all`: every entry but permanent and NOARP ones).

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::conn::Conn;
use super::error::Result;

/// One IPv4 neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    /// The kernel's state name: "reachable", "stale", "failed", "incomplete", ...
    pub state: String,
    pub permanent: bool,
}

fn dump(conn: &mut Conn) -> Result<Vec<(Neighbour, NeighbourMessage)>> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet;
    let replies = conn
        .request(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_DUMP)
        .map_err(|e| e.into_error("list the neighbour table", None))?;
    Ok(replies
        .into_iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewNeighbour(m) => Some(m),
            _ => None,
        })
        .filter_map(|m| {
            let addr = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            })?;
            let state = m.header.state;
            let n = Neighbour {
                ifindex: m.header.ifindex,
                addr,
                state: state.to_string(),
                permanent: matches!(state, NeighbourState::Permanent | NeighbourState::Noarp),
            };
            Some((n, m))
        })
        .collect())
}

/// The IPv4 neighbour entries of the calling thread's namespace.
pub fn neighbours() -> Result<Vec<Neighbour>> {
    Ok(dump(&mut Conn::open()?)?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// Deletes every learnt IPv4 neighbour entry; returns how many went. An entry that
/// vanished between the listing and its deletion is not an error.
pub fn flush_neighbours() -> Result<usize> {
    let mut conn = Conn::open()?;
    let mut gone = 0;
    for (n, m) in dump(&mut conn)? {
        if n.permanent {
            continue;
        }
        let action = format!("delete the neighbour entry of {}", IpAddr::V4(n.addr));
        match conn.request(RouteNetlinkMessage::DelNeighbour(m), 0) {
            Ok(_) => gone += 1,
            Err(e) if e.errno() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e.into_error(&action, None)),
        }
    }
    Ok(gone)
}
