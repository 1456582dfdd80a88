//! IPv4 and IPv6 addresses of links: add, list, move whole, remove.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::conn::Conn;
use super::error::{NetlinkError, Result};
use super::LinkRef;

/// Gives `dev` the address `addr/prefix`: `ip addr add ADDR/PREFIX brd + dev DEV`.
pub fn add_ipv4<'a>(dev: impl Into<LinkRef<'a>>, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    let dev = dev.into();
    let action = format!("give {dev} the address {addr}/{prefix}");
    if prefix > 32 {
        return Err(NetlinkError::BadArgument {
            action,
            reason: format!("prefix length {prefix} is over 32"),
        });
    }
    let mut conn = Conn::open()?;
    let index = conn.index_for(&action, dev)?;
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.attributes = vec![
        AddressAttribute::Local(IpAddr::V4(addr)),
        AddressAttribute::Address(IpAddr::V4(addr)),
    ];
    // As SIOCSIFADDR and `ip addr add ... brd +` do; /31 and /32 have no broadcast.
    if prefix <= 30 {
        let host_bits = u32::MAX >> prefix;
        let brd = Ipv4Addr::from(u32::from(addr) | host_bits);
        msg.attributes.push(AddressAttribute::Broadcast(brd));
    }
    conn.request(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map(|_| ())
    .map_err(|e| e.into_error(&action, Some(dev)))
}

/// The IPv4 addresses of `dev`, with their prefix lengths.
pub fn ipv4_addrs<'a>(dev: impl Into<LinkRef<'a>>) -> Result<Vec<(Ipv4Addr, u8)>> {
    let dev = dev.into();
    let action = format!("list the addresses of {dev}");
    let mut conn = Conn::open()?;
    let index = conn.index_for(&action, dev)?;
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    let replies = conn
        .request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)
        .map_err(|e| e.into_error(&action, Some(dev)))?;
    let mut out = Vec::new();
    for r in replies {
        let RouteNetlinkMessage::NewAddress(m) = r else {
            continue;
        };
        if m.header.index != index {
            continue;
        }
        let local = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
            _ => None,
        });
        let address = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(a)) => Some(*a),
            _ => None,
        });
        if let Some(a) = local.or(address) {
            out.push((a, m.header.prefix_len));
        }
    }
    Ok(out)
}

/// One address of a link as the kernel reported it, kept whole (prefix, broadcast, label,
/// scope, flags, lifetimes) so that [`add_address`] can put it back the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddress(AddressMessage);

impl LinkAddress {
    /// The address itself (IFA_LOCAL where there is one: IFA_ADDRESS is the peer then).
    pub fn addr(&self) -> Option<IpAddr> {
        let find = |want_local: bool| {
            self.0.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(a) if want_local => Some(*a),
                AddressAttribute::Address(a) if !want_local => Some(*a),
                _ => None,
            })
        };
        find(true).or_else(|| find(false))
    }

    pub fn prefix(&self) -> u8 {
        self.0.header.prefix_len
    }

    /// The IPv4 broadcast address (IFA_BROADCAST), if the address has one.
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        self.0.attributes.iter().find_map(|a| match a {
            AddressAttribute::Broadcast(b) => Some(*b),
            _ => None,
        })
    }

    /// Whether `other` is the same address (the same address and prefix): what the kernel
    /// would refuse to add twice.
    pub fn same_as(&self, other: &LinkAddress) -> bool {
        self.addr() == other.addr() && self.prefix() == other.prefix()
    }

    /// The message for `dev` (`index`): the kernel's reply, readdressed.
    fn for_link(&self, index: u32) -> AddressMessage {
        let mut msg = self.0.clone();
        msg.header.index = index;
        msg
    }
}

impl fmt::Display for LinkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr() {
            Some(a) => write!(f, "{a}/{}", self.prefix()),
            None => write!(f, "?/{}", self.prefix()),
        }
    }
}

/// Every address of `dev`, IPv4 and IPv6, in the kernel's order (IPv4 primaries first).
pub fn addresses<'a>(dev: impl Into<LinkRef<'a>>) -> Result<Vec<LinkAddress>> {
    let dev = dev.into();
    let action = format!("list the addresses of {dev}");
    let mut conn = Conn::open()?;
    let index = conn.index_for(&action, dev)?;
    let replies = conn
        .request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )
        .map_err(|e| e.into_error(&action, Some(dev)))?;
    Ok(replies
        .into_iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewAddress(m) if m.header.index == index => Some(LinkAddress(m)),
            _ => None,
        })
        .collect())
}

/// Gives `dev` an address listed by [`addresses`] (from it or another link), replacing
/// the same address if it is there.
pub fn add_address<'a>(dev: impl Into<LinkRef<'a>>, addr: &LinkAddress) -> Result<()> {
    let dev = dev.into();
    let action = format!("give {dev} the address {addr}");
    let mut conn = Conn::open()?;
    let index = conn.index_for(&action, dev)?;
    conn.request(
        RouteNetlinkMessage::NewAddress(addr.for_link(index)),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(|_| ())
    .map_err(|e| e.into_error(&action, Some(dev)))
}

/// Removes an address listed by [`addresses`] from `dev`: `ip addr del ADDR dev DEV`.
pub fn delete_address<'a>(dev: impl Into<LinkRef<'a>>, addr: &LinkAddress) -> Result<()> {
    let dev = dev.into();
    let action = format!("remove the address {addr} from {dev}");
    let mut conn = Conn::open()?;
    let index = conn.index_for(&action, dev)?;
    conn.request(RouteNetlinkMessage::DelAddress(addr.for_link(index)), 0)
        .map(|_| ())
        .map_err(|e| e.into_error(&action, Some(dev)))
}
