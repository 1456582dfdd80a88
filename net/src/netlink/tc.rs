//! Traffic control: ingress qdiscs and the catch-all filters whose mirred action redirects
//! every frame arriving on one link out of another (`tc filter add dev A ingress matchall
//! action mirred egress redirect dev B`), as Kata Containers wires a tap to a veth.
//!
//! The filter is `matchall`; kernels built without cls_matchall (this project's CI kernel
//! is one) get the classic equivalent, a `u32` filter with one key that masks nothing
//! (`u32 match u32 0 0`), which is what Kata and tc-redirect-tap install. The mirred action
//! carries a cookie so that `netvmm cleanup` can tell netvmm's filters from anyone else's.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterMatchAllOption, TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType,
    TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::conn::Conn;
use super::error::{ReqError, Result};
use super::LinkRef;

/// The ingress qdisc's own handle, `ffff:`; its filters name it as their parent.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// ETH_P_ALL: the filter sees every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// The filter's priority (`pref`).
const PRIORITY: u16 = 1;

/// The filter kinds a redirect can be made with, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    MatchAll,
    U32,
}

impl FilterKind {
    pub fn name(self) -> &'static str {
        match self {
            FilterKind::MatchAll => "matchall",
            FilterKind::U32 => "u32",
        }
    }
}

/// One mirred redirect found on a link's ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub kind: String,
    /// The ifindex the frames are sent out of.
    pub target: u32,
    pub cookie: Option<Vec<u8>>,
}

fn tc_message(index: u32, handle: TcHandle, parent: TcHandle) -> TcMessage {
    let mut msg = TcMessage::default();
    msg.header.index = index as i32;
    msg.header.handle = handle;
    msg.header.parent = parent;
    msg
}

/// The qdisc kind attached at `dev`'s ingress hook ("ingress" or "clsact"), if any.
pub fn ingress_qdisc<'a>(dev: impl Into<LinkRef<'a>>) -> Result<Option<String>> {
    let dev = dev.into();
    let action = format!("list the qdiscs of {dev}");
    let mut conn = Conn::open()?;
    let index = conn.index_for(&action, dev)?;
    Ok(dump_ingress_qdiscs(&mut conn, &action, Some(dev))?
        .into_iter()
        .find_map(|(i, kind)| (i == index).then_some(kind)))
}

/// Every link's ingress-hook qdisc here as (ifindex, kind), from one dump: a scan of all
/// links asks once instead of once per link (each dump lists every qdisc of the host).
pub fn ingress_qdiscs() -> Result<Vec<(u32, String)>> {
    let mut conn = Conn::open()?;
    dump_ingress_qdiscs(&mut conn, "list the qdiscs", None)
}

fn dump_ingress_qdiscs(
    conn: &mut Conn,
    action: &str,
    dev: Option<LinkRef>,
) -> Result<Vec<(u32, String)>> {
    let replies = conn
        .request(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            NLM_F_DUMP,
        )
        .map_err(|e| e.into_error(action, dev))?;
    Ok(replies
        .into_iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewQueueDiscipline(m) if m.header.parent == TcHandle::INGRESS => {
                let kind = m.attributes.iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                })?;
                Some((u32::try_from(m.header.index).ok()?, kind))
            }
            _ => None,
        })
        .collect())
}

/// Adds an ingress qdisc to `dev` (`tc qdisc add dev DEV ingress`); fails if it has one.
pub fn add_ingress_qdisc(index: u32) -> Result<()> {
    let action = format!("add an ingress qdisc to {}", LinkRef::Index(index));
    let mut msg = tc_message(index, INGRESS_HANDLE, TcHandle::INGRESS);
    msg.attributes.push(TcAttribute::Kind("ingress".into()));
    let mut conn = Conn::open()?;
    conn.request(
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map(|_| ())
    .map_err(|e| e.into_error(&action, Some(LinkRef::Index(index))))
}

/// Removes `dev`'s ingress qdisc, and with it every filter on it.
pub fn delete_ingress_qdisc(index: u32) -> Result<()> {
    let action = format!("remove the ingress qdisc of {}", LinkRef::Index(index));
    let msg = tc_message(index, INGRESS_HANDLE, TcHandle::INGRESS);
    let mut conn = Conn::open()?;
    conn.request(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
        .map(|_| ())
        .map_err(|e| e.into_error(&action, Some(LinkRef::Index(index))))
}

/// The mirred action that steals each frame and sends it out of `target`.
pub fn redirect_action(target: u32, cookie: &[u8]) -> TcAction {
    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = target;
    let mut a = TcAction::default();
    a.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
        TcActionAttribute::Cookie(cookie.to_vec()),
    ];
    a
}

/// The filter message: on `from`'s ingress, every frame goes to `target`.
pub fn redirect_filter(from: u32, target: u32, kind: FilterKind, cookie: &[u8]) -> TcMessage {
    let mut msg = tc_message(from, TcHandle::UNSPEC, INGRESS_HANDLE);
    // tcm_info: the priority in the upper half, the protocol (network order) in the lower.
    msg.header.info = (u32::from(PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
    let act = redirect_action(target, cookie);
    let options = match kind {
        FilterKind::MatchAll => vec![TcOption::MatchAll(TcFilterMatchAllOption::Action(vec![
            act,
        ]))],
        FilterKind::U32 => {
            let mut sel = TcU32Selector::default();
            sel.flags = TcU32SelectorFlags::Terminal;
            sel.nkeys = 1;
            // One key that masks every bit away: it matches every frame.
            sel.keys = vec![TcU32Key::default()];
            vec![
                TcOption::U32(TcFilterU32Option::Selector(sel)),
                TcOption::U32(TcFilterU32Option::Action(vec![act])),
            ]
        }
    };
    msg.attributes = vec![
        TcAttribute::Kind(kind.name().into()),
        TcAttribute::Options(options),
    ];
    msg
}

/// Redirects every frame arriving on `from` out of `target`, with the first filter kind
/// the kernel knows; returns the kind used.
pub fn add_redirect(from: u32, target: u32, cookie: &[u8]) -> Result<FilterKind> {
    let action = format!(
        "redirect the ingress of {} to {}",
        LinkRef::Index(from),
        LinkRef::Index(target)
    );
    let mut conn = Conn::open()?;
    let mut last = None;
    for kind in [FilterKind::MatchAll, FilterKind::U32] {
        let msg = redirect_filter(from, target, kind, cookie);
        match conn.request(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => return Ok(kind),
            // The kernel has no such classifier (and cannot load its module).
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EOPNOTSUPP)) => {
                last = Some(e)
            }
            Err(e) => return Err(e.into_error(&action, Some(LinkRef::Index(from)))),
        }
    }
    Err(last
        .unwrap_or_else(|| ReqError::Protocol("no filter kind".into()))
        .into_error(&action, Some(LinkRef::Index(from))))
}

/// The mirred redirects on `dev`'s ingress.
pub fn ingress_redirects(index: u32) -> Result<Vec<Redirect>> {
    let action = format!("list the ingress filters of {}", LinkRef::Index(index));
    let msg = tc_message(index, TcHandle::UNSPEC, INGRESS_HANDLE);
    let mut conn = Conn::open()?;
    let replies = conn
        .request(RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP)
        .map_err(|e| e.into_error(&action, Some(LinkRef::Index(index))))?;
    Ok(replies
        .iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewTrafficFilter(m) => Some(m),
            _ => None,
        })
        .flat_map(parse_redirects)
        .collect())
}

/// The redirects in one filter message.
pub fn parse_redirects(m: &TcMessage) -> Vec<Redirect> {
    let mut kind = String::new();
    let mut actions: Vec<&TcAction> = Vec::new();
    for a in &m.attributes {
        match a {
            TcAttribute::Kind(k) => kind = k.clone(),
            TcAttribute::Options(opts) => {
                for o in opts {
                    match o {
                        TcOption::MatchAll(TcFilterMatchAllOption::Action(v))
                        | TcOption::U32(TcFilterU32Option::Action(v)) => actions.extend(v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    actions
        .into_iter()
        .filter_map(|a| {
            let mut target = None;
            let mut cookie = None;
            for attr in &a.attributes {
                match attr {
                    TcActionAttribute::Options(opts) => {
                        for o in opts {
                            if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = o {
                                target = Some(p.ifindex);
                            }
                        }
                    }
                    TcActionAttribute::Cookie(c) => cookie = Some(c.clone()),
                    _ => {}
                }
            }
            Some(Redirect {
                kind: kind.clone(),
                target: target?,
                cookie,
            })
        })
        .collect()
}
