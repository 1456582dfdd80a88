//! The typed description of one VM, built by the CLI (or a test) and consumed by [`crate::Vmm`].

use std::path::PathBuf;
use std::time::Duration;

/// Default guest RAM in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Default number of vCPUs.
pub const DEFAULT_CPUS: u8 = 1;
/// Most vCPUs we describe: one byte of APIC ID in the MADT entries we write, minus the
/// broadcast ID, and far beyond what these tests need.
pub const MAX_CPUS: u8 = 254;
/// Smallest guest RAM we accept: below this a distribution kernel plus initramfs cannot boot.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest RAM we accept (1 TiB): a typo guard, not a hardware limit.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// What the user wants the kernel to get; netvmm prepends what its devices need.
    pub cmdline: String,
    pub memory_mib: u64,
    pub cpus: u8,
    pub serial_log: Option<PathBuf>,
    pub timeout: Option<Duration>,
    /// Guest NICs in order: eth0, eth1, ...
    pub nets: Vec<net::NetSpec>,
    /// Per-thread seccomp filters (see [`crate::sandbox`]); off only for debugging.
    /// Capabilities are dropped either way.
    pub seccomp: bool,
}

impl VmConfig {
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: String::new(),
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: DEFAULT_CPUS,
            serial_log: None,
            timeout: None,
            nets: Vec::new(),
            seccomp: true,
        }
    }

    /// Checks limits that do not need the filesystem or KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(ConfigError::Cpus(self.cpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--cpus {0} is out of range: use 1 to {MAX_CPUS}")]
    Cpus(u8),
    #[error("--memory {0} MiB is out of range: use {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB")]
    Memory(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_with_named_errors() {
        let mut c = VmConfig::new("k".into());
        assert!(c.validate().is_ok());
        c.cpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::Cpus(0)));
        c.cpus = 2;
        c.memory_mib = 1;
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("--memory 1 MiB"));
    }
}
