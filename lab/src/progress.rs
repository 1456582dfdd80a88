//! What a lab run has to tell its user while it runs. The library never prints: it hands
//! each message to the [`ProgressSink`] its caller gave it (the CLI writes them to stderr
//! after `netvmm-lab: `, tests collect them), as vmm's `Notices` do.

use std::sync::Arc;

/// One thing the user should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// QEMU is starting the lab host (its boot and the scenario take a while).
    Booting,
    /// The lab host hung; where each of its CPUs was, from QEMU's monitor.
    HungCpus(Vec<String>),
    /// The lab host hung, and QEMU's monitor could not say where its CPUs were.
    HungCpusUnknown(String),
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Booting => f.write_str("booting the emulated lab host (QEMU TCG, -cpu max)"),
            Progress::HungCpus(cpus) => {
                write!(f, "the hung lab host's CPUs: {}", cpus.join("; "))
            }
            Progress::HungCpusUnknown(why) => {
                write!(f, "cannot read the hung lab host's CPUs: {why}")
            }
        }
    }
}

/// Where progress goes.
pub type ProgressSink = Arc<dyn Fn(Progress) + Send + Sync>;

/// A sink that drops every message.
pub fn ignore() -> ProgressSink {
    Arc::new(|_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_is_one_line() {
        assert_eq!(
            Progress::Booting.to_string(),
            "booting the emulated lab host (QEMU TCG, -cpu max)"
        );
        assert_eq!(
            Progress::HungCpus(vec!["CPU#0 RIP=1".into(), "CPU#1 RIP=2".into()]).to_string(),
            "the hung lab host's CPUs: CPU#0 RIP=1; CPU#1 RIP=2"
        );
        assert_eq!(
            Progress::HungCpusUnknown("no monitor".into()).to_string(),
            "cannot read the hung lab host's CPUs: no monitor"
        );
    }
}
