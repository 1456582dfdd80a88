//! `netvmm compare` end to end: in the emulated lab, and in the native lab that `--lab auto`
//! picks inside the lab host (whose KVM boots stock kernels). The emulated run: all nine
//! backends (macvtap-bridge+host: the host's address on netvmm's host-access shim), `--json`,
//! and the reachability matrix held against what the kernel does in the topology compare builds
//! (a NIC whose wire leads to a LAN switch; the switch hairpins the NIC's port for
//! macvtap vepa and private only):
//!
//! | backend          | g->host | host->g | g->LAN | LAN->g | g->g |
//! |------------------|---------|---------|--------|--------|------|
//! | tap (routed)     | yes     | yes     | yes    | yes    | yes  |
//! | tap-nat          | yes     | yes     | yes    | no     | no   |
//! | bridge           | yes     | yes     | yes    | yes    | yes  |
//! | tc-redirect      | yes     | yes     | yes    | yes    | yes  |
//! | macvtap-bridge   | no      | no      | yes    | yes    | yes  |
//! | macvtap-bridge+host | yes  | yes     | yes    | yes    | yes  |
//! | macvtap-vepa     | yes     | yes     | yes    | yes    | yes  |
//! | macvtap-private  | no      | yes     | yes    | yes    | no   |
//! | macvtap-passthru | no      | no      | yes    | yes    | no   |
//!
//! (private: a guest's broadcasts, ARP included, come back from the hairpin to itself only,
//! so neither a sibling nor the host learns its MAC; the host's own ARP request does reach
//! the guest, so host->guest works. passthru: one guest owns the NIC; a second is refused.
//! tap-nat: the LAN peer has a route to the guests via the host, yet netvmm's NAT table lets
//! only replies in, and drops what one NAT guest sends to another; the LAN peer sees the
//! host's address as the source. tc-redirect: the host reaches the guest through the LAN
//! switch, from its address on lanA.)
//! Every figure a path allows must be present and positive; throughput host<->guest is null
//! exactly where the host cannot reach the guest.

mod common;

/// netvmm's own result types, read back with serde (report.rs needs `crate::backend`).
#[path = "../cli/src/compare/backend.rs"]
#[allow(dead_code)]
mod backend;
#[path = "../cli/src/compare/report.rs"]
#[allow(dead_code)]
mod report;

use backend::Datapath;
use report::{Outcome, Report};

const BACKENDS: [&str; 9] = [
    "tap",
    "tap-nat",
    "bridge",
    "tc-redirect",
    "macvtap-bridge",
    "macvtap-bridge+host",
    "macvtap-vepa",
    "macvtap-private",
    "macvtap-passthru",
];

fn expected(backend: &str) -> [bool; 5] {
    match backend {
        "tap" | "bridge" | "tc-redirect" | "macvtap-bridge+host" | "macvtap-vepa" => [true; 5],
        "tap-nat" => [true, true, true, false, false],
        "macvtap-bridge" => [false, false, true, true, true],
        "macvtap-private" => [false, true, true, true, false],
        "macvtap-passthru" => [false, false, true, true, false],
        other => panic!("unknown backend {other}"),
    }
}

/// Holds backend `b`'s measured reachability (result `r`) against the kernel's semantics.
fn reaches_as_expected(r: &Outcome, dump: &str) {
    let b = r.backend.name();
    let want = expected(b).map(Some);
    assert_eq!(
        r.reachability.values(),
        want,
        "{b}: reachability {:?}\n{dump}",
        report::Reachability::NAMES
    );
}

/// The `--json` document, into the types netvmm wrote it from.
fn read_report(text: &str, dump: &str) -> Report {
    let doc: Report =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not the JSON schema: {e}\n{dump}"));
    assert_eq!(doc.schema_version, report::SCHEMA_VERSION, "{dump}");
    doc
}

#[test]
fn compare_measures_every_backend_and_the_kernel_semantics_hold() {
    let dir = std::env::temp_dir().join(format!("netvmm-compare-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let chart = dir.join("chart.svg");
    let started = std::time::Instant::now();
    let out = common::netvmm_in_lab(&[
        "compare",
        "--lab",
        "emulated",
        "--json",
        "--duration",
        "2",
        "--explain",
        "--chart",
        chart.to_str().expect("a UTF-8 temporary path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Why figures are missing comes first: a CI log that keeps only the head and the tail of
    // a long failure message still shows it.
    let why = stderr
        .split("Not measured, and why:")
        .nth(1)
        .map(|rest| rest.split("\n\n").next().unwrap_or(rest))
        .unwrap_or("(no figure is missing)");
    let dump = format!(
        "status {:?} after {:.0} s\n--- not measured, and why ---{why}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status.code(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(0), "{dump}");

    let doc = read_report(&stdout, &dump);
    assert_eq!(doc.lab, "emulated", "{dump}");
    assert_eq!(doc.transport, "mmio", "{dump}");
    let results = &doc.results;
    let names: Vec<&str> = results.iter().map(|r| r.backend.name()).collect();
    assert_eq!(
        names, BACKENDS,
        "every backend reported, passthru last\n{dump}"
    );

    for r in results {
        let b = r.backend.name();
        assert_eq!(r.skipped, None, "{b} skipped\n{dump}");
        reaches_as_expected(r, &dump);

        // What the LAN peer saw as the source of the guest's pings: the guest's own
        // address, but through NAT the host's LAN address.
        let saw = r.lan_peer_saw.clone().unwrap_or_default();
        let source = match b {
            "tap-nat" => "203.0.113.10",
            "tap" => "192.0.2.2",
            _ => "203.0.113.2",
        };
        assert_eq!(
            saw,
            [source.parse::<std::net::Ipv4Addr>().unwrap()],
            "{b}\n{dump}"
        );
        assert!(r.left_behind.is_empty(), "{b}: {:?}\n{dump}", r.left_behind);
        let (t, rtt) = (&r.throughput_mbps, &r.rtt_ms);
        let positive = |what: &str, v: Option<f64>| positive(b, what, v, &dump);
        positive("boot_ms", r.boot_ms);
        positive("vmm_cpu_ms_per_gb", r.vmm_cpu_ms_per_gb);
        let lan = rtt
            .guest_to_lan
            .unwrap_or_else(|| panic!("{b}: no rtt to the LAN\n{dump}"));
        positive("rtt_ms.guest_to_lan.avg", Some(lan.avg));
        positive("rtt_ms.guest_to_lan.p99", Some(lan.p99));
        assert!(lan.p99 >= lan.avg, "{b}: {lan:?}\n{dump}");
        positive("throughput_mbps.guest_to_lan", t.guest_to_lan);
        positive("throughput_mbps.lan_to_guest", t.lan_to_guest);
        let [g2h, h2g, ..] = expected(b);
        if g2h {
            let host = rtt.guest_to_host;
            positive("rtt_ms.guest_to_host.avg", host.map(|h| h.avg));
            positive("rtt_ms.guest_to_host.p99", host.map(|h| h.p99));
        } else {
            assert_eq!(rtt.guest_to_host, None, "{b}\n{dump}");
        }
        if h2g {
            positive("throughput_mbps.guest_to_host", t.guest_to_host);
            positive("throughput_mbps.host_to_guest", t.host_to_guest);
        } else {
            assert_eq!(t.host_to_guest, None, "{b}\n{dump}");
            assert!(
                stderr.contains("throughput host_to_guest: no path"),
                "the reason for a null is printed\n{dump}"
            );
        }
    }

    // The table, the lab line, the explanation (which agrees with the kernel) and the chart.
    assert!(stderr.contains("reachability"), "{dump}");
    assert!(stderr.contains("lab: emulated"), "{dump}");
    assert!(stderr.contains("== macvtap-vepa =="), "{dump}");
    assert!(!stderr.contains("Unexpected:"), "{dump}");
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches(r#"<g class="backend""#).count(), 18, "{svg}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs in the emulated lab host, whose /dev/kvm (kvm_amd) boots stock kernels and where the
/// scenario is root: there `--lab auto` must choose the native lab.
const NATIVE: &str = r#"
# Progress comes out as it happens (tee), so that a lab that stops shows where. The tap
# guest is cut off from the network before its host_to_guest run, as the nested lab has been
# seen to do: compare must replace it and still measure.
{ NETVMM_COMPARE_CUT=tap:host_to_guest netvmm compare --backends tap,macvtap-bridge --datapath both --transport pci --duration 1 --json --explain > /tmp/c.json; echo $? > /tmp/c.st; } 2>&1 | tee /tmp/c.err
s=$(cat /tmp/c.st)
echo "case=native status=$s netns=$(ls /run/netns 2>/dev/null | wc -l) links=$(ls /sys/class/net | grep -vc '^lo$')"
echo "--- json"; cat /tmp/c.json; echo "--- end"
"#;

/// The native lab for real: the same Rust scenario in a private network and mount namespace
/// netvmm makes on the host it runs on (here the lab host), measured, and gone after; a
/// guest cut off mid-run is replaced, on the record, and its rings are in its exit report.
/// Both data paths: every backend also through vhost-net, which reaches what the userspace
/// path reaches. On virtio-pci (`--transport pci`; the emulated run above is on
/// virtio-mmio), which every guest's exit report must confirm.
#[test]
fn compare_runs_natively_where_kvm_boots_the_guest() {
    let out = common::lab(NATIVE, 900);
    let dump = out.dump();
    assert_eq!(out.status, 0, "{dump}");
    assert_eq!(
        out.field("native", "status").as_deref(),
        Some("0"),
        "{dump}"
    );
    assert!(out.stdout.contains("lab: native"), "{dump}");
    // Everything the scenario made lived in its own namespaces: none is left on the host.
    assert_eq!(out.field("native", "netns").as_deref(), Some("0"), "{dump}");
    assert_eq!(out.field("native", "links").as_deref(), Some("0"), "{dump}");
    let text = out
        .stdout
        .split("--- json")
        .nth(1)
        .and_then(|r| r.split("--- end").next())
        .unwrap_or_else(|| panic!("no JSON\n{dump}"))
        .replace('\r', "");
    let doc = read_report(&text, &dump);
    assert_eq!(doc.lab, "native", "{dump}");
    assert_eq!(doc.transport, "pci", "{dump}");
    assert!(
        out.stdout.contains("NIC: virtio-net on virtio-pci"),
        "{dump}"
    );
    let results = &doc.results;
    let rows: Vec<String> = results.iter().map(|r| r.label()).collect();
    assert_eq!(
        rows,
        ["tap", "tap+vhost", "macvtap-bridge", "macvtap-bridge+vhost"],
        "{dump}"
    );
    for r in results {
        let b = r.label();
        let b = b.as_str();
        reaches_as_expected(r, &dump);
        positive(b, "guest_to_lan", r.throughput_mbps.guest_to_lan, &dump);
        positive(b, "lan_to_guest", r.throughput_mbps.lan_to_guest, &dump);
        positive(b, "vmm_cpu_ms_per_gb", r.vmm_cpu_ms_per_gb, &dump);
        // Who copied the frames: netvmm's device thread on the userspace path, the kernel's
        // vhost-net workers (kernel threads on the lab's 6.1) on the other.
        if r.datapath == Datapath::Vhost {
            positive(b, "vhost_cpu_ms_per_gb", r.vhost_cpu_ms_per_gb, &dump);
        } else {
            positive(b, "device_cpu_ms_per_gb", r.device_cpu_ms_per_gb, &dump);
            assert_eq!(r.vhost_cpu_ms_per_gb, None, "{b}\n{dump}");
        }
    }
    // ... so netvmm's own threads spent less per GB through vhost.
    for pair in results.chunks(2) {
        let (user, vhost) = (&pair[0], &pair[1]);
        let (u, v) = (user.device_cpu_ms_per_gb, vhost.device_cpu_ms_per_gb);
        assert!(
            matches!((u, v), (Some(u), Some(v)) if v < u),
            "{}: device CPU {u:?} (user) -> {v:?} (vhost) ms/GB\n{dump}",
            user.label()
        );
    }
    // Every row ran on its own data path and on virtio-pci: the guests' exit reports
    // said so.
    assert!(
        !out.stdout.contains("the measured guest's NIC reported "),
        "{dump}"
    );
    assert!(
        out.stdout.contains("== the data path: user and vhost =="),
        "{dump}"
    );
    assert!(out.stdout.contains("tap: reachability the same"), "{dump}");
    assert!(!out.stdout.contains("Unexpected"), "{dump}");
    let tap = &results[0].throughput_mbps;
    positive("tap", "host_to_guest", tap.host_to_guest, &dump);
    positive("tap", "guest_to_host", tap.guest_to_host, &dump);
    for said in [
        "iperf3 host_to_guest attempt 1 failed",
        "no longer answers a ping from the host_to_guest client; it is replaced",
        "the measured guest was lost mid-run",
        "tx_avail=",
    ] {
        assert!(out.stdout.contains(said), "{said}\n{dump}");
    }
}

/// Holds that backend `b`'s figure `what` is present and above zero.
fn positive(b: &str, what: &str, v: Option<f64>, dump: &str) {
    assert!(v.is_some_and(|x| x > 0.0), "{b} {what} = {v:?}\n{dump}");
}
