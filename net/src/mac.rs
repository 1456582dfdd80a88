//! Ethernet MAC addresses: parsing, and the stable default each NIC gets.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    #[error("MAC address '{0}' is malformed: use six hex pairs like 52:54:00:12:34:56")]
    Malformed(String),
    #[error("MAC address '{0}' is a multicast address: the first octet must be even")]
    Multicast(String),
    #[error("MAC address '{0}' is all zeros, which no NIC may have")]
    Zero(String),
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, MacError> {
        let bad = || MacError::Malformed(crate::spec::printable(s));
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(parts) {
            // Two hex digits exactly: from_str_radix alone also takes a sign ("+2").
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        // Broadcast (ff:ff:...) is a multicast address too.
        if mac[0] & 1 != 0 {
            return Err(MacError::Multicast(s.to_string()));
        }
        if mac == [0; 6] {
            return Err(MacError::Zero(s.to_string()));
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl MacAddr {
    /// A locally administered address in QEMU's 52:54:00 range, derived from `seed` (the
    /// NIC's index and backend), so the same command line gives the guest the same MAC.
    pub fn derived(seed: &str) -> Self {
        // FNV-1a: tiny, stable across builds and platforms.
        let mut h: u32 = 0x811c_9dc5;
        for b in seed.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let [_, a, b, c] = h.to_be_bytes();
        MacAddr([0x52, 0x54, 0x00, a, b, c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let m: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 1]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
    }

    #[test]
    fn rejects_malformed_and_multicast() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "52:54:00:ab:cd:1",
            "zz:54:00:ab:cd:01",
            "52-54-00-ab-cd-01",
            "+2:+4:00:00:00:01",
            "52:54:00:ab:cd:-1",
            "52:54:00:ab:cd: 1",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(MacError::Malformed(_))),
                "{bad}"
            );
        }
        for multicast in ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff"] {
            assert!(matches!(
                multicast.parse::<MacAddr>(),
                Err(MacError::Multicast(_))
            ));
        }
        let e = "00:00:00:00:00:00".parse::<MacAddr>().unwrap_err();
        assert_eq!(e, MacError::Zero("00:00:00:00:00:00".into()));
        assert!(e.to_string().contains("all zeros"), "{e}");
    }

    #[test]
    fn derived_is_stable_unicast_and_distinct() {
        let a = MacAddr::derived("0:tap");
        assert_eq!(a, MacAddr::derived("0:tap"));
        assert_ne!(a, MacAddr::derived("1:tap"));
        assert_eq!(a.0[0] & 1, 0);
        assert_eq!(&a.0[..3], &[0x52, 0x54, 0x00]);
    }
}
