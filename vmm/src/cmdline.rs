//! The kernel command line: what netvmm's devices need, then what the user asked for.

/// Prepended to every command line. `console=ttyS0`: our only console is COM1.
/// `reboot=k`: reset through the i8042, which ends the VM (no firmware reset path exists).
/// `panic=1`: a panicking kernel that has no pvpanic driver still ends rather than hangs.
/// `pci=off`: there is no PCI bus; probing for one only costs boot time.
pub const DEVICE_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// The full command line: device arguments first, so that the user's own arguments (which
/// the kernel reads later) override them.
pub fn build(user: &str) -> String {
    // A command line typed over several lines is still one command line: the kernel only
    // takes printable ASCII, so line breaks and tabs become spaces.
    let user: String = user
        .chars()
        .map(|c| if c.is_ascii_whitespace() { ' ' } else { c })
        .collect();
    let user = user.trim();
    if user.is_empty() {
        DEVICE_ARGS.to_string()
    } else {
        format!("{DEVICE_ARGS} {user}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_arguments_come_last() {
        assert_eq!(build(""), DEVICE_ARGS);
        assert_eq!(build("  quiet "), format!("{DEVICE_ARGS} quiet"));
        let full = build("console=hvc0");
        assert!(full.ends_with("console=hvc0"));
        assert!(full.starts_with("console=ttyS0"));
        assert_eq!(build("a\n\tb\r\n"), format!("{DEVICE_ARGS} a  b"));
    }
}
