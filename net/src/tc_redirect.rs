//! `--net tc=NIC`: a tap wired to an existing NIC by tc alone, as Kata Containers wires a
//! VM's tap to its container's veth: an ingress qdisc on each, and on each a catch-all
//! filter whose mirred action redirects every frame out of the other. No bridge, no
//! address: the guest sits on NIC's segment with its own MAC, and the host's stack never
//! sees the frames either way (they are stolen at ingress, before IP).
//!
//! netvmm refuses a NIC that already has an ingress (or clsact) qdisc, so the one it finds
//! there later is its own: it is removed at exit, and by `netvmm cleanup` when the tap it
//! redirects to is gone or belongs to a dead netvmm (the mirred action's cookie says the
//! filter is netvmm's). The tap's own qdisc goes with the tap.

use crate::netlink::{self, FilterKind, LinkInfo, NetlinkError};
use crate::owned::owner;

/// The cookie on every mirred action netvmm installs.
pub const COOKIE: &[u8] = b"netvmm-tc";

#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("tc={name}: no such interface (interfaces here: {existing})")]
    NoNic { name: String, existing: String },
    #[error(
        "tc={name}: it already has an {kind} qdisc, which netvmm leaves alone; free its \
         ingress (`tc qdisc del dev {name} {kind}`) or pick another NIC"
    )]
    Busy { name: String, kind: String },
}

/// The NIC side of one wiring: its ingress qdisc, removed (filters and all) on drop.
#[derive(Debug)]
pub struct Wiring {
    pub nic: String,
    nic_index: u32,
    pub filter: FilterKind,
}

impl Drop for Wiring {
    fn drop(&mut self) {
        // Gone already (the NIC was deleted) is the only expected failure.
        let _ = netlink::delete_ingress_qdisc(self.nic_index);
    }
}

/// Wires the tap `tap_index` (up, and with an ingress qdisc of its own afterwards) to
/// `nic` both ways.
pub fn wire(nic: &str, tap_index: u32) -> Result<Wiring, TcError> {
    let info = netlink::link_info(nic)?.ok_or_else(|| TcError::NoNic {
        name: crate::names::printable(nic),
        existing: netlink::list_links()
            .unwrap_or_default()
            .into_iter()
            .map(|l| l.name)
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    if let Some(kind) = netlink::ingress_qdisc(info.index)? {
        return Err(TcError::Busy {
            name: info.name,
            kind,
        });
    }
    netlink::add_ingress_qdisc(tap_index)?;
    netlink::add_ingress_qdisc(info.index)?;
    let mut wiring = Wiring {
        nic: info.name,
        nic_index: info.index,
        filter: FilterKind::MatchAll,
    };
    wiring.filter = netlink::add_redirect(tap_index, info.index, COOKIE)?;
    netlink::add_redirect(info.index, tap_index, COOKIE)?;
    netlink::set_up(tap_index)?;
    Ok(wiring)
}

/// Whether a netvmm redirect to `target` is left over: its tap is gone, or is not a tap
/// of a live netvmm (the index was reused, or its owner died).
fn stale_target(target: u32) -> Result<bool, NetlinkError> {
    // mirred forgets the index of a device that is deleted: 0 is a tap that went.
    if target == 0 {
        return Ok(true);
    }
    Ok(match netlink::link_info(target)? {
        None => true,
        Some(l) => !l
            .alias
            .as_deref()
            .and_then(owner)
            .is_some_and(|o| o.alive()),
    })
}

/// The NICs holding an ingress qdisc that netvmm put there for a tap that is gone or is no
/// live netvmm's (see [`stale_target`]): what [`cleanup_stale`] removes, and what `netvmm
/// run` warns about.
pub fn stale_nics() -> Result<Vec<LinkInfo>, NetlinkError> {
    let qdiscs = netlink::ingress_qdiscs()?;
    let mut stale = Vec::new();
    for l in netlink::list_links()? {
        // A tap of netvmm's own: its qdisc goes with it (and `owned` removes stale taps).
        if l.alias.as_deref().and_then(owner).is_some() {
            continue;
        }
        if !qdiscs.iter().any(|(index, _)| *index == l.index) {
            continue;
        }
        let redirects = match netlink::ingress_redirects(l.index) {
            Ok(r) => r,
            // Deleted since the list was taken: nothing of it is left to find.
            Err(e) if e.is_no_such_device() => continue,
            Err(e) => return Err(e),
        };
        let mut ours = false;
        for r in redirects
            .iter()
            .filter(|r| r.cookie.as_deref() == Some(COOKIE))
        {
            ours |= stale_target(r.target)?;
        }
        if ours {
            stale.push(l);
        }
    }
    Ok(stale)
}

/// Removes the ingress qdiscs netvmm put on NICs whose taps are gone; returns the NICs.
pub fn cleanup_stale() -> Result<Vec<String>, NetlinkError> {
    let mut cleaned = Vec::new();
    for l in stale_nics()? {
        match netlink::delete_ingress_qdisc(l.index) {
            Ok(()) => cleaned.push(format!("{} (ingress qdisc)", l.name)),
            Err(e) if e.is_no_such_device() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(cleaned)
}

#[cfg(test)]
mod tests;
