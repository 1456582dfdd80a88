//! Interface names: the one check of a name netvmm is given or makes (used by `spec`,
//! `netlink` and `iface`), and how an untrusted name is shown in a message.

/// Linux interface names hold at most 15 bytes (IFNAMSIZ minus the NUL).
pub const IFNAME_MAX: usize = 15;

/// The one check of an interface name, for every name netvmm is given or makes: what the
/// kernel takes (dev_valid_name: 1 to 15 bytes, not "." or "..", no '/', ':' or
/// whitespace), and no control character either (the kernel would take one, but it could
/// not be typed back, and it would garble every message that names the interface).
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an interface name cannot be empty".into());
    }
    if name.len() > IFNAME_MAX {
        return Err(format!(
            "'{}' is {} bytes; Linux interface names hold at most {IFNAME_MAX} (IFNAMSIZ)",
            printable(name),
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "'{}' contains a control character",
            printable(name)
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!("'{name}' is not a valid interface name"));
    }
    Ok(())
}

/// `s` with its control characters escaped (`\u{1}`, `\n`), so that an error naming it
/// stays one readable line.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Whether `name` passes [`check_ifname`].
pub fn valid_ifname(name: &str) -> bool {
    check_ifname(name).is_ok()
}
