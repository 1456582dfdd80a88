//! Tap backend tests. Each runs in a fresh network namespace of its own (only the test's
//! thread moves there), so the host's interfaces are never touched.

use super::*;
use crate::iface::{in_new_netns, index_of};
use std::time::{Duration, Instant};

const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match in_new_netns(f) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("skipping: cannot create a network namespace here: {e}");
            None
        }
    }
}

fn recv_within(tap: &mut Tap, buf: &mut [u8], limit: Duration) -> Option<usize> {
    let start = Instant::now();
    while start.elapsed() < limit {
        match tap.recv(buf) {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
    None
}

/// A 12-byte vnet header (no offload) followed by an ARP request from 192.0.2.2 asking
/// for 192.0.2.1.
fn arp_request(src_mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[192, 0, 2, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[192, 0, 2, 1]);
    f
}

#[test]
fn generated_tap_is_created_and_vanishes_with_its_fd() {
    let Some(r) = in_netns(|| {
        let tap = Tap::open(None, None).unwrap();
        assert!(tap.created());
        assert!(tap.name().starts_with("nvtap"), "{}", tap.name());
        let name = tap.name().to_string();
        assert!(index_of(&name).is_some());
        drop(tap);
        index_of(&name)
    }) else {
        return;
    };
    assert_eq!(r, None, "tap created by netvmm must disappear");
}

#[test]
fn frames_cross_the_tap_both_ways() {
    let Some(reply) = in_netns(|| {
        let cidr: Ipv4Cidr = "192.0.2.1/24".parse().unwrap();
        let mut tap = Tap::open(Some("nvtest0"), Some(cidr)).unwrap();
        assert!(crate::iface::is_up("nvtest0").unwrap());
        tap.set_vnet_hdr_len(12).unwrap();
        tap.set_offloads(Offloads {
            csum: true,
            tso4: true,
            tso6: true,
        })
        .unwrap();
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let frame = arp_request(mac);
        let iov = [libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        }];
        // SAFETY: `frame` outlives the call and is readable for its length.
        let sent = unsafe { tap.send(&iov) }.unwrap();
        assert_eq!(sent, frame.len());
        let mut buf = vec![0u8; 2048];
        // The host may first send IPv6 router solicitations etc.; look for the ARP reply.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let Some(n) = recv_within(&mut tap, &mut buf, Duration::from_secs(5)) else {
                break;
            };
            let eth = &buf[12..n];
            if eth.len() >= 42 && eth[12..14] == [0x08, 0x06] && eth[20..22] == [0, 2] {
                return Some(eth.to_vec());
            }
        }
        None
    }) else {
        return;
    };
    let eth = reply.expect("the host answered the ARP request through the tap");
    assert_eq!(
        &eth[0..6],
        &[0x52, 0x54, 0, 0x12, 0x34, 0x56],
        "reply to our MAC"
    );
    assert_eq!(&eth[28..32], &[192, 0, 2, 1], "sender is the host address");
}

#[test]
fn attaching_to_an_existing_tap_leaves_it_in_place() {
    let Some((created, still_there)) = in_netns(|| {
        // Make a persistent tap, as `ip tuntap add` would.
        let first = Tap::open(Some("nvkeep0"), None).unwrap();
        // SAFETY: TUNSETPERSIST takes an integer argument.
        assert_eq!(
            unsafe { libc::ioctl(first.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_ulong) },
            0
        );
        drop(first);
        let again = Tap::open(Some("nvkeep0"), None).unwrap();
        let created = again.created();
        // SAFETY: as above; undo persistence so the namespace can go away cleanly.
        unsafe { libc::ioctl(again.as_raw_fd(), TUNSETPERSIST as _, 0 as libc::c_ulong) };
        let still_there = index_of("nvkeep0").is_some();
        (created, still_there)
    }) else {
        return;
    };
    assert!(!created, "an existing tap is attached, not created");
    assert!(still_there);
}

#[test]
fn inherited_fds_are_checked() {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let e = Tap::from_fd(fds[0]).unwrap_err().to_string();
    assert!(e.starts_with(&format!("fd {} is not a tap", fds[0])), "{e}");
    // SAFETY: closing the pipe we made.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    let e = Tap::from_fd(987).unwrap_err().to_string();
    assert!(
        e.contains("fd 987") && e.contains("not an open descriptor"),
        "{e}"
    );

    let Some(msg) = in_netns(|| {
        // A tap without IFF_VNET_HDR.
        // SAFETY: constant path; result checked.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(fd >= 0);
        let mut req = crate::iface::ifreq_for("nvplain0").unwrap();
        req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
        // SAFETY: TUNSETIFF with a valid ifreq.
        assert_eq!(
            unsafe { libc::ioctl(fd, TUNSETIFF as _, &mut req as *mut libc::ifreq) },
            0
        );
        let e = Tap::from_fd(fd).unwrap_err().to_string();
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
        e
    }) else {
        return;
    };
    assert!(msg.contains("IFF_VNET_HDR"), "{msg}");
}

#[test]
fn bad_name_and_missing_tun_are_named() {
    let e = Tap::open(Some("x".repeat(20).as_str()), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("xxxxxxxx"), "{e}");
}

#[test]
fn naming_an_interface_that_is_no_tap_says_so() {
    let Some((lo, br)) = in_netns(|| {
        crate::netlink::create_bridge("nvbr0").unwrap();
        let err = |name| Tap::open(Some(name), None).unwrap_err().to_string();
        (err("lo"), err("nvbr0"))
    }) else {
        return;
    };
    assert!(lo.contains("lo exists and is not a tap"), "{lo}");
    assert!(
        br.contains("nvbr0 exists and is not a tap (it is a bridge)"),
        "{br}"
    );
}

#[test]
fn multi_queue_tap_opens_one_fd_per_queue_and_detaches_queues() {
    let Some(r) = in_netns(|| {
        let queues = Tap::open_mq(None, None, 3).unwrap();
        assert_eq!(queues.len(), 3);
        let name = queues[0].name().to_string();
        assert!(queues.iter().all(|q| q.name() == name));
        assert!(queues[0].created() && !queues[1].created());
        // (sysfs shows the mount's namespace, not this thread's: the queues are checked
        // through the kernel's answers instead.)
        // Detach and attach again; a second detach is the kernel's EINVAL.
        queues[2].set_queue_attached(false).unwrap();
        assert!(queues[2].set_queue_attached(false).is_err());
        queues[2].set_queue_attached(true).unwrap();
        // A tap made with one queue cannot take more: one line naming it.
        let single = Tap::open(Some("nvsingle0"), None).unwrap();
        let e = Tap::open_mq(Some("nvsingle0"), None, 2)
            .unwrap_err()
            .to_string();
        drop(single);
        e
    }) else {
        return;
    };
    assert!(r.contains("nvsingle0") && r.contains("multi_queue"), "{r}");
    assert!(!r.contains('\n'), "{r}");
}
