//! The topology compare measures in, built through netlink (no ip(8)):
//!
//! ```text
//!   netns "lan" (another machine):  LAN peer 203.0.113.1 on switch sw0 -- port lanB
//!                                                                            |  (veth: the wire)
//!   the host:                        NIC lanA, host address 203.0.113.10 (on lanA, or on br0)
//! ```
//!
//! Per backend, on top (`setup`, undone by `teardown`): tap (guests 192.0.2.2/28 and
//! .18/28 behind their own taps, host .1 and .17, ip_forward on, the LAN peer routes
//! 192.0.2.0/24 via the host), bridge (br0 holds lanA and the host address; guests
//! 203.0.113.2 and .3 on it), macvtap-<mode> on lanA (guests .2 and .3; the LAN switch
//! hairpins lanB for vepa and private), tap-nat (guests 192.0.2.2/30 and .6/30 behind
//! netvmm's NAT out of lanA, host .1 and .5; the LAN peer's route to 192.0.2.0/24 via the
//! host stays, so that only the NAT rules keep the LAN out), tc-redirect (guests
//! 203.0.113.2 and .3, each on a "container" veth ctrA / ctr2A whose other end is a port of
//! the LAN switch; the host keeps its address on lanA).

use std::net::Ipv4Addr;

use net::netlink::{self, NetlinkError};
use net::netns::NetNs;

use super::backend::Backend;

pub const LAN_PEER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const HOST_LAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The routed backend's guests' network, as the LAN peer routes it.
const TAP_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(192, 0, 2, 0), 24);
pub const NIC: &str = "lanA";
const WIRE_PEER: &str = "lanB";
const SWITCH: &str = "sw0";
const BRIDGE: &str = "br0";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// The veths that stand for the tc-redirect guests' container interfaces: this host's
/// end, and the end that is a port of the LAN switch.
pub const CONTAINERS: [(&str, &str); 2] = [("ctrA", "ctrB"), ("ctr2A", "ctr2B")];
/// The NAT guests' host addresses (each guest takes the next one in its /30).
const NAT_HOSTS: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 5)];
const NAT_PREFIX: u8 = 30;

/// One change to the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// net.ipv4.ip_forward on this host.
    IpForward(bool),
    /// The host's LAN address on a link.
    HostAddress(&'static str),
    /// Every address of a link removed.
    FlushAddresses(&'static str),
    /// The LAN peer's route to the tap guests via the host.
    LanRoute(bool),
    /// br0 created and up (true) or deleted (false).
    Bridge(bool),
    /// A link enslaved to br0 (true) or released (false).
    BridgePort(&'static str, bool),
    /// Hairpin on the LAN switch's port lanB.
    Hairpin(bool),
    /// A container's veth: this host's end up with no address, the other a port of the
    /// LAN switch (true), or the pair deleted (false).
    Container(usize, bool),
}

/// What the guests of a backend are given, and what the host and LAN peer aim at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    /// The `--net` of the measured guest and of the second guest.
    pub net_a: String,
    pub net_b: String,
    /// The guests' addresses, and their `netvmm.ip=` values (address/prefix).
    pub addr_a: Ipv4Addr,
    pub addr_b: Ipv4Addr,
    pub ip_a: String,
    pub ip_b: String,
    /// `netvmm.gw=` of each guest, when it has one.
    pub gw_a: Option<Ipv4Addr>,
    pub gw_b: Option<Ipv4Addr>,
    /// The host address the measured guest pings.
    pub host_target: Ipv4Addr,
    /// Whether the LAN peer can open connections to the guest (not through NAT): when it
    /// cannot, the guest opens the LAN's iperf3 connections itself.
    pub lan_opens: bool,
}

pub fn addressing(b: Backend) -> Addressing {
    let (a, bb) = (Ipv4Addr::new(203, 0, 113, 2), Ipv4Addr::new(203, 0, 113, 3));
    let lan = |net: &str| Addressing {
        net_a: net.to_string(),
        net_b: net.to_string(),
        addr_a: a,
        addr_b: bb,
        ip_a: format!("{a}/24"),
        ip_b: format!("{bb}/24"),
        gw_a: None,
        gw_b: None,
        host_target: HOST_LAN,
        lan_opens: true,
    };
    match b {
        Backend::Tap => {
            let (ha, hb) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 17));
            Addressing {
                net_a: format!("tap,host-ip={ha}/28"),
                net_b: format!("tap,host-ip={hb}/28"),
                addr_a: Ipv4Addr::new(192, 0, 2, 2),
                addr_b: Ipv4Addr::new(192, 0, 2, 18),
                ip_a: "192.0.2.2/28".into(),
                ip_b: "192.0.2.18/28".into(),
                gw_a: Some(ha),
                gw_b: Some(hb),
                host_target: ha,
                lan_opens: true,
            }
        }
        Backend::TapNat => {
            let [ha, hb] = NAT_HOSTS.map(|addr| net::spec::Ipv4Cidr {
                addr,
                prefix: NAT_PREFIX,
            });
            let (ga, gb) = (net::nat::guest_addr(ha), net::nat::guest_addr(hb));
            Addressing {
                net_a: format!("tap,nat={NIC},host-ip={}/{}", ha.addr, ha.prefix),
                net_b: format!("tap,nat={NIC},host-ip={}/{}", hb.addr, hb.prefix),
                addr_a: ga.addr,
                addr_b: gb.addr,
                ip_a: format!("{}/{}", ga.addr, ga.prefix),
                ip_b: format!("{}/{}", gb.addr, gb.prefix),
                gw_a: Some(ha.addr),
                gw_b: Some(hb.addr),
                host_target: ha.addr,
                lan_opens: false,
            }
        }
        Backend::Bridge => lan(&format!("bridge={BRIDGE}")),
        Backend::TcRedirect => Addressing {
            net_a: format!("tc={}", CONTAINERS[0].0),
            net_b: format!("tc={}", CONTAINERS[1].0),
            ..lan("")
        },
        // The host's address on netvmm's host-access shim (a bridge-mode macvlan on lanA,
        // shared by both guests), not on lanA: host and guests are siblings on lanA.
        Backend::MacvtapBridgeHost => lan(&format!(
            "macvtap={NIC},mode=bridge,host-access={HOST_LAN}/24"
        )),
        Backend::MacvtapBridge => lan(&format!("macvtap={NIC},mode=bridge")),
        Backend::MacvtapVepa => lan(&format!("macvtap={NIC},mode=vepa")),
        Backend::MacvtapPrivate => lan(&format!("macvtap={NIC},mode=private")),
        Backend::MacvtapPassthru => lan(&format!("macvtap={NIC},mode=passthru")),
    }
}

/// The changes that make the topology ready for `b`.
pub fn setup(b: Backend) -> Vec<Step> {
    match b {
        // L3: the host routes between the taps and the LAN.
        Backend::Tap => vec![
            Step::IpForward(true),
            Step::HostAddress(NIC),
            Step::LanRoute(true),
        ],
        // The LAN peer keeps its route to the guests' network: what keeps it out is NAT.
        // netvmm itself turns forwarding on, for the tap and lanA only.
        Backend::TapNat => vec![Step::HostAddress(NIC), Step::LanRoute(true)],
        Backend::TcRedirect => vec![
            Step::HostAddress(NIC),
            Step::Container(0, true),
            Step::Container(1, true),
        ],
        Backend::Bridge => vec![
            Step::Bridge(true),
            Step::BridgePort(NIC, true),
            Step::HostAddress(BRIDGE),
        ],
        Backend::MacvtapBridgeHost => vec![],
        Backend::MacvtapVepa | Backend::MacvtapPrivate => {
            vec![Step::HostAddress(NIC), Step::Hairpin(true)]
        }
        Backend::MacvtapBridge | Backend::MacvtapPassthru => vec![Step::HostAddress(NIC)],
    }
}

/// The changes that undo `setup(b)`, in order.
pub fn teardown(b: Backend) -> Vec<Step> {
    setup(b)
        .into_iter()
        .rev()
        .map(|s| match s {
            Step::IpForward(_) => Step::IpForward(false),
            Step::HostAddress(dev) => Step::FlushAddresses(dev),
            Step::LanRoute(_) => Step::LanRoute(false),
            Step::Bridge(_) => Step::Bridge(false),
            Step::BridgePort(dev, _) => Step::BridgePort(dev, false),
            Step::Hairpin(_) => Step::Hairpin(false),
            Step::Container(i, _) => Step::Container(i, false),
            undo @ Step::FlushAddresses(_) => undo,
        })
        // br0 goes with its address; the port is released before it goes.
        .filter(|s| *s != Step::FlushAddresses(BRIDGE))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot create the LAN host's network namespace: {0}")]
    Namespace(#[source] std::io::Error),
    #[error("cannot enter the LAN host's network namespace: {0}")]
    Enter(#[source] std::io::Error),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("cannot write {IP_FORWARD}: {0}")]
    Sysctl(#[source] std::io::Error),
}

type Result<T> = std::result::Result<T, TopologyError>;

/// The built topology: this host's NIC lanA, wired to the LAN host.
pub struct Topology {
    lan: NetNs,
}

impl Topology {
    /// Builds lanA and its wire to the LAN host (switch sw0 with the LAN peer's address,
    /// lanB on it), all up, in the calling thread's namespace and a new one.
    pub fn build() -> Result<Self> {
        let lan = NetNs::new().map_err(TopologyError::Namespace)?;
        netlink::set_up("lo")?;
        netlink::create_veth(NIC, WIRE_PEER)?;
        netlink::move_to_netns(WIRE_PEER, std::os::fd::AsFd::as_fd(&lan))?;
        let me = Self { lan };
        me.in_lan(|| -> Result<()> {
            netlink::set_up("lo")?;
            netlink::create_bridge(SWITCH)?;
            netlink::set_up(SWITCH)?;
            netlink::add_ipv4(SWITCH, LAN_PEER, 24)?;
            netlink::set_master(WIRE_PEER, SWITCH)?;
            netlink::set_up(WIRE_PEER)?;
            Ok(())
        })?;
        netlink::set_up(NIC)?;
        Ok(me)
    }

    /// The LAN host, for processes that run there.
    pub fn lan(&self) -> &NetNs {
        &self.lan
    }

    fn in_lan<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        self.lan.run(f).map_err(TopologyError::Enter)?
    }

    pub fn apply(&self, step: Step) -> Result<()> {
        let (net, prefix) = TAP_NET;
        match step {
            Step::IpForward(on) => std::fs::write(IP_FORWARD, if on { "1\n" } else { "0\n" })
                .map_err(TopologyError::Sysctl)?,
            Step::HostAddress(dev) => netlink::add_ipv4(dev, HOST_LAN, 24)?,
            Step::FlushAddresses(dev) => {
                for a in netlink::addresses(dev)? {
                    netlink::delete_address(dev, &a)?;
                }
            }
            Step::LanRoute(true) => {
                self.in_lan(|| Ok(netlink::add_route_v4(net, prefix, HOST_LAN)?))?
            }
            Step::LanRoute(false) => {
                self.in_lan(|| Ok(netlink::delete_route_v4(net, prefix, HOST_LAN)?))?
            }
            Step::Bridge(true) => {
                netlink::create_bridge(BRIDGE)?;
                netlink::set_up(BRIDGE)?;
            }
            Step::Bridge(false) => netlink::delete_link(BRIDGE)?,
            Step::BridgePort(dev, true) => netlink::set_master(dev, BRIDGE)?,
            Step::BridgePort(dev, false) => netlink::set_nomaster(dev)?,
            Step::Hairpin(on) => self.in_lan(|| Ok(netlink::set_hairpin(WIRE_PEER, on)?))?,
            Step::Container(i, true) => {
                let (here, there) = CONTAINERS[i % CONTAINERS.len()];
                netlink::create_veth(here, there)?;
                netlink::move_to_netns(there, std::os::fd::AsFd::as_fd(&self.lan))?;
                self.in_lan(|| -> Result<()> {
                    netlink::set_master(there, SWITCH)?;
                    netlink::set_up(there)?;
                    Ok(())
                })?;
                netlink::set_up(here)?;
            }
            // Its peer in the LAN host goes with it.
            Step::Container(i, false) => netlink::delete_link(CONTAINERS[i % CONTAINERS.len()].0)?,
        }
        Ok(())
    }

    /// Both ends forget the neighbours they learnt, so that every backend starts from ARP.
    pub fn forget_neighbours(&self) {
        let _ = netlink::flush_neighbours();
        let _ = self.in_lan(|| Ok(netlink::flush_neighbours()?));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_gets_its_host_address_once_but_the_shim_one() {
        for b in Backend::ALL {
            let n = setup(b)
                .iter()
                .filter(|s| matches!(s, Step::HostAddress(_)))
                .count();
            assert_eq!(n, usize::from(b != Backend::MacvtapBridgeHost), "{b}");
        }
    }

    #[test]
    fn only_vepa_and_private_hairpin_the_lan_switch() {
        for b in Backend::ALL {
            let hairpin = setup(b).contains(&Step::Hairpin(true));
            assert_eq!(
                hairpin,
                matches!(b, Backend::MacvtapVepa | Backend::MacvtapPrivate),
                "{b}"
            );
        }
    }

    #[test]
    fn the_bridge_holds_the_nic_and_the_host_address() {
        assert_eq!(
            setup(Backend::Bridge),
            [
                Step::Bridge(true),
                Step::BridgePort("lanA", true),
                Step::HostAddress("br0")
            ]
        );
        assert_eq!(
            teardown(Backend::Bridge),
            [Step::BridgePort("lanA", false), Step::Bridge(false)]
        );
    }

    #[test]
    fn teardown_undoes_setup_in_reverse() {
        assert_eq!(
            teardown(Backend::Tap),
            [
                Step::LanRoute(false),
                Step::FlushAddresses("lanA"),
                Step::IpForward(false)
            ]
        );
        assert_eq!(
            teardown(Backend::MacvtapVepa),
            [Step::Hairpin(false), Step::FlushAddresses("lanA")]
        );
        assert!(teardown(Backend::MacvtapBridgeHost).is_empty());
    }

    #[test]
    fn tap_guests_route_through_their_own_host_addresses() {
        let a = addressing(Backend::Tap);
        assert_eq!(a.net_a, "tap,host-ip=192.0.2.1/28");
        assert_eq!(a.gw_b, Some(Ipv4Addr::new(192, 0, 2, 17)));
        assert_eq!(a.host_target, a.gw_a.unwrap());
        assert_eq!(
            (a.ip_a.as_str(), a.ip_b.as_str()),
            ("192.0.2.2/28", "192.0.2.18/28")
        );
        // Both tap guests are inside the network the LAN peer routes via the host.
        let (net, prefix) = TAP_NET;
        let mask = u32::MAX << (32 - prefix);
        for g in [a.addr_a, a.addr_b] {
            assert_eq!(u32::from(g) & mask, u32::from(net));
        }
    }

    #[test]
    fn lan_guests_share_the_lan_and_aim_at_the_host_address() {
        let a = addressing(Backend::MacvtapBridgeHost);
        assert_eq!(
            a.net_a,
            "macvtap=lanA,mode=bridge,host-access=203.0.113.10/24"
        );
        assert_eq!(a.net_a, a.net_b);
        assert_eq!(a.host_target, HOST_LAN);
        assert_eq!((a.gw_a, a.gw_b), (None, None));
        assert_eq!(
            addressing(Backend::MacvtapPassthru).net_a,
            "macvtap=lanA,mode=passthru"
        );
        assert_eq!(addressing(Backend::Bridge).net_a, "bridge=br0");
    }

    /// The real thing, in namespaces of this test's own: the wire carries a ping from the
    /// host to the LAN peer, and every backend's setup and teardown apply cleanly.
    #[test]
    fn the_topology_builds_and_every_backend_sets_up_and_tears_down() {
        let Ok(host) = NetNs::new() else {
            eprintln!("skipping: cannot create a network namespace here");
            return;
        };
        let have_ping = crate::compare::which("ping").is_some();
        host.run(|| {
            let t = Topology::build().unwrap();
            let mut replies = Vec::new();
            for b in Backend::ALL {
                for s in setup(b) {
                    if s == Step::IpForward(true) {
                        continue; // never risk the sysctl of the machine running the tests
                    }
                    t.apply(s).unwrap_or_else(|e| panic!("{b}: {s:?}: {e}"));
                }
                if b == Backend::TcRedirect {
                    // The container's veth is up, and its other end is a port of the switch.
                    assert!(netlink::link_info("ctrA").unwrap().unwrap().admin_up);
                    let (master, switch) = t
                        .lan
                        .run(|| {
                            let port = netlink::link_info("ctrB").unwrap().unwrap();
                            (port.master, netlink::link_index(SWITCH).unwrap())
                        })
                        .unwrap();
                    assert_eq!(master, switch, "{b}");
                    assert!(master.is_some());
                }
                if b == Backend::MacvtapBridge {
                    replies = super::super::traffic::ping(None, LAN_PEER, 1);
                }
                for s in teardown(b) {
                    if s == Step::IpForward(false) {
                        continue;
                    }
                    t.apply(s).unwrap_or_else(|e| panic!("{b}: {s:?}: {e}"));
                }
                assert!(netlink::ipv4_addrs("lanA").unwrap().is_empty(), "{b}");
                assert_eq!(netlink::link_index("br0").unwrap(), None, "{b}");
                for (here, _) in CONTAINERS {
                    assert_eq!(netlink::link_index(here).unwrap(), None, "{b}");
                }
                if b == Backend::TcRedirect {
                    assert!(t
                        .lan
                        .run(|| netlink::link_index("ctrB"))
                        .unwrap()
                        .unwrap()
                        .is_none());
                }
            }
            t.forget_neighbours();
            replies
        })
        .unwrap()
        .is_empty()
        .then(|| assert!(!have_ping, "no reply from the LAN peer over the wire"));
    }
}
