//! An anonymous network namespace held by a file descriptor: another machine on the same
//! kernel, as compare's LAN host is. No name in /run/netns: it lives as long as the
//! descriptor (and whatever process or link is inside it), so nothing outlives its owner.
//!
//! Netlink calls act on the namespace of the calling thread, so [`NetNs::run`] runs a
//! closure on a thread moved into the namespace; [`NetNs::enter_from_child`] moves a forked
//! child there before it execs (for `Command::pre_exec`).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A network namespace, kept alive by its nsfs descriptor.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
}

impl NetNs {
    /// A new, empty network namespace (only its loopback, down).
    pub fn new() -> io::Result<Self> {
        let joined = std::thread::spawn(|| -> io::Result<OwnedFd> {
            // SAFETY: unshare only changes the calling thread's namespaces; this thread
            // ends right after, so no other code runs in the new one by mistake.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(File::open("/proc/thread-self/ns/net")?.into())
        })
        .join();
        match joined {
            Ok(r) => Ok(Self { fd: r? }),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Runs `f` on a thread inside this namespace and returns what it returned.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let fd = self.fd.as_raw_fd();
        std::thread::scope(|s| {
            let joined = s
                .spawn(move || {
                    // SAFETY: fd is this namespace's open nsfs descriptor (borrowed from
                    // self for the scope); setns moves only this thread.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .join();
            match joined {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// The raw descriptor, for [`NetNs::enter_from_child`] in a `pre_exec` closure (the
    /// descriptor must stay open until the child has exec'd: keep the `NetNs` alive).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Moves the calling (single-threaded, forked) process into the namespace `fd`. Only
    /// async-signal-safe calls: fit for `Command::pre_exec`.
    pub fn enter_from_child(fd: RawFd) -> io::Result<()> {
        // SAFETY: setns on a descriptor the parent keeps open; it changes only this
        // process's network namespace.
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_in_the_namespace_sees_only_its_loopback() {
        let ns = match NetNs::new() {
            Ok(ns) => ns,
            Err(e) => {
                eprintln!("skipping: cannot create a network namespace here: {e}");
                return;
            }
        };
        let inside = ns.run(crate::netlink::list_links).unwrap().unwrap();
        let names: Vec<String> = inside.into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["lo"]);
        // The calling thread stayed where it was: a link made in there is not seen here.
        ns.run(|| crate::netlink::create_bridge("nvnstest0"))
            .unwrap()
            .unwrap();
        let here = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let there = ns
            .run(|| std::fs::read_link("/proc/thread-self/ns/net"))
            .unwrap()
            .unwrap();
        assert_ne!(here, there);
        assert!(ns
            .run(|| crate::netlink::link_index("nvnstest0"))
            .unwrap()
            .unwrap()
            .is_some());
    }

    /// compare's topology in miniature: a veth whose peer moves into another namespace,
    /// onto a bridge that hairpins it, a route there via this side, and ARP entries that a
    /// flush removes.
    #[test]
    fn veth_peer_moves_bridge_hairpins_routes_and_neighbours_flush() {
        use crate::netlink::*;
        use std::net::Ipv4Addr;
        let Ok(host) = NetNs::new() else {
            eprintln!("skipping: cannot create a network namespace here");
            return;
        };
        let lan = NetNs::new().unwrap();
        let lan_fd = lan.as_fd().try_clone_to_owned().unwrap();
        host.run(move || {
            create_veth("lanA", "lanB").unwrap();
            move_to_netns("lanB", lan_fd.as_fd()).unwrap();
            assert_eq!(
                link_index("lanB").unwrap(),
                None,
                "lanB left this namespace"
            );
            set_up("lanA").unwrap();
            add_ipv4("lanA", Ipv4Addr::new(203, 0, 113, 10), 24).unwrap();
        })
        .unwrap();
        lan.run(|| {
            set_up("lo").unwrap();
            create_bridge("sw0").unwrap();
            set_up("sw0").unwrap();
            add_ipv4("sw0", Ipv4Addr::new(203, 0, 113, 1), 24).unwrap();
            set_master("lanB", "sw0").unwrap();
            set_up("lanB").unwrap();
            set_hairpin("lanB", true).unwrap();
            let gw = Ipv4Addr::new(203, 0, 113, 10);
            let net = Ipv4Addr::new(192, 0, 2, 0);
            add_route_v4(net, 24, gw).unwrap();
            assert!(add_route_v4(net, 24, gw).is_err(), "the route exists");
            delete_route_v4(net, 24, gw).unwrap();
            let e = delete_route_v4(net, 24, gw).unwrap_err().to_string();
            assert!(e.contains("192.0.2.0/24 via 203.0.113.10"), "{e}");
            set_hairpin("lanB", false).unwrap();
            let e = set_hairpin("nosuch0", true).unwrap_err().to_string();
            assert!(e.contains("nosuch0"), "{e}");
        })
        .unwrap();
        // An ARP entry learnt from a ping across the wire goes with a flush.
        host.run(|| {
            let _ = std::process::Command::new("ping")
                .args(["-c", "1", "-W", "2", "203.0.113.1"])
                .output();
            let before = neighbours().unwrap();
            if before
                .iter()
                .any(|n| n.addr == Ipv4Addr::new(203, 0, 113, 1))
            {
                assert!(flush_neighbours().unwrap() >= 1);
            }
            assert!(neighbours().unwrap().iter().all(|n| n.permanent));
        })
        .unwrap();
    }
}
