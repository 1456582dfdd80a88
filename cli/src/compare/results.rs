//! The scenario's `cmp ...` result lines turned into typed outcomes (`report`), one per
//! backend. A figure that cannot be derived from what the scenario saw is `None`, with a
//! note saying why.

use super::backend::Backend;
use super::report::{Outcome, Reachability, Rtt, Throughput};

/// The throughput directions, in the order of the JSON schema.
const FLOWS: [&str; 4] = Throughput::NAMES;
/// The reachability facts, in the order of the JSON schema.
const REACH: [&str; 5] = Reachability::NAMES;
/// /proc/<pid>/stat counts CPU time in USER_HZ ticks, which Linux fixes at 100 on x86.
const MS_PER_TICK: f64 = 10.0;
/// Bytes in the "GB" of `vmm_cpu_ms_per_gb` (decimal, like the Mbit/s figures).
const BYTES_PER_GB: f64 = 1e9;

/// The round-trip time of one ping reply line (busybox or iputils), in ms.
pub fn ping_reply_ms(line: &str) -> Option<f64> {
    if !line.contains("bytes from") {
        return None;
    }
    let t = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("time="))?;
    let t = t.trim_end_matches("ms");
    t.parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0)
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

/// (Mbit/s, bytes) from an iperf3 summary line such as
/// `[  5]   0.00-3.00   sec   100 MBytes   280 Mbits/sec                  receiver`.
pub fn iperf_summary(line: &str) -> Option<(f64, f64)> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Option<f64> { w.get(i.checked_sub(1)?)?.parse().ok() };
    let bytes = w.iter().position(|t| t.ends_with("Bytes")).and_then(|i| {
        let scale = match w[i] {
            "Bytes" => 1.0,
            "KBytes" => 1024.0,
            "MBytes" => 1024.0 * 1024.0,
            "GBytes" => 1024.0 * 1024.0 * 1024.0,
            "TBytes" => 1024f64.powi(4),
            _ => return None,
        };
        Some(num(i)? * scale)
    })?;
    let mbps = w
        .iter()
        .position(|t| t.ends_with("bits/sec"))
        .and_then(|i| {
            let scale = match w[i] {
                "bits/sec" => 1e-6,
                "Kbits/sec" => 1e-3,
                "Mbits/sec" => 1.0,
                "Gbits/sec" => 1e3,
                "Tbits/sec" => 1e6,
                _ => return None,
            };
            Some(num(i)? * scale)
        })?;
    Some((mbps, bytes))
}

/// utime + stime, in ticks, from the contents of /proc/<pid>/stat.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// `key=value` from a line of `key=value` words.
fn word_value(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The figures for each of `backends` from the scenario's result lines. A backend whose
/// lines do not end with `done` is reported as skipped, for `unfinished` (why the scenario
/// stopped early), with no figures: a half-run backend would show facts it never observed.
pub fn parse(text: &str, backends: &[Backend], unfinished: &str) -> Vec<Outcome> {
    backends
        .iter()
        .map(|b| parse_one(text, *b, unfinished))
        .collect()
}

/// The backends whose lines in `text` end with `done`.
pub fn finished(text: &str, backends: &[Backend]) -> Vec<Backend> {
    backends
        .iter()
        .copied()
        .filter(|b| {
            text.lines()
                .any(|l| l.trim_end_matches('\r') == format!("cmp {} done", b.name()))
        })
        .collect()
}

/// `text` without the lines of `backend`.
pub fn without(text: &str, backend: Backend) -> String {
    let prefix = format!("cmp {} ", backend.name());
    text.lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[derive(Default)]
struct Flow {
    summary: Option<(f64, f64)>,
    errors: Vec<String>,
    status: Option<String>,
    no_path: Option<String>,
    before: Option<u64>,
    after: Option<u64>,
}

fn parse_one(text: &str, backend: Backend, unfinished: &str) -> Outcome {
    let mut o = Outcome::new(backend);
    let mut pings: Vec<(String, Vec<String>)> = Vec::new();
    let mut flows: Vec<Flow> = FLOWS.iter().map(|_| Flow::default()).collect();
    let (mut netup, mut ready, mut to_ready) = (None, None, None);
    let mut second_guest: Option<(String, String)> = None;
    let mut done = false;

    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let Some(rest) = line.strip_prefix("cmp ") else {
            continue;
        };
        let Some((b, rest)) = rest.split_once(' ') else {
            continue;
        };
        if b != backend.name() {
            continue;
        }
        let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let (arg, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let flow = FLOWS.iter().position(|f| *f == arg).map(|i| &mut flows[i]);
        match (kind, flow) {
            ("done", _) => done = true,
            ("skip", _) => o.skipped = Some(rest.trim().to_string()),
            ("note", _) => o.notes.push(rest.trim().to_string()),
            ("netup", _) => {
                netup = rest
                    .trim()
                    .split_once(':')
                    .and_then(|(ok, up)| Some((ok == "1", up.trim().parse::<f64>().ok()?)))
            }
            ("ready", _) => ready = word_value(rest, "uptime"),
            ("report", _) => to_ready = word_value(rest, "total_to_ready_ms"),
            ("second-guest", _) => second_guest = Some((arg.to_string(), tail.to_string())),
            ("ping", _) => match pings.iter_mut().find(|(d, _)| d == arg) {
                Some((_, v)) => v.push(tail.to_string()),
                None => pings.push((arg.to_string(), vec![tail.to_string()])),
            },
            ("iperf", Some(f)) => {
                if tail.contains("receiver") {
                    f.summary = f.summary.or(iperf_summary(tail));
                } else if tail.contains("error") {
                    f.errors.push(tail.trim().to_string());
                }
            }
            ("iperf-status", Some(f)) => f.status = Some(tail.trim().to_string()),
            ("no-iperf", Some(f)) => f.no_path = Some(tail.trim().to_string()),
            ("cpu", Some(f)) => {
                let (when, stat) = tail.split_once(' ').unwrap_or((tail, ""));
                let ticks = stat_cpu_ticks(stat);
                match when {
                    "before" => f.before = ticks,
                    "after" => f.after = ticks,
                    _ => {}
                }
            }
            _ => {}
        }
    }

    if o.skipped.is_some() {
        return o;
    }
    if !done {
        let mut o = Outcome::new(backend);
        o.skipped = Some(unfinished.to_string());
        return o;
    }

    // Reachability: observed when a ping ran; reachable when any reply came back.
    let lines_for = |d: &str| pings.iter().find(|(p, _)| p == d).map(|(_, v)| v);
    let mut reach = [None; 5];
    for (i, dir) in REACH.iter().enumerate() {
        match lines_for(dir) {
            Some(v) => {
                reach[i] = Some(v.iter().any(|l| ping_reply_ms(l).is_some()));
            }
            None if *dir == "guest_to_guest" && !backend.has_sibling() => {
                match &second_guest {
                    Some((status, msg)) if status != "0" => {
                        reach[i] = Some(false);
                        o.notes.push(format!(
                            "guest_to_guest: there is no second guest: netvmm refused one on the same NIC ({})",
                            msg.trim_start_matches("netvmm: ")
                        ));
                    }
                    Some(_) => o.notes.push(
                        "guest_to_guest: not observed: a second passthru guest started, and was not pinged".into(),
                    ),
                    None => o
                        .notes
                        .push("guest_to_guest: not observed: no second guest was tried".into()),
                }
            }
            None => o
                .notes
                .push(format!("{dir}: not observed (no ping ran in that direction)")),
        }
    }
    o.reachability = reach.into();

    for (name, slot) in [
        ("guest_to_host", &mut o.rtt_ms.guest_to_host),
        ("guest_to_lan", &mut o.rtt_ms.guest_to_lan),
    ] {
        let samples: Vec<f64> = lines_for(name)
            .map(|v| v.iter().filter_map(|l| ping_reply_ms(l)).collect())
            .unwrap_or_default();
        *slot = rtt_of(&samples);
        if slot.is_none() {
            o.notes.push(format!("rtt {name}: no ping replies to time"));
        }
    }

    o.boot_ms = match (to_ready, ready, netup) {
        (Some(t), Some(r), Some((true, up))) => Some(t + ((up - r) * 1000.0).max(0.0)),
        (_, _, Some((false, _))) => {
            o.notes
                .push("boot_ms: the guest never got a ping reply from the LAN peer".into());
            None
        }
        (None, _, _) => {
            o.notes
                .push("boot_ms: netvmm printed no total_to_ready_ms (NETVMM_BOOT_REPORT)".into());
            None
        }
        _ => {
            o.notes
                .push("boot_ms: the guest's ready line or first reply is missing".into());
            None
        }
    };

    let (mut cpu_ticks, mut bytes) = (0u64, 0f64);
    let mut cpu_ok = false;
    let mut mbps_of = [None; 4];
    for (i, f) in flows.iter().enumerate() {
        let name = FLOWS[i];
        match f.summary {
            Some((mbps, b)) if mbps > 0.0 => {
                mbps_of[i] = Some(mbps);
                if let (Some(x), Some(y)) = (f.before, f.after) {
                    cpu_ticks += y.saturating_sub(x);
                    bytes += b;
                    cpu_ok = true;
                }
            }
            _ => {
                let why = if let Some(p) = &f.no_path {
                    p.clone()
                } else if let Some(e) = f.errors.first() {
                    e.clone()
                } else if let Some(s) = &f.status {
                    format!("iperf3 exited with status {s} and no receiver summary")
                } else {
                    "iperf3 did not run".into()
                };
                o.notes.push(format!("throughput {name}: {why}"));
            }
        }
    }
    o.throughput_mbps = mbps_of.into();
    // iperf3 -R runs over a connection the host (or LAN peer) opened, after its own ARP
    // request taught the guest its MAC: data can flow where the guest's own ping could not
    // start (macvtap private, whose broadcasts never reach the host).
    let (r, t) = (o.reachability, o.throughput_mbps);
    for (flow, reached, measured) in [
        ("guest_to_host", r.guest_to_host, t.guest_to_host),
        ("guest_to_lan", r.guest_to_lan, t.guest_to_lan),
    ] {
        if reached == Some(false) && measured.is_some() {
            o.notes.push(format!(
                "throughput {flow}: measured although the {flow} ping failed: iperf3 -R sends over a connection the other side opened, after its ARP request taught the guest its MAC"
            ));
        }
    }
    if cpu_ok && bytes > 0.0 {
        o.vmm_cpu_ms_per_gb = Some(cpu_ticks as f64 * MS_PER_TICK / (bytes / BYTES_PER_GB));
    } else {
        o.notes.push(
            "vmm_cpu_ms_per_gb: no iperf3 run moved data with the VMM's CPU time read around it"
                .into(),
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_BEFORE: &str = "412 (netvmm) S 1 412 1 0 -1 4194560 2000 0 0 0 150 50 0 0 20 0 4 0 900 1 1 18446744073709551615";
    const STAT_AFTER: &str = "412 (netvmm) S 1 412 1 0 -1 4194560 2000 0 0 0 350 150 0 0 20 0 4 0 900 1 1 18446744073709551615";

    fn tap_lines() -> String {
        let mut s = String::new();
        s.push_str("cmp tap ready netvmm-guest: ready uptime=1.50 cpus=1 mem_kb=1\n");
        s.push_str("cmp tap report netvmm-report: setup_ms=5.0 setup_cpu_ms=3.0 guest_boot_ms=900.0 total_to_ready_ms=2000.0 vmm_rss_kib=10 guest_ram_mib=384\n");
        s.push_str("cmp tap netup 1:1.75\n");
        for (d, base) in [("guest_to_host", 0.5), ("guest_to_lan", 1.0)] {
            s.push_str(&format!("cmp tap ping {d} PING x (x): 56 data bytes\n"));
            for i in 0..20 {
                s.push_str(&format!(
                    "cmp tap ping {d} 64 bytes from 192.0.2.1: seq={i} ttl=64 time={:.3} ms\n",
                    base + i as f64 * 0.1
                ));
            }
        }
        s.push_str(
            "cmp tap ping guest_to_guest 64 bytes from 192.0.2.18: seq=0 ttl=63 time=2.1 ms\n",
        );
        s.push_str(
            "cmp tap ping host_to_guest 64 bytes from 192.0.2.2: icmp_seq=1 ttl=64 time=0.4 ms\n",
        );
        s.push_str("cmp tap ping lan_to_guest PING 192.0.2.2 (192.0.2.2): 56 data bytes\n");
        s.push_str("cmp tap ping lan_to_guest 3 packets transmitted, 0 packets received, 100% packet loss\n");
        s.push_str(&format!("cmp tap cpu guest_to_lan before {STAT_BEFORE}\n"));
        s.push_str(&format!("cmp tap cpu guest_to_lan after {STAT_AFTER}\n"));
        s.push_str("cmp tap iperf guest_to_lan [  5]   0.00-3.00   sec   100 MBytes   280 Mbits/sec    0             sender\n");
        s.push_str("cmp tap iperf guest_to_lan [  5]   0.00-3.00   sec  95.4 MBytes   267 Mbits/sec                  receiver\n");
        s.push_str("cmp tap iperf-status guest_to_lan 0\n");
        s.push_str("cmp tap no-iperf lan_to_guest no path: the lan_to_guest ping got no reply\n");
        s.push_str("cmp tap iperf host_to_guest iperf3: error - unable to connect to server: Connection timed out\n");
        s.push_str("cmp tap iperf-status host_to_guest 1\n");
        s.push_str("cmp tap iperf guest_to_host [  5]   0.00-3.00   sec  1.10 GBytes  3.15 Gbits/sec                  receiver\n");
        s.push_str("cmp tap done\n");
        s
    }

    #[test]
    fn ping_lines_of_busybox_and_iputils() {
        assert_eq!(
            ping_reply_ms("64 bytes from 203.0.113.1: seq=0 ttl=64 time=0.512 ms"),
            Some(0.512)
        );
        assert_eq!(
            ping_reply_ms("64 bytes from 203.0.113.1: icmp_seq=1 ttl=64 time=12 ms"),
            Some(12.0)
        );
        assert_eq!(
            ping_reply_ms("PING 203.0.113.1 (203.0.113.1): 56 data bytes"),
            None
        );
        assert_eq!(
            ping_reply_ms("round-trip min/avg/max = 0.3/0.4/0.5 ms"),
            None
        );
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
    fn iperf_summary_units() {
        let (m, b) = iperf_summary(
            "[  5]   0.00-3.00   sec  95.4 MBytes   267 Mbits/sec                  receiver",
        )
        .unwrap();
        assert_eq!(m, 267.0);
        assert_eq!(b, 95.4 * 1048576.0);
        let (m, b) =
            iperf_summary("[  5] 0.00-3.00 sec 1.10 GBytes 3.15 Gbits/sec receiver").unwrap();
        assert_eq!(m, 3150.0);
        assert_eq!(b, 1.1 * 1073741824.0);
        let (m, _) =
            iperf_summary("[  5] 0.00-3.00 sec 512 KBytes 1.40 Kbits/sec receiver").unwrap();
        assert_eq!(m, 0.0014);
        assert!(iperf_summary("iperf3: error - unable to connect").is_none());
    }

    #[test]
    fn stat_fields_after_the_command_name() {
        assert_eq!(stat_cpu_ticks(STAT_BEFORE), Some(200));
        assert_eq!(
            stat_cpu_ticks("7 (a b) c) R 1 2 3 4 5 6 7 8 9 10 5 6 rest"),
            Some(11)
        );
        assert_eq!(stat_cpu_ticks("garbage"), None);
        assert_eq!(stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    fn tap() -> Outcome {
        parse(&tap_lines(), &[Backend::Tap], "x").remove(0)
    }

    fn notes_of(o: &Outcome) -> String {
        o.notes.join("\n")
    }

    #[test]
    fn boot_is_netvmm_to_ready_plus_the_guest_clock_to_its_first_reply() {
        // 2000 ms to the ready line + (1.75 - 1.50) s of the guest's clock.
        assert_eq!(tap().boot_ms, Some(2250.0));
    }

    #[test]
    fn rtts_come_from_the_timed_replies() {
        let o = tap();
        assert_eq!(o.skipped, None);
        let r = o.rtt_ms.guest_to_host.unwrap();
        assert!((r.avg - 1.45).abs() < 1e-9, "{r:?}");
        assert!((r.p99 - 2.4).abs() < 1e-9, "{r:?}");
        assert!((o.rtt_ms.guest_to_lan.unwrap().p99 - 2.9).abs() < 1e-9);
    }

    #[test]
    fn a_direction_is_reachable_when_any_reply_came_back() {
        assert_eq!(
            tap().reachability.values(),
            [Some(true), Some(true), Some(true), Some(false), Some(true)]
        );
    }

    #[test]
    fn throughput_is_the_receiver_summary() {
        let t = tap().throughput_mbps;
        assert_eq!(t.guest_to_lan, Some(267.0));
        assert_eq!(t.guest_to_host, Some(3150.0));
        assert_eq!(t.lan_to_guest, None);
        assert_eq!(t.host_to_guest, None);
    }

    #[test]
    fn a_missing_throughput_says_why() {
        let notes = notes_of(&tap());
        assert!(
            notes.contains("throughput lan_to_guest: no path"),
            "{notes}"
        );
        assert!(
            notes.contains("throughput host_to_guest: iperf3: error - unable to connect"),
            "{notes}"
        );
        assert!(!notes.contains("measured although"), "{notes}");
    }

    #[test]
    fn vmm_cpu_counts_only_runs_with_readings_around_them() {
        // The guest_to_host run has no CPU readings: only guest_to_lan counts.
        let expect = 300.0 * 10.0 / (95.4 * 1048576.0 / 1e9);
        assert!((tap().vmm_cpu_ms_per_gb.unwrap() - expect).abs() < 1e-6);
    }

    #[test]
    fn throughput_over_a_failed_ping_direction_is_explained() {
        let private = tap_lines().replace("cmp tap", "cmp macvtap-private");
        let private: String = private
            .lines()
            .filter(|l| !l.contains("ping guest_to_host 64 bytes"))
            .map(|l| format!("{l}\n"))
            .collect();
        let p = parse(&private, &[Backend::MacvtapPrivate], "x").remove(0);
        assert_eq!(p.reachability.guest_to_host, Some(false));
        assert_eq!(p.throughput_mbps.guest_to_host, Some(3150.0));
        assert!(
            p.notes
                .iter()
                .any(|n| n.starts_with("throughput guest_to_host: measured although")),
            "{:?}",
            p.notes
        );
    }

    const MIXED: &str = "cmp macvtap-bridge skip netvmm: cannot create macvtap on lanA: Operation not supported\n\
                cmp macvtap-bridge done\n\
                cmp macvtap-vepa netup 1:2.0\n\
                cmp macvtap-passthru netup 0:31.0\n\
                cmp macvtap-passthru done\n\
                cmp macvtap-passthru second-guest 1 netvmm: lanA is taken by a passthru macvtap\n\
                cmp macvtap-passthru ping guest_to_host 20 packets transmitted, 0 packets received, 100% packet loss\n\
                cmp other-backend skip x\n";

    fn mixed(b: Backend) -> Outcome {
        parse(MIXED, &[b], "the lab host crashed").remove(0)
    }

    #[test]
    fn a_skipped_backend_has_its_reason_and_no_facts() {
        let o = mixed(Backend::MacvtapBridge);
        assert_eq!(
            o.skipped.as_deref(),
            Some("netvmm: cannot create macvtap on lanA: Operation not supported")
        );
        assert_eq!(o.reachability, Reachability::default());
    }

    #[test]
    fn an_unfinished_backend_is_skipped_without_its_half_observed_figures() {
        let o = mixed(Backend::MacvtapVepa);
        assert_eq!(o.skipped.as_deref(), Some("the lab host crashed"));
        assert_eq!(o.notes, Vec::<String>::new());
        assert_eq!(o.reachability, Reachability::default());
    }

    #[test]
    fn finished_backends_and_dropping_one_s_lines() {
        assert_eq!(
            finished(MIXED, &Backend::ALL),
            [Backend::MacvtapBridge, Backend::MacvtapPassthru]
        );
        let both = parse(
            MIXED,
            &[Backend::MacvtapPassthru, Backend::MacvtapBridge],
            "x",
        );
        let names: Vec<Backend> = both.iter().map(|o| o.backend).collect();
        assert_eq!(names, [Backend::MacvtapPassthru, Backend::MacvtapBridge]);
        let rest = without(MIXED, Backend::MacvtapPassthru);
        assert!(!rest.contains("passthru") && rest.contains("cmp macvtap-vepa netup 1:2.0\n"));
    }

    #[test]
    fn a_refused_second_passthru_guest_means_no_guest_to_guest() {
        let p = mixed(Backend::MacvtapPassthru);
        assert_eq!(p.skipped, None);
        assert_eq!(p.reachability.guest_to_guest, Some(false));
        let notes = notes_of(&p);
        assert!(
            notes.contains("refused one on the same NIC (lanA is taken"),
            "{notes}"
        );
    }

    #[test]
    fn what_was_not_seen_is_null_with_a_note() {
        let p = mixed(Backend::MacvtapPassthru);
        assert_eq!(p.reachability.guest_to_host, Some(false));
        assert_eq!(p.reachability.lan_to_guest, None);
        assert_eq!(p.rtt_ms.guest_to_host, None);
        assert_eq!(p.boot_ms, None);
        assert_eq!(p.vmm_cpu_ms_per_gb, None);
        let notes = notes_of(&p);
        assert!(
            notes.contains("boot_ms: the guest never got a ping reply"),
            "{notes}"
        );
        assert!(notes.contains("lan_to_guest: not observed"), "{notes}");
        assert!(
            notes.contains("rtt guest_to_host: no ping replies"),
            "{notes}"
        );
    }
}
