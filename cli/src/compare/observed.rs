//! What the scenario saw of one backend, as typed facts (serialised one JSON line per
//! backend, so that a lab host that dies keeps the backends it finished), and the figures
//! derived from them (`report::Outcome`). A figure the facts do not give is `None`, with a
//! note saying why.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::backend::{Backend, Datapath, Row};
use super::guest::CpuTicks;
use super::report::{Outcome, Rtt};

/// /proc/<pid>/stat counts CPU time in USER_HZ ticks, which Linux fixes at 100 on x86.
const MS_PER_TICK: f64 = 10.0;
/// Bytes in the "GB" of `vmm_cpu_ms_per_gb` (decimal, like the Mbit/s figures).
const BYTES_PER_GB: f64 = 1e9;

/// A direction of traffic; g = guest, the host, the LAN peer, the second guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    GuestToHost,
    HostToGuest,
    GuestToLan,
    LanToGuest,
    GuestToGuest,
}

impl Dir {
    /// The reachability facts, in the order of the JSON schema.
    pub const REACH: [Dir; 5] = [
        Dir::GuestToHost,
        Dir::HostToGuest,
        Dir::GuestToLan,
        Dir::LanToGuest,
        Dir::GuestToGuest,
    ];
    /// The throughput directions, in the order of the JSON schema.
    pub const FLOWS: [Dir; 4] = [
        Dir::GuestToLan,
        Dir::LanToGuest,
        Dir::GuestToHost,
        Dir::HostToGuest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dir::GuestToHost => "guest_to_host",
            Dir::HostToGuest => "host_to_guest",
            Dir::GuestToLan => "guest_to_lan",
            Dir::LanToGuest => "lan_to_guest",
            Dir::GuestToGuest => "guest_to_guest",
        }
    }
}

/// The measured guest's first reply from the LAN peer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NetUp {
    /// Whether a reply came at all (the guest gives up after 30 tries).
    pub ok: bool,
    /// The guest's uptime then, in seconds.
    pub uptime_s: f64,
}

/// A second passthru guest's try at the NIC the measured one holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondGuest {
    pub status: i32,
    /// The last line its netvmm wrote on stderr.
    pub message: String,
}

/// How one iperf3 direction went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Flow {
    /// The receiver got data.
    Moved {
        mbps: f64,
        bytes: f64,
        /// The CPU time of the measured guest's netvmm (and of its vhost-net workers)
        /// spent during the run.
        cpu: Option<CpuTicks>,
    },
    /// It ran and moved nothing, or failed: why (of the last attempt).
    Failed { why: String },
    /// It did not run: why (no path, no guest).
    NotRun { why: String },
}

/// Everything the scenario recorded for one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub backend: Backend,
    #[serde(default)]
    pub datapath: Datapath,
    /// Why the backend has no figures at all.
    pub skipped: Option<String>,
    /// What happened on the way (retries, replacements, diagnostics).
    pub notes: Vec<String>,
    pub netup: Option<NetUp>,
    /// The guest's uptime at its `netvmm-guest: ready` line, in seconds.
    pub ready_uptime_s: Option<f64>,
    /// netvmm's `total_to_ready_ms` (NETVMM_BOOT_REPORT) for the measured guest.
    pub total_to_ready_ms: Option<f64>,
    /// The round-trip times of the replies of each ping that ran (none: no reply).
    pub pings: BTreeMap<Dir, Vec<f64>>,
    pub second_guest: Option<SecondGuest>,
    pub flows: BTreeMap<Dir, Flow>,
    /// The sources of the measured guest's echo requests as the LAN peer saw them (None:
    /// not watched).
    #[serde(default)]
    pub lan_peer_saw: Option<Vec<Ipv4Addr>>,
    /// What netvmm left in the namespace after its guests ended (nothing, normally).
    #[serde(default)]
    pub left_behind: Vec<String>,
}

impl Observed {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            datapath: Datapath::User,
            skipped: None,
            notes: Vec::new(),
            netup: None,
            ready_uptime_s: None,
            total_to_ready_ms: None,
            pings: BTreeMap::new(),
            second_guest: None,
            flows: BTreeMap::new(),
            lan_peer_saw: None,
            left_behind: Vec::new(),
        }
    }

    pub fn row(&self) -> Row {
        Row {
            backend: self.backend,
            datapath: self.datapath,
        }
    }

    /// Whether a ping in `dir` ran and got a reply.
    pub fn replied(&self, dir: Dir) -> bool {
        self.pings.get(&dir).is_some_and(|v| !v.is_empty())
    }
}

/// Average and nearest-rank 99th percentile of the samples.
pub fn rtt_of(samples: &[f64]) -> Option<Rtt> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    // ceil(0.99 n), in integers.
    let rank = (99 * v.len()).div_ceil(100).clamp(1, v.len());
    Some(Rtt {
        avg: v.iter().sum::<f64>() / v.len() as f64,
        p99: v[rank - 1],
    })
}

/// The figures `o` gives, and a note for each one it does not.
pub fn derive(o: &Observed) -> Outcome {
    let mut out = Outcome::new(o.backend);
    out.datapath = o.datapath;
    out.notes = o.notes.clone();
    out.left_behind = o.left_behind.clone();
    for what in &o.left_behind {
        out.notes
            .push(format!("left behind after the guests ended: {what}"));
    }
    if o.skipped.is_some() {
        out.skipped = o.skipped.clone();
        return out;
    }
    let notes = &mut out.notes;

    // Reachability: observed when a ping ran; reachable when any reply came back.
    let mut reach = [None; 5];
    for (slot, dir) in reach.iter_mut().zip(Dir::REACH) {
        if let Some(replies) = o.pings.get(&dir) {
            *slot = Some(!replies.is_empty());
        } else if dir == Dir::GuestToGuest && !o.backend.has_sibling() {
            match &o.second_guest {
                Some(g) if g.status != 0 => {
                    *slot = Some(false);
                    notes.push(format!(
                        "guest_to_guest: there is no second guest: netvmm refused one on the same NIC ({})",
                        g.message.trim_start_matches("netvmm: ")
                    ));
                }
                Some(_) => notes.push(
                    "guest_to_guest: not observed: a second passthru guest started, and was not pinged".into(),
                ),
                None => notes.push("guest_to_guest: not observed: no second guest was tried".into()),
            }
        } else {
            notes.push(format!(
                "{}: not observed (no ping ran in that direction)",
                dir.name()
            ));
        }
    }
    out.reachability = reach.into();
    out.lan_peer_saw = o.lan_peer_saw.clone();
    if o.lan_peer_saw.as_ref().is_some_and(Vec::is_empty) && o.replied(Dir::GuestToLan) {
        notes.push("lan_peer_saw: the LAN peer's watch saw none of the guest's pings".into());
    }

    for (dir, slot) in [
        (Dir::GuestToHost, &mut out.rtt_ms.guest_to_host),
        (Dir::GuestToLan, &mut out.rtt_ms.guest_to_lan),
    ] {
        *slot = rtt_of(o.pings.get(&dir).map(Vec::as_slice).unwrap_or_default());
        if slot.is_none() {
            notes.push(format!("rtt {}: no ping replies to time", dir.name()));
        }
    }

    out.boot_ms = match (o.total_to_ready_ms, o.ready_uptime_s, o.netup) {
        (Some(t), Some(r), Some(NetUp { ok: true, uptime_s })) => {
            Some(t + ((uptime_s - r) * 1000.0).max(0.0))
        }
        (_, _, Some(NetUp { ok: false, .. })) => {
            notes.push("boot_ms: the guest never got a ping reply from the LAN peer".into());
            None
        }
        (None, _, _) => {
            notes.push("boot_ms: netvmm printed no total_to_ready_ms (NETVMM_BOOT_REPORT)".into());
            None
        }
        _ => {
            notes.push("boot_ms: the guest's ready line or first reply is missing".into());
            None
        }
    };

    let (mut cpu, mut bytes) = (CpuTicks::default(), 0f64);
    let mut mbps_of = [None; 4];
    for (slot, dir) in mbps_of.iter_mut().zip(Dir::FLOWS) {
        match o.flows.get(&dir) {
            Some(Flow::Moved {
                mbps,
                bytes: b,
                cpu: spent,
            }) if *mbps > 0.0 => {
                *slot = Some(*mbps);
                if let Some(t) = spent {
                    cpu.add(*t);
                    bytes += b;
                }
            }
            Some(Flow::Moved { .. }) => notes.push(format!(
                "throughput {}: no data reached the receiver",
                dir.name()
            )),
            Some(Flow::Failed { why } | Flow::NotRun { why }) => {
                notes.push(format!("throughput {}: {why}", dir.name()))
            }
            None => notes.push(format!("throughput {}: iperf3 did not run", dir.name())),
        }
    }
    out.throughput_mbps = mbps_of.into();
    // iperf3 -R runs over a connection the host (or LAN peer) opened, after its own ARP
    // request taught the guest its MAC: data can flow where the guest's own ping could not
    // start (macvtap private, whose broadcasts never reach the host).
    let (r, t) = (out.reachability, out.throughput_mbps);
    if r.lan_to_guest == Some(false) && t.lan_to_guest.is_some() {
        out.notes.push(
            "throughput lan_to_guest: over a connection the guest opened, as the LAN cannot open one (NAT: no port forward)".into(),
        );
    }
    for (flow, reached, measured) in [
        ("guest_to_host", r.guest_to_host, t.guest_to_host),
        ("guest_to_lan", r.guest_to_lan, t.guest_to_lan),
    ] {
        if reached == Some(false) && measured.is_some() {
            out.notes.push(format!(
                "throughput {flow}: measured although the {flow} ping failed: iperf3 -R sends over a connection the other side opened, after its ARP request taught the guest its MAC"
            ));
        }
    }
    if bytes > 0.0 {
        let per_gb = |ticks: u64| Some(ticks as f64 * MS_PER_TICK / (bytes / BYTES_PER_GB));
        out.vmm_cpu_ms_per_gb = per_gb(cpu.total);
        out.device_cpu_ms_per_gb = per_gb(cpu.device);
        if o.datapath == Datapath::Vhost {
            out.vhost_cpu_ms_per_gb = per_gb(cpu.vhost);
        }
    } else {
        out.notes.push(
            "vmm_cpu_ms_per_gb: no iperf3 run moved data with the VMM's CPU time read around it"
                .into(),
        );
    }
    out
}

/// The outcome of each of `rows`, in that order, from what was observed; a row with no
/// observation is skipped for `unfinished` (why the scenario stopped early).
pub fn outcomes(seen: &[Observed], rows: &[Row], unfinished: &str) -> Vec<Outcome> {
    rows.iter()
        .map(|r| match seen.iter().rev().find(|o| o.row() == *r) {
            Some(o) => derive(o),
            None => {
                let mut out = Outcome::new(r.backend);
                out.datapath = r.datapath;
                out.skipped = Some(unfinished.to_string());
                out
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::report::Reachability;

    fn samples(base: f64, n: usize) -> Vec<f64> {
        (0..n).map(|i| base + i as f64 * 0.1).collect()
    }

    /// A tap run: every ping answered but lan_to_guest; guest_to_lan and guest_to_host
    /// moved data, only guest_to_lan with CPU readings.
    fn tap() -> Observed {
        let mut o = Observed::new(Backend::Tap);
        o.netup = Some(NetUp {
            ok: true,
            uptime_s: 1.75,
        });
        o.ready_uptime_s = Some(1.5);
        o.total_to_ready_ms = Some(2000.0);
        o.pings.insert(Dir::GuestToHost, samples(0.5, 20));
        o.pings.insert(Dir::GuestToLan, samples(1.0, 20));
        o.pings.insert(Dir::GuestToGuest, vec![2.1]);
        o.pings.insert(Dir::HostToGuest, vec![0.4]);
        o.pings.insert(Dir::LanToGuest, vec![]);
        o.flows.insert(
            Dir::GuestToLan,
            Flow::Moved {
                mbps: 267.0,
                bytes: 1e8,
                cpu: Some(CpuTicks {
                    total: 300,
                    device: 120,
                    vhost: 7,
                }),
            },
        );
        o.flows.insert(
            Dir::LanToGuest,
            Flow::NotRun {
                why: "no path: the lan_to_guest ping got no reply".into(),
            },
        );
        o.flows.insert(
            Dir::HostToGuest,
            Flow::Failed {
                why: "unable to connect to server: Connection timed out".into(),
            },
        );
        o.flows.insert(
            Dir::GuestToHost,
            Flow::Moved {
                mbps: 3150.0,
                bytes: 1.1e9,
                cpu: None,
            },
        );
        o
    }

    fn notes(o: &Outcome) -> String {
        o.notes.join("\n")
    }

    #[test]
    fn rtt_average_and_nearest_rank_p99() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let r = rtt_of(&v).unwrap();
        assert_eq!((r.avg, r.p99), (10.5, 20.0));
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(rtt_of(&v).unwrap().p99, 198.0);
        assert_eq!(rtt_of(&[3.0]).unwrap().p99, 3.0);
        assert!(rtt_of(&[]).is_none());
    }

    #[test]
    fn boot_is_netvmm_to_ready_plus_the_guest_clock_to_its_first_reply() {
        assert_eq!(derive(&tap()).boot_ms, Some(2250.0));
    }

    #[test]
    fn rtts_come_from_the_timed_replies() {
        let o = derive(&tap());
        let r = o.rtt_ms.guest_to_host.unwrap();
        assert!((r.avg - 1.45).abs() < 1e-9, "{r:?}");
        assert!((r.p99 - 2.4).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn a_direction_is_reachable_when_any_reply_came_back() {
        assert_eq!(
            derive(&tap()).reachability.values(),
            [Some(true), Some(true), Some(true), Some(false), Some(true)]
        );
    }

    #[test]
    fn throughput_is_what_the_receiver_got() {
        let t = derive(&tap()).throughput_mbps;
        assert_eq!(t.values(), [Some(267.0), None, Some(3150.0), None]);
    }

    #[test]
    fn a_missing_throughput_says_why() {
        let n = notes(&derive(&tap()));
        assert!(n.contains("throughput lan_to_guest: no path"), "{n}");
        assert!(
            n.contains("throughput host_to_guest: unable to connect"),
            "{n}"
        );
        assert!(!n.contains("measured although"), "{n}");
    }

    #[test]
    fn a_run_that_moved_nothing_is_no_figure_and_says_so() {
        let mut o = tap();
        o.flows.insert(
            Dir::GuestToLan,
            Flow::Moved {
                mbps: 0.0,
                bytes: 0.0,
                cpu: Some(CpuTicks {
                    total: 3,
                    ..CpuTicks::default()
                }),
            },
        );
        let d = derive(&o);
        assert_eq!(d.throughput_mbps.guest_to_lan, None);
        assert!(notes(&d).contains("throughput guest_to_lan: no data reached the receiver"));
        assert_eq!(d.vmm_cpu_ms_per_gb, None);
        assert!(notes(&d).contains("vmm_cpu_ms_per_gb: no iperf3 run moved data"));
    }

    #[test]
    fn vmm_cpu_counts_only_runs_with_readings_around_them() {
        let per_gb = |ticks: f64| ticks * 10.0 / (1e8 / 1e9);
        let d = derive(&tap());
        assert!((d.vmm_cpu_ms_per_gb.unwrap() - per_gb(300.0)).abs() < 1e-6);
        assert!((d.device_cpu_ms_per_gb.unwrap() - per_gb(120.0)).abs() < 1e-6);
        // The kernel's workers are a figure of the vhost path only.
        assert_eq!(d.vhost_cpu_ms_per_gb, None);
        let mut o = tap();
        o.datapath = Datapath::Vhost;
        let d = derive(&o);
        assert!((d.vhost_cpu_ms_per_gb.unwrap() - per_gb(7.0)).abs() < 1e-6);
    }

    #[test]
    fn nat_facts_what_the_lan_saw_and_what_was_left_are_carried() {
        let mut o = tap();
        o.backend = Backend::TapNat;
        let host = Ipv4Addr::new(203, 0, 113, 10);
        o.lan_peer_saw = Some(vec![host]);
        o.flows.insert(
            Dir::LanToGuest,
            Flow::Moved {
                mbps: 200.0,
                bytes: 5e7,
                cpu: Some(CpuTicks {
                    total: 20,
                    ..CpuTicks::default()
                }),
            },
        );
        o.left_behind = vec!["an ingress qdisc on ctrA".into()];
        let d = derive(&o);
        assert_eq!(d.lan_peer_saw, Some(vec![host]));
        assert_eq!(d.reachability.lan_to_guest, Some(false));
        assert_eq!(d.throughput_mbps.lan_to_guest, Some(200.0));
        let n = notes(&d);
        assert!(
            n.contains("throughput lan_to_guest: over a connection the guest opened"),
            "{n}"
        );
        assert!(
            n.contains("left behind after the guests ended: an ingress qdisc on ctrA"),
            "{n}"
        );
        assert_eq!(d.left_behind, o.left_behind);
        // A watch that saw nothing although the guest reached the LAN says so.
        o.lan_peer_saw = Some(vec![]);
        assert!(notes(&derive(&o)).contains("lan_peer_saw: the LAN peer's watch saw none"));
        assert!(!notes(&derive(&tap())).contains("lan_peer_saw"));
    }

    #[test]
    fn throughput_over_a_failed_ping_direction_is_explained() {
        let mut o = tap();
        o.backend = Backend::MacvtapPrivate;
        o.pings.insert(Dir::GuestToHost, vec![]);
        let p = derive(&o);
        assert_eq!(p.reachability.guest_to_host, Some(false));
        assert_eq!(p.throughput_mbps.guest_to_host, Some(3150.0));
        assert!(notes(&p).contains("throughput guest_to_host: measured although"));
    }

    #[test]
    fn a_skipped_backend_keeps_its_reason_and_notes_and_has_no_facts() {
        let mut o = Observed::new(Backend::MacvtapBridge);
        o.notes
            .push("the measured guest did not come up (attempt 1): x".into());
        o.skipped = Some("netvmm: cannot create macvtap on lanA".into());
        let d = derive(&o);
        assert_eq!(d.skipped, o.skipped);
        assert_eq!(d.notes, o.notes);
        assert_eq!(d.reachability, Reachability::default());
    }

    #[test]
    fn a_backend_never_observed_is_skipped_for_the_reason_given() {
        let rows = crate::compare::backend::rows(
            &[Backend::Tap, Backend::MacvtapVepa],
            &[Datapath::User, Datapath::Vhost],
        );
        let got = outcomes(&[tap()], &rows, "the lab host crashed");
        assert_eq!(got[0].skipped, None);
        // tap+vhost is its own row: tap's observation is not its.
        assert_eq!(got[1].label(), "tap+vhost");
        assert_eq!(got[1].skipped.as_deref(), Some("the lab host crashed"));
        assert_eq!(got[3].label(), "macvtap-vepa+vhost");
        assert_eq!(got[2].backend, Backend::MacvtapVepa);
        assert_eq!(got[2].skipped.as_deref(), Some("the lab host crashed"));
        assert!(got[2].notes.is_empty());
    }

    #[test]
    fn the_last_observation_of_a_backend_wins() {
        let mut again = tap();
        again.total_to_ready_ms = Some(1000.0);
        let got = outcomes(&[tap(), again], &[tap().row()], "x");
        assert_eq!(got[0].boot_ms, Some(1250.0));
    }

    fn passthru(second: Option<SecondGuest>) -> Outcome {
        let mut o = Observed::new(Backend::MacvtapPassthru);
        o.netup = Some(NetUp {
            ok: false,
            uptime_s: 31.0,
        });
        o.pings.insert(Dir::GuestToHost, vec![]);
        o.second_guest = second;
        derive(&o)
    }

    #[test]
    fn a_refused_second_passthru_guest_means_no_guest_to_guest() {
        let p = passthru(Some(SecondGuest {
            status: 1,
            message: "netvmm: lanA is taken by a passthru macvtap".into(),
        }));
        assert_eq!(p.reachability.guest_to_guest, Some(false));
        assert!(notes(&p).contains("refused one on the same NIC (lanA is taken"));
    }

    #[test]
    fn a_second_passthru_guest_that_started_or_never_tried_is_not_observed() {
        let p = passthru(Some(SecondGuest {
            status: 0,
            message: String::new(),
        }));
        assert_eq!(p.reachability.guest_to_guest, None);
        assert!(notes(&p).contains("a second passthru guest started"));
        let p = passthru(None);
        assert!(notes(&p).contains("no second guest was tried"));
    }

    #[test]
    fn what_was_not_seen_is_null_with_a_note() {
        let p = passthru(None);
        assert_eq!(p.reachability.guest_to_host, Some(false));
        assert_eq!(p.reachability.lan_to_guest, None);
        assert_eq!(p.rtt_ms.guest_to_host, None);
        assert_eq!(p.boot_ms, None);
        let n = notes(&p);
        assert!(
            n.contains("boot_ms: the guest never got a ping reply"),
            "{n}"
        );
        assert!(n.contains("lan_to_guest: not observed"), "{n}");
        assert!(n.contains("rtt guest_to_host: no ping replies"), "{n}");
        assert!(
            n.contains("throughput guest_to_lan: iperf3 did not run"),
            "{n}"
        );
    }

    #[test]
    fn boot_without_the_report_or_the_ready_line_says_which() {
        let mut o = tap();
        o.total_to_ready_ms = None;
        assert!(notes(&derive(&o)).contains("no total_to_ready_ms"));
        let mut o = tap();
        o.ready_uptime_s = None;
        assert!(notes(&derive(&o)).contains("ready line or first reply is missing"));
    }

    #[test]
    fn observations_round_trip_through_their_json_line() {
        let mut o = tap();
        // Figures that binary floating point holds exactly (serde_json's float parsing
        // may be one ulp off otherwise).
        o.pings.insert(Dir::GuestToHost, vec![0.5, 0.75, 1.25]);
        o.pings.insert(Dir::GuestToLan, vec![2.5]);
        let line = serde_json::to_string(&o).unwrap();
        assert!(!line.contains('\n'));
        assert!(line.contains(r#""kind":"not_run""#), "{line}");
        assert_eq!(serde_json::from_str::<Observed>(&line).unwrap(), o);
    }

    #[test]
    fn directions_are_named_as_in_the_schema() {
        assert_eq!(
            Dir::REACH.map(Dir::name),
            crate::compare::report::Reachability::NAMES
        );
        assert_eq!(
            Dir::FLOWS.map(Dir::name),
            crate::compare::report::Throughput::NAMES
        );
        for d in Dir::REACH {
            assert_eq!(serde_json::to_value(d).unwrap(), d.name());
        }
    }
}
