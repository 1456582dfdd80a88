//! A small, synchronous rtnetlink layer: look links up, create bridges, veth pairs,
//! macvtaps and macvlans, enslave and release ports, set links up, mark them with an
//! ifalias, give them IPv4 addresses, delete them, and watch link events.
//!
//! Everything goes through `NETLINK_ROUTE` (netlink-packet-route + netlink-sys); nothing
//! runs ip(8). Each call opens its own socket, so it acts on the network namespace of the
//! calling thread (tests move one thread into a fresh namespace and rely on that).
//!
//! Devices are named by a [`LinkRef`]: a name (`"br0"`) or an index (`7u32`). Every error
//! says what was attempted and on which object, e.g. `cannot enslave nvtap0 to br0: no
//! interface named br0`, and adds the kernel's extended-ack text when it gave one.
//!
//! By concern: `conn` (the socket, one request and its ACK), `error`, `links`, `addresses`,
//! `macvlan` (macvtaps and macvlans), `monitor` (link notifications), `routes` (read,
//! add and delete), `neighbours` (the ARP table), `ports` (hairpin, moving a link to a
//! namespace), `tc` (ingress qdiscs and redirect filters) and `nftables` (list and delete
//! tables, over NETLINK_NETFILTER); everything public
//! is re-exported here, so callers name `netlink::set_up` as before.

mod addresses;
mod conn;
mod error;
mod links;
mod macvlan;
mod monitor;
mod neighbours;
mod nftables;
mod ports;
mod routes;
mod tc;

use std::fmt;

pub use crate::names::valid_ifname;
pub use addresses::{add_address, add_ipv4, addresses, delete_address, ipv4_addrs, LinkAddress};
pub use error::{NetlinkError, Result};
pub use links::{
    bridges, create_bridge, create_veth, delete_link, link_index, link_info, list_links, set_alias,
    set_down, set_master, set_mtu, set_nomaster, set_up, CreatedLink, LinkInfo,
};
pub use macvlan::{create_macvlan, create_macvtap, MacvtapMode};
pub use monitor::{LinkEvent, LinkMonitor};
pub use neighbours::{flush_neighbours, neighbours, Neighbour};
pub use nftables::{delete_table, list_tables, NFPROTO_IPV4};
pub use ports::{move_to_netns, set_hairpin};
pub use routes::{add_route_v4, default_route_oif, delete_route_v4, ipv4_routes, Route4};
pub use tc::{
    add_ingress_qdisc, add_redirect, delete_ingress_qdisc, ingress_qdisc, ingress_qdiscs,
    ingress_redirects, FilterKind, Redirect,
};

/// A link named by its name or its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRef<'a> {
    Name(&'a str),
    Index(u32),
}

impl<'a> From<&'a str> for LinkRef<'a> {
    fn from(n: &'a str) -> Self {
        LinkRef::Name(n)
    }
}

impl<'a> From<&'a String> for LinkRef<'a> {
    fn from(n: &'a String) -> Self {
        LinkRef::Name(n)
    }
}

impl From<u32> for LinkRef<'_> {
    fn from(i: u32) -> Self {
        LinkRef::Index(i)
    }
}

impl fmt::Display for LinkRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkRef::Name(n) => f.write_str(n),
            LinkRef::Index(i) => write!(f, "ifindex {i}"),
        }
    }
}

fn check_name(action: &str, name: &str) -> Result<()> {
    if valid_ifname(name) {
        Ok(())
    } else {
        Err(NetlinkError::BadName {
            action: action.to_string(),
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
