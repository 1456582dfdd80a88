//! `--net` specifications: a comma list of `key[=value]`, values optionally in double quotes
//! (with `\"` and `\\` escapes) so that they may contain commas.

use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::mac::{MacAddr, MacError};
pub use crate::names::{check_ifname, printable, IFNAME_MAX};
use crate::netlink::MacvtapMode;

/// An IPv4 address with its prefix length, e.g. 192.0.2.1/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(bits)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' needs a prefix length, like 192.0.2.1/24"))?;
        let addr = a
            .parse()
            .map_err(|_| format!("'{a}' is not an IPv4 address"))?;
        let prefix = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("'{p}' is not a prefix length from 0 to 32"))?;
        Ok(Self { addr, prefix })
    }
}

/// Which host method carries the guest's frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// A tap: created (generated name, or `name` when it does not exist) or attached.
    Tap {
        name: Option<String>,
        host_ip: Option<Ipv4Cidr>,
    },
    /// An already open tap or macvtap fd, inherited from the parent process.
    Fd(i32),
    /// A tap (created, or `tap` when given) enslaved to the existing bridge `bridge`.
    Bridge { bridge: String, tap: Option<String> },
    /// A macvtap that netvmm creates on `parent` in `mode`; with `host_access`, a shared
    /// bridge-mode macvlan on the parent holds that host address, so host and guest meet.
    Macvtap {
        parent: String,
        mode: MacvtapMode,
        host_access: Option<Ipv4Cidr>,
    },
    /// A tap netvmm creates with the host's address `host_ip` (a free one when `None`),
    /// its guest's traffic masqueraded out of `uplink` (the default route's interface when
    /// `None`); see [`crate::nat`].
    Nat {
        host_ip: Option<Ipv4Cidr>,
        uplink: Option<String>,
    },
    /// A tap netvmm creates and wires to the existing NIC `nic` with tc redirects both
    /// ways; see [`crate::tc_redirect`].
    TcRedirect { nic: String },
}

/// One guest NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub backend: BackendSpec,
    pub mac: Option<MacAddr>,
    /// The MTU the guest is told (VIRTIO_NET_F_MTU) and the host side is set to.
    pub mtu: Option<u16>,
    /// Whether the kernel (vhost-net) serves the queues.
    pub vhost: VhostMode,
    /// Queue pairs (`queues=`, VIRTIO_NET_F_MQ when above 1): the host side is opened
    /// this many times (a multi-queue tap, a macvtap's /dev/tapN), one fd per pair.
    pub queues: u8,
}

/// The queue pairs `queues=` takes. 8 is plenty for the guests netvmm boots (the guest
/// uses min(pairs, vCPUs)), and bounds the fds and vhost instances a NIC holds.
pub const QUEUES_RANGE: std::ops::RangeInclusive<u8> = 1..=8;

fn parse_queues(v: &str) -> Result<u8, String> {
    Some(v)
        .filter(|v| !v.is_empty() && v.len() <= 3 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|n| QUEUES_RANGE.contains(n))
        .ok_or_else(|| {
            format!(
                "not a queue pair count: a whole number from {} to {}",
                QUEUES_RANGE.start(),
                QUEUES_RANGE.end()
            )
        })
}

/// `vhost=`: which data path carries the frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VhostMode {
    /// netvmm's own device moves every frame (the default).
    #[default]
    Off,
    /// vhost-net, or an error if it cannot be had.
    On,
    /// vhost-net if it can be had, else the userspace path (and a line saying so).
    Auto,
}

impl FromStr for VhostMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "on" => Ok(Self::On),
            "auto" => Ok(Self::Auto),
            _ => Err("must be on, off or auto".into()),
        }
    }
}

/// The MTUs `mtu=` takes: IPv4's minimum (RFC 791) up to what a 16-bit length holds.
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 68..=65535;

fn parse_mtu(v: &str) -> Result<u16, String> {
    // Digits only: `parse` would take a leading '+'.
    Some(v)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u32>().ok())
        .and_then(|m| u16::try_from(m).ok())
        .filter(|m| MTU_RANGE.contains(m))
        .ok_or_else(|| {
            format!(
                "not an MTU: a whole number of bytes from {} to {}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            )
        })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("--net '{spec}': {reason}")]
    Syntax { spec: String, reason: String },
    #[error("--net '{spec}': unknown key '{key}' (known keys: {known})")]
    UnknownKey {
        spec: String,
        key: String,
        known: &'static str,
    },
    #[error("--net '{spec}': key '{key}' given twice")]
    Duplicate { spec: String, key: String },
    #[error("--net '{spec}': {key}={value}: {reason}")]
    BadValue {
        spec: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("--net '{spec}': {0}", spec = .1)]
    Mac(MacError, String),
}

/// Splits `spec` into (key, optional value) pairs, honouring double quotes.
pub fn split_pairs(spec: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut chars = spec.chars().peekable();
    loop {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        let key = key.trim().to_string();
        if key.is_empty() {
            return Err("empty item (two commas in a row, or a leading/trailing comma?)".into());
        }
        let mut value = None;
        if chars.peek() == Some(&'=') {
            chars.next();
            let mut v = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some(e) => v.push(e),
                            None => return Err("dangling backslash".into()),
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        _ => v.push(c),
                    }
                }
                if !closed {
                    return Err(format!("unterminated quote in the value of '{key}'"));
                }
                if !matches!(chars.peek(), None | Some(',')) {
                    return Err(format!("text after the closing quote of '{key}'"));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    v.push(c);
                    chars.next();
                }
            }
            value = Some(v);
        }
        out.push((key, value));
        match chars.next() {
            None => return Ok(out),
            Some(',') => {
                if chars.peek().is_none() {
                    return Err("trailing comma".into());
                }
            }
            Some(c) => return Err(format!("unexpected '{c}'")),
        }
    }
}

const KNOWN_KEYS: &str =
    "tap, fd, bridge, macvtap, tc, nat, host-ip, host-access, mac, mode, mtu, vhost, queues";

impl FromStr for NetSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let shown = printable(spec);
        let syntax = |reason: String| SpecError::Syntax {
            spec: shown.clone(),
            reason,
        };
        let pairs = split_pairs(spec).map_err(syntax)?;
        let mut seen: Vec<&str> = Vec::new();
        for (k, _) in &pairs {
            if seen.contains(&k.as_str()) {
                return Err(SpecError::Duplicate {
                    spec: shown.clone(),
                    key: k.clone(),
                });
            }
            seen.push(k);
        }
        let bad = |key: &str, value: &str, reason: String| SpecError::BadValue {
            spec: shown.clone(),
            key: key.into(),
            value: printable(value),
            reason,
        };
        let (kind, kind_value) = &pairs[0];
        let mut backend = match kind.as_str() {
            "tap" => {
                if let Some(n) = kind_value {
                    check_ifname(n).map_err(|r| bad("tap", n, r))?;
                }
                BackendSpec::Tap {
                    name: kind_value.clone(),
                    host_ip: None,
                }
            }
            "bridge" | "macvtap" | "tc" => {
                let v = kind_value
                    .clone()
                    .ok_or_else(|| bad(kind, "", "needs an interface name".into()))?;
                check_ifname(&v).map_err(|r| bad(kind, &v, r))?;
                if kind == "tc" {
                    BackendSpec::TcRedirect { nic: v }
                } else if kind == "bridge" {
                    BackendSpec::Bridge {
                        bridge: v,
                        tap: None,
                    }
                } else {
                    BackendSpec::Macvtap {
                        parent: v,
                        mode: MacvtapMode::Bridge,
                        host_access: None,
                    }
                }
            }
            "fd" => {
                let v = kind_value.as_deref().unwrap_or("");
                let fd = v
                    .parse::<i32>()
                    .ok()
                    .filter(|fd| *fd >= 0)
                    .ok_or_else(|| bad("fd", v, "not a file descriptor number".into()))?;
                BackendSpec::Fd(fd)
            }
            other if KNOWN_KEYS.split(", ").any(|k| k == other) => {
                return Err(syntax(format!(
                    "it must start with the backend (tap, fd=N, bridge=BR, macvtap=PARENT or tc=NIC), not '{other}'"
                )))
            }
            other => {
                return Err(SpecError::UnknownKey {
                    spec: shown.clone(),
                    key: other.into(),
                    known: KNOWN_KEYS,
                })
            }
        };
        let mut mac = None;
        let mut mtu = None;
        let mut vhost = VhostMode::Off;
        let mut queues = 1;
        let mut nat: Option<Option<String>> = None;
        for (key, value) in &pairs[1..] {
            let value_of = || {
                value
                    .clone()
                    .ok_or_else(|| bad(key, "", "needs a value".into()))
            };
            match key.as_str() {
                "mac" => {
                    let v = value_of()?;
                    mac = Some(v.parse().map_err(|e| SpecError::Mac(e, shown.clone()))?);
                }
                "vhost" => {
                    let v = value_of()?;
                    vhost = v.parse().map_err(|r| bad(key, &v, r))?;
                }
                "mtu" => {
                    let v = value_of()?;
                    mtu = Some(parse_mtu(&v).map_err(|r| bad(key, &v, r))?);
                }
                "queues" => {
                    let v = value_of()?;
                    queues = parse_queues(&v).map_err(|r| bad(key, &v, r))?;
                    if let (BackendSpec::Fd(fd), true) = (&backend, queues > 1) {
                        return Err(bad(
                            key,
                            &v,
                            format!(
                                "fd={fd} is one queue of a tap or macvtap: an inherited fd \
                                 takes only queues=1 (let netvmm open the tap or macvtap \
                                 for more)"
                            ),
                        ));
                    }
                }
                "host-ip" => {
                    let v = value_of()?;
                    let cidr: Ipv4Cidr = v.parse().map_err(|r| bad(key, &v, r))?;
                    match &mut backend {
                        BackendSpec::Tap { host_ip, .. } => *host_ip = Some(cidr),
                        _ => {
                            return Err(bad(
                                key,
                                &v,
                                "only a plain tap backend takes a host address (for a bridge, \
                                 the host's address belongs on the bridge)"
                                    .into(),
                            ))
                        }
                    }
                }
                "host-access" => {
                    let v = value_of()?;
                    let cidr: Ipv4Cidr = v.parse().map_err(|r| bad(key, &v, r))?;
                    match &mut backend {
                        BackendSpec::Macvtap { host_access, .. } => *host_access = Some(cidr),
                        _ => {
                            return Err(bad(
                                key,
                                &v,
                                "only a macvtap backend needs a host-access shim".into(),
                            ))
                        }
                    }
                }
                "mode" => {
                    let v = value_of()?;
                    let m: MacvtapMode = v.parse().map_err(|r| bad(key, &v, r))?;
                    match &mut backend {
                        BackendSpec::Macvtap { mode, .. } => *mode = m,
                        _ => return Err(bad(key, &v, "only a macvtap backend has a mode".into())),
                    }
                }
                "nat" => {
                    let v = value.clone().unwrap_or_default();
                    if !matches!(backend, BackendSpec::Tap { .. }) {
                        return Err(bad(key, &v, "only a tap backend is put behind NAT".into()));
                    }
                    if let Some(u) = value {
                        check_ifname(u).map_err(|r| bad(key, u, r))?;
                    }
                    nat = Some(value.clone());
                }
                "tap" if matches!(backend, BackendSpec::Bridge { .. }) => {
                    let v = value_of()?;
                    check_ifname(&v).map_err(|r| bad(key, &v, r))?;
                    if let BackendSpec::Bridge { tap, .. } = &mut backend {
                        *tap = Some(v);
                    }
                }
                "tap" | "fd" | "bridge" | "macvtap" | "tc" => {
                    return Err(syntax(format!(
                        "'{key}' names a backend and must come first, once"
                    )))
                }
                other => {
                    return Err(SpecError::UnknownKey {
                        spec: shown.clone(),
                        key: other.into(),
                        known: KNOWN_KEYS,
                    })
                }
            }
        }
        if let (Some(uplink), BackendSpec::Tap { name, host_ip }) = (nat, &backend) {
            if let Some(n) = name {
                return Err(bad(
                    "tap",
                    n,
                    "a NAT tap is always one netvmm creates; drop the name".into(),
                ));
            }
            backend = BackendSpec::Nat {
                host_ip: *host_ip,
                uplink,
            };
        }
        if let BackendSpec::Macvtap {
            mode,
            host_access: Some(cidr),
            ..
        } = &backend
        {
            if *mode != MacvtapMode::Bridge {
                return Err(bad(
                    "host-access",
                    &format!("{}/{}", cidr.addr, cidr.prefix),
                    format!(
                        "needs mode=bridge: in {mode} mode a macvtap never reaches a sibling \
                         on its parent, so the host's shim could not reach the guest either"
                    ),
                ));
            }
        }
        Ok(NetSpec {
            backend,
            mac,
            mtu,
            vhost,
            queues,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_forms() {
        let s: NetSpec = "tap".parse().unwrap();
        assert_eq!(
            s.backend,
            BackendSpec::Tap {
                name: None,
                host_ip: None
            }
        );
        let s: NetSpec = "tap=vm0,host-ip=192.0.2.1/24,mac=52:54:00:00:00:01"
            .parse()
            .unwrap();
        let BackendSpec::Tap { name, host_ip } = s.backend else {
            panic!()
        };
        assert_eq!(name.as_deref(), Some("vm0"));
        let ip = host_ip.unwrap();
        assert_eq!((ip.addr, ip.prefix), (Ipv4Addr::new(192, 0, 2, 1), 24));
        assert_eq!(ip.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.mac.unwrap().to_string(), "52:54:00:00:00:01");
        let s: NetSpec = "fd=3".parse().unwrap();
        assert_eq!(s.backend, BackendSpec::Fd(3));
    }

    #[test]
    fn quotes_allow_commas_and_escapes() {
        assert_eq!(
            split_pairs(r#"tap="a,b",x="q\"z""#).unwrap(),
            vec![
                ("tap".to_string(), Some("a,b".to_string())),
                ("x".to_string(), Some("q\"z".to_string()))
            ]
        );
        assert!(split_pairs(r#"tap="open"#)
            .unwrap_err()
            .contains("unterminated"));
        assert!(split_pairs(r#"tap="a"b"#)
            .unwrap_err()
            .contains("after the closing quote"));
        assert!(split_pairs("tap,,mac=1").is_err());
        assert!(split_pairs("tap,").is_err());
    }

    #[test]
    fn errors_name_the_culprit() {
        let e = "tap=averyveryverylongname"
            .parse::<NetSpec>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("averyveryverylongname") && e.contains("IFNAMSIZ"),
            "{e}"
        );
        let e = "tap,mac=52:54:00:zz:00:01"
            .parse::<NetSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("52:54:00:zz:00:01"), "{e}");
        let e = "tap,colour=red".parse::<NetSpec>().unwrap_err().to_string();
        assert!(e.contains("unknown key 'colour'"), "{e}");
        let e = "bogus".parse::<NetSpec>().unwrap_err().to_string();
        assert!(e.contains("unknown key 'bogus'"), "{e}");
        let e = "mac=52:54:00:00:00:01"
            .parse::<NetSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("must start with the backend"), "{e}");
        let e = "tap,mac=52:54:00:00:00:01,mac=52:54:00:00:00:02"
            .parse::<NetSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
        let e = "fd=-1".parse::<NetSpec>().unwrap_err().to_string();
        assert!(e.contains("fd=-1"), "{e}");
        let e = "fd=3,host-ip=192.0.2.1/24"
            .parse::<NetSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("host-ip"), "{e}");
        let e = "tap,host-ip=192.0.2.1"
            .parse::<NetSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefix"), "{e}");
        let e = "tap,host-ip=192.0.2.1/33"
            .parse::<NetSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("33"), "{e}");
        let e = "tap=a/b".parse::<NetSpec>().unwrap_err().to_string();
        assert!(e.contains("not a valid interface name"), "{e}");
        for bad in ["tap=a\u{1}b", "bridge=br\n0", "bridge=br0,tap=t\u{7f}"] {
            let e = bad.parse::<NetSpec>().unwrap_err().to_string();
            assert!(e.contains("contains a control character"), "{e}");
            assert!(!e.chars().any(char::is_control), "shown escaped: {e:?}");
        }
        let e = "macvtap=eth1,mode=loud"
            .parse::<NetSpec>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'loud' is not a macvtap mode") && e.contains("passthru"),
            "{e}"
        );
        let e = "tap,mode=vepa".parse::<NetSpec>().unwrap_err().to_string();
        assert!(e.contains("only a macvtap backend has a mode"), "{e}");
        let e = "bridge=br0,host-ip=192.0.2.1/24"
            .parse::<NetSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("address belongs on the bridge"), "{e}");
        let e = "bridge".parse::<NetSpec>().unwrap_err().to_string();
        assert!(e.contains("needs an interface name"), "{e}");
        let e = "macvtap=eth1,tap=x"
            .parse::<NetSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("must come first"), "{e}");
    }

    #[test]
    fn mtu_is_taken_on_every_backend_within_its_range() {
        for backend in [
            "tap",
            "fd=3",
            "bridge=br0",
            "macvtap=eth1,mode=vepa",
            "tap,nat",
            "tc=veth0",
        ] {
            let s: NetSpec = format!("{backend},mtu=9000").parse().unwrap();
            assert_eq!(s.mtu, Some(9000), "{backend}");
        }
        assert_eq!("tap".parse::<NetSpec>().unwrap().mtu, None);
        for ok in [68, 1500, 65535] {
            let s: NetSpec = format!("tap,mtu={ok}").parse().unwrap();
            assert_eq!(s.mtu, Some(ok));
        }
        for bad in [
            "67",
            "0",
            "65536",
            "-1",
            "+9000",
            "9k",
            "",
            "1e4",
            "4294967296",
        ] {
            let e = format!("tap,mtu={bad}")
                .parse::<NetSpec>()
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("mtu={bad}:")) && e.contains("from 68 to 65535"),
                "{e}"
            );
        }
        let e = "tap,mtu".parse::<NetSpec>().unwrap_err().to_string();
        assert!(e.contains("mtu") && e.contains("needs a value"), "{e}");
    }

    #[test]
    fn vhost_is_off_unless_asked_on_every_backend() {
        assert_eq!("tap".parse::<NetSpec>().unwrap().vhost, VhostMode::Off);
        for backend in ["tap", "fd=3", "bridge=br0", "macvtap=eth1,mode=private"] {
            for (v, want) in [
                ("on", VhostMode::On),
                ("off", VhostMode::Off),
                ("auto", VhostMode::Auto),
            ] {
                let s: NetSpec = format!("{backend},vhost={v}").parse().unwrap();
                assert_eq!(s.vhost, want, "{backend}");
            }
        }
        for bad in ["yes", "1", "", "ON"] {
            let e = format!("tap,vhost={bad}")
                .parse::<NetSpec>()
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("vhost={bad}:")) && e.contains("on, off or auto"),
                "{e}"
            );
        }
    }

    #[test]
    fn queues_is_one_unless_asked_and_refused_out_of_range_or_on_an_fd() {
        assert_eq!("tap".parse::<NetSpec>().unwrap().queues, 1);
        for backend in [
            "tap",
            "bridge=br0",
            "macvtap=eth1,mode=vepa",
            "tap,nat",
            "tc=veth0",
        ] {
            for n in [1, 2, 8] {
                let s: NetSpec = format!("{backend},queues={n},vhost=on").parse().unwrap();
                assert_eq!(s.queues, n, "{backend}");
            }
        }
        assert_eq!("fd=3,queues=1".parse::<NetSpec>().unwrap().queues, 1);
        let e = "fd=3,queues=2".parse::<NetSpec>().unwrap_err().to_string();
        assert!(
            e.contains("queues=2:") && e.contains("fd=3") && e.contains("only queues=1"),
            "{e}"
        );
        for bad in ["0", "9", "256", "-1", "+2", "", "two", "0002"] {
            let e = format!("tap,queues={bad}")
                .parse::<NetSpec>()
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("queues={bad}:")) && e.contains("from 1 to 8"),
                "{e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn nat_and_tc_forms() {
        let s: NetSpec = "tap,nat".parse().unwrap();
        assert_eq!(
            s.backend,
            BackendSpec::Nat {
                host_ip: None,
                uplink: None
            }
        );
        for spec in [
            "tap,nat=eth0,host-ip=192.0.2.1/30",
            "tap,host-ip=192.0.2.1/30,nat=eth0",
        ] {
            let s: NetSpec = spec.parse().unwrap();
            assert_eq!(
                s.backend,
                BackendSpec::Nat {
                    host_ip: Some("192.0.2.1/30".parse().unwrap()),
                    uplink: Some("eth0".into())
                },
                "{spec}"
            );
        }
        let s: NetSpec = "tc=veth0,mac=52:54:00:00:00:09".parse().unwrap();
        assert_eq!(
            s.backend,
            BackendSpec::TcRedirect {
                nic: "veth0".into()
            }
        );
        assert!(s.mac.is_some());
        let e = |spec: &str| spec.parse::<NetSpec>().unwrap_err().to_string();
        assert!(
            e("tap=vm0,nat").contains("drop the name"),
            "{}",
            e("tap=vm0,nat")
        );
        assert!(e("bridge=br0,nat").contains("only a tap backend is put behind NAT"));
        assert!(e("tap,nat=a/b").contains("not a valid interface name"));
        assert!(e("tap,nat,nat").contains("given twice"));
        assert!(e("tc").contains("needs an interface name"));
        assert!(e("tc=eth0,host-ip=192.0.2.1/24").contains("only a plain tap"));
        assert!(e("tap,tc=eth0").contains("must come first"));
        assert!(e("nat").contains("must start with the backend") && e("nat").contains("tc=NIC"));
    }

    #[test]
    fn bridge_and_macvtap_forms() {
        let s: NetSpec = "bridge=br0".parse().unwrap();
        assert_eq!(
            s.backend,
            BackendSpec::Bridge {
                bridge: "br0".into(),
                tap: None
            }
        );
        let s: NetSpec = "bridge=br0,tap=vnet7,mac=52:54:00:00:00:07"
            .parse()
            .unwrap();
        assert_eq!(
            s.backend,
            BackendSpec::Bridge {
                bridge: "br0".into(),
                tap: Some("vnet7".into())
            }
        );
        let s: NetSpec = "macvtap=eth1".parse().unwrap();
        assert_eq!(
            s.backend,
            BackendSpec::Macvtap {
                parent: "eth1".into(),
                mode: MacvtapMode::Bridge,
                host_access: None,
            }
        );
        for m in MacvtapMode::ALL {
            let s: NetSpec = format!("macvtap=eth1,mode={m}").parse().unwrap();
            assert_eq!(
                s.backend,
                BackendSpec::Macvtap {
                    parent: "eth1".into(),
                    mode: m,
                    host_access: None,
                }
            );
        }
        let s: NetSpec = "macvtap=eth1,host-access=192.0.2.1/24".parse().unwrap();
        let BackendSpec::Macvtap {
            host_access: Some(c),
            ..
        } = s.backend
        else {
            panic!("no host-access")
        };
        assert_eq!(c.prefix, 24);
        for m in ["vepa", "private", "passthru"] {
            let e = format!("macvtap=eth1,mode={m},host-access=192.0.2.1/24")
                .parse::<NetSpec>()
                .unwrap_err()
                .to_string();
            assert!(e.contains("needs mode=bridge") && e.contains(m), "{e}");
        }
        let e = "tap,host-access=192.0.2.1/24"
            .parse::<NetSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("only a macvtap backend"), "{e}");
    }
}
