//! NAT behind a tap (`--net tap,nat[=UPLINK]`), as libvirt's default network does it: the
//! tap holds the host's address of a small subnet, the guest's packets are forwarded and
//! masqueraded out of the uplink, and only replies come back in.
//!
//! The rules live in an nftables table of their own, one per NIC, whose name carries
//! everything needed to undo it (`netvmm-nat,pid=OWNER,tap=T,fwd=0,uplink=U`): the owner
//! (see [`Owner`]) lets `netvmm cleanup` find what a killed netvmm left, and `fwd` records
//! the uplink's forwarding switch as it was before any netvmm NAT table on it, so the
//! last table on an uplink to go puts it back. One table per NIC rather than one shared
//! table: deleting a table is one atomic request that takes its chains and rules along,
//! where a shared table would need per-rule handles and a user count; the host's own
//! tables are never read or written, only netvmm's are listed and deleted.
//!
//! Tables are written with nft(8)'s JSON interface (no crate with a licence this project
//! can take writes nf_tables rules in Rust: rustables is GPL-3.0, nftnl binds the C
//! libnftnl; the `nftables` crate's types cannot name a table comment and are a thin
//! layer over the same JSON). They are deleted over netlink ([`netlink::delete_table`]),
//! because that happens at exit in the sandboxed main thread, which may not run programs.
//!
//! Forwarding is switched on per interface (`net/ipv4/conf/IF/forwarding`), on the tap and
//! on the uplink (replies arrive there and are forwarded to the tap), never globally.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::netlink::{self, NetlinkError, NFPROTO_IPV4};
use crate::owned::Owner;
use crate::private_fs::ExclusiveLock;
use crate::spec::Ipv4Cidr;

/// Every netvmm NAT table's name starts so.
pub const TABLE_PREFIX: &str = "netvmm-nat,";
/// The lock every read-modify-write of NAT state (tables, forwarding, subnets) holds.
const LOCK_NAME: &str = "nat.lock";
/// Subnets a default NAT address comes from: the documentation ranges (RFC 5737), which no
/// real network the host talks to uses (10/8 and 192.168/16 are where VPNs and offices
/// live), cut in /30s: the host takes .1, the guest .2.
pub const POOL: [Ipv4Addr; 3] = [
    Ipv4Addr::new(203, 0, 113, 0),
    Ipv4Addr::new(198, 51, 100, 0),
    Ipv4Addr::new(192, 0, 2, 0),
];
/// The prefix length of a default NAT subnet.
pub const DEFAULT_PREFIX: u8 = 30;

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(
        "nat: the host has no IPv4 default route to take the uplink from; name one: nat=IFACE"
    )]
    NoUplink,
    #[error("nat={name}: no such interface (interfaces here: {existing})")]
    BadUplink { name: String, existing: String },
    #[error("nat: every /30 of {} clashes with a route of the host; give one: host-ip=ADDR/PREFIX",
        POOL.map(|p| format!("{p}/24")).join(", "))]
    NoFreeSubnet,
    #[error("nat: cannot run nft(8) (Debian package nftables): {0}")]
    NoNft(std::io::Error),
    #[error("nat: nft(8) refused the rules for table '{table}': {reason}")]
    Nft { table: String, reason: String },
    #[error("nat: cannot {what} {path}: {source}")]
    Sysctl {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("nat: cannot lock {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
}

/// What a NAT table's name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMark {
    pub owner: Owner,
    pub tap: String,
    /// The uplink's forwarding switch before netvmm's first NAT table on it.
    pub forwarding_was: bool,
    pub uplink: String,
}

impl TableMark {
    pub fn name(&self) -> String {
        format!(
            "{TABLE_PREFIX}pid={},tap={},fwd={},uplink={}",
            self.owner,
            self.tap,
            u8::from(self.forwarding_was),
            self.uplink
        )
    }

    /// The mark in a table name; `None` for tables that are not netvmm's. The uplink comes
    /// last because an interface name may hold a comma.
    pub fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(TABLE_PREFIX)?;
        let rest = rest.strip_prefix("pid=")?;
        let (owner, rest) = rest.split_once(",tap=")?;
        let (tap, rest) = rest.split_once(",fwd=")?;
        let (fwd, uplink) = rest.split_once(",uplink=")?;
        Some(TableMark {
            owner: Owner::parse(owner)?,
            tap: tap.to_string(),
            forwarding_was: match fwd {
                "0" => false,
                "1" => true,
                _ => return None,
            },
            uplink: uplink.to_string(),
        })
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// The network address of `addr/prefix`.
pub fn network(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) & mask(prefix))
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let m = mask(a.1.min(b.1));
    u32::from(a.0) & m == u32::from(b.0) & m
}

/// The first /30 of [`POOL`] that overlaps none of `taken` (route destinations; default
/// routes, which overlap everything, are left out), as the host's address in it.
pub fn choose_subnet(taken: &[(Ipv4Addr, u8)]) -> Option<Ipv4Cidr> {
    POOL.iter()
        .flat_map(|base| (0..64u32).map(move |i| Ipv4Addr::from(u32::from(*base) + i * 4)))
        .find(|net| {
            taken
                .iter()
                .filter(|t| t.1 > 0)
                .all(|t| !overlaps((*net, DEFAULT_PREFIX), *t))
        })
        .map(|net| Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(net) + 1),
            prefix: DEFAULT_PREFIX,
        })
}

/// The address a NAT guest takes beside `host`: the next one, or the one before when the
/// host holds the subnet's last usable address.
pub fn guest_addr(host: Ipv4Cidr) -> Ipv4Cidr {
    let h = u32::from(host.addr);
    let broadcast = u32::from(network(host.addr, host.prefix)) | !mask(host.prefix);
    let g = if h + 1 < broadcast || host.prefix >= 31 {
        h.wrapping_add(1)
    } else {
        h - 1
    };
    Ipv4Cidr {
        addr: Ipv4Addr::from(g),
        prefix: host.prefix,
    }
}

fn iface_match(key: &str, name: &str) -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": name}})
}

/// The nft JSON that makes `table`: masquerade what `subnet` sends out of `uplink`,
/// forward the tap's traffic to the uplink and only replies back, nothing else through.
pub fn ruleset(table: &str, tap: &str, uplink: &str, subnet: Ipv4Cidr) -> Value {
    let net = network(subnet.addr, subnet.prefix);
    let rule = |chain: &str, expr: Vec<Value>| json!({"add": {"rule": {"family": "ip", "table": table, "chain": chain, "expr": expr}}});
    let accept = json!({"accept": null});
    let drop = json!({"drop": null});
    json!({"nftables": [
        {"add": {"table": {"family": "ip", "name": table}}},
        {"add": {"chain": {"family": "ip", "table": table, "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
        {"add": {"chain": {"family": "ip", "table": table, "name": "forward",
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}},
        rule("postrouting", vec![
            json!({"match": {"op": "==",
                "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                "right": {"prefix": {"addr": net.to_string(), "len": subnet.prefix}}}}),
            iface_match("oifname", uplink),
            json!({"masquerade": null}),
        ]),
        rule("forward", vec![iface_match("iifname", tap), iface_match("oifname", uplink),
            accept.clone()]),
        rule("forward", vec![iface_match("iifname", uplink), iface_match("oifname", tap),
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}},
                "right": ["established", "related"]}}),
            accept]),
        rule("forward", vec![iface_match("iifname", tap), drop.clone()]),
        rule("forward", vec![iface_match("oifname", tap), drop]),
    ]})
}

/// Runs `nft -j RULES`: the ruleset as an argument, not on stdin, because `nft -f -`
/// opens /dev/stdin, which a minimal host (the lab's) may not have.
pub(crate) fn apply(table: &str, rules: &Value) -> Result<(), NatError> {
    let out = Command::new("nft")
        .arg("-j")
        .arg(rules.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(NatError::NoNft)?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(NatError::Nft {
        table: table.to_string(),
        reason: err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim()
            .to_string(),
    })
}

fn forwarding_path(ifname: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding")
}

/// An interface's IPv4 forwarding switch.
pub fn forwarding(ifname: &str) -> Result<bool, NatError> {
    let path = forwarding_path(ifname);
    std::fs::read_to_string(&path)
        .map(|s| s.trim() != "0")
        .map_err(|source| NatError::Sysctl {
            what: "read",
            path,
            source,
        })
}

pub fn set_forwarding(ifname: &str, on: bool) -> Result<(), NatError> {
    let path = forwarding_path(ifname);
    std::fs::write(&path, if on { "1" } else { "0" }).map_err(|source| NatError::Sysctl {
        what: "write",
        path,
        source,
    })
}

fn lock() -> Result<ExclusiveLock, NatError> {
    ExclusiveLock::take(LOCK_NAME).map_err(|(path, source)| NatError::Lock { path, source })
}

/// netvmm's NAT tables in this network namespace.
pub fn tables() -> Result<Vec<TableMark>, NatError> {
    let names = match netlink::list_tables(NFPROTO_IPV4) {
        // A kernel without nf_tables holds no netvmm table.
        Err(e) if e.os_error() == Some(libc::EPROTONOSUPPORT) => Vec::new(),
        r => r?,
    };
    Ok(names.iter().filter_map(|n| TableMark::parse(n)).collect())
}

/// Deletes `mark`'s table; then, if no netvmm NAT table is left on its uplink and netvmm
/// turned the uplink's forwarding on, turns it off again. Call with the lock held.
fn remove(mark: &TableMark) -> Result<(), NatError> {
    netlink::delete_table(NFPROTO_IPV4, &mark.name())?;
    if mark.forwarding_was || tables()?.iter().any(|m| m.uplink == mark.uplink) {
        return Ok(());
    }
    match set_forwarding(&mark.uplink, false) {
        // The uplink went away: nothing left to put back.
        Err(NatError::Sysctl { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        r => r,
    }
}

/// The uplink: `named`, or the interface of the host's default route.
pub fn resolve_uplink(named: Option<&str>) -> Result<String, NatError> {
    if let Some(n) = named {
        return match netlink::link_info(n)? {
            Some(l) => Ok(l.name),
            None => Err(NatError::BadUplink {
                name: crate::names::printable(n),
                existing: netlink::list_links()?
                    .into_iter()
                    .map(|l| l.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        };
    }
    let routes = netlink::ipv4_routes()?;
    let oif = netlink::default_route_oif(&routes).ok_or(NatError::NoUplink)?;
    Ok(netlink::link_info(oif)?.ok_or(NatError::NoUplink)?.name)
}

/// One NIC's NAT: its table, deleted (and the uplink's forwarding put back when it was the
/// last) when this drops.
#[derive(Debug)]
pub struct NatUse {
    pub mark: TableMark,
    /// The tap's address (the guest's gateway).
    pub host: Ipv4Cidr,
}

impl NatUse {
    pub fn table(&self) -> String {
        self.mark.name()
    }
}

impl Drop for NatUse {
    fn drop(&mut self) {
        if let Ok(_lock) = lock() {
            let _ = remove(&self.mark);
        }
    }
}

/// Sets NAT up for the tap `open_tap` makes: picks the host address (`host_ip`, or a free
/// /30 of [`POOL`]) under the NAT lock so that concurrent netvmm processes pick different
/// ones, opens the tap with it, turns forwarding on and writes the table.
pub fn setup<T>(
    uplink: Option<&str>,
    host_ip: Option<Ipv4Cidr>,
    open_tap: impl FnOnce(Ipv4Cidr) -> Result<(T, String), crate::backends::BackendError>,
) -> Result<(T, NatUse), crate::backends::BackendError> {
    let uplink = resolve_uplink(uplink)?;
    let _lock = lock()?;
    let host = match host_ip {
        Some(h) => h,
        None => {
            let taken: Vec<(Ipv4Addr, u8)> = netlink::ipv4_routes()?
                .iter()
                .map(|r| (r.dst, r.prefix))
                .collect();
            choose_subnet(&taken).ok_or(NatError::NoFreeSubnet)?
        }
    };
    let (tap, tap_name) = open_tap(host)?;
    set_forwarding(&tap_name, true)?;
    let now = forwarding(&uplink)?;
    let was = tables()?
        .iter()
        .find(|m| m.uplink == uplink)
        .map_or(now, |m| m.forwarding_was);
    let mark = TableMark {
        owner: Owner::me(),
        tap: tap_name.clone(),
        forwarding_was: was,
        uplink: uplink.clone(),
    };
    let table = mark.name();
    let made = (|| {
        if !now {
            set_forwarding(&uplink, true)?;
        }
        apply(&table, &ruleset(&table, &tap_name, &uplink, host))
    })();
    if let Err(e) = made {
        // Undone here, under the lock this holds (a NatUse would take it again).
        let _ = remove(&mark);
        return Err(e.into());
    }
    drop(_lock);
    Ok((tap, NatUse { mark, host }))
}

/// The NAT tables of netvmm processes that are gone: what [`cleanup_stale`] removes, and
/// what `netvmm run` warns about.
pub fn stale_tables() -> Result<Vec<TableMark>, NatError> {
    Ok(tables()?.into_iter().filter(|m| !m.owner.alive()).collect())
}

/// Deletes the NAT tables of netvmm processes that are gone, and puts their uplinks'
/// forwarding back where no table is left; returns the tables removed.
pub fn cleanup_stale() -> Result<Vec<String>, NatError> {
    let _lock = lock()?;
    let mut removed = Vec::new();
    for m in stale_tables()? {
        remove(&m)?;
        removed.push(m.name());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
