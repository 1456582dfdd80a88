//! Host interface basics through socket ioctls: does a name exist, give it an IPv4 address,
//! bring it up. (Creating bridges and macvtaps needs netlink; a tap needs none of that.)

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::spec::Ipv4Cidr;

/// The interface's index in the calling thread's network namespace, if it exists.
pub fn index_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux, and sockaddr is the
    // generic view the ioctl expects of this sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(sock: &OwnedFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `req` is a valid, initialised ifreq the kernel reads/writes for these
    // interface requests; `sock` is an open socket.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `name` the address `cidr` and brings it up.
pub fn set_ipv4_and_up(name: &str, cidr: Ipv4Cidr) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(cidr.addr);
    ioctl(&sock, libc::SIOCSIFADDR, &mut req)?;
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(cidr.netmask());
    ioctl(&sock, libc::SIOCSIFNETMASK, &mut req)?;
    set_up(name)
}

/// Sets IFF_UP on `name`.
pub fn set_up(name: &str) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq_for(name)?;
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl(&sock, libc::SIOCSIFFLAGS, &mut req)
}

/// Whether `name` is up.
pub fn is_up(name: &str) -> io::Result<bool> {
    let sock = control_socket()?;
    let mut req = ifreq_for(name)?;
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Ok(flags & libc::IFF_UP as libc::c_short != 0)
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
}
