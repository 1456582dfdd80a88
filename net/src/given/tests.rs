//! A tap given to netvmm goes through netvmm's own backend set-up and release (with the
//! bridge watcher running, as in a VM's life) and must come out as it went in. Each test
//! runs in a fresh network namespace of its own.

use super::*;
use crate::backends::{self, HostCleanup};
use crate::iface::in_new_netns;
use crate::spec::NetSpec;
use crate::tap::Tap;
use devices::virtio::net::{NetBackend, Offloads};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TAP: &str = "thetap";

/// What "as found" compares: the master's name, IFF_UP, the addresses in order, and
/// (when nothing else holds the tap) its vnet header size and offloads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    master: Option<String>,
    up: bool,
    mtu: Option<u32>,
    addresses: Vec<String>,
    tun: Option<(libc::c_int, libc::c_uint)>,
}

/// The tap's device state, read through an attach of its own (so only while no one else
/// is attached).
fn tun_seen(name: &str) -> (libc::c_int, libc::c_uint) {
    let t = Tap::open(Some(name), None).unwrap();
    let s = t.tun_state().unwrap();
    (s.vnet_hdr_sz(), s.offloads())
}

fn seen(name: &str) -> Seen {
    seen_link(name, Some(tun_seen(name)))
}

fn seen_link(name: &str, tun: Option<(libc::c_int, libc::c_uint)>) -> Seen {
    let l = netlink::link_info(name).unwrap().unwrap();
    Seen {
        tun,
        master: l
            .master
            .map(|m| netlink::link_info(m).unwrap().unwrap().name),
        up: l.admin_up,
        mtu: l.mtu,
        addresses: netlink::addresses(l.index)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

/// A persistent tap, as `ip tuntap add` makes one.
fn persistent_tap(name: &str) {
    let t = Tap::open(Some(name), None).unwrap();
    // SAFETY: TUNSETPERSIST takes an integer argument.
    let rc = unsafe { libc::ioctl(t.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_ulong) };
    assert_eq!(rc, 0, "TUNSETPERSIST");
}

/// Bridges br-a and br-b (up), and the tap: a port of br-a, with 192.0.2.1/24, down.
fn tap_on_br_a_down() {
    for br in ["br-a", "br-b"] {
        netlink::create_bridge(br).unwrap();
        netlink::set_up(br).unwrap();
    }
    persistent_tap(TAP);
    netlink::set_master(TAP, "br-a").unwrap();
    netlink::add_ipv4(TAP, "192.0.2.1".parse().unwrap(), 24).unwrap();
    netlink::set_down(TAP).unwrap();
}

/// The tap's state before netvmm, while netvmm had it, after netvmm let it go, and
/// whether it was ever seen on br-b in the 3 s after (br-b being deleted and created again
/// meanwhile, which a live watcher answers by putting the tap back).
struct Lifecycle {
    before: Seen,
    during: Seen,
    after: Seen,
    on_br_b_after: bool,
}

/// What a guest's driver makes the device do to the tap on activation.
fn guest_driver(tap: &mut Tap) {
    tap.set_vnet_hdr_len(12).unwrap();
    tap.set_offloads(Offloads {
        csum: true,
        tso4: true,
        tso6: true,
    })
    .unwrap();
}

/// Sets the given tap up with `prepare`, opens `spec` for it as `netvmm run` does (backend,
/// cleanup, bridge watcher, the guest's driver), then releases it while the watcher runs.
fn lifecycle(spec: &str, prepare: fn()) -> Option<Lifecycle> {
    let spec: NetSpec = spec.parse().unwrap();
    let r = in_new_netns(move || {
        prepare();
        let before = seen(TAP);
        let mut cleanup = HostCleanup::default();
        let mut tap = cleanup.adopt(backends::open(&spec, 0).unwrap()).tap;
        let watcher = cleanup.bridge_watcher().unwrap();
        guest_driver(&mut tap);
        let during = seen_link(TAP, None);
        // As the VMM does: its event loop, and the watcher with it, ends first.
        drop(watcher);
        drop(cleanup);
        netlink::delete_link("br-b").unwrap();
        netlink::create_bridge("br-b").unwrap();
        let mut on_br_b_after = false;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until && !on_br_b_after {
            on_br_b_after = seen_link(TAP, None).master.as_deref() == Some("br-b");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The device's fd closes last, as at the end of the process.
        drop(tap);
        Lifecycle {
            before,
            during,
            after: seen(TAP),
            on_br_b_after,
        }
    });
    match r {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("skipping: cannot create a network namespace here: {e}");
            None
        }
    }
}

#[test]
fn a_given_bridge_port_leaves_br_b_for_good_and_returns_to_br_a_as_it_was() {
    let Some(l) = lifecycle("bridge=br-b,tap=thetap", tap_on_br_a_down) else {
        return;
    };
    assert_eq!(
        l.during.master.as_deref(),
        Some("br-b"),
        "set up: {:?}",
        l.during
    );
    assert!(l.during.up);
    assert!(!l.on_br_b_after, "put back on br-b after its release");
    assert_eq!(l.after, l.before);
}

#[test]
fn a_given_tap_with_host_ip_gets_its_own_address_and_state_back() {
    let Some(l) = lifecycle("tap=thetap,host-ip=198.51.100.1/24", tap_on_br_a_down) else {
        return;
    };
    assert!(l.during.addresses.contains(&"198.51.100.1/24".to_string()));
    assert!(!l.during.addresses.contains(&"192.0.2.1/24".to_string()));
    assert!(l.during.up);
    assert_eq!(l.after, l.before);
}

#[test]
fn a_given_bridge_port_runs_at_the_guests_mtu_and_gets_its_own_back() {
    let Some(l) = lifecycle("bridge=br-b,tap=thetap,mtu=9000", tap_on_br_a_down) else {
        return;
    };
    assert_eq!(l.before.mtu, Some(1500));
    assert_eq!(l.during.mtu, Some(9000));
    assert_eq!(l.after, l.before);
}

#[test]
fn bridge_ports_below_the_guests_mtu_are_named_in_one_line() {
    let r = in_new_netns(|| {
        netlink::create_bridge("br-a").unwrap();
        netlink::create_veth("va0", "va1").unwrap();
        netlink::create_veth("vb0", "vb1").unwrap();
        netlink::set_mtu("vb0", 9000).unwrap();
        for port in ["va0", "vb0"] {
            netlink::set_master(port, "br-a").unwrap();
        }
        let mut notes = Vec::new();
        for mtu in [1500, 9000] {
            let spec: NetSpec = format!("bridge=br-a,mtu={mtu}").parse().unwrap();
            let o = backends::open(&spec, 0).unwrap();
            let tap_mtu = netlink::link_info(o.tap.name()).unwrap().unwrap().mtu;
            notes.push((tap_mtu, o.notes.clone()));
        }
        notes
    });
    let Ok(notes) = r else {
        return;
    };
    // At 1500 every port is fine; at 9000 va0 and the bridge (at its ports' minimum) are not.
    assert_eq!(notes[0], (Some(1500), vec![]));
    let (tap_mtu, lines) = &notes[1];
    assert_eq!(*tap_mtu, Some(9000));
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(
        line.contains("va0 (1500)") && line.contains("br-a (1500)") && line.contains("9000"),
        "{line}"
    );
    assert!(!line.contains("vb0"), "{line}");
}

#[test]
fn a_given_tap_that_was_up_and_on_no_bridge_ends_so() {
    fn up_alone() {
        for br in ["br-a", "br-b"] {
            netlink::create_bridge(br).unwrap();
            netlink::set_up(br).unwrap();
        }
        persistent_tap(TAP);
        netlink::add_ipv4(TAP, "203.0.113.1".parse().unwrap(), 24).unwrap();
        netlink::set_up(TAP).unwrap();
    }
    let Some(l) = lifecycle("bridge=br-b,tap=thetap", up_alone) else {
        return;
    };
    assert_eq!(l.before.master, None);
    assert!(l.before.up);
    assert!(!l.on_br_b_after);
    assert_eq!(l.after, l.before);
}

#[test]
fn a_failed_later_step_puts_the_given_tap_back_too() {
    // bridge=br-b with br-b missing fails after nothing was changed; a macvtap that fails
    // after the tap was enslaved is the vmm's case: the cleanup drops with an error, the
    // watcher never having started.
    let r = in_new_netns(|| {
        tap_on_br_a_down();
        let before = seen(TAP);
        let mut cleanup = HostCleanup::default();
        let first: NetSpec = "bridge=br-b,tap=thetap".parse().unwrap();
        let second: NetSpec = "macvtap=doesnotexist".parse().unwrap();
        let tap = cleanup.adopt(backends::open(&first, 0).unwrap()).tap;
        assert!(backends::open(&second, 1).is_err());
        drop(cleanup);
        drop(tap);
        (before, seen(TAP))
    });
    let Ok((before, after)) = r else {
        return;
    };
    assert_eq!(after, before);
}

#[test]
fn restore_reports_what_it_cannot_put_back() {
    let r = in_new_netns(|| {
        tap_on_br_a_down();
        let mut given = GivenLink::record(TAP).unwrap().unwrap();
        netlink::set_master(TAP, "br-b").unwrap();
        netlink::delete_link("br-a").unwrap();
        let err = given.restore().unwrap_err().to_string();
        // Once is enough: the second call (and the drop) do nothing.
        assert!(given.restore().is_ok());
        err
    });
    let Ok(err) = r else {
        return;
    };
    assert!(
        err.starts_with("thetap could not be left as found: "),
        "{err}"
    );
}

#[test]
fn a_missing_link_has_nothing_to_record() {
    let r = in_new_netns(|| GivenLink::record("nosuchtap").unwrap().is_none());
    if let Ok(none) = r {
        assert!(none);
    }
}

#[test]
fn a_macvtap_takes_an_mtu_up_to_its_parents_and_refuses_more_in_one_line() {
    let r = in_new_netns(|| {
        netlink::create_veth("vp0", "vp1").unwrap();
        netlink::set_up("vp0").unwrap();
        let ok: NetSpec = "macvtap=vp0,mtu=1400".parse().unwrap();
        let o = backends::open(&ok, 0).unwrap();
        let mtu = netlink::link_info(o.tap.name()).unwrap().unwrap().mtu;
        drop(o);
        let big: NetSpec = "macvtap=vp0,mtu=9000".parse().unwrap();
        let e = backends::open(&big, 0).unwrap_err().to_string();
        let left = netlink::list_links()
            .unwrap()
            .into_iter()
            .filter(|l| l.kind.as_deref() == Some("macvtap"))
            .count();
        (mtu, e, left)
    });
    let Ok((mtu, e, left)) = r else {
        return;
    };
    assert_eq!(mtu, Some(1400));
    assert!(
        e.contains("mtu=9000") && e.contains("vp0") && e.contains("1500") && !e.contains('\n'),
        "{e}"
    );
    assert_eq!(left, 0, "the refused macvtap was left behind");
}
