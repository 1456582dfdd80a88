//! The host arrangements `netvmm compare` measures, and what each one looks like.

use std::fmt;

/// One way of connecting the guest's virtio-net NIC to the world, in the arrangement its
/// users really run (see the module docs of `compare`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// A tap with the host's address on it; the host routes between tap and LAN.
    Tap,
    /// A tap behind the host's NAT: masqueraded out of the NIC, as libvirt's default
    /// network has it.
    TapNat,
    /// A tap enslaved to a host bridge that also holds the NIC and the host's address.
    Bridge,
    /// A tap wired to a container's veth by tc ingress redirects both ways, as Kata
    /// Containers has it.
    TcRedirect,
    /// A macvtap on the NIC, bridge mode.
    MacvtapBridge,
    /// A macvtap on the NIC, bridge mode, with netvmm's host-access shim holding the host's
    /// address instead of the NIC.
    #[value(name = "macvtap-bridge+host")]
    #[serde(rename = "macvtap-bridge+host")]
    MacvtapBridgeHost,
    /// A macvtap on the NIC, VEPA mode, behind a LAN switch that hairpins.
    MacvtapVepa,
    /// A macvtap on the NIC, private mode, behind a LAN switch that hairpins.
    MacvtapPrivate,
    /// A macvtap that takes the whole NIC (passthru mode).
    MacvtapPassthru,
}

impl Backend {
    /// All of them, in the order they run and are reported (passthru last: it takes the
    /// NIC to itself).
    pub const ALL: [Backend; 9] = [
        Backend::Tap,
        Backend::TapNat,
        Backend::Bridge,
        Backend::TcRedirect,
        Backend::MacvtapBridge,
        Backend::MacvtapBridgeHost,
        Backend::MacvtapVepa,
        Backend::MacvtapPrivate,
        Backend::MacvtapPassthru,
    ];

    /// The stable name used on the command line, in the JSON and in the scenario.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tap => "tap",
            Backend::TapNat => "tap-nat",
            Backend::Bridge => "bridge",
            Backend::TcRedirect => "tc-redirect",
            Backend::MacvtapBridge => "macvtap-bridge",
            Backend::MacvtapBridgeHost => "macvtap-bridge+host",
            Backend::MacvtapVepa => "macvtap-vepa",
            Backend::MacvtapPrivate => "macvtap-private",
            Backend::MacvtapPassthru => "macvtap-passthru",
        }
    }

    /// Whether a second guest can share the NIC with the measured one.
    pub fn has_sibling(self) -> bool {
        self != Backend::MacvtapPassthru
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which data path carries the guest's frames between its rings and the backend's fd.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    /// netvmm's device thread copies every frame (`vhost=off`).
    #[default]
    User,
    /// The kernel's vhost-net worker serves the rings (`vhost=on`).
    Vhost,
}

impl Datapath {
    /// As the JSON and netvmm's NIC exit report (`datapath=`) write it.
    pub fn name(self) -> &'static str {
        match self {
            Datapath::User => "user",
            Datapath::Vhost => "vhost",
        }
    }
}

/// `compare --datapath`: one path, or both side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatapathChoice {
    User,
    Vhost,
    Both,
}

impl DatapathChoice {
    pub fn paths(self) -> &'static [Datapath] {
        match self {
            DatapathChoice::User => &[Datapath::User],
            DatapathChoice::Vhost => &[Datapath::Vhost],
            DatapathChoice::Both => &[Datapath::User, Datapath::Vhost],
        }
    }

    /// The narrowest choice that covers `paths`.
    pub fn covering(paths: &[Datapath]) -> Self {
        match (
            paths.contains(&Datapath::User),
            paths.contains(&Datapath::Vhost),
        ) {
            (true, true) => DatapathChoice::Both,
            (false, true) => DatapathChoice::Vhost,
            _ => DatapathChoice::User,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DatapathChoice::User => "user",
            DatapathChoice::Vhost => "vhost",
            DatapathChoice::Both => "both",
        }
    }
}

/// One row of the comparison: a backend through a data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Row {
    pub backend: Backend,
    pub datapath: Datapath,
}

impl Row {
    /// `tap`, `tap+vhost`: the name in the table, the chart and the progress lines.
    pub fn label(self) -> String {
        match self.datapath {
            Datapath::User => self.backend.name().to_string(),
            Datapath::Vhost => format!("{}+vhost", self.backend.name()),
        }
    }
}

impl std::str::FromStr for Row {
    type Err = String;

    /// A label back into its row (the scenario's `--rows`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, datapath) = match s.strip_suffix("+vhost") {
            Some(name) => (name, Datapath::Vhost),
            None => (s, Datapath::User),
        };
        let backend = <Backend as clap::ValueEnum>::from_str(name, false)
            .map_err(|_| format!("{s}: not a backend (with +vhost or not)"))?;
        Ok(Row { backend, datapath })
    }
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// The selected backends, deduplicated, in run order.
pub fn run_order(selected: &[Backend]) -> Vec<Backend> {
    let mut v = selected.to_vec();
    v.sort();
    v.dedup();
    v
}

/// The rows for `backends` through `paths`, in run order: each backend through each path
/// before the next backend (passthru, last, keeps the NIC to itself to the end).
pub fn rows(backends: &[Backend], paths: &[Datapath]) -> Vec<Row> {
    let mut paths = paths.to_vec();
    paths.sort();
    paths.dedup();
    run_order(backends)
        .into_iter()
        .flat_map(|backend| paths.iter().map(move |&datapath| Row { backend, datapath }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_passthru_runs_last() {
        for b in Backend::ALL {
            let v = <Backend as clap::ValueEnum>::from_str(b.name(), false).unwrap();
            assert_eq!(v, b);
        }
        assert!(<Backend as clap::ValueEnum>::from_str("vde", false).is_err());
        // The JSON writes the same names.
        for b in Backend::ALL {
            assert_eq!(serde_json::to_value(b).unwrap(), b.name());
        }
        let order = run_order(&[
            Backend::MacvtapPassthru,
            Backend::Tap,
            Backend::MacvtapVepa,
            Backend::Tap,
        ]);
        assert_eq!(
            order,
            vec![Backend::Tap, Backend::MacvtapVepa, Backend::MacvtapPassthru]
        );
    }

    #[test]
    fn rows_run_each_backend_through_each_path_and_are_labelled() {
        let r = rows(
            &[Backend::MacvtapPassthru, Backend::Tap],
            DatapathChoice::Both.paths(),
        );
        let labels: Vec<String> = r.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            [
                "tap",
                "tap+vhost",
                "macvtap-passthru",
                "macvtap-passthru+vhost"
            ]
        );
        assert_eq!(
            rows(&[Backend::Bridge], &[Datapath::Vhost])[0].label(),
            "bridge+vhost"
        );
        assert_eq!(
            DatapathChoice::covering(&[Datapath::Vhost, Datapath::User]),
            DatapathChoice::Both
        );
        assert_eq!(
            DatapathChoice::covering(&[Datapath::Vhost]),
            DatapathChoice::Vhost
        );
        assert_eq!(DatapathChoice::covering(&[]), DatapathChoice::User);
        for r in rows(&Backend::ALL, DatapathChoice::Both.paths()) {
            assert_eq!(r.label().parse::<Row>(), Ok(r));
        }
        assert!("vde+vhost".parse::<Row>().is_err());
        for d in [Datapath::User, Datapath::Vhost] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.name());
        }
        for c in [
            DatapathChoice::User,
            DatapathChoice::Vhost,
            DatapathChoice::Both,
        ] {
            let v = <DatapathChoice as clap::ValueEnum>::from_str(c.name(), false).unwrap();
            assert_eq!(v, c);
        }
    }
}
