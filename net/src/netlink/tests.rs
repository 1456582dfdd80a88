//! rtnetlink tests. Each runs in a fresh network namespace of its own (only the test's
//! thread moves there, and every netlink socket is opened on that thread), so the host's
//! interfaces are never touched. Addresses come from the documentation ranges only.

use super::conn::split_datagram;
use super::*;
use crate::mac::MacAddr;
use crate::tap::Tap;
use crate::test_support::in_netns;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn info(dev: &str) -> LinkInfo {
    link_info(dev)
        .unwrap()
        .unwrap_or_else(|| panic!("{dev} does not exist"))
}

const MAC_A: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x01]);

/// Reads events until `done` holds for everything read so far, or panics after 5 s.
fn events_until(
    mon: &mut LinkMonitor,
    what: &str,
    done: impl Fn(&[LinkEvent]) -> bool,
) -> Vec<LinkEvent> {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        seen.extend(mon.poll_events().unwrap());
        if done(&seen) {
            return seen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}; saw {seen:#?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn is_new(e: &LinkEvent, name: &str) -> Option<LinkInfo> {
    match e {
        LinkEvent::New(l) if l.name == name => Some(l.clone()),
        _ => None,
    }
}

#[test]
fn loopback_is_listed_and_has_no_kind() {
    in_netns(|| {
        let lo = info("lo");
        assert_eq!(link_index("lo").unwrap(), Some(lo.index));
        assert_eq!(lo.kind, None);
        assert!(!lo.admin_up, "a fresh namespace has lo down");
        assert_eq!(link_info(lo.index).unwrap().unwrap().name, "lo");
        let all = list_links().unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(bridges().unwrap().is_empty());
        set_up("lo").unwrap();
        assert!(info("lo").admin_up);
    });
}

#[test]
fn bridge_and_tap_enslave_and_release() {
    in_netns(|| {
        let br = create_bridge("br0").unwrap();
        let tap = Tap::open(Some("nvtap0"), None).unwrap();
        let b = info("br0");
        assert_eq!(b.index, br);
        assert_eq!(b.kind.as_deref(), Some("bridge"));
        assert!(b.is_bridge());
        let t = info(tap.name());
        assert_eq!(t.kind.as_deref(), Some("tun"));
        assert_eq!(t.master, None);
        assert_eq!(bridges().unwrap(), vec!["br0".to_string()]);

        set_master("nvtap0", br).unwrap();
        assert_eq!(info("nvtap0").master, Some(br));
        set_up("nvtap0").unwrap();
        set_up("br0").unwrap();
        let (t, b) = (info("nvtap0"), info("br0"));
        assert!(t.admin_up && b.admin_up);
        // The tap's fd is open, so it has carrier and the bridge port comes up.
        assert!(t.oper_up, "{t:?}");

        // Enslaving again to the same bridge is a no-op; by name works as well.
        set_master("nvtap0", "br0").unwrap();
        set_nomaster("nvtap0").unwrap();
        assert_eq!(info("nvtap0").master, None);
        set_nomaster("nvtap0").unwrap();
        set_master(t.index, "br0").unwrap();
        assert_eq!(info("nvtap0").master, Some(br));

        set_down("br0").unwrap();
        assert!(!info("br0").admin_up);
        drop(tap);
        assert_eq!(link_index("nvtap0").unwrap(), None);
    });
}

#[test]
fn enslaving_names_what_is_missing_or_wrong() {
    in_netns(|| {
        let br = create_bridge("br0").unwrap();
        let _tap = Tap::open(Some("nvtap0"), None).unwrap();

        let e = set_master("nvtap0", "nobr0").unwrap_err();
        assert!(e.is_no_such_device());
        assert_eq!(
            e.to_string(),
            "cannot enslave nvtap0 to nobr0: no interface named nobr0"
        );

        let e = set_master("ghost0", br).unwrap_err();
        assert!(e.is_no_such_device());
        assert_eq!(
            e.to_string(),
            "cannot enslave ghost0 to br0: no interface named ghost0"
        );

        let e = set_master("nvtap0", 4242u32).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "cannot enslave nvtap0 to ifindex 4242: no interface with ifindex 4242"
            ),
            "{e}"
        );

        create_veth("veth0", "veth1").unwrap();
        let e = set_master("nvtap0", "veth0").unwrap_err();
        assert!(matches!(e, NetlinkError::NotAMaster { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "cannot enslave nvtap0 to veth0: veth0 is a veth, which cannot take ports \
             (bridges can)"
        );

        let e = set_nomaster("ghost0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot release ghost0 from its bridge: no interface named ghost0"
        );
    });
}

#[test]
fn veth_pair_points_at_its_peer() {
    in_netns(|| {
        let (a, b) = create_veth("lan0", "peer0").unwrap();
        let (ia, ib) = (info("lan0"), info("peer0"));
        assert_eq!((ia.index, ib.index), (a, b));
        assert_eq!(ia.kind.as_deref(), Some("veth"));
        assert_eq!(ib.kind.as_deref(), Some("veth"));
        assert_eq!(ia.parent, Some(b));
        assert_eq!(ib.parent, Some(a));
        assert!(ia.mac.is_some());
        // Deleting one end takes the other with it.
        delete_link("lan0").unwrap();
        assert_eq!(link_index("peer0").unwrap(), None);
    });
}

#[test]
fn macvtap_in_each_mode() {
    in_netns(|| {
        let (lan, _) = create_veth("lan0", "peer0").unwrap();
        for mode in [MacvtapMode::Bridge, MacvtapMode::Vepa, MacvtapMode::Private] {
            let m = create_macvtap("nvmvt%d", lan, mode, Some(MAC_A)).unwrap();
            assert_eq!(m.name, "nvmvt0");
            let i = info(&m.name);
            assert_eq!(i.index, m.index);
            assert_eq!(i.kind.as_deref(), Some("macvtap"), "{i:?}");
            assert_eq!(i.macvlan_mode, Some(mode), "{i:?}");
            assert_eq!(i.parent, Some(lan));
            assert_eq!(i.mac, Some(MAC_A));
            assert!(!i.admin_up);
            set_up(m.index).unwrap();
            assert!(info(&m.name).admin_up);
            delete_link(m.index).unwrap();
            assert_eq!(link_index(&m.name).unwrap(), None);
        }

        let (lan2, _) = create_veth("lan1", "peer1").unwrap();
        let parent_mac = info("lan1").mac.unwrap();
        let p = create_macvtap("nvmvt%d", "lan1", MacvtapMode::Passthru, None).unwrap();
        let i = info(&p.name);
        assert_eq!(i.kind.as_deref(), Some("macvtap"));
        assert_eq!(i.macvlan_mode, Some(MacvtapMode::Passthru));
        assert_eq!(i.parent, Some(lan2));
        // passthru takes the parent's address.
        assert_eq!(i.mac, Some(parent_mac));
        delete_link(&p.name).unwrap();
    });
}

#[test]
fn macvtap_names_from_a_template_skip_taken_ones() {
    in_netns(|| {
        create_veth("lan0", "peer0").unwrap();
        let a = create_macvtap("nvmvt%d", "lan0", MacvtapMode::Bridge, None).unwrap();
        let b = create_macvtap("nvmvt%d", "lan0", MacvtapMode::Bridge, None).unwrap();
        assert_eq!((a.name.as_str(), b.name.as_str()), ("nvmvt0", "nvmvt1"));
        assert_ne!(a.index, b.index);
        delete_link("nvmvt0").unwrap();
        let c = create_macvtap("nvmvt%d", "lan0", MacvtapMode::Bridge, None).unwrap();
        assert_eq!(c.name, "nvmvt0");
        let d = create_macvtap("mv-fixed", "lan0", MacvtapMode::Vepa, None);
        // The kernel allows any mix of bridge/vepa/private on one parent.
        assert_eq!(d.unwrap().name, "mv-fixed");
        let e = create_macvtap("mv-fixed", "lan0", MacvtapMode::Vepa, None).unwrap_err();
        assert_eq!(e.os_error(), Some(libc::EEXIST));
        assert!(
            e.to_string()
                .starts_with("cannot create macvtap mv-fixed on lan0 (mode vepa): "),
            "{e}"
        );
    });
}

#[test]
fn passthru_takes_its_parent_alone() {
    in_netns(|| {
        create_veth("lan0", "peer0").unwrap();
        let p = create_macvtap("nvmvt%d", "lan0", MacvtapMode::Passthru, None).unwrap();
        let e = create_macvtap("nvmvt%d", "lan0", MacvtapMode::Passthru, None).unwrap_err();
        assert!(matches!(e, NetlinkError::PassthruBusy { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "cannot create macvtap nvmvt1 on lan0 (mode passthru): lan0 already carries \
             nvmvt0 (macvtap passthru); a passthru macvtap/macvlan takes its parent for \
             itself alone"
        );
        let e = create_macvlan("shim0", "lan0", MacvtapMode::Bridge, None).unwrap_err();
        assert!(matches!(e, NetlinkError::PassthruBusy { .. }), "{e:?}");
        // Nothing was left behind by the failed attempts.
        let names: Vec<String> = list_links().unwrap().into_iter().map(|l| l.name).collect();
        assert!(
            !names.iter().any(|n| n == "nvmvt1" || n == "shim0"),
            "{names:?}"
        );
        delete_link(&p.name).unwrap();

        // And the other way round: passthru next to a bridge-mode macvtap.
        create_macvtap("nvmvt%d", "lan0", MacvtapMode::Bridge, None).unwrap();
        let e = create_macvtap("nvmvt%d", "lan0", MacvtapMode::Passthru, None).unwrap_err();
        assert!(matches!(e, NetlinkError::PassthruBusy { .. }), "{e:?}");
        assert!(e.to_string().contains("nvmvt0 (macvtap bridge)"), "{e}");
    });
}

#[test]
fn macvlan_for_a_host_shim() {
    in_netns(|| {
        let (lan, _) = create_veth("lan0", "peer0").unwrap();
        let s = create_macvlan("shim0", "lan0", MacvtapMode::Bridge, Some(MAC_A)).unwrap();
        let i = info("shim0");
        assert_eq!(i.index, s.index);
        assert_eq!(i.kind.as_deref(), Some("macvlan"));
        assert_eq!(i.macvlan_mode, Some(MacvtapMode::Bridge));
        assert_eq!(i.parent, Some(lan));
        assert_eq!(i.mac, Some(MAC_A));
    });
}

#[test]
fn macvtap_on_a_bad_parent_names_it() {
    in_netns(|| {
        let e = create_macvtap("nvmvt%d", "ghost0", MacvtapMode::Bridge, None).unwrap_err();
        assert!(e.is_no_such_device());
        assert_eq!(
            e.to_string(),
            "cannot create macvtap nvmvt%d on ghost0 (mode bridge): no interface named ghost0"
        );
        // Neither loopback nor a layer-3 tun can carry a macvlan.
        let e = create_macvtap("nvmvt%d", "lo", MacvtapMode::Bridge, None).unwrap_err();
        assert!(matches!(e, NetlinkError::ParentUnfit { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "cannot create macvtap nvmvt0 on lo (mode bridge): lo cannot carry a \
             macvtap/macvlan: it is not an Ethernet device"
        );
        assert!(list_links().unwrap().iter().all(|l| l.name == "lo"));
        assert!(!info("lo").ethernet);

        create_veth("lan0", "peer0").unwrap();
        let e = create_macvtap("a%db%d", "lan0", MacvtapMode::Bridge, None).unwrap_err();
        assert!(matches!(e, NetlinkError::BadName { .. }), "{e:?}");
        let e =
            create_macvtap("nvmvt%d-is-too-long", "lan0", MacvtapMode::Bridge, None).unwrap_err();
        assert!(matches!(e, NetlinkError::NoFreeName { .. }), "{e:?}");
    });
}

#[test]
fn delete_by_name_and_index_and_missing() {
    in_netns(|| {
        let a = create_bridge("br0").unwrap();
        create_bridge("br1").unwrap();
        delete_link(a).unwrap();
        delete_link("br1").unwrap();
        assert_eq!(link_index("br0").unwrap(), None);
        assert_eq!(link_index("br1").unwrap(), None);

        let e = delete_link("ghost0").unwrap_err();
        assert!(e.is_no_such_device());
        assert_eq!(
            e.to_string(),
            "cannot delete ghost0: no interface named ghost0"
        );
        let e = delete_link(4242u32).unwrap_err();
        assert!(e.is_no_such_device());
        assert_eq!(
            e.to_string(),
            "cannot delete ifindex 4242: no interface with ifindex 4242"
        );
    });
}

#[test]
fn alias_marks_and_unmarks() {
    in_netns(|| {
        create_bridge("br0").unwrap();
        assert_eq!(info("br0").alias, None);
        set_alias("br0", "netvmm pid=1234").unwrap();
        assert_eq!(info("br0").alias.as_deref(), Some("netvmm pid=1234"));
        set_alias("br0", "").unwrap();
        assert_eq!(info("br0").alias, None);
        let e = set_alias("ghost0", "netvmm pid=1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot set the alias of ghost0 to 'netvmm pid=1': no interface named ghost0"
        );
        let e = set_alias("br0", &"x".repeat(300)).unwrap_err();
        assert!(matches!(e, NetlinkError::BadArgument { .. }));
    });
}

#[test]
fn ipv4_addresses() {
    in_netns(|| {
        create_bridge("br0").unwrap();
        add_ipv4("br0", Ipv4Addr::new(192, 0, 2, 1), 24).unwrap();
        add_ipv4("br0", Ipv4Addr::new(198, 51, 100, 1), 25).unwrap();
        let mut got = ipv4_addrs("br0").unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                (Ipv4Addr::new(192, 0, 2, 1), 24),
                (Ipv4Addr::new(198, 51, 100, 1), 25)
            ]
        );
        let e = add_ipv4("br0", Ipv4Addr::new(192, 0, 2, 1), 24).unwrap_err();
        assert_eq!(e.os_error(), Some(libc::EEXIST));
        assert!(
            e.to_string()
                .starts_with("cannot give br0 the address 192.0.2.1/24: "),
            "{e}"
        );
        let e = add_ipv4("br0", Ipv4Addr::new(203, 0, 113, 1), 33).unwrap_err();
        assert!(matches!(e, NetlinkError::BadArgument { .. }));
        let e = add_ipv4("ghost0", Ipv4Addr::new(203, 0, 113, 1), 24).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot give ghost0 the address 203.0.113.1/24: no interface named ghost0"
        );
        assert!(ipv4_addrs("lo").unwrap().is_empty());
    });
}

#[test]
fn missing_devices_and_bad_names() {
    in_netns(|| {
        assert_eq!(link_index("ghost0").unwrap(), None);
        assert_eq!(link_info("ghost0").unwrap(), None);
        assert_eq!(link_info(4242u32).unwrap(), None);
        assert_eq!(link_index("a-name-much-too-long").unwrap(), None);
        let e = set_up("ghost0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot bring ghost0 up: no interface named ghost0"
        );
        let e = set_up("a-name-much-too-long").unwrap_err();
        assert!(e.is_no_such_device(), "{e:?}");
        let e = set_down("ghost0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot take ghost0 down: no interface named ghost0"
        );

        let e = create_bridge("bad/name").unwrap_err();
        assert!(matches!(e, NetlinkError::BadName { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cannot create bridge bad/name: "));
        assert!(create_bridge("a-name-much-too-long").is_err());
        assert!(create_veth("ok0", "").is_err());

        create_bridge("br0").unwrap();
        let e = create_bridge("br0").unwrap_err();
        assert_eq!(e.os_error(), Some(libc::EEXIST));
        assert!(
            e.to_string().starts_with("cannot create bridge br0: "),
            "{e}"
        );
    });
}

#[test]
fn monitor_sees_a_bridge_recreated_and_the_tap_reenslaved() {
    in_netns(|| {
        let mut mon = LinkMonitor::open().unwrap();
        assert!(mon.as_raw_fd() >= 0);
        assert!(mon.poll_events().unwrap().is_empty());

        let br = create_bridge("br0").unwrap();
        let tap = Tap::open(Some("nvtap0"), None).unwrap();
        set_master("nvtap0", br).unwrap();
        let seen = events_until(&mut mon, "the tap enslaved", |ev| {
            ev.iter()
                .any(|e| is_new(e, "nvtap0").is_some_and(|l| l.master == Some(br)))
        });
        let b = seen.iter().find_map(|e| is_new(e, "br0")).unwrap();
        assert_eq!((b.index, b.kind.as_deref()), (br, Some("bridge")));
        let t = seen.iter().find_map(|e| is_new(e, "nvtap0")).unwrap();
        assert_eq!(t.kind.as_deref(), Some("tun"));

        // Set down and up.
        set_up("br0").unwrap();
        set_down("br0").unwrap();
        set_up("br0").unwrap();
        events_until(&mut mon, "br0 down then up", |ev| {
            let states: Vec<bool> = ev
                .iter()
                .filter_map(|e| is_new(e, "br0"))
                .map(|l| l.admin_up)
                .collect();
            states.windows(3).any(|w| w == [true, false, true])
        });

        // Deleted and re-created.
        delete_link("br0").unwrap();
        let br2 = create_bridge("br0").unwrap();
        let seen = events_until(&mut mon, "br0 deleted and re-created", |ev| {
            ev.iter()
                .position(|e| matches!(e, LinkEvent::Del(l) if l.name == "br0"))
                .is_some_and(|d| ev[d..].iter().any(|e| is_new(e, "br0").is_some()))
        });
        let del = seen
            .iter()
            .find_map(|e| match e {
                LinkEvent::Del(l) if l.name == "br0" => Some(l.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(del.index, br);
        assert_eq!(del.kind.as_deref(), Some("bridge"));
        // The tap lost its master with the bridge, without being deleted itself.
        assert!(seen
            .iter()
            .any(|e| is_new(e, "nvtap0").is_some_and(|l| l.master.is_none())));
        assert!(!seen
            .iter()
            .any(|e| matches!(e, LinkEvent::Del(l) if l.name == "nvtap0")));
        assert_eq!(info("nvtap0").master, None);

        // Re-enslave to the new bridge; then release: neither is a deletion of the tap
        // (the bridge's AF_BRIDGE port messages are filtered out).
        set_master("nvtap0", br2).unwrap();
        set_nomaster("nvtap0").unwrap();
        let seen = events_until(&mut mon, "the tap moved to the new bridge", |ev| {
            let masters: Vec<Option<u32>> = ev
                .iter()
                .filter_map(|e| is_new(e, "nvtap0"))
                .map(|l| l.master)
                .collect();
            masters.windows(2).any(|w| w == [Some(br2), None])
        });
        assert!(
            !seen.iter().any(|e| matches!(e, LinkEvent::Del(_))),
            "{seen:#?}"
        );

        drop(tap);
        events_until(&mut mon, "the tap gone with its fd", |ev| {
            ev.iter()
                .any(|e| matches!(e, LinkEvent::Del(l) if l.name == "nvtap0"))
        });
    });
}

#[test]
fn monitor_fd_is_pollable() {
    in_netns(|| {
        let mon = LinkMonitor::open().unwrap();
        let mut pfd = libc::pollfd {
            fd: mon.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        assert_eq!(n, 0, "nothing happened yet");
        create_bridge("br0").unwrap();
        // SAFETY: as above.
        let n = unsafe { libc::poll(&mut pfd, 1, 2000) };
        assert_eq!(n, 1);
        assert!(pfd.revents & libc::POLLIN != 0);
    });
}

#[test]
fn macvtap_mode_parses_and_prints() {
    for m in MacvtapMode::ALL {
        assert_eq!(m.as_str().parse::<MacvtapMode>(), Ok(m));
        assert_eq!(m.to_string(), m.as_str());
    }
    assert_eq!(
        "passthrough".parse::<MacvtapMode>().unwrap_err(),
        "'passthrough' is not a macvtap mode (modes: bridge, vepa, private, passthru)"
    );
}

#[test]
fn interface_names_are_checked_like_the_kernel_does() {
    for ok in ["br0", "nvtap0", "a", "fifteen-chars-x"] {
        assert!(valid_ifname(ok), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "a:b",
        "a b",
        "sixteen-chars-xx",
        "a\u{1}b",
        "a\tb",
        "\u{1b}[31m",
    ] {
        assert!(!valid_ifname(bad), "{bad}");
    }
}

#[test]
fn a_datagram_splits_into_its_messages_and_a_bad_length_stops_it() {
    // Two messages: 20 bytes (padded to 20) and 17 bytes (padded to 20), as the kernel packs them.
    let msg = |len: u32, fill: u8| {
        let mut m = len.to_ne_bytes().to_vec();
        m.resize(len as usize, fill);
        m
    };
    let mut data = msg(20, 1);
    data.extend(msg(17, 2));
    data.extend([0; 3]);
    let (chunks, bad) = split_datagram(&data);
    assert_eq!(chunks.len(), 2);
    assert_eq!((chunks[0].len(), chunks[1].len()), (20, 17));
    assert_eq!(bad, None);

    // A length past the end, or shorter than a header, ends the split with a reason; what
    // came before is kept.
    let mut long = msg(20, 1);
    long.extend(msg(16, 2));
    long[20..24].copy_from_slice(&64u32.to_ne_bytes());
    let (chunks, bad) = split_datagram(&long);
    assert_eq!(chunks.len(), 1);
    assert!(bad.is_some_and(|b| b.contains("64 bytes at offset 20")));
    let short = 4u32.to_ne_bytes().repeat(5);
    let (chunks, bad) = split_datagram(&short);
    assert!(chunks.is_empty() && bad.is_some());
    // Fewer bytes than a header: nothing, and nothing wrong.
    assert_eq!(split_datagram(&[1, 2, 3]), (vec![], None));
    assert_eq!(split_datagram(&[]), (vec![], None));
}
