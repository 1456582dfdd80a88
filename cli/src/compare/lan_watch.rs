//! What the LAN peer sees of the guest: the source addresses of the ICMP echo requests that
//! reach it. Through NAT they come from the host's LAN address, not from the guest; the
//! scenario records it rather than assume it. A raw ICMP socket opened in the LAN host's
//! namespace gets a copy of every ICMP packet that arrives there (the kernel still answers
//! the pings itself), and is read once the measured guest has done its pings.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use net::netns::NetNs;

const ICMP_ECHO_REQUEST: u8 = 8;
/// An IPv4 header, at most 60 bytes, and the ICMP type after it: a full echo request is
/// not needed.
const PACKET_MAX: usize = 128;

/// An open watch on the echo requests arriving at `to`.
pub struct EchoWatch {
    fd: OwnedFd,
    to: Ipv4Addr,
}

impl EchoWatch {
    /// Starts watching, in the namespace `ns`, the echo requests for `to`.
    pub fn open(ns: &NetNs, to: Ipv4Addr) -> io::Result<Self> {
        let fd = ns.run(|| {
            // SAFETY: socket(2) with constant arguments; the result is checked before use.
            let raw = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_ICMP,
                )
            };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: raw is a new descriptor that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        })??;
        Ok(Self { fd, to })
    }

    /// The sources of the echo requests for the watched address that arrived since the
    /// watch opened, each once, in address order.
    pub fn sources(&self) -> BTreeSet<Ipv4Addr> {
        let mut seen = BTreeSet::new();
        let mut buf = [0u8; PACKET_MAX];
        loop {
            // SAFETY: buf is valid for PACKET_MAX bytes; a longer packet is truncated.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            // EAGAIN: every queued packet is read.
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            if let Some(src) = echo_request_source(&buf[..n], self.to) {
                seen.insert(src);
            }
        }
        seen
    }
}

/// The source of `packet` (an IPv4 packet as a raw socket gets it) when it is an ICMP echo
/// request for `to`.
pub fn echo_request_source(packet: &[u8], to: Ipv4Addr) -> Option<Ipv4Addr> {
    let first = *packet.first()?;
    let header_len = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header_len < 20 {
        return None;
    }
    let octets = |at: usize| -> Option<Ipv4Addr> {
        let b: [u8; 4] = packet.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    let (src, dst) = (octets(12)?, octets(16)?);
    let is_icmp = *packet.get(9)? == libc::IPPROTO_ICMP as u8;
    let kind = *packet.get(header_len)?;
    (is_icmp && dst == to && kind == ICMP_ECHO_REQUEST).then_some(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

    fn packet(src: [u8; 4], dst: Ipv4Addr, icmp_type: u8) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0];
        p.extend(src);
        p.extend(dst.octets());
        p.extend([icmp_type, 0, 0, 0, 0, 0, 0, 0]);
        p
    }

    #[test]
    fn only_echo_requests_for_the_peer_count() {
        let from = Ipv4Addr::new(203, 0, 113, 10);
        assert_eq!(
            echo_request_source(&packet(from.octets(), PEER, 8), PEER),
            Some(from)
        );
        // A reply, another destination, not ICMP, not IPv4, cut short, a bad header length.
        assert_eq!(echo_request_source(&packet([1; 4], PEER, 0), PEER), None);
        let other = Ipv4Addr::new(203, 0, 113, 2);
        assert_eq!(echo_request_source(&packet([1; 4], other, 8), PEER), None);
        let mut udp = packet([1; 4], PEER, 8);
        udp[9] = 17;
        assert_eq!(echo_request_source(&udp, PEER), None);
        let mut v6 = packet([1; 4], PEER, 8);
        v6[0] = 0x65;
        assert_eq!(echo_request_source(&v6, PEER), None);
        assert_eq!(
            echo_request_source(&packet([1; 4], PEER, 8)[..20], PEER),
            None
        );
        let mut short = packet([1; 4], PEER, 8);
        short[0] = 0x44;
        assert_eq!(echo_request_source(&short, PEER), None);
        assert_eq!(echo_request_source(&[], PEER), None);
    }

    /// A real raw socket in a namespace of the test's own sees a ping from that namespace's
    /// loopback, with its source.
    #[test]
    fn a_ping_in_the_namespace_is_seen_with_its_source() {
        let Ok(ns) = NetNs::new() else {
            eprintln!("skipping: cannot create a network namespace here");
            return;
        };
        if crate::compare::which("ping").is_none() {
            eprintln!("skipping: no ping");
            return;
        }
        let to = Ipv4Addr::new(127, 0, 0, 1);
        ns.run(|| net::netlink::set_up("lo")).unwrap().unwrap();
        let watch = EchoWatch::open(&ns, to).unwrap();
        assert!(watch.sources().is_empty());
        let replies = super::super::traffic::ping(Some(&ns), to, 1);
        assert_eq!(replies.len(), 1);
        assert_eq!(watch.sources().into_iter().collect::<Vec<_>>(), [to]);
    }
}
