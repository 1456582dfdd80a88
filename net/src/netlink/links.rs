//! Links: look them up, create bridges and veth pairs, enslave and release ports, set them
//! up or down, mark them with an ifalias, delete them.

use std::io;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoMacVtap, InfoVeth, LinkAttribute, LinkFlags,
    LinkInfo as NlLinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::conn::Conn;
use super::error::{NetlinkError, ReqError, Result};
use super::{check_name, valid_ifname, LinkRef, MacvtapMode};
use crate::mac::MacAddr;

/// What netvmm needs to know about one link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// The rtnetlink kind ("bridge", "macvtap", "macvlan", "veth", "tun", ...); None for
    /// links without one (loopback, most physical NICs).
    pub kind: Option<String>,
    /// The index of the bridge (or bond, ...) this link is a port of.
    pub master: Option<u32>,
    /// IFLA_LINK: the parent of a macvtap/macvlan/vlan, or the peer of a veth.
    pub parent: Option<u32>,
    /// IFF_UP: administratively up.
    pub admin_up: bool,
    /// IFF_RUNNING: operationally up (RFC 2863 "up" or "unknown").
    pub oper_up: bool,
    /// An Ethernet link (ARPHRD_ETHER, not loopback): only those can carry a macvtap.
    pub ethernet: bool,
    pub mac: Option<MacAddr>,
    /// The ifalias, if one is set.
    pub alias: Option<String>,
    /// The mode of a macvtap or macvlan.
    pub macvlan_mode: Option<MacvtapMode>,
    pub mtu: Option<u32>,
}

impl LinkInfo {
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }

    pub(super) fn from_message(msg: &LinkMessage) -> Self {
        let flags = msg.header.flags;
        let mut info = LinkInfo {
            index: msg.header.index,
            admin_up: flags.contains(LinkFlags::Up),
            oper_up: flags.contains(LinkFlags::Running),
            ethernet: msg.header.link_layer_type == LinkLayerType::Ether
                && !flags.contains(LinkFlags::Loopback),
            ..Default::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Controller(m) => info.master = (*m != 0).then_some(*m),
                LinkAttribute::Link(l) => info.parent = (*l != 0).then_some(*l),
                LinkAttribute::Address(a) => {
                    info.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(MacAddr)
                }
                LinkAttribute::IfAlias(a) if !a.is_empty() => info.alias = Some(a.clone()),
                LinkAttribute::Mtu(m) => info.mtu = Some(*m),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            NlLinkInfo::Kind(k) => info.kind = Some(k.to_string()),
                            NlLinkInfo::Data(InfoData::MacVtap(d)) => {
                                for x in d {
                                    if let InfoMacVtap::Mode(m) = x {
                                        info.macvlan_mode = MacvtapMode::from_nl(*m);
                                    }
                                }
                            }
                            NlLinkInfo::Data(InfoData::MacVlan(d)) => {
                                for x in d {
                                    if let InfoMacVlan::Mode(m) = x {
                                        info.macvlan_mode = MacvtapMode::from_nl(*m);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        info
    }
}

/// A link netvmm just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedLink {
    pub name: String,
    pub index: u32,
}

impl Conn {
    pub(super) fn get_link(
        &mut self,
        dev: LinkRef,
    ) -> std::result::Result<Option<LinkInfo>, ReqError> {
        let mut msg = LinkMessage::default();
        match dev {
            LinkRef::Index(i) => msg.header.index = i,
            LinkRef::Name(n) => {
                if !valid_ifname(n) {
                    return Ok(None);
                }
                msg.attributes.push(LinkAttribute::IfName(n.to_string()));
            }
        }
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(LinkInfo::from_message(m)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) fn dump_links(&mut self) -> std::result::Result<Vec<LinkInfo>, ReqError> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(LinkInfo::from_message(m)),
                _ => None,
            })
            .collect())
    }

    /// The link's name for messages, falling back to how it was named.
    pub(super) fn describe(&mut self, dev: LinkRef) -> String {
        match dev {
            LinkRef::Name(n) => n.to_string(),
            LinkRef::Index(_) => match self.get_link(dev) {
                Ok(Some(l)) => l.name,
                _ => dev.to_string(),
            },
        }
    }

    /// RTM_SETLINK on `dev` with the given header flags change and attributes.
    pub(super) fn set_link(
        &mut self,
        dev: LinkRef,
        flags: Option<(LinkFlags, LinkFlags)>,
        attrs: Vec<LinkAttribute>,
    ) -> std::result::Result<(), ReqError> {
        let mut msg = LinkMessage::default();
        match dev {
            LinkRef::Index(i) => msg.header.index = i,
            // A name the kernel would refuse (EINVAL) cannot exist either.
            LinkRef::Name(n) if !valid_ifname(n) => {
                return Err(ReqError::Os(
                    io::Error::from_raw_os_error(libc::ENODEV),
                    None,
                ))
            }
            LinkRef::Name(n) => msg.attributes.push(LinkAttribute::IfName(n.to_string())),
        }
        if let Some((value, mask)) = flags {
            msg.header.flags = value;
            msg.header.change_mask = mask;
        }
        msg.attributes.extend(attrs);
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map(|_| ())
    }

    pub(super) fn new_link(&mut self, msg: LinkMessage) -> std::result::Result<(), ReqError> {
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(|_| ())
    }

    pub(super) fn index_for(&mut self, action: &str, dev: LinkRef) -> Result<u32> {
        match dev {
            LinkRef::Index(i) => Ok(i),
            LinkRef::Name(n) => {
                check_name(action, n)?;
                match self.get_link(dev) {
                    Ok(Some(l)) => Ok(l.index),
                    Ok(None) => Err(NetlinkError::NoSuchDevice {
                        action: action.to_string(),
                        name: n.to_string(),
                    }),
                    Err(e) => Err(e.into_error(action, Some(dev))),
                }
            }
        }
    }
}

/// The index of the link called `name`, if it exists.
pub fn link_index(name: &str) -> Result<Option<u32>> {
    Ok(link_info(name)?.map(|l| l.index))
}

/// What is known of `dev`, or None if it does not exist.
pub fn link_info<'a>(dev: impl Into<LinkRef<'a>>) -> Result<Option<LinkInfo>> {
    let dev = dev.into();
    Conn::open()?
        .get_link(dev)
        .map_err(|e| e.into_error(&format!("look up {dev}"), None))
}

/// Every link in the calling thread's network namespace.
pub fn list_links() -> Result<Vec<LinkInfo>> {
    Conn::open()?
        .dump_links()
        .map_err(|e| e.into_error("list the network interfaces", None))
}

/// The names of the bridges that exist (for errors that must list them).
pub fn bridges() -> Result<Vec<String>> {
    Ok(list_links()?
        .into_iter()
        .filter(LinkInfo::is_bridge)
        .map(|l| l.name)
        .collect())
}

/// Makes `dev` a port of `master` (a bridge): `ip link set DEV master MASTER`.
pub fn set_master<'a, 'b>(
    dev: impl Into<LinkRef<'a>>,
    master: impl Into<LinkRef<'b>>,
) -> Result<()> {
    let (dev, master) = (dev.into(), master.into());
    let mut conn = Conn::open()?;
    let dev_name = conn.describe(dev);
    let master_info = conn
        .get_link(master)
        .map_err(|e| e.into_error(&format!("enslave {dev_name} to {master}"), None))?;
    let Some(master_info) = master_info else {
        return Err(NetlinkError::NoSuchDevice {
            action: format!("enslave {dev_name} to {master}"),
            name: master.to_string(),
        });
    };
    let action = format!("enslave {dev_name} to {}", master_info.name);
    conn.set_link(
        dev,
        None,
        vec![LinkAttribute::Controller(master_info.index)],
    )
    .map_err(|e| {
        if e.errno() == Some(libc::EOPNOTSUPP) {
            if let Some(kind) = master_info.kind.clone().filter(|k| k != "bridge") {
                return NetlinkError::NotAMaster {
                    action: action.clone(),
                    master: master_info.name.clone(),
                    kind,
                };
            }
        }
        e.into_error(&action, Some(dev))
    })
}

/// Releases `dev` from its bridge, if it has one: `ip link set DEV nomaster`.
pub fn set_nomaster<'a>(dev: impl Into<LinkRef<'a>>) -> Result<()> {
    let dev = dev.into();
    let mut conn = Conn::open()?;
    let action = format!("release {dev} from its bridge");
    conn.set_link(dev, None, vec![LinkAttribute::Controller(0)])
        .map_err(|e| e.into_error(&action, Some(dev)))
}

/// Brings `dev` up (IFF_UP).
pub fn set_up<'a>(dev: impl Into<LinkRef<'a>>) -> Result<()> {
    let dev = dev.into();
    Conn::open()?
        .set_link(dev, Some((LinkFlags::Up, LinkFlags::Up)), vec![])
        .map_err(|e| e.into_error(&format!("bring {dev} up"), Some(dev)))
}

/// Sets the MTU of `dev`.
pub fn set_mtu<'a>(dev: impl Into<LinkRef<'a>>, mtu: u32) -> Result<()> {
    let dev = dev.into();
    Conn::open()?
        .set_link(dev, None, vec![LinkAttribute::Mtu(mtu)])
        .map_err(|e| e.into_error(&format!("set the MTU of {dev} to {mtu}"), Some(dev)))
}

/// Takes `dev` down (clears IFF_UP).
pub fn set_down<'a>(dev: impl Into<LinkRef<'a>>) -> Result<()> {
    let dev = dev.into();
    Conn::open()?
        .set_link(dev, Some((LinkFlags::empty(), LinkFlags::Up)), vec![])
        .map_err(|e| e.into_error(&format!("take {dev} down"), Some(dev)))
}

/// Sets the ifalias of `dev` (netvmm marks its own interfaces with "netvmm pid=N");
/// an empty alias removes it.
pub fn set_alias<'a>(dev: impl Into<LinkRef<'a>>, alias: &str) -> Result<()> {
    let dev = dev.into();
    let action = format!("set the alias of {dev} to '{alias}'");
    if alias.len() >= 256 {
        return Err(NetlinkError::BadArgument {
            action,
            reason: "an ifalias holds at most 255 bytes".into(),
        });
    }
    Conn::open()?
        .set_link(dev, None, vec![LinkAttribute::IfAlias(alias.to_string())])
        .map_err(|e| e.into_error(&action, Some(dev)))
}

/// Deletes `dev`: `ip link del DEV`.
pub fn delete_link<'a>(dev: impl Into<LinkRef<'a>>) -> Result<()> {
    let dev = dev.into();
    let mut msg = LinkMessage::default();
    match dev {
        LinkRef::Index(i) => msg.header.index = i,
        LinkRef::Name(n) => {
            check_name(&format!("delete {dev}"), n)?;
            msg.attributes.push(LinkAttribute::IfName(n.to_string()));
        }
    }
    Conn::open()?
        .request(RouteNetlinkMessage::DelLink(msg), 0)
        .map(|_| ())
        .map_err(|e| e.into_error(&format!("delete {dev}"), Some(dev)))
}

pub(super) fn base_new_link(
    name: &str,
    mac: Option<MacAddr>,
    kind: InfoKind,
    data: Option<InfoData>,
) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    if let Some(mac) = mac {
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    let mut info = vec![NlLinkInfo::Kind(kind)];
    info.extend(data.map(NlLinkInfo::Data));
    msg.attributes.push(LinkAttribute::LinkInfo(info));
    msg
}

pub(super) fn created(conn: &mut Conn, action: &str, name: &str) -> Result<CreatedLink> {
    let index = conn.index_for(action, LinkRef::Name(name))?;
    Ok(CreatedLink {
        name: name.to_string(),
        index,
    })
}

/// Creates the bridge `name` (down, no ports) and returns its index.
pub fn create_bridge(name: &str) -> Result<u32> {
    let action = format!("create bridge {name}");
    check_name(&action, name)?;
    let mut conn = Conn::open()?;
    conn.new_link(base_new_link(name, None, InfoKind::Bridge, None))
        .map_err(|e| e.into_error(&action, None))?;
    Ok(created(&mut conn, &action, name)?.index)
}

/// Creates the veth pair `a` <-> `b` (both down) and returns their indices.
pub fn create_veth(a: &str, b: &str) -> Result<(u32, u32)> {
    let action = format!("create veth pair {a} <-> {b}");
    check_name(&action, a)?;
    check_name(&action, b)?;
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName(b.to_string()));
    let mut conn = Conn::open()?;
    conn.new_link(base_new_link(
        a,
        None,
        InfoKind::Veth,
        Some(InfoData::Veth(InfoVeth::Peer(peer))),
    ))
    .map_err(|e| e.into_error(&action, None))?;
    let ia = created(&mut conn, &action, a)?.index;
    let ib = created(&mut conn, &action, b)?.index;
    Ok((ia, ib))
}
