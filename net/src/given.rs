//! Interfaces netvmm is given (`tap=NAME` on an existing tap, with or without `bridge=`)
//! must end exactly as they were found. netvmm changes them (a new master, `host-ip`
//! replacing the address, IFF_UP), and so does the kernel in reply (bringing a link up gives
//! it an IPv6 link-local address): so the state is recorded before the first change and put
//! back as a whole afterwards, rather than each change being undone on its own.

use crate::netlink::{self, LinkAddress, NetlinkError};

/// What a given link looked like before netvmm touched it. Dropping it puts that back
/// (errors ignored); call [`GivenLink::restore`] first to hear about them.
#[derive(Debug)]
pub struct GivenLink {
    name: String,
    index: u32,
    master: Option<u32>,
    up: bool,
    addresses: Vec<LinkAddress>,
    restored: bool,
}

/// What could not be put back on one given link.
#[derive(Debug, thiserror::Error)]
#[error("{name} could not be left as found: {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct RestoreError {
    pub name: String,
    pub problems: Vec<NetlinkError>,
}

impl GivenLink {
    /// Records `name`'s master, IFF_UP and addresses; None if there is no such link (then
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
            addresses: netlink::addresses(info.index)?,
            restored: false,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Puts the recorded state back: the former master (or none), then IFF_UP as it was
    /// (taking a link down drops its IPv6 addresses, so addresses come last), then the
    /// address list: what was added goes, what went is added back. Every step is tried
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
            Err(e) => {
                problems.push(e);
                return Err(self.error(problems));
            }
        };
        if now.master != self.master {
            let r = match self.master {
                Some(m) => netlink::set_master(self.index, m),
                None => netlink::set_nomaster(self.index),
            };
            problems.extend(r.err());
        }
        if now.admin_up != self.up {
            let r = if self.up {
                netlink::set_up(self.index)
            } else {
                netlink::set_down(self.index)
            };
            problems.extend(r.err());
        }
        match netlink::addresses(self.index) {
            Ok(current) => {
                for extra in current
                    .iter()
                    .filter(|a| !self.addresses.iter().any(|b| b.same_as(a)))
                {
                    problems.extend(netlink::delete_address(self.index, extra).err());
                }
                for missing in self
                    .addresses
                    .iter()
                    .filter(|b| !current.iter().any(|a| a.same_as(b)))
                {
                    problems.extend(netlink::add_address(self.index, missing).err());
                }
            }
            Err(e) => problems.push(e),
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(self.error(problems))
        }
    }

    fn error(&self, problems: Vec<NetlinkError>) -> RestoreError {
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
