//! Which KVM this host has, because a PVM `/dev/kvm` accepts the same ioctls as a hardware
//! one but hangs forever in any kernel not built for it.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware virtualization through kvm_intel or kvm_amd: stock kernels boot.
    Hardware(&'static str),
    /// kvm_pvm: only kernels built with CONFIG_PVM_GUEST run.
    Pvm,
    /// /dev/kvm exists but no known provider module is visible (built-in KVM, say).
    Unknown,
    /// No usable /dev/kvm; the text says why.
    Missing(String),
}

impl KvmKind {
    /// One line for `netvmm doctor` and for refusals.
    pub fn describe(&self) -> String {
        match self {
            KvmKind::Hardware(m) => format!("hardware KVM ({m}): stock Linux kernels boot natively"),
            KvmKind::Pvm => "PVM (kvm_pvm): /dev/kvm cannot boot a stock Linux kernel here; the emulated lab can (netvmm lab run ...)".to_string(),
            KvmKind::Unknown => "KVM of unknown kind (no kvm_intel, kvm_amd or kvm_pvm module visible): trying natively".to_string(),
            KvmKind::Missing(why) => format!("no usable /dev/kvm: {why}"),
        }
    }

    /// Whether a stock distribution kernel can be expected to boot here.
    pub fn boots_stock_kernels(&self) -> bool {
        matches!(self, KvmKind::Hardware(_) | KvmKind::Unknown)
    }
}

/// Looks at `/dev/kvm` and the loaded modules under `sys_module` (normally /sys/module).
pub fn detect_in(dev_kvm: &Path, sys_module: &Path) -> KvmKind {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
    {
        return KvmKind::Missing(format!("cannot open {}: {e}", dev_kvm.display()));
    }
    if sys_module.join("kvm_pvm").exists() {
        return KvmKind::Pvm;
    }
    for m in ["kvm_intel", "kvm_amd"] {
        if sys_module.join(m).exists() {
            return KvmKind::Hardware(m);
        }
    }
    KvmKind::Unknown
}

pub fn detect() -> KvmKind {
    detect_in(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_module_and_device() {
        let dir = std::env::temp_dir().join(format!("netvmm-kvmkind-{}", std::process::id()));
        let modules = dir.join("module");
        std::fs::create_dir_all(&modules).unwrap();
        let dev = dir.join("kvm");
        assert!(matches!(detect_in(&dev, &modules), KvmKind::Missing(ref w) if w.contains("kvm")));
        std::fs::write(&dev, b"").unwrap();
        assert_eq!(detect_in(&dev, &modules), KvmKind::Unknown);
        std::fs::create_dir_all(modules.join("kvm_amd")).unwrap();
        assert_eq!(detect_in(&dev, &modules), KvmKind::Hardware("kvm_amd"));
        std::fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
        assert_eq!(detect_in(&dev, &modules), KvmKind::Pvm);
        assert!(!KvmKind::Pvm.boots_stock_kernels());
        assert!(KvmKind::Pvm.describe().contains("lab"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
