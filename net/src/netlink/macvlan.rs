//! Macvtaps and macvlans: their modes, creating them on a parent (with a name template),
//! and errors that say what is in the way when the kernel refuses one.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoMacVtap, LinkAttribute, MacVlanMode,
};

use super::conn::Conn;
use super::error::{NetlinkError, ReqError, Result};
use super::links::{base_new_link, created, CreatedLink, LinkInfo};
use super::{valid_ifname, LinkRef};
use crate::mac::MacAddr;

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

    pub(super) fn to_nl(self) -> MacVlanMode {
        match self {
            MacvtapMode::Bridge => MacVlanMode::Bridge,
            MacvtapMode::Vepa => MacVlanMode::Vepa,
            MacvtapMode::Private => MacVlanMode::Private,
            MacvtapMode::Passthru => MacVlanMode::Passthrough,
        }
    }

    pub(super) fn from_nl(m: MacVlanMode) -> Option<Self> {
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
