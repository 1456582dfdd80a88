//! `netvmm compare --explain`: per backend, the path a frame takes and why the measured
//! facts are what they are.

use super::backend::{Backend, Datapath};
use super::report::{Outcome, Reachability, Throughput};
use super::table::mark;

/// What the kernel lets talk to what, in the topology the scenario builds (indexed like
/// `Reachability::NAMES`: guest_to_host, host_to_guest, guest_to_lan, lan_to_guest,
/// guest_to_guest). The LAN switch hairpins the NIC's port for vepa and private only.
pub fn expected(b: Backend) -> [bool; 5] {
    match b {
        Backend::Tap | Backend::Bridge | Backend::MacvtapBridgeHost | Backend::MacvtapVepa => {
            [true; 5]
        }
        Backend::TapNat => [true, true, true, false, false],
        Backend::TcRedirect => [true; 5],
        Backend::MacvtapBridge => [false, false, true, true, true],
        Backend::MacvtapPrivate => [false, true, true, true, false],
        Backend::MacvtapPassthru => [false, false, true, true, false],
    }
}

/// The path of a frame, guest to LAN.
pub fn diagram(b: Backend) -> &'static str {
    match b {
        Backend::Tap => {
            "guest eth0 -- nvtapN (host 192.0.2.1) == host IP routing (ip_forward=1) == lanA (203.0.113.10) -- wire -- sw0 -- LAN peer"
        }
        Backend::TapNat => {
            "guest eth0 -- nvtapN (host 192.0.2.1) == host IP routing, netvmm's nftables table: masquerade to 203.0.113.10 == lanA -- wire -- sw0 -- LAN peer   (LAN -> guest: dropped, no port forward)"
        }
        Backend::TcRedirect => {
            "guest eth0 -- nvtapN =tc ingress, mirred redirect= ctrA (the container's veth, no address) -- ctrB -- sw0 -- LAN peer, and lanA (host 203.0.113.10) -- wire -- sw0"
        }
        Backend::Bridge => {
            "guest eth0 -- nvtapN -- br0 (host 203.0.113.10) -- lanA -- wire -- sw0 -- LAN peer"
        }
        Backend::MacvtapBridge => {
            "guest eth0 -- /dev/tapN = nvmvtN (mode bridge) -- lanA's transmit path -- wire -- sw0 -- LAN peer   (host 203.0.113.10 on lanA: off the path)"
        }
        Backend::MacvtapBridgeHost => {
            "guest eth0 -- /dev/tapN = nvmvtN (mode bridge) -- lanA's macvlan port -- nvshimN (mode bridge, host 203.0.113.10) = the host's stack; lanA -- wire -- sw0 -- LAN peer"
        }
        Backend::MacvtapVepa => {
            "guest eth0 -- /dev/tapN = nvmvtN (mode vepa) -- lanA -- wire -- sw0 (hairpin: back out the port it came in) -- wire -- lanA -- host or sibling"
        }
        Backend::MacvtapPrivate => {
            "guest eth0 -- /dev/tapN = nvmvtN (mode private) -- lanA -- wire -- sw0 (hairpin) -- wire -- lanA -x- sibling (broadcast from a sibling dropped)"
        }
        Backend::MacvtapPassthru => {
            "guest eth0 -- /dev/tapN = nvmvtN (mode passthru: the whole NIC) -- lanA -- wire -- sw0 -- LAN peer   (host 203.0.113.10 on lanA: cut off)"
        }
    }
}

/// Why the facts are what they are.
pub fn why(b: Backend) -> &'static str {
    match b {
        Backend::Tap => {
            "Layer 3. The tap is a point-to-point link between the guest and the host's own IP stack: the guest sits on a subnet of its own, with the host's tap address as its gateway. \
The host reaches the guest directly; everything else is routed by the host (ip_forward=1, and the LAN peer has a route back to 192.0.2.0/24 via the host's LAN address), \
so the LAN sees the guest's own address one hop further away (TTL decremented; no NAT here), and two guests on two taps reach each other through the host's routing table. \
No bridge, no promiscuous NIC; but every frame to or from the LAN goes up and down the host's IP stack, and broadcasts (DHCP, ARP, mDNS) stop at the host."
        }
        Backend::TapNat => {
            "The tap of the first row, behind the host's NAT, as libvirt's default network (virbr0) has it: netvmm turns forwarding on for the tap and lanA only (not ip_forward), \
and its own nftables table (one per NIC, removed at exit and by netvmm cleanup) masquerades what the guest's /30 sends out of lanA, lets replies back in, and drops every other frame to or from the tap. \
So the guest reaches the LAN, but the LAN peer sees the host's address 203.0.113.10 as the source (lan_peer_saw), and it cannot open a connection to the guest even with a route to 192.0.2.0/24 via the host, which it has here: \
lan_to_guest fails (no port forward), while data does flow LAN -> guest over a connection the guest opened (how its throughput is measured). \
The host reaches the guest directly on the tap. Two NAT guests sit on two taps and two subnets, and the table drops what one sends to the other: guest_to_guest fails, \
unlike libvirt's, whose guests share a bridge. Every frame crosses the host's IP stack and conntrack; a forward chain of the host's own with policy drop (Docker's) would block it."
        }
        Backend::TcRedirect => {
            "Kata Containers' wiring: no bridge and no address. An ingress qdisc on the tap and on ctrA (the veth that stands for a container's interface) each hold one catch-all filter whose mirred action \
sends every frame out of the other, so the guest is on ctrA's segment with its own MAC and address, and the frames never reach the host's IP stack either way (they are stolen at ingress). \
Here ctrA's peer is a port of the LAN switch, so the guest reaches the LAN peer, the LAN reaches it, and two such guests reach each other through the switch. \
The host reaches the guest only as any station on that segment does: from its address on lanA, through the switch; an address of the host on ctrA itself would be unreachable from the guest, since nothing arriving on ctrA is delivered to the host."
        }
        Backend::Bridge => {
            "Layer 2. br0 is a learning switch in the host's kernel; the guest's tap and the NIC lanA are two of its ports, and the host's address sits on br0 itself, \
so the host is just another station on the segment. Guest, host, LAN peer and other guests share one broadcast domain: ARP, DHCP and everything else works as on a real switch, in every direction. \
The NIC, being a bridge port, runs promiscuous and the host's address has to move from lanA to br0 (the step that cuts people off when done over SSH)."
        }
        Backend::MacvtapBridge => {
            "A macvtap is a macvlan (a second MAC address on lanA) with a tap-like character device. Frames from the guest leave through lanA's transmit path; frames for the guest's MAC are taken off lanA's receive path before the host's stack sees them. \
In bridge mode, siblings on the same lanA are switched inside the macvlan port, so guest<->guest works without touching the wire. \
But nothing a macvtap sends ever comes up lanA's own stack, and the host's frames for the guest go out on the wire: host<->guest through lanA fails both ways, unless the outside switch sends them back. \
The usual fix is a macvlan of the host's own on lanA (mode bridge) holding the host's address: netvmm makes one with --net macvtap=lanA,host-access=ADDR/PREFIX."
        }
        Backend::MacvtapBridgeHost => {
            "The same macvtap in bridge mode, but the host's address is no longer on lanA: netvmm's host-access shim, a macvlan of the host's own on lanA in bridge mode, holds it (lanA itself keeps no address). \
Guest and host are now two siblings on lanA's macvlan port, and bridge mode switches frames between siblings inside the kernel, so host<->guest works both ways without the wire; \
the host reaches the LAN through the shim as well. Both guests share the one shim, which the last of their netvmm processes removes. \
It is the workaround everyone is told for macvtap, done by netvmm: --net macvtap=lanA,host-access=203.0.113.10/24. In vepa or private mode the sibling path does not exist, so netvmm refuses it there."
        }
        Backend::MacvtapVepa => {
            "VEPA (Virtual Ethernet Port Aggregator, 802.1Qbg): every frame from the guest goes out to the external switch, even one for a sibling on the same NIC, and comes back only if the switch sends it out the port it came in on (hairpin, reflective relay). \
Here sw0 hairpins lanB, so guest<->guest works, each such frame crossing the wire twice; the same reflection brings the guest's frames back up lanA to the host and the host's frames back down to the guest, so host<->guest works too. \
Without a hairpinning switch, VEPA guests reach neither each other nor the host."
        }
        Backend::MacvtapPrivate => {
            "Like VEPA, every frame goes out to the switch (which hairpins here), but the macvlan port drops what comes back from a private sibling: a broadcast or multicast whose source is a private macvtap on lanA is handed back to its sender alone, \
never to a sibling and never to the host's stack. ARP requests are broadcasts, so a guest cannot resolve a sibling's or the host's address: guest_to_guest and guest_to_host fail. \
It is not full isolation: a reflected unicast to a known MAC is delivered (the mode is checked for broadcast/multicast only), so the host, whose own ARP request comes back from the switch and reaches the guest, does get through (host_to_guest), \
and two siblings with static neighbour entries would too."
        }
        Backend::MacvtapPassthru => {
            "The one macvtap takes the whole NIC: the guest gets lanA's own MAC address, lanA goes promiscuous, and every frame arriving on it goes to the guest, whatever its destination MAC. \
The host's address on lanA receives nothing any more (host<->guest fails, and the host is cut off from the LAN through lanA), and netvmm refuses a second guest on lanA. \
It is the software stand-in for handing the guest the NIC (or an SR-IOV VF) without device assignment; it ran last and alone for that reason."
        }
    }
}

/// What the kernel's data path changes, and what it does not.
const VHOST_WHY: &str = "With vhost=on the kernel's vhost-net worker moves the frames between the guest's rings and the same tap or macvtap fd: \
netvmm only sets it up (memory table, rings, the kick eventfds the guest's notifications already hit, a call eventfd per queue, which KVM takes as the device's interrupt, the backend fd). \
The fd and everything behind it are the same, so reachability is the same as through netvmm's own copy, row for row. \
What changes is who copies and who wakes: no wake-up of netvmm's device thread per kick, no readv/writev by netvmm, the copies done in the worker. \
VMM CPU counts all of netvmm, the guest's own time on its vCPUs included; 'device' is netvmm without its vCPUs (the thread that copies on the userspace path), 'vhost workers' the kernel's worker time. \
On kernels before 6.4 that worker is a kernel thread whose CPU time is not netvmm's, so VMM CPU drops more than the host's total does; from 6.4 it is a thread of netvmm's process and counts.";

/// Per backend measured through both paths: whether reachability held, and what the
/// kernel's path did to netvmm's CPU per GB and to throughput.
fn datapaths(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    if !outcomes.iter().any(|o| o.datapath == Datapath::Vhost) {
        return s;
    }
    s.push_str("\n== the data path: user and vhost ==\n");
    for line in wrap(VHOST_WHY, 96) {
        s.push_str(&format!("  {line}\n"));
    }
    for user in outcomes.iter().filter(|o| o.datapath == Datapath::User) {
        let Some(vhost) = outcomes
            .iter()
            .find(|o| o.backend == user.backend && o.datapath == Datapath::Vhost)
        else {
            continue;
        };
        if user.skipped.is_some() || vhost.skipped.is_some() {
            continue;
        }
        let same = user.reachability == vhost.reachability;
        let mut line = format!(
            "  {}: reachability {}",
            user.backend.name(),
            if same { "the same" } else { "DIFFERS" }
        );
        let change = |u: f64, v: f64| {
            if u > 0.0 {
                format!(" ({:+.0}%)", (v - u) / u * 100.0)
            } else {
                String::new()
            }
        };
        for (name, u, v) in [
            ("VMM CPU", user.vmm_cpu_ms_per_gb, vhost.vmm_cpu_ms_per_gb),
            (
                "device",
                user.device_cpu_ms_per_gb,
                vhost.device_cpu_ms_per_gb,
            ),
        ] {
            if let (Some(u), Some(v)) = (u, v) {
                line.push_str(&format!("; {name} {u:.0} -> {v:.0} ms/GB{}", change(u, v)));
            }
        }
        if let Some(w) = vhost.vhost_cpu_ms_per_gb {
            line.push_str(&format!(" + vhost workers {w:.0} ms/GB"));
        }
        for (name, u, v) in Throughput::NAMES
            .iter()
            .zip(user.throughput_mbps.values())
            .zip(vhost.throughput_mbps.values())
            .map(|((n, u), v)| (n, u, v))
        {
            if let (Some(u), Some(v)) = (u, v) {
                line.push_str(&format!("; {name} {u:.0} -> {v:.0} Mbit/s"));
            }
        }
        s.push_str(&line);
        s.push('\n');
        if !same {
            s.push_str(&format!(
                "  Unexpected: {} and {} reach differently over the same fd\n",
                user.label(),
                vhost.label()
            ));
        }
    }
    s
}

/// The explanation for every backend that ran, with the measured marks and anything that
/// differs from what the kernel's semantics predict.
pub fn explain(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    for o in outcomes {
        s.push_str(&format!("\n== {} ==\n", o.label()));
        s.push_str(&format!("  {}\n", diagram(o.backend)));
        let why = match o.datapath {
            Datapath::User => why(o.backend).to_string(),
            Datapath::Vhost => format!(
                "The arrangement of {}, with the kernel's vhost-net moving the frames (the data path, below).",
                o.backend.name()
            ),
        };
        for line in wrap(&why, 96) {
            s.push_str(&format!("  {line}\n"));
        }
        if let Some(reason) = &o.skipped {
            s.push_str(&format!("  Not measured here: {reason}\n"));
            continue;
        }
        let measured: Vec<String> = Reachability::NAMES
            .iter()
            .zip(o.reachability.values())
            .map(|(r, v)| format!("{r} {}", mark(v)))
            .collect();
        s.push_str(&format!("  Measured: {}\n", measured.join(", ")));
        let surprises: Vec<String> = Reachability::NAMES
            .iter()
            .zip(o.reachability.values())
            .zip(expected(o.backend))
            .filter_map(|((r, got), want)| match got {
                Some(g) if g != want => Some(format!(
                    "{r} is {}, the kernel's semantics say {}",
                    mark(Some(g)),
                    mark(Some(want))
                )),
                _ => None,
            })
            .collect();
        if !surprises.is_empty() {
            s.push_str(&format!("  Unexpected: {}\n", surprises.join("; ")));
        }
    }
    s.push_str(&datapaths(outcomes));
    s
}

/// Words of `text` in lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for w in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + w.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_is_explained_and_surprises_are_named() {
        let mut a = Outcome::new(Backend::MacvtapBridge);
        a.reachability = [Some(true), Some(false), Some(true), Some(true), None].into();
        let mut b = Outcome::new(Backend::MacvtapPassthru);
        b.skipped = Some("no spare NIC".into());
        let text = explain(&[a, b]);
        assert!(text.contains("== macvtap-bridge =="));
        assert!(text.contains(diagram(Backend::MacvtapBridge)));
        assert!(
            text.contains("Unexpected: guest_to_host is ✓, the kernel's semantics say ✗\n"),
            "{text}"
        );
        assert!(text.contains("Not measured here: no spare NIC"));
        for b in Backend::ALL {
            assert!(diagram(b).starts_with("guest eth0 -- "));
            assert!(why(b).len() > 200);
            assert!(wrap(why(b), 96).iter().all(|l| l.chars().count() <= 96));
        }
        assert_eq!(wrap("a b  c", 3), ["a b", "c"]);
        assert!(!text.contains("the data path"), "no vhost row, no section");
    }

    #[test]
    fn the_data_path_section_compares_a_backend_through_both_paths() {
        let mut user = Outcome::new(Backend::Tap);
        user.reachability = [Some(true); 5].into();
        user.vmm_cpu_ms_per_gb = Some(8000.0);
        user.throughput_mbps.guest_to_lan = Some(250.0);
        let mut vhost = user.clone();
        vhost.datapath = Datapath::Vhost;
        vhost.vmm_cpu_ms_per_gb = Some(2000.0);
        vhost.throughput_mbps.guest_to_lan = Some(300.0);
        let (mut user_split, mut vhost_split) = (user.clone(), vhost.clone());
        user_split.device_cpu_ms_per_gb = Some(3000.0);
        vhost_split.device_cpu_ms_per_gb = Some(150.0);
        vhost_split.vhost_cpu_ms_per_gb = Some(1200.0);
        let text = explain(&[user_split, vhost_split]);
        assert!(
            text.contains("  tap: reachability the same; VMM CPU 8000 -> 2000 ms/GB (-75%); device 3000 -> 150 ms/GB (-95%) + vhost workers 1200 ms/GB; guest_to_lan 250 -> 300 Mbit/s\n"),
            "{text}"
        );
        let text = explain(&[user.clone(), vhost.clone()]);
        assert!(text.contains("== tap+vhost =="), "{text}");
        assert_eq!(
            text.matches(why(Backend::Tap)).count(),
            0,
            "wrapped, so not whole"
        );
        assert!(
            text.contains("The arrangement of tap, with the kernel's vhost-net"),
            "{text}"
        );
        assert_eq!(
            text.matches("Layer 3.").count(),
            1,
            "said once, for the user row\n{text}"
        );
        assert!(
            text.contains("== the data path: user and vhost =="),
            "{text}"
        );
        assert!(
            text.contains("  tap: reachability the same; VMM CPU 8000 -> 2000 ms/GB (-75%); guest_to_lan 250 -> 300 Mbit/s\n"),
            "{text}"
        );
        assert!(!text.contains("Unexpected"), "{text}");
        vhost.reachability.host_to_guest = Some(false);
        let text = explain(&[user, vhost]);
        assert!(text.contains("tap: reachability DIFFERS"), "{text}");
        assert!(
            text.contains("Unexpected: tap and tap+vhost reach differently"),
            "{text}"
        );
    }
}
