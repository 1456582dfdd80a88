//! Interfaces netvmm creates carry a mark (their ifalias names the owning process), so that
//! what a crashed netvmm left behind can be found and removed, and nothing else is touched.

use crate::netlink::{self, LinkInfo, NetlinkError};

/// ifalias prefix of every interface netvmm creates; the owner ([`Owner`]) follows.
pub const OWNER_ALIAS_PREFIX: &str = "netvmm pid=";

/// `PROC_PID_INIT_INO`: the inode number of the initial pid namespace, the same on every
/// Linux system.
const INIT_PIDNS: u64 = 0xEFFF_FFFC;

/// The process that made an interface. A pid alone can be reused, and in another pid
/// namespace means another process (`kill(pid, 0)` there said "gone" about a live VM);
/// with its start time (clock ticks after boot, /proc/<pid>/stat field 22) and its pid
/// namespace it names one process for good. Written `PID:START`, with `:PIDNS` after it
/// outside the initial pid namespace; marks of older netvmm versions are a bare `PID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: i32,
    pub start: Option<u64>,
    pub pidns: Option<u64>,
}

impl Owner {
    /// This process.
    pub fn me() -> Self {
        Owner {
            pid: std::process::id() as i32,
            start: start_time("self"),
            pidns: pidns_of("self").filter(|ns| *ns != INIT_PIDNS),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split(':');
        let pid = parts.next()?.parse().ok()?;
        let mut num = || parts.next().map(|p| p.parse::<u64>().ok());
        let (start, pidns) = (num(), num());
        if start == Some(None) || pidns == Some(None) || parts.next().is_some() {
            return None;
        }
        Some(Owner {
            pid,
            start: start.flatten(),
            pidns: pidns.flatten(),
        })
    }

    /// Whether the owner still runs. An owner in a pid namespace of its own is looked for
    /// among the processes visible here; only from the initial namespace, which sees them
    /// all, is not finding it proof that it is gone.
    pub fn alive(&self) -> bool {
        let Some(start) = self.start else {
            // An old-style mark: the pid is all there is to go by.
            return pid_alive(self.pid);
        };
        let ns = self.pidns.unwrap_or(INIT_PIDNS);
        let here = pidns_of("self");
        if here == Some(ns) {
            return start_time(&self.pid.to_string()) == Some(start);
        }
        visible(ns, self.pid, start) || here != Some(INIT_PIDNS)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.pid)?;
        if let Some(t) = self.start {
            write!(f, ":{t}")?;
            if let Some(ns) = self.pidns {
                write!(f, ":{ns}")?;
            }
        }
        Ok(())
    }
}

/// Field 22 of /proc/<pid>/stat, the process's start time; fields are counted after the
/// command name, which may itself hold spaces and parentheses.
fn start_time(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The inode of /proc/<pid>/ns/pid ("pid:[4026531836]").
fn pidns_of(pid: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether a process visible here is `pid` in pid namespace `ns` and started at `start`
/// (its NSpid line ends with its pid in its own namespace).
fn visible(ns: u64, pid: i32, start: u64) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let name = e.file_name();
        let Some(p) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            return false;
        };
        pidns_of(p) == Some(ns)
            && std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|st| {
                    let line = st.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
                    line.split_whitespace().last()?.parse::<i32>().ok()
                })
                == Some(pid)
            && start_time(p) == Some(start)
    })
}

/// The mark for interfaces created by this process.
pub fn owner_alias() -> String {
    format!("{OWNER_ALIAS_PREFIX}{}", Owner::me())
}

/// The owner written in an alias, if it is one of ours.
pub fn owner(alias: &str) -> Option<Owner> {
    Owner::parse(
        alias
            .strip_prefix(OWNER_ALIAS_PREFIX)?
            .split_whitespace()
            .next()?,
    )
}

/// Whether a process with this pid exists (in this pid namespace).
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
                .and_then(owner)
                .is_some_and(|o| !o.alive())
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
    use std::path::Path;

    #[test]
    fn alias_round_trip_and_liveness() {
        let me = Owner::me();
        assert_eq!(owner(&owner_alias()), Some(me));
        assert!(me.start.is_some());
        assert!(me.alive());
        let legacy = owner("netvmm pid=12 shim").unwrap();
        assert_eq!((legacy.pid, legacy.start, legacy.pidns), (12, None, None));
        assert_eq!(
            owner("netvmm pid=12:34:56").unwrap().to_string(),
            "12:34:56"
        );
        assert_eq!(owner("somebody else's"), None);
        assert_eq!(owner("netvmm pid=x"), None);
        assert_eq!(owner("netvmm pid=1:x"), None);
        assert_eq!(owner("netvmm pid=1:2:3:4"), None);
        // The same pid started at another time: a reused pid, so its owner is gone.
        let reused = Owner {
            start: me.start.map(|t| t + 1),
            ..me
        };
        assert!(!reused.alive());
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
        assert!(!pid_alive(i32::MAX));
    }

    /// A live netvmm in a pid namespace of its own, whose pid there is no process here:
    /// `kill(pid, 0)` called it gone.
    #[test]
    fn an_owner_in_another_pid_namespace_is_alive_while_it_runs() {
        let free = (20_000..32_000)
            .rev()
            .find(|p| !Path::new(&format!("/proc/{p}")).exists());
        let Some(free) = free else { return };
        let script = format!(
            "echo {} > /proc/sys/kernel/ns_last_pid; sleep 30 & wait",
            free - 1
        );
        let Ok(mut child) = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "sh", "-c", &script])
            .spawn()
        else {
            eprintln!("skipping: no unshare(1)");
            return;
        };
        // Find the sleep: its NSpid ends with `free`.
        let mut found = None;
        for _ in 0..200 {
            found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
                let p = e.file_name().to_str()?.to_string();
                let st = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
                let ns = st.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
                (ns.split_whitespace().last()? == free.to_string()
                    && ns.split_whitespace().count() > 1)
                    .then_some(p)
            });
            if found.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let owner = found.map(|p| Owner {
            pid: free,
            start: start_time(&p),
            pidns: pidns_of(&p),
        });
        let alive = owner.map(|o| (o, o.alive(), pid_alive(free)));
        let _ = child.kill();
        let _ = child.wait();
        let Some((owner, alive, pid_here)) = alive else {
            eprintln!("skipping: cannot make a pid namespace here");
            return;
        };
        assert!(!pid_here, "pid {free} is taken here: no proof");
        assert!(alive, "{owner} runs in another pid namespace");
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
