//! `netvmm compare` end to end: in the emulated lab, and in the native lab that `--lab auto`
//! picks inside the lab host (whose KVM boots stock kernels). The emulated run: all seven
//! backends (macvtap-bridge+host: the host's address on netvmm's host-access shim), `--json`,
//! and the reachability matrix held against what the kernel does in the topology compare builds
//! (a NIC whose wire leads to a LAN switch; the switch hairpins the NIC's port for
//! macvtap vepa and private only):
//!
//! | backend          | g->host | host->g | g->LAN | LAN->g | g->g |
//! |------------------|---------|---------|--------|--------|------|
//! | tap (routed)     | yes     | yes     | yes    | yes    | yes  |
//! | bridge           | yes     | yes     | yes    | yes    | yes  |
//! | macvtap-bridge   | no      | no      | yes    | yes    | yes  |
//! | macvtap-bridge+host | yes  | yes     | yes    | yes    | yes  |
//! | macvtap-vepa     | yes     | yes     | yes    | yes    | yes  |
//! | macvtap-private  | no      | yes     | yes    | yes    | no   |
//! | macvtap-passthru | no      | no      | yes    | yes    | no   |
//!
//! (private: a guest's broadcasts, ARP included, come back from the hairpin to itself only,
//! so neither a sibling nor the host learns its MAC; the host's own ARP request does reach
//! the guest, so host->guest works. passthru: one guest owns the NIC; a second is refused.)
//! Every figure a path allows must be present and positive; throughput host<->guest is null
//! exactly where the host cannot reach the guest.

mod common;

/// netvmm's own JSON value and its test reader.
#[path = "../cli/src/compare/json_value.rs"]
mod json;

const BACKENDS: [&str; 7] = [
    "tap",
    "bridge",
    "macvtap-bridge",
    "macvtap-bridge+host",
    "macvtap-vepa",
    "macvtap-private",
    "macvtap-passthru",
];
const REACH: [&str; 5] = [
    "guest_to_host",
    "host_to_guest",
    "guest_to_lan",
    "lan_to_guest",
    "guest_to_guest",
];

fn expected(backend: &str) -> [bool; 5] {
    match backend {
        "tap" | "bridge" | "macvtap-bridge+host" | "macvtap-vepa" => [true; 5],
        "macvtap-bridge" => [false, false, true, true, true],
        "macvtap-private" => [false, true, true, true, false],
        "macvtap-passthru" => [false, false, true, true, false],
        other => panic!("unknown backend {other}"),
    }
}

/// Holds backend `b`'s measured reachability (result `r`) against the kernel's semantics.
fn reaches_as_expected(b: &str, r: &json::Json, dump: &str) {
    let reach = r
        .get("reachability")
        .unwrap_or_else(|| panic!("{b}: no reachability\n{dump}"));
    let got: Vec<Option<bool>> = REACH
        .iter()
        .map(|k| reach.get(k).and_then(|v| v.bool()))
        .collect();
    let want: Vec<Option<bool>> = expected(b).iter().map(|x| Some(*x)).collect();
    assert_eq!(got, want, "{b}: reachability {REACH:?}\n{dump}");
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

    let doc =
        json::read::parse(&stdout).unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{dump}"));
    assert_eq!(
        doc.get("lab").and_then(|v| v.str()),
        Some("emulated"),
        "{dump}"
    );
    let results = doc.get("results").and_then(|v| v.arr()).expect("results");
    let names: Vec<&str> = results
        .iter()
        .filter_map(|r| r.get("backend").and_then(|v| v.str()))
        .collect();
    assert_eq!(
        names, BACKENDS,
        "every backend reported, passthru last\n{dump}"
    );

    for r in results {
        let b = r.get("backend").and_then(|v| v.str()).unwrap();
        assert!(
            matches!(r.get("skipped"), Some(json::Json::Null)),
            "{b} skipped\n{dump}"
        );
        reaches_as_expected(b, r, &dump);

        let num = |path: &[&str]| json::read::get(r, path).and_then(|v| v.num());
        let positive = |path: &[&str]| positive(r, b, path, &dump);
        positive(&["boot_ms"]);
        positive(&["vmm_cpu_ms_per_gb"]);
        positive(&["rtt_ms", "guest_to_lan", "avg"]);
        positive(&["rtt_ms", "guest_to_lan", "p99"]);
        positive(&["throughput_mbps", "guest_to_lan"]);
        positive(&["throughput_mbps", "lan_to_guest"]);
        let [g2h, h2g, ..] = expected(b);
        if g2h {
            positive(&["rtt_ms", "guest_to_host", "avg"]);
            positive(&["rtt_ms", "guest_to_host", "p99"]);
        } else {
            assert_eq!(
                num(&["rtt_ms", "guest_to_host", "avg"]),
                None,
                "{b}\n{dump}"
            );
        }
        if h2g {
            positive(&["throughput_mbps", "guest_to_host"]);
            positive(&["throughput_mbps", "host_to_guest"]);
        } else {
            assert_eq!(
                num(&["throughput_mbps", "host_to_guest"]),
                None,
                "{b}\n{dump}"
            );
            assert!(
                stderr.contains("throughput host_to_guest: no path"),
                "the reason for a null is printed\n{dump}"
            );
        }
        let avg = num(&["rtt_ms", "guest_to_lan", "avg"]).unwrap();
        let p99 = num(&["rtt_ms", "guest_to_lan", "p99"]).unwrap();
        assert!(p99 >= avg, "{b}: p99 {p99} < avg {avg}\n{dump}");
    }

    // The table, the lab line, the explanation (which agrees with the kernel) and the chart.
    assert!(stderr.contains("reachability"), "{dump}");
    assert!(stderr.contains("lab: emulated"), "{dump}");
    assert!(stderr.contains("== macvtap-vepa =="), "{dump}");
    assert!(!stderr.contains("Unexpected:"), "{dump}");
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches(r#"<g class="backend""#).count(), 14, "{svg}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs in the emulated lab host, whose /dev/kvm (kvm_amd) boots stock kernels and where the
/// scenario is root: there `--lab auto` must choose the native lab.
const NATIVE: &str = r#"
# Progress comes out as it happens (tee), so that a lab that stops shows where. The tap
# guest is cut off from the network before its host_to_guest run, as the nested lab has been
# seen to do: compare must replace it and still measure.
{ NETVMM_COMPARE_CUT=tap:host_to_guest netvmm compare --backends tap,macvtap-bridge --duration 1 --json > /tmp/c.json; echo $? > /tmp/c.st; } 2>&1 | tee /tmp/c.err
s=$(cat /tmp/c.st)
echo "case=native status=$s netns=$(ls /run/netns 2>/dev/null | wc -l) links=$(ls /sys/class/net | grep -vc '^lo$')"
echo "--- json"; cat /tmp/c.json; echo "--- end"
"#;

/// The native lab for real: the same scenario through unshare(1) in a private network and
/// mount namespace of the host it runs on (here the lab host), measured, and gone after; a
/// guest cut off mid-run is replaced, on the record, and its rings are in its exit report.
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
    let doc = json::read::parse(&text).unwrap_or_else(|e| panic!("not JSON: {e}\n{dump}"));
    assert_eq!(
        doc.get("lab").and_then(|v| v.str()),
        Some("native"),
        "{dump}"
    );
    let results = doc.get("results").and_then(|v| v.arr()).expect("results");
    assert_eq!(results.len(), 2, "{dump}");
    for r in results {
        let b = r.get("backend").and_then(|v| v.str()).unwrap();
        reaches_as_expected(b, r, &dump);
        for k in ["guest_to_lan", "lan_to_guest"] {
            positive(r, b, &["throughput_mbps", k], &dump);
        }
    }
    for k in ["host_to_guest", "guest_to_host"] {
        positive(&results[0], "tap", &["throughput_mbps", k], &dump);
    }
    for said in [
        "iperf3 host_to_guest attempt 1 failed",
        "no longer answers a ping from the host_to_guest client; it is replaced",
        "the measured guest was lost mid-run",
        "tx_avail=",
    ] {
        assert!(out.stdout.contains(said), "{said}\n{dump}");
    }
}

/// Holds that the figure at `path` of backend `b`'s result is present and above zero.
fn positive(r: &json::Json, b: &str, path: &[&str], dump: &str) {
    let v = json::read::get(r, path).and_then(|v| v.num());
    assert!(v.is_some_and(|x| x > 0.0), "{b} {path:?} = {v:?}\n{dump}");
}
