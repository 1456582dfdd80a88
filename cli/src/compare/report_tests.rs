//! The `--json` schema pinned: typed outcomes against literal JSON documents. Beside
//! report.rs rather than in it, because tests/compare_lab.rs includes report.rs.

use serde_json::Value;

use super::backend::Backend;
use super::report::{Outcome, Reachability, Report, Rtt, Throughput, SCHEMA_VERSION};

fn measured() -> Outcome {
    let mut o = Outcome::new(Backend::Tap);
    o.boot_ms = Some(2250.5);
    o.rtt_ms.guest_to_host = Some(Rtt {
        avg: 0.45,
        p99: 0.9,
    });
    o.rtt_ms.guest_to_lan = Some(Rtt {
        avg: 1.25,
        p99: 2.5,
    });
    o.throughput_mbps = [Some(300.0), Some(280.25), Some(3150.0), Some(410.0)].into();
    o.vmm_cpu_ms_per_gb = Some(9876.5);
    o.device_cpu_ms_per_gb = Some(1234.5);
    o.reachability = [Some(true), Some(true), Some(true), Some(false), Some(true)].into();
    o.lan_peer_saw = Some(vec![std::net::Ipv4Addr::new(192, 0, 2, 2)]);
    o
}

/// A backend that ran with figures missing, and one that was skipped.
fn with_nulls() -> [Outcome; 2] {
    let mut partial = Outcome::new(Backend::MacvtapPrivate);
    partial.datapath = crate::compare::backend::Datapath::Vhost;
    partial.throughput_mbps.guest_to_lan = Some(120.0);
    partial.reachability.guest_to_host = Some(false);
    partial.lan_peer_saw = Some(vec![]);
    partial.left_behind = vec!["nftables table netvmm-nat,x".into()];
    partial
        .notes
        .push("boot_ms: the guest never got a ping reply".into());
    let mut skipped = Outcome::new(Backend::MacvtapPassthru);
    skipped.skipped = Some("needs \"lanA\"\nto itself".into());
    [partial, skipped]
}

fn json_of(report: &Report) -> Value {
    let text = report.to_json();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn literal(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("the expected JSON: {e}"))
}

#[test]
fn every_figure_present_is_written_in_the_schema() {
    let got = json_of(&Report::new("emulated", "mmio", vec![measured()]));
    let want = literal(
        r#"{
          "schema_version": 1,
          "lab": "emulated",
          "transport": "mmio",
          "results": [{
            "backend": "tap",
            "datapath": "user",
            "boot_ms": 2250.5,
            "rtt_ms": {
              "guest_to_host": {"avg": 0.45, "p99": 0.9},
              "guest_to_lan": {"avg": 1.25, "p99": 2.5}
            },
            "throughput_mbps": {
              "guest_to_lan": 300.0, "lan_to_guest": 280.25,
              "guest_to_host": 3150.0, "host_to_guest": 410.0
            },
            "vmm_cpu_ms_per_gb": 9876.5,
            "device_cpu_ms_per_gb": 1234.5,
            "vhost_cpu_ms_per_gb": null,
            "reachability": {
              "guest_to_host": true, "host_to_guest": true, "guest_to_lan": true,
              "lan_to_guest": false, "guest_to_guest": true
            },
            "lan_peer_saw": ["192.0.2.2"],
            "left_behind": [],
            "skipped": null
          }]
        }"#,
    );
    assert_eq!(got, want);
}

#[test]
fn missing_figures_are_null_and_a_skip_says_why() {
    let got = json_of(&Report::new("native", "pci", with_nulls().to_vec()));
    let want = literal(
        r#"{
          "schema_version": 1,
          "lab": "native",
          "transport": "pci",
          "results": [{
            "backend": "macvtap-private",
            "datapath": "vhost",
            "boot_ms": null,
            "rtt_ms": {
              "guest_to_host": {"avg": null, "p99": null},
              "guest_to_lan": {"avg": null, "p99": null}
            },
            "throughput_mbps": {
              "guest_to_lan": 120.0, "lan_to_guest": null,
              "guest_to_host": null, "host_to_guest": null
            },
            "vmm_cpu_ms_per_gb": null,
            "device_cpu_ms_per_gb": null,
            "vhost_cpu_ms_per_gb": null,
            "reachability": {
              "guest_to_host": false, "host_to_guest": null, "guest_to_lan": null,
              "lan_to_guest": null, "guest_to_guest": null
            },
            "lan_peer_saw": [],
            "left_behind": ["nftables table netvmm-nat,x"],
            "skipped": null
          }, {
            "backend": "macvtap-passthru",
            "datapath": "user",
            "boot_ms": null,
            "rtt_ms": {
              "guest_to_host": {"avg": null, "p99": null},
              "guest_to_lan": {"avg": null, "p99": null}
            },
            "throughput_mbps": {
              "guest_to_lan": null, "lan_to_guest": null,
              "guest_to_host": null, "host_to_guest": null
            },
            "vmm_cpu_ms_per_gb": null,
            "device_cpu_ms_per_gb": null,
            "vhost_cpu_ms_per_gb": null,
            "reachability": {
              "guest_to_host": null, "host_to_guest": null, "guest_to_lan": null,
              "lan_to_guest": null, "guest_to_guest": null
            },
            "lan_peer_saw": null,
            "left_behind": [],
            "skipped": "needs \"lanA\"\nto itself"
          }]
        }"#,
    );
    assert_eq!(got, want);
}

#[test]
fn a_report_reads_back_as_it_was_written() {
    let [partial, skipped] = with_nulls();
    let report = Report::new("emulated", "pci", vec![measured(), partial, skipped]);
    let back: Report = serde_json::from_str(&report.to_json()).unwrap();
    // The notes are for the terminal only.
    let mut want = report;
    want.results.iter_mut().for_each(|o| o.notes.clear());
    assert_eq!(back, want);
}

#[test]
fn the_version_leads_the_document() {
    let text = Report::new("native", "mmio", vec![]).to_json();
    assert_eq!(SCHEMA_VERSION, 1);
    assert!(
        text.starts_with("{\n  \"schema_version\": 1,\n  \"lab\": \"native\""),
        "{text}"
    );
}

#[test]
fn directions_are_written_in_schema_order() {
    let t: Throughput = [Some(1.0), Some(2.0), Some(3.0), Some(4.0)].into();
    assert_eq!(
        serde_json::to_string(&t).unwrap(),
        r#"{"guest_to_lan":1.0,"lan_to_guest":2.0,"guest_to_host":3.0,"host_to_guest":4.0}"#
    );
    let keys = |text: &str| -> Vec<String> {
        text.trim_matches(['{', '}'])
            .split(',')
            .map(|kv| kv.split(':').next().unwrap_or("").trim_matches('"').into())
            .collect()
    };
    assert_eq!(keys(&serde_json::to_string(&t).unwrap()), Throughput::NAMES);
    let r = Reachability::default();
    assert_eq!(
        keys(&serde_json::to_string(&r).unwrap()),
        Reachability::NAMES
    );
}

#[test]
fn values_follow_the_names() {
    let t: Throughput = [Some(1.0), None, Some(3.0), None].into();
    assert_eq!(t.lan_to_guest, None);
    assert_eq!(t.guest_to_host, Some(3.0));
    assert_eq!(t.values(), [Some(1.0), None, Some(3.0), None]);
    let r: Reachability = [None, Some(true), None, Some(false), None].into();
    assert_eq!(r.host_to_guest, Some(true));
    assert_eq!(r.lan_to_guest, Some(false));
    assert_eq!(r.values(), [None, Some(true), None, Some(false), None]);
}

#[test]
fn figures_keep_three_decimals_and_no_minus_zero() {
    let mut o = Outcome::new(Backend::Tap);
    o.boot_ms = Some(0.1234);
    o.vmm_cpu_ms_per_gb = Some(-0.0001);
    o.rtt_ms.guest_to_lan = Some(Rtt {
        avg: 2.5e-7,
        p99: 1.0005,
    });
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(v["boot_ms"], 0.123);
    assert_eq!(v["vmm_cpu_ms_per_gb"].to_string(), "0.0");
    assert_eq!(v["rtt_ms"]["guest_to_lan"]["avg"].to_string(), "0.0");
    assert_eq!(v["rtt_ms"]["guest_to_lan"]["p99"], 1.001);
}

#[test]
fn figures_json_cannot_hold_are_null() {
    let mut o = Outcome::new(Backend::Tap);
    o.boot_ms = Some(f64::NAN);
    o.throughput_mbps.guest_to_lan = Some(f64::INFINITY);
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(v["boot_ms"], Value::Null);
    assert_eq!(v["throughput_mbps"]["guest_to_lan"], Value::Null);
}

#[test]
fn an_rtt_needs_both_figures() {
    let doc = |avg: &str, p99: &str| {
        let mut v = serde_json::to_value(measured()).unwrap();
        v["rtt_ms"]["guest_to_lan"] = literal(&format!(r#"{{"avg": {avg}, "p99": {p99}}}"#));
        serde_json::from_value::<Outcome>(v).map(|o| o.rtt_ms.guest_to_lan)
    };
    assert_eq!(doc("1.5", "3").unwrap(), Some(Rtt { avg: 1.5, p99: 3.0 }));
    assert_eq!(doc("null", "null").unwrap(), None);
    assert_eq!(doc("1.5", "null").unwrap(), None);
}

#[test]
fn an_unknown_backend_does_not_read() {
    let mut v = serde_json::to_value(measured()).unwrap();
    v["backend"] = "vde".into();
    assert!(serde_json::from_value::<Outcome>(v).is_err());
    let mut v = serde_json::to_value(measured()).unwrap();
    v["backend"] = "macvtap-bridge+host".into();
    let o: Outcome = serde_json::from_value(v).unwrap();
    assert_eq!(o.backend, Backend::MacvtapBridgeHost);
}
