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
    /// A tap enslaved to a host bridge that also holds the NIC and the host's address.
    Bridge,
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
    pub const ALL: [Backend; 7] = [
        Backend::Tap,
        Backend::Bridge,
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
            Backend::Bridge => "bridge",
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

/// The selected backends, deduplicated, in run order.
pub fn run_order(selected: &[Backend]) -> Vec<Backend> {
    let mut v = selected.to_vec();
    v.sort();
    v.dedup();
    v
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
}
