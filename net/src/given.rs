//! Interfaces netvmm is given (`tap=NAME` on an existing tap, with or without `bridge=`)
//! must end exactly as they were found. netvmm changes them (a new master, `host-ip`
//! replacing the address, IFF_UP), and so does the kernel in reply (bringing a link up gives
//! it an IPv6 link-local address): so the state is recorded before the first change and put
//! back as a whole afterwards, rather than each change being undone on its own.

use crate::netlink::{self, LinkAddress, NetlinkError};
use crate::tap::TunState;

/// What a given link looked like before netvmm touched it. Dropping it puts that back
/// (errors ignored); call [`GivenLink::restore`] first to hear about them.
#[derive(Debug)]
pub struct GivenLink {
    name: String,
    index: u32,
    master: Option<u32>,
    up: bool,
    mtu: Option<u32>,
    addresses: Vec<LinkAddress>,
    /// A tap's vnet header size and offloads, read when netvmm attached.
    tun: Option<TunState>,
    restored: bool,
}

/// What could not be put back on one given link.
#[derive(Debug, thiserror::Error)]
#[error("{name} could not be left as found: {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct RestoreError {
    pub name: String,
    pub problems: Vec<Problem>,
}

#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("cannot set its vnet header size and offloads back: {0}")]
    Tun(std::io::Error),
}

impl GivenLink {
    /// Records `name`'s master, IFF_UP, MTU and addresses; None if there is no such link (then
    /// netvmm creates it, and it goes with netvmm).
    pub fn record(name: &str) -> Result<Option<Self>, NetlinkError> {
        let Some(info) = netlink::link_info(name)? else {
            return Ok(None);
        };
        Ok(Some(GivenLink {
            name: info.name,
            index: info.index,
            master: info.master,
            up: info.admin_up,
            mtu: info.mtu,
            addresses: netlink::addresses(info.index)?,
            tun: None,
            restored: false,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Also puts back the tap's device state `tun` (see [`crate::tap::Tap::tun_state`]).
    pub fn keep_tun(&mut self, tun: TunState) {
        self.tun = Some(tun);
    }

    /// Puts the recorded state back: the former master (or none), the MTU, then IFF_UP as it was
    /// (taking a link down drops its IPv6 addresses, so addresses come last), then the
    /// address list: what was added goes, what went is added back; a tap's vnet header
    /// size and offloads last (the device may still be writing, and a link that was down
    /// is down again by then and takes no frames). Every step is tried
    /// even if an earlier one failed. A link that is gone has nothing left to restore.
    /// Idempotent: once done, later calls (and the drop) do nothing.
    pub fn restore(&mut self) -> Result<(), RestoreError> {
        if self.restored {
            return Ok(());
        }
        self.restored = true;
        let mut problems = Vec::new();
        let now = match netlink::link_info(self.index) {
            Ok(Some(now)) => now,
            Ok(None) => return Ok(()),
            Err(e) => return Err(self.error(vec![e.into()])),
        };
        if now.master != self.master {
            let r = match self.master {
                Some(m) => netlink::set_master(self.index, m),
                None => netlink::set_nomaster(self.index),
            };
            problems.extend(r.err().map(Problem::from));
        }
        if let Some(mtu) = self.mtu.filter(|m| now.mtu != Some(*m)) {
            problems.extend(netlink::set_mtu(self.index, mtu).err().map(Problem::from));
        }
        if now.admin_up != self.up {
            let r = if self.up {
                netlink::set_up(self.index)
            } else {
                netlink::set_down(self.index)
            };
            problems.extend(r.err().map(Problem::from));
        }
        match netlink::addresses(self.index) {
            Ok(current) => {
                for extra in current
                    .iter()
                    .filter(|a| !self.addresses.iter().any(|b| b.same_as(a)))
                {
                    let r = netlink::delete_address(self.index, extra);
                    problems.extend(r.err().map(Problem::from));
                }
                for missing in self
                    .addresses
                    .iter()
                    .filter(|b| !current.iter().any(|a| a.same_as(b)))
                {
                    let r = netlink::add_address(self.index, missing);
                    problems.extend(r.err().map(Problem::from));
                }
            }
            Err(e) => problems.push(e.into()),
        }
        if let Some(tun) = &self.tun {
            problems.extend(tun.restore().err().map(Problem::Tun));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(self.error(problems))
        }
    }

    fn error(&self, problems: Vec<Problem>) -> RestoreError {
        RestoreError {
            name: self.name.clone(),
            problems,
        }
    }
}

impl Drop for GivenLink {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

#[cfg(test)]
mod tests;
