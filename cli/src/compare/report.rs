//! The typed results of `netvmm compare`, and the JSON (`--json`) they serialise to with
//! serde: the stable schema of issue 5 that bars and users read, plus `schema_version`.
//! Self-contained but for `Backend`: tests/compare_lab.rs includes this file (and
//! backend.rs) to read netvmm's output back into the same types.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize, Serializer};

use super::backend::{Backend, Datapath, Row};

/// Raised when a field changes meaning or goes away; new fields do not raise it.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole `--json` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    /// `native` or `emulated`.
    pub lab: String,
    /// `mmio` or `pci`: how every guest reached its NIC (`--transport`).
    pub transport: String,
    /// One per backend, in run order.
    pub results: Vec<Outcome>,
}

impl Report {
    pub fn new(lab: &str, transport: &str, results: Vec<Outcome>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            lab: lab.into(),
            transport: transport.into(),
            results,
        }
    }

    /// Indented JSON.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and options cannot fail to serialise.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Everything measured for one backend. A figure that could not be derived from what the
/// scenario saw is `None` (null), with a note saying why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub backend: Backend,
    /// `user` (netvmm's device thread copies the frames) or `vhost` (the kernel's
    /// vhost-net does).
    #[serde(default)]
    pub datapath: Datapath,
    /// From netvmm's start to the guest's first ping reply from the LAN peer.
    #[serde(serialize_with = "figure")]
    pub boot_ms: Option<f64>,
    pub rtt_ms: RttMs,
    pub throughput_mbps: Throughput,
    /// CPU time (user + system, all threads, vCPUs included) of the measured guest's netvmm
    /// during the iperf3 runs, per 10^9 bytes they moved.
    #[serde(serialize_with = "figure")]
    pub vmm_cpu_ms_per_gb: Option<f64>,
    /// The part of `vmm_cpu_ms_per_gb` spent by netvmm's threads other than its vCPUs (whose
    /// time includes the guest's): what the data path costs netvmm itself.
    #[serde(serialize_with = "figure", default)]
    pub device_cpu_ms_per_gb: Option<f64>,
    /// CPU time of the kernel's vhost-net workers for this netvmm per 10^9 bytes (vhost
    /// rows only; not in `vmm_cpu_ms_per_gb` where they are kernel threads, before 6.4).
    #[serde(serialize_with = "figure", default)]
    pub vhost_cpu_ms_per_gb: Option<f64>,
    pub reachability: Reachability,
    /// The source addresses of the measured guest's pings as the LAN peer saw them (through
    /// NAT: the host's LAN address, not the guest's); null: not watched.
    #[serde(default)]
    pub lan_peer_saw: Option<Vec<Ipv4Addr>>,
    /// What netvmm left behind once its guests ended: empty, or a defect to report.
    #[serde(default)]
    pub left_behind: Vec<String>,
    /// Why the backend has no figures at all.
    pub skipped: Option<String>,
    /// Why figures are missing, and facts worth a line (a refused second guest): for the
    /// terminal, not the JSON.
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            datapath: Datapath::User,
            boot_ms: None,
            rtt_ms: RttMs::default(),
            throughput_mbps: Throughput::default(),
            vmm_cpu_ms_per_gb: None,
            device_cpu_ms_per_gb: None,
            vhost_cpu_ms_per_gb: None,
            reachability: Reachability::default(),
            lan_peer_saw: None,
            left_behind: Vec::new(),
            skipped: None,
            notes: Vec::new(),
        }
    }

    /// The row's name: `tap`, `tap+vhost`.
    pub fn label(&self) -> String {
        Row {
            backend: self.backend,
            datapath: self.datapath,
        }
        .label()
    }
}

/// Round-trip times from one ping run, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rtt {
    pub avg: f64,
    /// Nearest-rank 99th percentile: with 20 samples, the largest.
    pub p99: f64,
}

/// The two timed ping directions. An unmeasured one is written `{"avg": null, "p99": null}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RttMs {
    #[serde(with = "rtt_figures")]
    pub guest_to_host: Option<Rtt>,
    #[serde(with = "rtt_figures")]
    pub guest_to_lan: Option<Rtt>,
}

/// Mbit/s per direction; g = guest, host, LAN peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    #[serde(serialize_with = "figure")]
    pub guest_to_lan: Option<f64>,
    #[serde(serialize_with = "figure")]
    pub lan_to_guest: Option<f64>,
    #[serde(serialize_with = "figure")]
    pub guest_to_host: Option<f64>,
    #[serde(serialize_with = "figure")]
    pub host_to_guest: Option<f64>,
}

impl Throughput {
    /// The directions in schema order (the unit tests hold this against the field names).
    pub const NAMES: [&'static str; 4] = [
        "guest_to_lan",
        "lan_to_guest",
        "guest_to_host",
        "host_to_guest",
    ];

    /// The figures in `NAMES` order.
    pub fn values(&self) -> [Option<f64>; 4] {
        [
            self.guest_to_lan,
            self.lan_to_guest,
            self.guest_to_host,
            self.host_to_guest,
        ]
    }
}

impl From<[Option<f64>; 4]> for Throughput {
    fn from([guest_to_lan, lan_to_guest, guest_to_host, host_to_guest]: [Option<f64>; 4]) -> Self {
        Self {
            guest_to_lan,
            lan_to_guest,
            guest_to_host,
            host_to_guest,
        }
    }
}

/// Whether a ping in each direction got replies; `None`: not observed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reachability {
    pub guest_to_host: Option<bool>,
    pub host_to_guest: Option<bool>,
    pub guest_to_lan: Option<bool>,
    pub lan_to_guest: Option<bool>,
    pub guest_to_guest: Option<bool>,
}

impl Reachability {
    /// The directions in schema order (the unit tests hold this against the field names).
    pub const NAMES: [&'static str; 5] = [
        "guest_to_host",
        "host_to_guest",
        "guest_to_lan",
        "lan_to_guest",
        "guest_to_guest",
    ];

    /// The facts in `NAMES` order.
    pub fn values(&self) -> [Option<bool>; 5] {
        [
            self.guest_to_host,
            self.host_to_guest,
            self.guest_to_lan,
            self.lan_to_guest,
            self.guest_to_guest,
        ]
    }
}

impl From<[Option<bool>; 5]> for Reachability {
    fn from(
        [guest_to_host, host_to_guest, guest_to_lan, lan_to_guest, guest_to_guest]: [Option<bool>;
            5],
    ) -> Self {
        Self {
            guest_to_host,
            host_to_guest,
            guest_to_lan,
            lan_to_guest,
            guest_to_guest,
        }
    }
}

/// A figure to at most three decimals (more would be noise, and -0 is not worth a sign);
/// serde_json writes NaN and infinities, which JSON cannot hold, as null.
fn figure<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    v.map(|n| (n * 1000.0).round() / 1000.0 + 0.0).serialize(s)
}

/// `Option<Rtt>` as an object of two figures, both null when there is no RTT.
mod rtt_figures {
    use super::{figure, Rtt};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Figures {
        #[serde(serialize_with = "figure")]
        avg: Option<f64>,
        #[serde(serialize_with = "figure")]
        p99: Option<f64>,
    }

    pub fn serialize<S: Serializer>(r: &Option<Rtt>, s: S) -> Result<S::Ok, S::Error> {
        Figures {
            avg: r.map(|r| r.avg),
            p99: r.map(|r| r.p99),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Rtt>, D::Error> {
        let f = Figures::deserialize(d)?;
        Ok(f.avg.zip(f.p99).map(|(avg, p99)| Rtt { avg, p99 }))
    }
}
