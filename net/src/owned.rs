//! Interfaces netvmm creates carry a mark (their ifalias names the owning process), so that
//! what a crashed netvmm left behind can be found and removed, and nothing else is touched.

use crate::netlink::{self, LinkInfo, NetlinkError};

/// ifalias prefix of every interface netvmm creates; the owner's pid follows.
pub const OWNER_ALIAS_PREFIX: &str = "netvmm pid=";

/// The mark for interfaces created by this process.
pub fn owner_alias() -> String {
    format!("{OWNER_ALIAS_PREFIX}{}", std::process::id())
}

/// The owning pid written in an alias, if it is one of ours.
pub fn owner_pid(alias: &str) -> Option<i32> {
    alias
        .strip_prefix(OWNER_ALIAS_PREFIX)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Interfaces marked by a netvmm process that no longer exists.
pub fn stale_links() -> Result<Vec<LinkInfo>, NetlinkError> {
    Ok(netlink::list_links()?
        .into_iter()
        .filter(|l| {
            l.alias
                .as_deref()
                .and_then(owner_pid)
                .is_some_and(|pid| !pid_alive(pid))
        })
        .collect())
}

/// Deletes what dead netvmm processes left behind; returns the names removed.
pub fn cleanup_stale() -> Result<Vec<String>, NetlinkError> {
    let mut removed = Vec::new();
    for l in stale_links()? {
        match netlink::delete_link(l.index) {
            Ok(()) => removed.push(l.name),
            // Gone meanwhile (its parent went, or another cleanup ran): fine.
            Err(e) if e.is_no_such_device() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// An interface this process created and must delete: deleted when dropped.
#[derive(Debug)]
pub struct OwnedLink {
    pub name: String,
    pub index: u32,
}

impl Drop for OwnedLink {
    fn drop(&mut self) {
        // Already gone (its parent was deleted) is the only expected failure.
        let _ = netlink::delete_link(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_round_trip_and_liveness() {
        assert_eq!(owner_pid(&owner_alias()), Some(std::process::id() as i32));
        assert_eq!(owner_pid("netvmm pid=12 shim"), Some(12));
        assert_eq!(owner_pid("somebody else's"), None);
        assert_eq!(owner_pid("netvmm pid=x"), None);
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
        assert!(!pid_alive(i32::MAX));
    }

    #[test]
    fn stale_links_are_removed_and_live_or_foreign_ones_kept() {
        let r = crate::iface::in_new_netns(|| {
            netlink::create_bridge("nvst0").unwrap();
            netlink::create_bridge("nvlive0").unwrap();
            netlink::create_bridge("other0").unwrap();
            netlink::set_alias("nvst0", &format!("{OWNER_ALIAS_PREFIX}{}", i32::MAX)).unwrap();
            netlink::set_alias("nvlive0", &owner_alias()).unwrap();
            netlink::set_alias("other0", "not ours").unwrap();
            let removed = cleanup_stale().unwrap();
            let left: Vec<String> = netlink::list_links()
                .unwrap()
                .into_iter()
                .map(|l| l.name)
                .collect();
            (removed, left)
        });
        let Ok((removed, left)) = r else {
            eprintln!("skipping: no network namespace");
            return;
        };
        assert_eq!(removed, vec!["nvst0".to_string()]);
        assert!(left.contains(&"nvlive0".to_string()) && left.contains(&"other0".to_string()));
    }
}
