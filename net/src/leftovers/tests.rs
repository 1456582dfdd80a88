//! What a dead netvmm left, found in a network namespace the test makes: each kind is
//! listed, live and foreign things are not, and after every `cleanup_stale` nothing is.

use super::*;
use crate::netlink;
use crate::owned::{owner_alias, OWNER_ALIAS_PREFIX};
use crate::shim::SHIM_ALIAS_PREFIX;
use crate::test_support::{in_netns, owned_tap};

#[test]
fn the_line_names_each_thing_by_kind() {
    let all = Leftovers {
        links: vec!["nvmvt0".into(), "nvmvt1".into()],
        shims: vec!["nvshim4".into()],
        nat_tables: vec!["netvmm-nat,pid=9,tap=nvtap0,fwd=0,uplink=eth0".into()],
        tc_nics: vec!["eth\u{1b}1".into()],
    };
    assert_eq!(
        all.to_string(),
        "interfaces nvmvt0, nvmvt1; host-access shim nvshim4; nftables table \
         'netvmm-nat,pid=9,tap=nvtap0,fwd=0,uplink=eth0'; tc redirect on eth\\u{1b}1"
    );
    assert!(!all.is_empty());
    let tc_only = Leftovers {
        tc_nics: vec!["a".into(), "b".into()],
        ..Leftovers::default()
    };
    assert_eq!(tc_only.to_string(), "tc redirects on a, b");
    assert!(Leftovers::default().is_empty());
    assert_eq!(Leftovers::default().to_string(), "");
}

fn have_nft() -> bool {
    std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok()
}

fn bare_table(name: &str) {
    let rules =
        serde_json::json!({"nftables": [{"add": {"table": {"family": "ip", "name": name}}}]});
    crate::nat::apply(name, &rules).unwrap();
}

#[test]
fn every_kind_a_dead_netvmm_left_is_found_and_nothing_after_cleanup() {
    let nft = have_nft();
    let r = in_netns(move || {
        let gone = i32::MAX;
        // Links: one of a dead owner, one of this (live) process, one not netvmm's.
        netlink::create_bridge("nvst0").unwrap();
        netlink::set_alias("nvst0", &format!("{OWNER_ALIAS_PREFIX}{gone}")).unwrap();
        netlink::create_bridge("nvlive0").unwrap();
        netlink::set_alias("nvlive0", &owner_alias()).unwrap();
        netlink::create_bridge("other0").unwrap();
        netlink::set_alias("other0", "not ours").unwrap();
        // Shims: one whose only user is gone, one with a live user.
        netlink::create_bridge("nvshim90").unwrap();
        netlink::set_alias("nvshim90", &format!("{SHIM_ALIAS_PREFIX}{gone}")).unwrap();
        let me = crate::owned::Owner::me();
        netlink::create_bridge("nvshim91").unwrap();
        netlink::set_alias("nvshim91", &format!("{SHIM_ALIAS_PREFIX}{gone},{me}")).unwrap();
        // NAT tables: a dead owner's, a live one's, and the host's own.
        let mark = |owner: crate::owned::Owner| crate::nat::TableMark {
            owner,
            tap: "nvtap9".into(),
            forwarding_was: true,
            uplink: "up0".into(),
        };
        let dead_table = mark(crate::owned::Owner::parse(&gone.to_string()).unwrap()).name();
        if nft {
            bare_table(&dead_table);
            bare_table(&mark(me).name());
            bare_table("hosts_own");
        }
        // tc: a NIC wired to a tap that went with its fd (as at SIGKILL), one wired to a
        // live tap, one with an ingress qdisc of someone else's.
        for (a, b) in [
            ("nic0", "nic1"),
            ("live0", "live1"),
            ("foreign0", "foreign1"),
        ] {
            netlink::create_veth(a, b).unwrap();
        }
        let (tap, i) = owned_tap();
        std::mem::forget(crate::tc_redirect::wire("nic0", i).unwrap());
        drop(tap);
        let (live_tap, li) = owned_tap();
        let live = crate::tc_redirect::wire("live0", li).unwrap();
        netlink::add_ingress_qdisc(netlink::link_index("foreign0").unwrap().unwrap()).unwrap();

        let found = Leftovers::find();
        crate::tc_redirect::cleanup_stale().unwrap();
        crate::owned::cleanup_stale().unwrap();
        crate::shim::cleanup_stale().unwrap();
        if nft {
            crate::nat::cleanup_stale().unwrap();
        }
        let after = Leftovers::find();
        let tables = crate::nat::tables().unwrap_or_default().len();
        drop((live, live_tap));
        (found, after, dead_table, tables)
    });
    let Some((found, after, dead_table, tables)) = r else {
        return;
    };
    let expected = Leftovers {
        links: vec!["nvst0".into()],
        shims: vec!["nvshim90".into()],
        nat_tables: if nft { vec![dead_table] } else { vec![] },
        tc_nics: vec!["nic0".into()],
    };
    assert_eq!(found, expected);
    assert_eq!(
        after,
        Leftovers::default(),
        "cleanup removes what was found"
    );
    if nft {
        assert_eq!(tables, 1, "the live owner's table stays");
    } else {
        eprintln!("no nft(8) here: NAT tables not checked");
    }
}
