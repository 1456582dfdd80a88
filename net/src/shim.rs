//! The host-access shim for macvtap guests: a bridge-mode macvlan on the parent holding the
//! host's address, so that host and guests are siblings on the parent and can talk (frames
//! from a macvtap never come up the parent's own stack, so an address on the parent cannot
//! reach them). Guests on one parent share one shim; it goes when its last user does.
//!
//! The users are counted in the shim's ifalias (`netvmm shim pids=12:840,12:840,40:977`:
//! one [`Owner`] per NIC), so the count survives a crash: entries of dead processes are dropped by the next
//! user and by `netvmm cleanup`. A lock file serialises the read-modify-write between
//! concurrent netvmm processes.

use crate::mac::MacAddr;
use crate::netlink::{self, MacvtapMode, NetlinkError};
use crate::owned::Owner;
use crate::private_fs;
use crate::spec::Ipv4Cidr;

/// ifalias prefix of a shim; the comma-separated user pids follow.
pub const SHIM_ALIAS_PREFIX: &str = "netvmm shim pids=";

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("cannot lock {path} for the host-access shim: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error("{name} exists on {parent} but is not a netvmm host-access shim; remove or rename it")]
    Foreign { name: String, parent: String },
    #[error("macvtap parent {0} does not exist")]
    NoParent(String),
}

/// The shim's name for a parent: fixed per parent, so every netvmm finds the same one.
pub fn shim_name(parent_index: u32) -> String {
    format!("nvshim{parent_index}")
}

/// The users recorded in a shim alias (see [`Owner`]; old aliases hold bare pids).
pub fn users(alias: &str) -> Option<Vec<Owner>> {
    let list = alias.strip_prefix(SHIM_ALIAS_PREFIX)?;
    Some(
        list.split(',')
            .filter_map(|p| Owner::parse(p.trim()))
            .collect(),
    )
}

fn alias_for(users: &[Owner]) -> String {
    let list: Vec<String> = users.iter().map(|p| p.to_string()).collect();
    format!("{SHIM_ALIAS_PREFIX}{}", list.join(","))
}

/// The per-parent lock (see [`private_fs::ExclusiveLock`]).
struct ShimLock {
    _lock: private_fs::ExclusiveLock,
}

impl ShimLock {
    fn take(parent_index: u32) -> Result<Self, ShimError> {
        private_fs::ExclusiveLock::take(&format!("shim-{parent_index}.lock"))
            .map(|l| ShimLock { _lock: l })
            .map_err(|(path, source)| ShimError::Lock { path, source })
    }
}

/// One NIC's use of a shim; dropping it gives the use back (and deletes the shim when it
/// was the last).
#[derive(Debug)]
pub struct ShimUse {
    pub name: String,
    parent_index: u32,
}

/// Makes sure the shim on `parent` exists with `addr`, and counts this NIC as a user.
pub fn acquire(parent: &str, addr: Ipv4Cidr) -> Result<ShimUse, ShimError> {
    let parent_info =
        netlink::link_info(parent)?.ok_or_else(|| ShimError::NoParent(parent.to_string()))?;
    let name = shim_name(parent_info.index);
    let _lock = ShimLock::take(parent_info.index)?;
    let me = Owner::me();
    let mut list = match netlink::link_info(name.as_str())? {
        Some(l) => {
            let users = l.alias.as_deref().and_then(users);
            match users {
                Some(u) if l.kind.as_deref() == Some("macvlan") => u,
                _ => {
                    return Err(ShimError::Foreign {
                        name,
                        parent: parent.to_string(),
                    })
                }
            }
        }
        None => {
            let mac = MacAddr::derived(&format!("shim:{}", parent_info.index));
            netlink::create_macvlan(&name, parent_info.index, MacvtapMode::Bridge, Some(mac))?;
            Vec::new()
        }
    };
    list.retain(Owner::alive);
    list.push(me);
    netlink::set_alias(name.as_str(), &alias_for(&list))?;
    let have = netlink::ipv4_addrs(name.as_str())?;
    if !have.contains(&(addr.addr, addr.prefix)) {
        netlink::add_ipv4(name.as_str(), addr.addr, addr.prefix)?;
    }
    netlink::set_up(name.as_str())?;
    Ok(ShimUse {
        name,
        parent_index: parent_info.index,
    })
}

/// Drops users that are gone from `name`'s count, deleting the shim when none remain.
/// `me_leaving` also removes one entry of this process. Returns whether it was deleted.
fn settle(name: &str, parent_index: u32, me_leaving: bool) -> Result<bool, ShimError> {
    let _lock = ShimLock::take(parent_index)?;
    let Some(l) = netlink::link_info(name)? else {
        return Ok(false);
    };
    let Some(mut list) = l.alias.as_deref().and_then(users) else {
        return Ok(false);
    };
    if me_leaving {
        let me = Owner::me();
        if let Some(at) = list.iter().position(|p| *p == me) {
            list.remove(at);
        }
    }
    list.retain(Owner::alive);
    if list.is_empty() {
        netlink::delete_link(name)?;
        return Ok(true);
    }
    netlink::set_alias(name, &alias_for(&list))?;
    Ok(false)
}

impl Drop for ShimUse {
    fn drop(&mut self) {
        let _ = settle(&self.name, self.parent_index, true);
    }
}

/// Shims whose users are all gone (what [`cleanup_stale`] deletes); `netvmm run` warns
/// about them. Read only: no lock, no alias rewritten.
pub fn stale_shims() -> Result<Vec<String>, NetlinkError> {
    Ok(netlink::list_links()?
        .into_iter()
        .filter(|l| {
            l.alias
                .as_deref()
                .and_then(users)
                .is_some_and(|u| !u.iter().any(Owner::alive))
        })
        .map(|l| l.name)
        .collect())
}

/// Shims whose users are all gone are deleted; returns their names. Used by `netvmm cleanup`.
pub fn cleanup_stale() -> Result<Vec<String>, ShimError> {
    let mut removed = Vec::new();
    for l in netlink::list_links()? {
        if l.alias.as_deref().and_then(users).is_none() {
            continue;
        }
        let parent = l.parent.unwrap_or(0);
        if settle(&l.name, parent, false)? {
            removed.push(l.name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_never_goes_through_a_planted_symlink() {
        let pid = std::process::id();
        let idx = 4_000_000_000 + pid % 1000;
        let tmp = std::env::temp_dir();
        let target = tmp.join(format!("netvmm-test-shim-target-{pid}"));
        let planted = tmp.join(format!("netvmm-shim-{idx}.lock"));
        let _ = std::fs::remove_file(&planted);
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        let lock = ShimLock::take(idx);
        let created = target.exists();
        let _ = std::fs::remove_file(&planted);
        let _ = std::fs::remove_file(&target);
        assert!(
            !created,
            "a file was created where a planted symlink pointed"
        );
        lock.unwrap();
    }

    #[test]
    fn alias_lists_users() {
        let pids = |alias| -> Vec<i32> { users(alias).unwrap().iter().map(|o| o.pid).collect() };
        assert_eq!(pids("netvmm shim pids=1,2,2"), vec![1, 2, 2]);
        assert_eq!(pids("netvmm shim pids="), Vec::<i32>::new());
        assert!(users("netvmm pid=4").is_none());
        let two = users("netvmm shim pids=3:10,4:11:12").unwrap();
        assert_eq!(two[1].pidns, Some(12));
        assert_eq!(alias_for(&two), "netvmm shim pids=3:10,4:11:12");
    }

    #[test]
    fn users_share_one_shim_and_the_last_removes_it() {
        let r = crate::iface::in_new_netns(|| {
            netlink::create_veth("lan0", "lan1").unwrap();
            netlink::set_up("lan0").unwrap();
            let addr: Ipv4Cidr = "198.51.100.20/24".parse().unwrap();
            let a = acquire("lan0", addr).unwrap();
            let b = acquire("lan0", addr).unwrap();
            assert_eq!(a.name, b.name, "one shim per parent");
            let info = netlink::link_info(a.name.as_str()).unwrap().unwrap();
            let parent = netlink::link_index("lan0").unwrap();
            let addrs = netlink::ipv4_addrs(a.name.as_str()).unwrap();
            let two_users = users(info.alias.as_deref().unwrap()).unwrap().len();
            let name = a.name.clone();
            drop(a);
            let after_one = netlink::link_info(name.as_str()).unwrap().is_some();
            drop(b);
            let after_both = netlink::link_info(name.as_str()).unwrap().is_some();
            let parent_addrs = netlink::ipv4_addrs("lan0").unwrap();
            (
                info,
                parent,
                addrs,
                two_users,
                after_one,
                after_both,
                parent_addrs,
            )
        });
        let Ok((info, parent, addrs, two_users, after_one, after_both, parent_addrs)) = r else {
            eprintln!("skipping: no network namespace");
            return;
        };
        assert_eq!(info.kind.as_deref(), Some("macvlan"));
        assert_eq!(info.macvlan_mode, Some(MacvtapMode::Bridge));
        assert_eq!(info.parent, parent);
        assert_eq!(addrs, vec![("198.51.100.20".parse().unwrap(), 24)]);
        assert_eq!(two_users, 2);
        assert!(after_one, "still used by the second NIC");
        assert!(!after_both, "removed with its last user");
        assert!(
            parent_addrs.is_empty(),
            "the parent's addresses are never touched"
        );
    }

    #[test]
    fn a_shim_of_dead_users_is_cleaned_up_and_a_foreign_one_refused() {
        let r = crate::iface::in_new_netns(|| {
            netlink::create_veth("lan0", "lan1").unwrap();
            let parent = netlink::link_index("lan0").unwrap().unwrap();
            let name = shim_name(parent);
            netlink::create_macvlan(&name, parent, MacvtapMode::Bridge, None).unwrap();
            let gone = Owner::parse(&i32::MAX.to_string()).unwrap();
            netlink::set_alias(name.as_str(), &alias_for(&[gone])).unwrap();
            let removed = cleanup_stale().unwrap();
            netlink::create_macvlan(&name, parent, MacvtapMode::Bridge, None).unwrap();
            let foreign = acquire("lan0", "198.51.100.20/24".parse().unwrap())
                .unwrap_err()
                .to_string();
            (name, removed, foreign)
        });
        let Ok((name, removed, foreign)) = r else {
            eprintln!("skipping: no network namespace");
            return;
        };
        assert_eq!(removed, vec![name]);
        assert!(
            foreign.contains("not a netvmm host-access shim"),
            "{foreign}"
        );
    }
}
