//! NAT: names, subnets and rules built right; and, in network namespaces these tests make,
//! nft takes the rules, forwarding is switched and put back, and `cleanup` finds what a
//! dead netvmm left. Addresses come from the documentation ranges only.

use super::*;
use crate::netlink;
use crate::test_support::in_netns;

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

#[test]
fn table_names_carry_owner_tap_uplink_and_forwarding() {
    let m = TableMark {
        owner: Owner::parse("42:1000:4026532000").unwrap(),
        tap: "nvtap3".into(),
        forwarding_was: false,
        uplink: "we,ird".into(),
    };
    let name = m.name();
    assert_eq!(
        name,
        "netvmm-nat,pid=42:1000:4026532000,tap=nvtap3,fwd=0,uplink=we,ird"
    );
    assert!(name.len() < 256, "NFT_NAME_MAXLEN");
    assert_eq!(TableMark::parse(&name), Some(m));
    assert_eq!(TableMark::parse("nat"), None);
    assert_eq!(
        TableMark::parse("netvmm-nat,pid=1,tap=t,fwd=2,uplink=u"),
        None
    );
    assert_eq!(
        TableMark::parse("netvmm-nat,pid=x,tap=t,fwd=1,uplink=u"),
        None
    );
}

#[test]
fn the_default_subnet_avoids_every_route_but_the_default() {
    assert_eq!(choose_subnet(&[]), Some(cidr("203.0.113.1/30")));
    // A default route overlaps everything and is ignored; a connected /30 is skipped.
    let taken = [
        (Ipv4Addr::UNSPECIFIED, 0),
        (Ipv4Addr::new(203, 0, 113, 0), 30),
        (Ipv4Addr::new(203, 0, 113, 6), 32),
    ];
    assert_eq!(choose_subnet(&taken), Some(cidr("203.0.113.9/30")));
    // A route covering the whole first range moves to the next.
    let taken = [(Ipv4Addr::new(203, 0, 0, 0), 16)];
    assert_eq!(choose_subnet(&taken), Some(cidr("198.51.100.1/30")));
    let all: Vec<_> = POOL.iter().map(|p| (*p, 24)).collect();
    assert_eq!(choose_subnet(&all), None);
    assert!(NatError::NoFreeSubnet.to_string().contains("host-ip="));
}

#[test]
fn the_guest_takes_the_address_beside_the_host() {
    assert_eq!(guest_addr(cidr("203.0.113.1/30")), cidr("203.0.113.2/30"));
    assert_eq!(guest_addr(cidr("192.0.2.254/24")), cidr("192.0.2.253/24"));
    assert_eq!(guest_addr(cidr("192.0.2.10/24")), cidr("192.0.2.11/24"));
    assert_eq!(
        network(Ipv4Addr::new(192, 0, 2, 77), 26),
        Ipv4Addr::new(192, 0, 2, 64)
    );
}

#[test]
fn the_ruleset_masquerades_the_subnet_out_of_the_uplink_and_lets_replies_in() {
    let v = ruleset("T", "nvtap0", "eth0", cidr("203.0.113.1/30"));
    let cmds = v["nftables"].as_array().unwrap();
    assert_eq!(cmds[0]["add"]["table"]["name"], "T");
    assert_eq!(cmds[1]["add"]["chain"]["hook"], "postrouting");
    assert_eq!(cmds[1]["add"]["chain"]["type"], "nat");
    assert_eq!(cmds[2]["add"]["chain"]["hook"], "forward");
    let masq = &cmds[3]["add"]["rule"]["expr"];
    assert_eq!(masq[0]["match"]["right"]["prefix"]["addr"], "203.0.113.0");
    assert_eq!(masq[0]["match"]["right"]["prefix"]["len"], 30);
    assert_eq!(masq[1]["match"]["right"], "eth0");
    assert!(masq[2].get("masquerade").is_some());
    let replies = &cmds[5]["add"]["rule"]["expr"];
    assert_eq!(replies[0]["match"]["right"], "eth0");
    assert_eq!(replies[1]["match"]["right"], "nvtap0");
    assert_eq!(replies[2]["match"]["right"][0], "established");
    // Every rule names only netvmm's own table.
    for c in cmds {
        let obj = c["add"].as_object().unwrap().values().next().unwrap();
        let t = obj.get("table").or_else(|| obj.get("name")).unwrap();
        assert_eq!(t, "T");
    }
}

fn have_nft() -> bool {
    let ok = Command::new("nft").arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipping: no nft(8) here (Debian package nftables)");
    }
    ok
}

/// A veth `up0` (198.51.100.1/24, the default route) to stand for the host's uplink.
fn uplink() {
    netlink::create_veth("up0", "up1").unwrap();
    netlink::add_ipv4("up0", Ipv4Addr::new(198, 51, 100, 1), 24).unwrap();
    netlink::set_up("up0").unwrap();
    netlink::set_up("up1").unwrap();
}

fn tap_opener(host: Ipv4Cidr) -> Result<(crate::Tap, String), crate::backends::BackendError> {
    let tap = crate::Tap::open(None, Some(host))?;
    let name = tap.name().to_string();
    Ok((tap, name))
}

#[test]
fn two_nics_share_an_uplink_and_the_last_puts_its_forwarding_back() {
    if !have_nft() {
        return;
    }
    let r = in_netns(|| {
        uplink();
        set_forwarding("up0", false).unwrap();
        let foreign = json!({"nftables": [{"add": {"table": {"family": "ip", "name": "host"}}}]});
        apply("host", &foreign).unwrap();
        let (tap_a, a) = setup(Some("up0"), None, tap_opener).unwrap();
        let (tap_b, b) = setup(Some("up0"), None, tap_opener).unwrap();
        let both = netlink::list_tables(NFPROTO_IPV4).unwrap();
        let fwd = (
            forwarding("up0").unwrap(),
            forwarding(tap_a.name()).unwrap(),
        );
        let addrs = (a.host, b.host);
        let b_was = b.mark.forwarding_was;
        drop(a);
        let after_a = (tables().unwrap().len(), forwarding("up0").unwrap());
        drop(b);
        let after_b = (
            netlink::list_tables(NFPROTO_IPV4).unwrap(),
            forwarding("up0").unwrap(),
        );
        drop((tap_a, tap_b));
        (both, fwd, addrs, b_was, after_a, after_b)
    });
    let Some((both, fwd, addrs, b_was, after_a, after_b)) = r else {
        return;
    };
    assert_eq!(both.len(), 3, "{both:?}");
    assert_eq!(fwd, (true, true), "uplink and tap forward");
    assert_eq!(addrs.0, cidr("203.0.113.1/30"));
    assert_eq!(
        addrs.1,
        cidr("203.0.113.5/30"),
        "the second NIC sees the first's route"
    );
    assert!(
        !b_was,
        "the second records the uplink as the first found it"
    );
    assert_eq!(after_a, (1, true), "still used by the second NIC");
    assert_eq!(
        after_b.0,
        vec!["host".to_string()],
        "the host's table untouched"
    );
    assert!(!after_b.1, "forwarding put back off with the last table");
}

#[test]
fn uplinks_are_resolved_or_refused_in_one_line() {
    let r = in_netns(|| {
        let none = resolve_uplink(None).unwrap_err().to_string();
        let bad = resolve_uplink(Some("nosuch0")).unwrap_err().to_string();
        uplink();
        Command::new("ip")
            .args(["route", "add", "default", "via", "198.51.100.2"])
            .status()
            .unwrap();
        (none, bad, resolve_uplink(None).unwrap())
    });
    let Some((none, bad, found)) = r else { return };
    assert!(
        none.contains("no IPv4 default route") && !none.contains('\n'),
        "{none}"
    );
    assert!(
        bad.contains("nat=nosuch0: no such interface") && bad.contains("lo"),
        "{bad}"
    );
    assert_eq!(found, "up0");
}

#[test]
fn cleanup_removes_a_dead_owners_table_and_restores_forwarding() {
    if !have_nft() {
        return;
    }
    let r = in_netns(|| {
        uplink();
        set_forwarding("up0", true).unwrap();
        let dead = TableMark {
            owner: Owner::parse(&i32::MAX.to_string()).unwrap(),
            tap: "nvtap9".into(),
            forwarding_was: false,
            uplink: "up0".into(),
        };
        let live = TableMark {
            owner: Owner::me(),
            uplink: "up1".into(),
            ..dead.clone()
        };
        for m in [&dead, &live] {
            apply(
                &m.name(),
                &ruleset(&m.name(), &m.tap, &m.uplink, cidr("203.0.113.1/30")),
            )
            .unwrap();
        }
        let removed = cleanup_stale().unwrap();
        let left = tables().unwrap();
        let again = cleanup_stale().unwrap();
        (
            dead.name(),
            removed,
            left,
            forwarding("up0").unwrap(),
            again,
        )
    });
    let Some((dead, removed, left, fwd, again)) = r else {
        return;
    };
    assert_eq!(removed, vec![dead]);
    assert_eq!(left.len(), 1, "the live owner's table stays");
    assert!(!fwd, "up0's forwarding back off");
    assert!(again.is_empty());
}
