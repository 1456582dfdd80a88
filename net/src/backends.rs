//! Opening the host side of one guest NIC from its `--net` spec: a plain tap, an inherited
//! fd, a tap enslaved to a bridge, or a macvtap. Whatever netvmm creates carries the owner
//! mark and is removed when the returned guards drop; a tap it was given is recorded before
//! it is touched and put back as found (see [`crate::given`]). [`HostCleanup`] holds all of
//! that for a VM's life and undoes it in the one safe order.

use std::os::fd::{FromRawFd, OwnedFd};

use crate::bridge_watch::{Port, Watcher};
use crate::given::{GivenLink, RestoreError};
use crate::mac::MacAddr;
use crate::nat::NatUse;
use crate::netlink::{self, MacvtapMode, NetlinkError};
use crate::owned::{owner_alias, OwnedLink};
use crate::private_fs::{open_private_node, PrivateDir};
use crate::shim::ShimUse;
use crate::spec::{BackendSpec, NetSpec};
use crate::tap::{Tap, TapError};
use crate::tc_redirect::Wiring;

/// Name template for macvtaps netvmm creates.
pub const MACVTAP_TEMPLATE: &str = "nvmvt%d";

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Shim(#[from] crate::shim::ShimError),
    #[error(transparent)]
    Nat(#[from] crate::nat::NatError),
    #[error(transparent)]
    Tc(#[from] crate::tc_redirect::TcError),
    #[error("bridge {name} does not exist (bridges here: {})", list(.existing))]
    NoBridge { name: String, existing: Vec<String> },
    #[error("{name} is not a bridge but a {kind} (bridges here: {})", list(.existing))]
    NotABridge {
        name: String,
        kind: String,
        existing: Vec<String>,
    },
    #[error("macvtap parent {0} does not exist")]
    NoParent(String),
    #[error("macvtap {name}: passthru takes the parent's MAC address; mac= cannot be honoured")]
    PassthruMac { name: String },
    #[error("mtu={mtu}: macvtap {name} cannot be larger than its parent {parent}, whose MTU is {parent_mtu}")]
    MtuAboveParent {
        name: String,
        parent: String,
        parent_mtu: u32,
        mtu: u16,
    },
    #[error("cannot open {path} for macvtap {name}: {source}")]
    OpenTapDev {
        path: String,
        name: String,
        source: std::io::Error,
    },
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The host side of one NIC, ready for the device.
#[derive(Debug)]
pub struct Opened {
    pub tap: Tap,
    /// The further queues of a multi-queue NIC (`queues=`): pair 1, 2, ... in order.
    pub more_queues: Vec<Tap>,
    pub mac: MacAddr,
    /// One line for the user: what carries this NIC and what happens to it at exit.
    pub description: String,
    /// Created interfaces to delete at exit.
    pub owned: Option<OwnedLink>,
    /// A given tap, as it was before netvmm touched it: put back so at exit.
    pub given: Option<GivenLink>,
    /// The tap to keep on its bridge if the bridge is re-created.
    pub bridge_port: Option<Port>,
    /// This NIC's use of the host-access shim.
    pub shim: Option<ShimUse>,
    /// What the user should know about this NIC besides its description (one line each),
    /// e.g. bridge ports whose MTU is below the guest's.
    pub notes: Vec<String>,
    /// This NIC's NAT table (and the uplink's forwarding, when it is the last).
    pub nat: Option<NatUse>,
    /// The NIC side of a tc redirect wiring.
    pub tc: Option<Wiring>,
}

impl Opened {
    /// A tap with nothing to undo but itself (more is added with struct update syntax).
    fn plain(tap: Tap, mac: MacAddr, description: String) -> Self {
        Opened {
            tap,
            more_queues: Vec::new(),
            mac,
            description,
            owned: None,
            given: None,
            bridge_port: None,
            shim: None,
            notes: Vec::new(),
            nat: None,
            tc: None,
        }
    }
}

/// What the device and the user get of an [`Opened`] once [`HostCleanup`] holds the rest.
#[derive(Debug)]
pub struct Adopted {
    pub tap: Tap,
    pub more_queues: Vec<Tap>,
    pub mac: MacAddr,
    pub description: String,
    pub notes: Vec<String>,
}

/// What must be undone when the VM ends: given taps put back as found, created interfaces
/// deleted, shim uses released. Dropping it does that (or [`HostCleanup::finish`], which
/// also says what failed). A bridge watcher from [`HostCleanup::bridge_watcher`] must be
/// stopped first: a tap released from its bridge while one runs is a tap it puts back.
#[derive(Debug, Default)]
pub struct HostCleanup {
    ports: Vec<Port>,
    given: Vec<GivenLink>,
    owned: Vec<OwnedLink>,
    shims: Vec<ShimUse>,
    nats: Vec<NatUse>,
    wirings: Vec<Wiring>,
}

impl HostCleanup {
    /// Takes over what `opened` leaves to undo; returns the parts the device needs: its
    /// tap, MAC, description and notes.
    pub fn adopt(&mut self, opened: Opened) -> Adopted {
        let Opened {
            tap,
            more_queues,
            mac,
            description,
            owned,
            given,
            bridge_port,
            shim,
            notes,
            nat,
            tc,
        } = opened;
        self.nats.extend(nat);
        self.wirings.extend(tc);
        self.owned.extend(owned);
        self.given.extend(given);
        self.ports.extend(bridge_port);
        self.shims.extend(shim);
        Adopted {
            tap,
            more_queues,
            mac,
            description,
            notes,
        }
    }

    /// A watcher that keeps the adopted bridge ports on their bridges (see
    /// [`crate::bridge_watch`]), for the owner's event loop; None when no port needs one.
    /// The owner must stop running it before [`HostCleanup::finish`].
    pub fn bridge_watcher(&self) -> Result<Option<Watcher>, NetlinkError> {
        if self.ports.is_empty() {
            return Ok(None);
        }
        Watcher::new(self.ports.clone()).map(Some)
    }

    /// Undoes everything now; returns the given links that could not be put back as found.
    /// Idempotent.
    pub fn finish(&mut self) -> Vec<RestoreError> {
        let problems = self
            .given
            .drain(..)
            .filter_map(|mut g| g.restore().err())
            .collect();
        self.owned.clear();
        self.shims.clear();
        self.wirings.clear();
        self.nats.clear();
        problems
    }
}

impl Drop for HostCleanup {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn with_hint(e: NetlinkError) -> BackendError {
    BackendError::Netlink(e)
}

/// Opens the backend for NIC number `index`.
pub fn open(spec: &NetSpec, index: usize) -> Result<Opened, BackendError> {
    let queues = usize::from(spec.queues.max(1));
    let derived = |host: &str| {
        spec.mac
            .unwrap_or_else(|| MacAddr::derived(&format!("{index}:{host}")))
    };
    match &spec.backend {
        BackendSpec::Tap { name, host_ip } => {
            // Before Tap::open: host-ip changes the tap there.
            let given = record_given(name.as_deref())?;
            let (tap, more_queues) = split(Tap::open_mq(name.as_deref(), *host_ip, queues)?);
            let given = keep_tun(given, &tap)?;
            set_mtu(tap.name(), spec.mtu)?;
            let description = format!(
                "tap {}{}",
                tap.name(),
                if tap.created() {
                    " (created, removed at exit)"
                } else {
                    " (existing, left as found)"
                }
            );
            if tap.created() {
                // A mark only: a created tap vanishes with its fd anyway.
                let _ = netlink::set_alias(tap.name(), &owner_alias());
            }
            let mac = derived(tap.name());
            Ok(Opened {
                given,
                more_queues,
                ..Opened::plain(tap, mac, description)
            })
        }
        BackendSpec::Fd(fd) => {
            let tap = Tap::from_fd(*fd)?;
            let notes = inherited_mtu_note(tap.name(), spec.mtu)?;
            let description = format!("fd {fd} ({}, inherited, left as found)", tap.name());
            let mac = derived(tap.name());
            Ok(Opened {
                notes,
                ..Opened::plain(tap, mac, description)
            })
        }
        BackendSpec::Bridge { bridge, tap } => {
            open_bridge_port(spec, bridge, tap.as_deref(), queues, derived)
        }
        BackendSpec::Macvtap {
            parent,
            mode,
            host_access,
        } => {
            let mut o = open_macvtap(spec, parent, *mode, index, queues)?;
            if let Some(cidr) = host_access {
                let shim = crate::shim::acquire(parent, *cidr)?;
                o.description.push_str(&format!(
                    "; host reaches it as {}/{} on shim {} (shared, removed with its last user)",
                    cidr.addr, cidr.prefix, shim.name
                ));
                o.shim = Some(shim);
            }
            Ok(o)
        }
        // A created tap each: it takes the guest's MTU as a plain one does.
        BackendSpec::Nat { host_ip, uplink } => {
            let opened = open_nat(*host_ip, uplink.as_deref(), queues, derived)?;
            set_mtu(opened.tap.name(), spec.mtu)?;
            Ok(opened)
        }
        BackendSpec::TcRedirect { nic } => {
            let opened = open_tc(nic, queues, derived)?;
            set_mtu(opened.tap.name(), spec.mtu)?;
            Ok(opened)
        }
    }
}

/// The first queue of a tap and the others.
fn split(mut queues: Vec<Tap>) -> (Tap, Vec<Tap>) {
    let first = queues.remove(0);
    (first, queues)
}

/// A created tap of `queues` queues, marked as netvmm's.
fn created_tap(
    host_ip: Option<crate::spec::Ipv4Cidr>,
    queues: usize,
) -> Result<(Tap, Vec<Tap>), BackendError> {
    let (tap, more) = split(Tap::open_mq(None, host_ip, queues)?);
    netlink::set_alias(tap.name(), &owner_alias())?;
    Ok((tap, more))
}

fn open_nat(
    host_ip: Option<crate::spec::Ipv4Cidr>,
    uplink: Option<&str>,
    queues: usize,
    derived: impl Fn(&str) -> MacAddr,
) -> Result<Opened, BackendError> {
    let ((tap, more_queues), nat) = crate::nat::setup(uplink, host_ip, |host| {
        let taps = created_tap(Some(host), queues)?;
        let name = taps.0.name().to_string();
        Ok((taps, name))
    })?;
    let (host, guest) = (nat.host, crate::nat::guest_addr(nat.host));
    let mac = derived(tap.name());
    let description = format!(
        "tap {} behind NAT out of {}: host {}/{}, guest netvmm.ip={}/{} netvmm.gw={} \
         (tap, nftables table and forwarding undone at exit)",
        tap.name(),
        nat.mark.uplink,
        host.addr,
        host.prefix,
        guest.addr,
        guest.prefix,
        host.addr
    );
    Ok(Opened {
        nat: Some(nat),
        more_queues,
        ..Opened::plain(tap, mac, description)
    })
}

fn open_tc(
    nic: &str,
    queues: usize,
    derived: impl Fn(&str) -> MacAddr,
) -> Result<Opened, BackendError> {
    let (tap, more_queues) = created_tap(None, queues)?;
    let index = netlink::link_index(tap.name())?.ok_or_else(|| NetlinkError::NoSuchDevice {
        action: "wire the new tap".into(),
        name: tap.name().into(),
    })?;
    let wiring = crate::tc_redirect::wire(nic, index)?;
    let mac = derived(tap.name());
    let description = format!(
        "tap {} wired to {} by tc ({} filters, mirred redirect both ways; the host's stack \
         does not see the guest's frames; tap and {}'s ingress qdisc removed at exit)",
        tap.name(),
        wiring.nic,
        wiring.filter.name(),
        wiring.nic
    );
    Ok(Opened {
        tc: Some(wiring),
        more_queues,
        ..Opened::plain(tap, mac, description)
    })
}

/// The state of the tap named `name`, if it exists, before netvmm touches it.
fn record_given(name: Option<&str>) -> Result<Option<GivenLink>, BackendError> {
    Ok(match name {
        Some(n) => GivenLink::record(n)?,
        None => None,
    })
}

/// `given`, unless netvmm created the tap after all, with the tap's device state as
/// netvmm found it on attaching.
fn keep_tun(given: Option<GivenLink>, tap: &Tap) -> Result<Option<GivenLink>, BackendError> {
    let Some(mut given) = given.filter(|_| !tap.created()) else {
        return Ok(None);
    };
    given.keep_tun(tap.tun_state()?);
    Ok(Some(given))
}

/// Sets the MTU of the host side netvmm made or was given to the guest's (a given one is
/// put back as found at exit: [`GivenLink`] recorded it).
fn set_mtu(name: &str, mtu: Option<u16>) -> Result<(), BackendError> {
    match mtu {
        Some(m) => Ok(netlink::set_mtu(name, u32::from(m))?),
        None => Ok(()),
    }
}

/// An inherited fd is left as found, MTU included: a line if it differs from the guest's.
fn inherited_mtu_note(name: &str, mtu: Option<u16>) -> Result<Vec<String>, BackendError> {
    let Some(want) = mtu else {
        return Ok(Vec::new());
    };
    let have = netlink::link_info(name)?.and_then(|l| l.mtu);
    Ok(match have {
        Some(h) if h != u32::from(want) => vec![format!(
            "{name} has MTU {h}, not the guest's {want}: an inherited interface is left as found \
             (ip link set dev {name} mtu {want} to match)"
        )],
        _ => Vec::new(),
    })
}

/// One line if a jumbo MTU on bridge port `tap` would not get across `bridge`: every other
/// port (and the bridge itself, for the host's own traffic) must be at that MTU too.
fn bridge_mtu_note(bridge: &str, bridge_index: u32, tap: &str, mtu: Option<u16>) -> Option<String> {
    let want = u32::from(mtu?);
    let links = netlink::list_links().ok()?;
    let short: Vec<String> = links
        .iter()
        .filter(|l| l.name != tap && (l.master == Some(bridge_index) || l.index == bridge_index))
        .filter_map(|l| Some((l, l.mtu?)))
        .filter(|(_, m)| *m < want)
        .map(|(l, m)| format!("{} ({m})", l.name))
        .collect();
    (!short.is_empty()).then(|| {
        format!(
            "bridge {bridge}: {} below the guest's MTU {want}: larger frames will not cross the \
             bridge (jumbo frames need the bridge and every port at {want})",
            short.join(", ")
        )
    })
}

fn check_bridge(bridge: &str) -> Result<u32, BackendError> {
    let existing = || netlink::bridges().unwrap_or_default();
    match netlink::link_info(bridge)? {
        None => Err(BackendError::NoBridge {
            name: bridge.into(),
            existing: existing(),
        }),
        Some(l) if !l.is_bridge() => Err(BackendError::NotABridge {
            name: bridge.into(),
            kind: l.kind.unwrap_or_else(|| "plain device".into()),
            existing: existing(),
        }),
        Some(l) => Ok(l.index),
    }
}

fn open_bridge_port(
    spec: &NetSpec,
    bridge: &str,
    tap_name: Option<&str>,
    queues: usize,
    derived: impl Fn(&str) -> MacAddr,
) -> Result<Opened, BackendError> {
    let bridge_index = check_bridge(bridge)?;
    // From here on, a failure puts a given tap back as it was.
    let given = record_given(tap_name)?;
    let (tap, more_queues) = split(Tap::open_mq(tap_name, None, queues)?);
    let given = keep_tun(given, &tap)?;
    if tap.created() {
        let _ = netlink::set_alias(tap.name(), &owner_alias());
    }
    set_mtu(tap.name(), spec.mtu)?;
    netlink::set_master(tap.name(), bridge_index).map_err(with_hint)?;
    netlink::set_up(tap.name()).map_err(with_hint)?;
    let notes = bridge_mtu_note(bridge, bridge_index, tap.name(), spec.mtu)
        .into_iter()
        .collect();
    let description = format!(
        "tap {} on bridge {bridge}{}",
        tap.name(),
        if tap.created() {
            " (tap created, removed at exit; the bridge stays)"
        } else {
            " (existing tap, put back as found at exit)"
        }
    );
    let port = Port {
        tap: tap.name().to_string(),
        bridge: bridge.to_string(),
    };
    let mac = derived(tap.name());
    Ok(Opened {
        bridge_port: Some(port),
        given,
        notes,
        more_queues,
        ..Opened::plain(tap, mac, description)
    })
}

fn open_macvtap(
    spec: &NetSpec,
    parent: &str,
    mode: MacvtapMode,
    index: usize,
    queues: usize,
) -> Result<Opened, BackendError> {
    let parent_info =
        netlink::link_info(parent)?.ok_or_else(|| BackendError::NoParent(parent.into()))?;
    let mac = if mode == MacvtapMode::Passthru {
        if spec.mac.is_some() {
            return Err(BackendError::PassthruMac {
                name: parent.to_string(),
            });
        }
        None
    } else {
        Some(
            spec.mac
                // Every sibling on one parent needs its own address: the pid tells
                // concurrent guests apart.
                .unwrap_or_else(|| {
                    MacAddr::derived(&format!("{index}:macvtap:{parent}:{}", std::process::id()))
                }),
        )
    };
    let created = netlink::create_macvtap(MACVTAP_TEMPLATE, parent_info.index, mode, mac)?;
    let owned = OwnedLink {
        name: created.name.clone(),
        index: created.index,
    };
    netlink::set_alias(created.index, &owner_alias())?;
    if let Some(m) = spec.mtu {
        match parent_info.mtu {
            Some(p) if p < u32::from(m) => {
                return Err(BackendError::MtuAboveParent {
                    name: created.name.clone(),
                    parent: parent.into(),
                    parent_mtu: p,
                    mtu: m,
                })
            }
            _ => netlink::set_mtu(created.index, u32::from(m))?,
        }
    }
    netlink::set_up(created.index)?;
    let mac = match mac {
        Some(m) => m,
        // passthru: the macvtap took the parent's address.
        None => netlink::link_info(created.index)?
            .and_then(|l| l.mac)
            .or(parent_info.mac)
            .unwrap_or_else(|| MacAddr::derived(&created.name)),
    };
    // Each open of a macvtap's character device is one more queue of it.
    let fd = open_tap_device(&created.name, created.index)?;
    let tap = Tap::from_owned_fd(fd)?;
    let more_queues = (1..queues)
        .map(|_| {
            Ok(Tap::from_owned_fd(open_tap_device(
                &created.name,
                created.index,
            )?)?)
        })
        .collect::<Result<Vec<_>, BackendError>>()?;
    let description = format!(
        "macvtap {} on {parent} (mode {mode}, created, removed at exit)",
        created.name
    );
    Ok(Opened {
        owned: Some(owned),
        more_queues,
        ..Opened::plain(tap, mac, description)
    })
}

/// Opens the macvtap's character device. devtmpfs names nodes `/dev/tap<ifindex>`, but
/// interface indexes repeat across network namespaces, so `/dev/tapN` may belong to another
/// namespace's macvtap: the node is used only when its device number matches the one sysfs
/// gives for ours; otherwise netvmm makes a private node of its own and removes it again
/// once open (see `private_fs::open_private_node`).
fn open_tap_device(name: &str, index: u32) -> Result<OwnedFd, BackendError> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let path = format!("/dev/tap{index}");
    let err = |path: &str, source| BackendError::OpenTapDev {
        path: path.to_string(),
        name: name.to_string(),
        source,
    };
    let sysfs = format!("/sys/class/net/{name}/macvtap/tap{index}/dev");
    let wanted = std::fs::read_to_string(&sysfs).ok().and_then(|dev| {
        let (major, minor) = dev.trim().split_once(':')?;
        Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
    });
    let node_ok = std::fs::metadata(&path)
        .ok()
        .filter(|m| m.file_type().is_char_device())
        .map(|m| m.rdev());
    let open_path = match (wanted, node_ok) {
        (Some(w), Some(have)) if w == have => path.clone(),
        (None, Some(_)) => path.clone(),
        (Some(w), _) => {
            // In a fresh private directory: a name of our choosing in the shared $TMPDIR
            // may already be someone else's file or symlink.
            let dir =
                PrivateDir::new("netvmm-tap-").map_err(|e| err("$TMPDIR/netvmm-tap-XXXXXX", e))?;
            let p = dir.path().join(format!("tap{index}"));
            return open_private_node(&p, w, libc::O_RDWR | libc::O_NONBLOCK)
                .map_err(|e| err(&p.display().to_string(), e));
        }
        (None, None) => {
            return Err(err(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no device node, and {sysfs} cannot tell its number"),
                ),
            ))
        }
    };
    let c = std::ffi::CString::new(open_path.clone())
        .map_err(|e| err(&open_path, std::io::Error::other(e)))?;
    // SAFETY: opening a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(err(&open_path, std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
