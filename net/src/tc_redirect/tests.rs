//! tc wiring, in network namespaces these tests make: qdiscs and redirects both ways, a
//! busy NIC refused, everything gone at drop, and what a dead netvmm left cleaned up.

use super::*;
use crate::test_support::{in_netns, owned_tap};

#[test]
fn a_tap_and_a_nic_redirect_to_each_other_and_the_nic_is_left_as_found() {
    let r = in_netns(|| {
        netlink::create_veth("nic0", "nic1").unwrap();
        let nic = netlink::link_index("nic0").unwrap().unwrap();
        let (tap, tap_index) = owned_tap();
        let w = wire("nic0", tap_index).unwrap();
        let qdiscs = (
            netlink::ingress_qdisc(nic).unwrap(),
            netlink::ingress_qdisc(tap_index).unwrap(),
        );
        let from_nic = netlink::ingress_redirects(nic).unwrap();
        let from_tap = netlink::ingress_redirects(tap_index).unwrap();
        let tap_up = netlink::link_info(tap_index).unwrap().unwrap().admin_up;
        let busy = {
            let (_t2, i2) = owned_tap();
            wire("nic0", i2).unwrap_err().to_string()
        };
        let missing = wire("nosuch0", tap_index).unwrap_err().to_string();
        drop(w);
        let after = netlink::ingress_qdisc(nic).unwrap();
        drop(tap);
        (
            qdiscs, from_nic, from_tap, tap_up, busy, missing, after, nic, tap_index,
        )
    });
    let Some((qdiscs, from_nic, from_tap, tap_up, busy, missing, after, nic, tap_index)) = r else {
        return;
    };
    assert_eq!(qdiscs, (Some("ingress".into()), Some("ingress".into())));
    assert_eq!(from_nic.len(), 1, "{from_nic:?}");
    assert_eq!(from_nic[0].target, tap_index);
    assert_eq!(from_nic[0].cookie.as_deref(), Some(COOKIE));
    assert!(["matchall", "u32"].contains(&from_nic[0].kind.as_str()));
    assert_eq!(from_tap.len(), 1, "{from_tap:?}");
    assert_eq!(from_tap[0].target, nic);
    assert!(tap_up);
    assert!(
        busy.contains("tc=nic0: it already has an ingress qdisc"),
        "{busy}"
    );
    assert!(
        missing.contains("tc=nosuch0: no such interface"),
        "{missing}"
    );
    assert_eq!(after, None, "the NIC's ingress qdisc went with the wiring");
}

#[test]
fn cleanup_frees_a_nic_whose_tap_is_gone_and_keeps_live_and_foreign_ones() {
    let r = in_netns(|| {
        for (a, b) in [("nic0", "nic1"), ("live0", "live1"), ("other0", "other1")] {
            netlink::create_veth(a, b).unwrap();
        }
        let (tap, i) = owned_tap();
        std::mem::forget(wire("nic0", i).unwrap());
        drop(tap); // as at SIGKILL: the tap vanishes with its fd
        let (live_tap, li) = owned_tap();
        let live = wire("live0", li).unwrap();
        // Someone else's ingress qdisc, no netvmm filter on it.
        let other = netlink::link_index("other0").unwrap().unwrap();
        netlink::add_ingress_qdisc(other).unwrap();
        let cleaned = cleanup_stale().unwrap();
        let state =
            |n: &str| netlink::ingress_qdisc(netlink::link_index(n).unwrap().unwrap()).unwrap();
        let left = (state("nic0"), state("live0"), state("other0"));
        drop((live, live_tap));
        (cleaned, left)
    });
    let Some((cleaned, left)) = r else { return };
    assert_eq!(cleaned, vec!["nic0 (ingress qdisc)".to_string()]);
    assert_eq!(left, (None, Some("ingress".into()), Some("ingress".into())));
}
