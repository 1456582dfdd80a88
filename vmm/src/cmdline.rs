//! The kernel command line: what netvmm's devices need, then what the user asked for.

use crate::config::VirtioTransport;

/// Prepended to every command line. `console=ttyS0`: our only console is COM1.
/// `reboot=k`: reset through the i8042, which ends the VM (no firmware reset path exists).
/// `panic=1`: a panicking kernel that has no pvpanic driver still ends rather than hangs.
pub const DEVICE_ARGS: &str = "console=ttyS0 reboot=k panic=1";
/// Added on virtio-mmio: there is no PCI bus then, and probing for one only costs boot
/// time.
pub const NO_PCI: &str = "pci=off";

/// The full command line: device arguments first, so that the user's own arguments (which
/// the kernel reads later) override them.
pub fn build(user: &str, transport: VirtioTransport) -> String {
    // A command line typed over several lines is still one command line: the kernel only
    // takes printable ASCII, so line breaks and tabs become spaces.
    let user: String = user
        .chars()
        .map(|c| if c.is_ascii_whitespace() { ' ' } else { c })
        .collect();
    let mut line = DEVICE_ARGS.to_string();
    if transport == VirtioTransport::Mmio {
        line = format!("{line} {NO_PCI}");
    }
    let user = user.trim();
    if !user.is_empty() {
        line = format!("{line} {user}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const MMIO: VirtioTransport = VirtioTransport::Mmio;

    #[test]
    fn user_arguments_come_last() {
        let base = format!("{DEVICE_ARGS} {NO_PCI}");
        assert_eq!(build("", MMIO), base);
        assert_eq!(build("  quiet ", MMIO), format!("{base} quiet"));
        let full = build("console=hvc0", MMIO);
        assert!(full.ends_with("console=hvc0"));
        assert!(full.starts_with("console=ttyS0"));
        assert_eq!(build("a\n\tb\r\n", MMIO), format!("{base} a  b"));
    }

    #[test]
    fn pci_is_probed_only_on_the_pci_transport() {
        assert!(build("", MMIO).contains("pci=off"));
        assert!(!build("quiet", VirtioTransport::Pci).contains("pci=off"));
        assert_eq!(build("", VirtioTransport::Pci), DEVICE_ARGS);
    }
}
