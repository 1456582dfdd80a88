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

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::str::FromStr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK, NLM_F_ACK_TLVS,
    NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoMacVtap, InfoVeth, LinkAttribute, LinkFlags,
    LinkInfo as NlLinkInfo, LinkLayerType, LinkMessage, MacVlanMode,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::mac::MacAddr;

/// `RTMGRP_LINK` from <linux/rtnetlink.h>: the multicast group of link notifications.
const RTMGRP_LINK: u32 = 1;
/// `NLMSGERR_ATTR_MSG` from <linux/netlink.h>: the extended-ack text attribute.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Length of a `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// What went wrong, always naming the action and the object it was attempted on.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a NETLINK_ROUTE socket: {0}")]
    Socket(#[source] io::Error),
    /// `name` is the interface's name, or "ifindex N" when it was named by index.
    #[error("cannot {action}: {}", no_interface(.name))]
    NoSuchDevice { action: String, name: String },
    #[error(
        "cannot {action}: '{}' is not a valid interface name (1 to 15 bytes, \
         no '/', ':', whitespace or control characters)", crate::spec::printable(.name)
    )]
    BadName { action: String, name: String },
    #[error("cannot {action}: {reason}")]
    BadArgument { action: String, reason: String },
    #[error("cannot {action}: {source}{}", kernel_says(.extack))]
    Kernel {
        action: String,
        #[source]
        source: io::Error,
        /// The kernel's extended-ack message, when it gave one.
        extack: Option<String>,
    },
    #[error("cannot {action}: {master} is a {kind}, which cannot take ports (bridges can)")]
    NotAMaster {
        action: String,
        master: String,
        kind: String,
    },
    #[error(
        "cannot {action}: {parent} already carries {users}; a passthru macvtap/macvlan \
         takes its parent for itself alone"
    )]
    PassthruBusy {
        action: String,
        parent: String,
        users: String,
    },
    #[error("cannot {action}: {parent} cannot carry a macvtap/macvlan: {reason}")]
    ParentUnfit {
        action: String,
        parent: String,
        reason: String,
    },
    #[error("cannot {action}: every name from the template {template} is taken")]
    NoFreeName { action: String, template: String },
    #[error("cannot {action}: unexpected netlink reply: {reason}")]
    Protocol { action: String, reason: String },
}

fn no_interface(name: &str) -> String {
    // Interface names hold no whitespace, so "ifindex N" can only be an index.
    if name.starts_with("ifindex ") {
        format!("no interface with {name}")
    } else {
        format!("no interface named {name}")
    }
}

fn kernel_says(extack: &Option<String>) -> String {
    match extack {
        Some(m) => format!(" (kernel: {m})"),
        None => String::new(),
    }
}

impl NetlinkError {
    /// The errno behind this error, if the kernel (or a socket call) returned one.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            Self::Socket(e) | Self::Kernel { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the object acted on does not exist.
    pub fn is_no_such_device(&self) -> bool {
        matches!(self, Self::NoSuchDevice { .. }) || self.os_error() == Some(libc::ENODEV)
    }

    /// Whether the caller lacks CAP_NET_ADMIN (in the namespace's owning user namespace).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self.os_error(), Some(libc::EPERM) | Some(libc::EACCES))
    }
}

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

/// The macvtap/macvlan modes netvmm offers (the kernel's `source` mode is left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacvtapMode {
    /// Endpoints on the same parent talk directly; frames to the outside leave the parent.
    Bridge,
    /// Every frame leaves through the parent; a hairpinning switch may send it back.
    Vepa,
    /// Like VEPA, but frames coming back from the switch to a sibling are dropped.
    Private,
    /// One endpoint takes over the parent (and its MAC address) alone.
    Passthru,
}

impl MacvtapMode {
    pub const ALL: [MacvtapMode; 4] = [
        MacvtapMode::Bridge,
        MacvtapMode::Vepa,
        MacvtapMode::Private,
        MacvtapMode::Passthru,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MacvtapMode::Bridge => "bridge",
            MacvtapMode::Vepa => "vepa",
            MacvtapMode::Private => "private",
            MacvtapMode::Passthru => "passthru",
        }
    }

    fn to_nl(self) -> MacVlanMode {
        match self {
            MacvtapMode::Bridge => MacVlanMode::Bridge,
            MacvtapMode::Vepa => MacVlanMode::Vepa,
            MacvtapMode::Private => MacVlanMode::Private,
            MacvtapMode::Passthru => MacVlanMode::Passthrough,
        }
    }

    fn from_nl(m: MacVlanMode) -> Option<Self> {
        match m {
            MacVlanMode::Bridge => Some(MacvtapMode::Bridge),
            MacVlanMode::Vepa => Some(MacvtapMode::Vepa),
            MacVlanMode::Private => Some(MacvtapMode::Private),
            MacVlanMode::Passthrough => Some(MacvtapMode::Passthru),
            _ => None,
        }
    }
}

impl fmt::Display for MacvtapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MacvtapMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        MacvtapMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("'{s}' is not a macvtap mode (modes: bridge, vepa, private, passthru)")
            })
    }
}

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
}

impl LinkInfo {
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }

    fn from_message(msg: &LinkMessage) -> Self {
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

/// Whether `name` passes [`crate::spec::check_ifname`].
pub fn valid_ifname(name: &str) -> bool {
    crate::spec::check_ifname(name).is_ok()
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

/// A failed request, before it is given its action text.
#[derive(Debug)]
enum ReqError {
    Os(io::Error, Option<String>),
    Protocol(String),
}

impl ReqError {
    fn errno(&self) -> Option<i32> {
        match self {
            ReqError::Os(e, _) => e.raw_os_error(),
            ReqError::Protocol(_) => None,
        }
    }

    /// The error for `action`; ENODEV becomes "no interface named `dev`".
    fn into_error(self, action: &str, dev: Option<LinkRef>) -> NetlinkError {
        match self {
            ReqError::Os(e, _) if e.raw_os_error() == Some(libc::ENODEV) && dev.is_some() => {
                NetlinkError::NoSuchDevice {
                    action: action.to_string(),
                    name: dev.map(|d| d.to_string()).unwrap_or_default(),
                }
            }
            ReqError::Os(source, extack) => NetlinkError::Kernel {
                action: action.to_string(),
                source,
                extack,
            },
            ReqError::Protocol(reason) => NetlinkError::Protocol {
                action: action.to_string(),
                reason,
            },
        }
    }
}

/// One request/response NETLINK_ROUTE socket, in the calling thread's namespace.
struct Conn {
    sock: Socket,
    seq: u32,
    port: u32,
}

impl Conn {
    fn open() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        let addr = sock.bind_auto().map_err(NetlinkError::Socket)?;
        // Both are best effort: older kernels lack them, and errors still come back.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(Conn {
            sock,
            seq: 0,
            port: addr.port_number(),
        })
    }

    /// Sends `msg` and collects the replies: for a dump, every message up to NLMSG_DONE;
    /// otherwise whatever comes before the ACK.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<Vec<RouteNetlinkMessage>, ReqError> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock
            .send_to(&buf, &SocketAddr::new(0, 0), 0)
            .map_err(|e| ReqError::Os(e, None))?;

        let mut replies = Vec::new();
        loop {
            let (data, _) = self
                .sock
                .recv_from_full()
                .map_err(|e| ReqError::Os(e, None))?;
            let (chunks, truncated) = split_datagram(&data);
            for chunk in chunks {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(chunk)
                    .map_err(|e| ReqError::Protocol(e.to_string()))?;
                if reply.header.sequence_number != self.seq
                    || (reply.header.port_number != self.port && reply.header.port_number != 0)
                {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(ReqError::Os(
                                e.to_io(),
                                extack_message(reply.header.flags, &e.header),
                            )),
                        };
                    }
                    NetlinkPayload::Noop => {}
                    NetlinkPayload::Overrun(_) => {
                        return Err(ReqError::Protocol("overrun".into()));
                    }
                    _ => {}
                }
            }
            if let Some(why) = truncated {
                return Err(ReqError::Protocol(why));
            }
        }
    }

    fn get_link(&mut self, dev: LinkRef) -> std::result::Result<Option<LinkInfo>, ReqError> {
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

    fn dump_links(&mut self) -> std::result::Result<Vec<LinkInfo>, ReqError> {
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
    fn describe(&mut self, dev: LinkRef) -> String {
        match dev {
            LinkRef::Name(n) => n.to_string(),
            LinkRef::Index(_) => match self.get_link(dev) {
                Ok(Some(l)) => l.name,
                _ => dev.to_string(),
            },
        }
    }

    /// RTM_SETLINK on `dev` with the given header flags change and attributes.
    fn set_link(
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

    fn new_link(&mut self, msg: LinkMessage) -> std::result::Result<(), ReqError> {
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(|_| ())
    }

    fn index_for(&mut self, action: &str, dev: LinkRef) -> Result<u32> {
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

/// The text of the kernel's extended ack (NLMSGERR_ATTR_MSG), if the error carries one.
fn extack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < NLMSG_HDRLEN {
        return None;
    }
    // The payload is the request's nlmsghdr (and, when not capped, the whole request),
    // then the TLVs.
    let orig_len = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32::from_ne_bytes(payload[0..4].try_into().ok()?) as usize
    };
    let start = (orig_len + 3) & !3;
    let tlvs = payload.get(start..)?;
    NlasIterator::new(tlvs)
        .filter_map(|n| n.ok())
        .find(|n| n.kind() == NLMSGERR_ATTR_MSG)
        .map(|n| {
            let v = n.value();
            let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            String::from_utf8_lossy(&v[..end]).trim().to_string()
        })
        .filter(|s| !s.is_empty())
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

/// Gives `dev` the address `addr/prefix`: `ip addr add ADDR/PREFIX dev DEV`.
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

fn base_new_link(
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

fn created(conn: &mut Conn, action: &str, name: &str) -> Result<CreatedLink> {
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

/// Creates a macvtap on `parent` in `mode`, with `mac` (or a random one). `name` is either
/// a plain name or a template with one `%d` (e.g. "nvmvt%d"), replaced by the smallest
/// number that gives a free name. Returns the name and index; its character device is
/// `/dev/tap<index>`. The macvtap is created down.
///
/// In passthru mode the kernel ignores `mac`: the macvtap takes the parent's address
/// (setting another one afterwards would change the parent's, which netvmm must leave as
/// found), so a passthru guest should use `link_info(index).mac`.
pub fn create_macvtap<'a>(
    name: &str,
    parent: impl Into<LinkRef<'a>>,
    mode: MacvtapMode,
    mac: Option<MacAddr>,
) -> Result<CreatedLink> {
    create_macvlan_kind(true, name, parent.into(), mode, mac)
}

/// Creates a macvlan on `parent`, like [`create_macvtap`] (used for a host shim that
/// lets the host reach macvtap guests on the same parent).
pub fn create_macvlan<'a>(
    name: &str,
    parent: impl Into<LinkRef<'a>>,
    mode: MacvtapMode,
    mac: Option<MacAddr>,
) -> Result<CreatedLink> {
    create_macvlan_kind(false, name, parent.into(), mode, mac)
}

fn create_macvlan_kind(
    tap: bool,
    template: &str,
    parent: LinkRef,
    mode: MacvtapMode,
    mac: Option<MacAddr>,
) -> Result<CreatedLink> {
    let kind_str = if tap { "macvtap" } else { "macvlan" };
    let mut conn = Conn::open()?;
    let parent_name = conn.describe(parent);
    let action_for =
        |name: &str| format!("create {kind_str} {name} on {parent_name} (mode {mode})");
    let parent_info = conn
        .get_link(parent)
        .map_err(|e| e.into_error(&action_for(template), None))?
        .ok_or_else(|| NetlinkError::NoSuchDevice {
            action: action_for(template),
            name: parent.to_string(),
        })?;

    let templated = template.contains("%d");
    if template.matches("%d").count() > 1 || (!templated && !valid_ifname(template)) {
        return Err(NetlinkError::BadName {
            action: action_for(template),
            name: template.to_string(),
        });
    }
    let taken: HashSet<String> = if templated {
        conn.dump_links()
            .map_err(|e| e.into_error(&action_for(template), None))?
            .into_iter()
            .map(|l| l.name)
            .collect()
    } else {
        HashSet::new()
    };

    let mut n = 0u32;
    loop {
        let name = if templated {
            template.replace("%d", &n.to_string())
        } else {
            template.to_string()
        };
        n += 1;
        if templated && !valid_ifname(&name) {
            return Err(NetlinkError::NoFreeName {
                action: action_for(template),
                template: template.to_string(),
            });
        }
        if taken.contains(&name) {
            continue;
        }
        let data = if tap {
            InfoData::MacVtap(vec![InfoMacVtap::Mode(mode.to_nl())])
        } else {
            InfoData::MacVlan(vec![InfoMacVlan::Mode(mode.to_nl())])
        };
        let kind = if tap {
            InfoKind::MacVtap
        } else {
            InfoKind::MacVlan
        };
        let mut msg = base_new_link(&name, mac, kind, Some(data));
        msg.attributes.push(LinkAttribute::Link(parent_info.index));
        match conn.new_link(msg) {
            Ok(()) => return created(&mut conn, &action_for(&name), &name),
            Err(e) if templated && e.errno() == Some(libc::EEXIST) => continue,
            Err(e) => {
                return Err(explain_macvlan_failure(
                    &mut conn,
                    e,
                    action_for(&name),
                    &parent_info,
                    mode,
                ))
            }
        }
    }
}

/// Turns a failed macvtap/macvlan creation into an error that says what is in the way.
fn explain_macvlan_failure(
    conn: &mut Conn,
    e: ReqError,
    action: String,
    parent: &LinkInfo,
    mode: MacvtapMode,
) -> NetlinkError {
    // The kernel answers a second endpoint next to a passthru one (or a passthru one next
    // to others) with a bare EINVAL.
    if e.errno() == Some(libc::EINVAL) {
        let users: Vec<LinkInfo> = conn
            .dump_links()
            .unwrap_or_default()
            .into_iter()
            .filter(|l| {
                l.parent == Some(parent.index)
                    && matches!(l.kind.as_deref(), Some("macvtap" | "macvlan"))
            })
            .collect();
        let passthru_involved = mode == MacvtapMode::Passthru
            || users
                .iter()
                .any(|u| u.macvlan_mode == Some(MacvtapMode::Passthru));
        if passthru_involved && !users.is_empty() {
            let users = users
                .iter()
                .map(|u| {
                    format!(
                        "{} ({} {})",
                        u.name,
                        u.kind.as_deref().unwrap_or("?"),
                        u.macvlan_mode.map_or("?", MacvtapMode::as_str)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            return NetlinkError::PassthruBusy {
                action,
                parent: parent.name.clone(),
                users,
            };
        }
    }
    if !parent.ethernet {
        return NetlinkError::ParentUnfit {
            action,
            parent: parent.name.clone(),
            reason: match parent.kind.as_deref() {
                Some(k) => format!("it is a {k}, not an Ethernet device"),
                None => "it is not an Ethernet device".into(),
            },
        };
    }
    e.into_error(&action, None)
}

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

/// The netlink messages in one datagram (each header's length, 4-byte aligned, leads to the
/// next), and why the rest could not be read when a length runs short or past the end.
fn split_datagram(data: &[u8]) -> (Vec<&[u8]>, Option<String>) {
    let mut out = Vec::new();
    let mut off = 0;
    while let Some(&[a, b, c, d]) = data.get(off..off + 4) {
        if off + NLMSG_HDRLEN > data.len() {
            break;
        }
        let len = u32::from_ne_bytes([a, b, c, d]) as usize;
        if len < NLMSG_HDRLEN || len > data.len() - off {
            let why = format!(
                "truncated message ({len} bytes at offset {off} of {})",
                data.len()
            );
            return (out, Some(why));
        }
        out.push(&data[off..off + len]);
        off += (len + 3) & !3;
    }
    (out, None)
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

#[cfg(test)]
mod tests;
