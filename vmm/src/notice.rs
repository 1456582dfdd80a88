//! What the VMM has to tell its user while it runs and at its end. The library never
//! prints: it hands each notice to the [`Notices`] sink its caller gave it (the CLI writes
//! them to stderr, tests collect them).

use std::sync::Arc;

/// One thing the user should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A bridge was deleted and created again, and the NIC's tap was put back on it.
    BridgeBack(net::bridge_watch::Port),
    /// Interfaces that netvmm processes which are gone left behind (`netvmm cleanup`).
    StaleInterfaces(Vec<String>),
    /// A given interface could not be put back as it was found.
    NotRestored(String),
    /// These vCPUs did not leave the guest when kicked at the end; they were left running.
    VcpusStuck(Vec<u8>),
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::BridgeBack(port) => write!(f, "{port}"),
            Notice::StaleInterfaces(names) => write!(
                f,
                "warning: interfaces left by netvmm processes that are gone: {} (remove them with `netvmm cleanup`)",
                names.join(", ")
            ),
            Notice::NotRestored(problem) => write!(f, "warning: {problem}"),
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
        let stale = Notice::StaleInterfaces(vec!["nvtap3".into(), "nvmvt0".into()]).to_string();
        assert!(stale.contains("nvtap3, nvmvt0") && stale.contains("netvmm cleanup"));
        assert_eq!(
            Notice::VcpusStuck(vec![1, 3]).to_string(),
            "warning: vCPU 1, vCPU 3 did not leave the guest when stopped; left running"
        );
        assert!(!stale.contains('\n'));
    }
}
