//! Host interface basics for a tap: does a name exist, the `ifreq` that names it, give it
//! an IPv4 address and bring it up (through `netlink`).

use std::ffi::CString;
use std::io;
use std::net::IpAddr;

use crate::netlink::{self, NetlinkError};
use crate::spec::Ipv4Cidr;

/// The interface's index in the calling thread's network namespace, if it exists.
pub fn index_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// An `ifreq` naming `name`, which must pass [`crate::names::check_ifname`] (a tap name
/// template such as `nvtap%d` does).
pub fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    crate::names::check_ifname(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// Makes `cidr` the IPv4 address of `name`, replacing those it held (as SIOCSIFADDR did to
/// the primary one; a tap netvmm is given keeps its own, and gets them back, see `given`),
/// and brings it up.
pub fn set_ipv4_and_up(name: &str, cidr: Ipv4Cidr) -> io::Result<()> {
    let mut held = false;
    for a in netlink::addresses(name).map_err(io_error)? {
        match a.addr() {
            Some(IpAddr::V4(v4)) if (v4, a.prefix()) == (cidr.addr, cidr.prefix) => held = true,
            Some(IpAddr::V4(_)) => match netlink::delete_address(name, &a) {
                // Deleting a primary took its secondaries with it.
                Err(e) if e.os_error() == Some(libc::EADDRNOTAVAIL) => {}
                r => r.map_err(io_error)?,
            },
            _ => {}
        }
    }
    if !held {
        netlink::add_ipv4(name, cidr.addr, cidr.prefix).map_err(io_error)?;
    }
    netlink::set_up(name).map_err(io_error)
}

/// Whether `name` is up.
pub fn is_up(name: &str) -> io::Result<bool> {
    match netlink::link_info(name).map_err(io_error)? {
        Some(l) => Ok(l.admin_up),
        None => Err(io::ErrorKind::NotFound.into()),
    }
}

/// A netlink failure as the plain error of this module's callers, who name the action
/// themselves: the errno where there is one.
fn io_error(e: NetlinkError) -> io::Error {
    match e.os_error() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
pub(crate) use crate::test_support::in_new_netns;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ifreq_is_made_only_for_a_valid_name() {
        assert!(ifreq_for("nvtap%d").is_ok());
        for bad in ["", "sixteen-chars-xx", "a\u{1}b", "a/b", "a\0b"] {
            assert!(ifreq_for(bad).is_err(), "{bad:?}");
        }
    }

    /// The IPv4 addresses of `dev` (a bridge: no /dev/net/tun needed) as "a/p brd b".
    fn v4(dev: &str) -> Vec<String> {
        netlink::addresses(dev)
            .unwrap()
            .iter()
            .filter(|a| a.addr().is_some_and(|a| a.is_ipv4()))
            .map(|a| format!("{a} brd {:?}", a.broadcast()))
            .collect()
    }

    /// Runs `f` on a fresh bridge `br0` in a namespace of its own.
    fn on_a_bridge(f: impl FnOnce() + Send + 'static) {
        let r = in_new_netns(|| {
            netlink::create_bridge("br0").unwrap();
            f()
        });
        if let Err(e) = r {
            eprintln!("skipping: cannot create a network namespace here: {e}");
        }
    }

    #[test]
    fn an_address_comes_with_its_broadcast_and_the_link_goes_up() {
        on_a_bridge(|| {
            set_ipv4_and_up("br0", "192.0.2.1/24".parse().unwrap()).unwrap();
            assert_eq!(v4("br0"), ["192.0.2.1/24 brd Some(192.0.2.255)"]);
            assert!(is_up("br0").unwrap());
        });
    }

    #[test]
    fn an_address_replaces_those_the_link_held() {
        on_a_bridge(|| {
            netlink::add_ipv4("br0", "203.0.113.5".parse().unwrap(), 24).unwrap();
            netlink::add_ipv4("br0", "203.0.113.6".parse().unwrap(), 24).unwrap();
            set_ipv4_and_up("br0", "198.51.100.1/30".parse().unwrap()).unwrap();
            assert_eq!(v4("br0"), ["198.51.100.1/30 brd Some(198.51.100.3)"]);
        });
    }

    #[test]
    fn an_address_the_link_holds_already_is_kept() {
        on_a_bridge(|| {
            let cidr = "192.0.2.9/32".parse().unwrap();
            set_ipv4_and_up("br0", cidr).unwrap();
            set_ipv4_and_up("br0", cidr).unwrap();
            assert_eq!(v4("br0"), ["192.0.2.9/32 brd None"]);
        });
    }

    #[test]
    fn a_missing_link_says_so() {
        on_a_bridge(|| {
            let e = set_ipv4_and_up("nosuch0", "192.0.2.1/24".parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains("nosuch0"), "{e}");
            assert_eq!(
                is_up("nosuch0").unwrap_err().kind(),
                io::ErrorKind::NotFound
            );
        });
    }
}
