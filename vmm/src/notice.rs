//! What the VMM has to tell its user while it runs and at its end. The library never
//! prints: it hands each notice to the [`Notices`] sink its caller gave it (the CLI writes
//! them to stderr, tests collect them).

use std::sync::Arc;

/// One thing the user should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A bridge was deleted and created again, and the NIC's tap was put back on it.
    BridgeBack(net::bridge_watch::Port),
    /// What netvmm processes which are gone left behind: interfaces, host-access shims,
    /// NAT tables, tc redirects (`netvmm cleanup` removes them).
    Leftovers(net::leftovers::Leftovers),
    /// A given interface could not be put back as it was found.
    NotRestored(String),
    /// These vCPUs did not leave the guest when kicked at the end; they were left running.
    VcpusStuck(Vec<u8>),
    /// The hypervisor refused part of a device's transport setup (the device's guest name,
    /// what was refused).
    TransportFault(String, String),
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::BridgeBack(port) => write!(f, "{port}"),
            Notice::Leftovers(found) => write!(
                f,
                "warning: left by netvmm processes that are gone: {found} (remove them with `netvmm cleanup`)"
            ),
            Notice::NotRestored(problem) => write!(f, "warning: {problem}"),
            Notice::TransportFault(device, what) => write!(f, "warning: {device}: {what}"),
            Notice::VcpusStuck(ids) => {
                let ids: Vec<String> = ids.iter().map(|i| format!("vCPU {i}")).collect();
                write!(
                    f,
                    "warning: {} did not leave the guest when stopped; left running",
                    ids.join(", ")
                )
            }
        }
    }
}

/// The warning about what netvmm processes that are gone left in this network namespace,
/// if they left anything: the same things `netvmm cleanup` would remove.
pub fn leftovers() -> Option<Notice> {
    let found = net::leftovers::Leftovers::find();
    (!found.is_empty()).then_some(Notice::Leftovers(found))
}

/// Where notices go.
pub type Notices = Arc<dyn Fn(Notice) + Send + Sync>;

/// A sink that drops every notice.
pub fn ignore() -> Notices {
    Arc::new(|_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_notice_is_one_line_naming_its_object() {
        let port = net::bridge_watch::Port {
            tap: "nvtap0".into(),
            bridge: "br0".into(),
        };
        assert_eq!(
            Notice::BridgeBack(port).to_string(),
            "bridge br0 is back; nvtap0 put back on it"
        );
        let stale = Notice::Leftovers(net::leftovers::Leftovers {
            links: vec!["nvtap3".into(), "nvmvt0".into()],
            nat_tables: vec!["netvmm-nat,pid=7,tap=nvtap3,fwd=0,uplink=eth0".into()],
            tc_nics: vec!["eth1".into()],
            ..Default::default()
        })
        .to_string();
        assert_eq!(
            stale,
            "warning: left by netvmm processes that are gone: interfaces nvtap3, nvmvt0; \
             nftables table 'netvmm-nat,pid=7,tap=nvtap3,fwd=0,uplink=eth0'; tc redirect on eth1 \
             (remove them with `netvmm cleanup`)"
        );
        assert_eq!(
            Notice::VcpusStuck(vec![1, 3]).to_string(),
            "warning: vCPU 1, vCPU 3 did not leave the guest when stopped; left running"
        );
        assert!(!stale.contains('\n'));
    }
}
