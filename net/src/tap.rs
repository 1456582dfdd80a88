//! The tap backend: /dev/net/tun with IFF_VNET_HDR, or an inherited tap/macvtap fd.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use devices::virtio::net::{NetBackend, Offloads};

use crate::iface;
use crate::spec::Ipv4Cidr;

// <linux/if_tun.h>
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;
/// _IOW('T', 217, int): attaches or detaches this queue of a multi-queue tap (or enables
/// or disables a macvtap queue).
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUNGETVNETHDRSZ: libc::c_ulong = 0x8004_54d7;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;

/// Generated tap names: the kernel fills in `%d`; the prefix marks netvmm's own.
pub const GENERATED_TAP_NAME: &str = "nvtap%d";

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun for {name}: {source}")]
    OpenTun { name: String, source: io::Error },
    #[error("cannot create or attach tap {name}: {source}")]
    SetIff { name: String, source: io::Error },
    #[error(
        "cannot open queue {queue} of tap {name}: {source} (queues= above 1 needs a tap made \
         with multi_queue: ip tuntap add ... multi_queue vnet_hdr)"
    )]
    Queue {
        name: String,
        queue: usize,
        source: io::Error,
    },
    #[error(
        "tap={name}: {name} exists and is not a tap{}; name an existing tap, or a free name \
         for netvmm to create one",
        .kind.as_ref().map_or(String::new(), |k| format!(" (it is a {k})"))
    )]
    NotATapName { name: String, kind: Option<String> },
    #[error("cannot give tap {name} the address {addr}/{prefix}: {source}")]
    Address {
        name: String,
        addr: std::net::Ipv4Addr,
        prefix: u8,
        source: io::Error,
    },
    #[error("cannot read the vnet header size and offloads of tap {name}: {source}")]
    TunState { name: String, source: io::Error },
    #[error("fd {fd} is not a tap: {reason}")]
    NotATap { fd: RawFd, reason: String },
    #[error(
        "fd {fd} is a tap without IFF_VNET_HDR; open it with vnet_hdr (ip tuntap add ... vnet_hdr)"
    )]
    NoVnetHdr { fd: RawFd },
}

/// An open tap (or macvtap) queue, non-blocking.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    /// Whether netvmm created the interface: it then disappears with the last fd, since
    /// netvmm never makes it persistent.
    created: bool,
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; flags are read before being changed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn name_from(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Tap {
    /// Creates a tap (generated name when `name` is None) or attaches to an existing one,
    /// then optionally gives it `host_ip` and brings it up.
    pub fn open(name: Option<&str>, host_ip: Option<Ipv4Cidr>) -> Result<Self, TapError> {
        Self::open_mq(name, host_ip, 1).map(|mut queues| queues.remove(0))
    }

    /// Like [`Tap::open`] with `queues` queues (1 to 8): above 1 the tap is created (or
    /// attached) with IFF_MULTI_QUEUE and TUNSETIFF is repeated with its name for each
    /// further queue; the kernel spreads received flows over them.
    pub fn open_mq(
        name: Option<&str>,
        host_ip: Option<Ipv4Cidr>,
        queues: usize,
    ) -> Result<Vec<Self>, TapError> {
        let multi = queues > 1;
        let first = Self::open_one(name, host_ip, multi)?;
        let mut all = vec![first];
        for queue in 1..queues {
            let name = all[0].name.clone();
            let q = Self::open_one(Some(&name), None, true).map_err(|e| match e {
                TapError::SetIff { source, .. }
                | TapError::OpenTun { source, .. }
                | TapError::Queue { source, .. } => TapError::Queue {
                    name: name.clone(),
                    queue,
                    source,
                },
                other => other,
            })?;
            all.push(Tap {
                created: false,
                ..q
            });
        }
        Ok(all)
    }

    fn open_one(
        name: Option<&str>,
        host_ip: Option<Ipv4Cidr>,
        multi: bool,
    ) -> Result<Self, TapError> {
        let wanted = name.unwrap_or(GENERATED_TAP_NAME);
        let existed = name.is_some_and(|n| iface::index_of(n).is_some());
        let path = c"/dev/net/tun";
        // SAFETY: opening a constant, NUL-terminated path; the result is checked.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(TapError::OpenTun {
                name: wanted.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a new descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let set_err = |source| TapError::SetIff {
            name: wanted.to_string(),
            source,
        };
        let mut req = iface::ifreq_for(wanted).map_err(set_err)?;
        req.ifr_ifru.ifru_flags =
            IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | if multi { IFF_MULTI_QUEUE } else { 0 };
        // SAFETY: TUNSETIFF reads and updates the ifreq we pass, which lives across the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req as *mut libc::ifreq) } < 0
        {
            let e = io::Error::last_os_error();
            // TUNSETIFF on an interface that is no tap (lo, a bridge, a tun) says only EINVAL.
            let kind = existed
                .then(|| crate::netlink::link_info(wanted).ok().flatten())
                .flatten()
                .filter(|l| l.kind.as_deref() != Some("tun"))
                .map(|l| l.kind);
            if let (true, true, Some(libc::EINVAL)) = (multi, existed, e.raw_os_error()) {
                // A tap made without multi_queue answers a multi-queue attach with EINVAL.
                if kind.is_none() {
                    return Err(TapError::Queue {
                        name: wanted.to_string(),
                        queue: 0,
                        source: e,
                    });
                }
            }
            if let (Some(kind), Some(libc::EINVAL)) = (kind, e.raw_os_error()) {
                return Err(TapError::NotATapName {
                    name: wanted.to_string(),
                    kind,
                });
            }
            return Err(set_err(e));
        }
        let tap = Tap {
            fd,
            name: name_from(&req),
            created: !existed,
        };
        if let Some(cidr) = host_ip {
            iface::set_ipv4_and_up(&tap.name, cidr).map_err(|source| TapError::Address {
                name: tap.name.clone(),
                addr: cidr.addr,
                prefix: cidr.prefix,
                source,
            })?;
        }
        Ok(tap)
    }

    /// Takes over an inherited fd that must be a tap or macvtap opened with IFF_VNET_HDR.
    pub fn from_fd(fd: RawFd) -> Result<Self, TapError> {
        let name = Self::check(fd)?;
        Ok(Tap {
            // SAFETY: the caller handed us this inherited descriptor to own from now on.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            name,
            created: false,
        })
    }

    /// Checks that `fd` is a tap with IFF_VNET_HDR, makes it non-blocking, returns its name.
    fn check(fd: RawFd) -> Result<String, TapError> {
        // SAFETY: F_GETFD only checks that the descriptor is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::NotATap {
                fd,
                reason: format!("not an open descriptor ({})", io::Error::last_os_error()),
            });
        }
        // SAFETY: ifreq is plain data, zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes into `req`; on a non-tun fd it fails with an error.
        if unsafe { libc::ioctl(fd, TUNGETIFF as _, &mut req as *mut libc::ifreq) } < 0 {
            return Err(TapError::NotATap {
                fd,
                reason: io::Error::last_os_error().to_string(),
            });
        }
        // SAFETY: TUNGETIFF filled the flags member.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        if flags & IFF_TAP == 0 {
            return Err(TapError::NotATap {
                fd,
                reason: "it is a tun (layer 3) device".into(),
            });
        }
        if flags & IFF_VNET_HDR == 0 {
            return Err(TapError::NoVnetHdr { fd });
        }
        set_nonblocking(fd).map_err(|e| TapError::NotATap {
            fd,
            reason: e.to_string(),
        })?;
        Ok(name_from(&req))
    }

    /// Like [`Tap::from_fd`], for a descriptor this process opened itself (a macvtap's
    /// /dev/tapN): closed again if it is not a usable tap.
    pub fn from_owned_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let name = Self::check(fd.as_raw_fd())?;
        Ok(Tap {
            fd,
            name,
            created: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn created(&self) -> bool {
        self.created
    }

    /// Attaches (`true`) or detaches this queue of a multi-queue tap, or enables or
    /// disables a macvtap queue (TUNSETQUEUE): a detached queue gets no frames, so the
    /// kernel steers flows only to the queues the guest uses.
    pub fn set_queue_attached(&self, attached: bool) -> io::Result<()> {
        // SAFETY: ifreq is plain data, zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_ifru.ifru_flags = if attached {
            IFF_ATTACH_QUEUE
        } else {
            IFF_DETACH_QUEUE
        };
        // SAFETY: TUNSETQUEUE reads the flags of the ifreq we pass, live across the call.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETQUEUE as _,
                &mut req as *mut libc::ifreq,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn ioctl_int(&self, request: libc::c_ulong, value: libc::c_uint) -> io::Result<()> {
        // SAFETY: these tun ioctls take an integer argument (by value or by pointer to
        // int, per request); both point at valid memory for the call's duration.
        let rc = match request {
            TUNSETVNETHDRSZ => {
                let v = value as libc::c_int;
                unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, &v as *const libc::c_int) }
            }
            _ => unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, value as libc::c_ulong) },
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// What netvmm changes on a tap it attaches to besides its link state: the vnet header
/// size and the offloads (both belong to the device, so they outlive netvmm's fd), read
/// when netvmm attached. [`TunState::restore`] puts them back through its own duplicate of
/// the queue fd (the device keeps netvmm's until the end).
#[derive(Debug)]
pub struct TunState {
    fd: OwnedFd,
    name: String,
    vnet_hdr_sz: libc::c_int,
    /// TUN_F_* bits, as the device's active features stood.
    offloads: libc::c_uint,
}

impl Tap {
    /// Reads the device state a guest's driver will change; on an existing tap, call it
    /// right after [`Tap::open`], before the device touches the tap.
    pub fn tun_state(&self) -> Result<TunState, TapError> {
        let err = |source| TapError::TunState {
            name: self.name.clone(),
            source,
        };
        let fd = self.fd.try_clone().map_err(err)?;
        let mut vnet_hdr_sz: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one int to the pointer, which is live and ours.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETVNETHDRSZ as _, &mut vnet_hdr_sz) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(TunState {
            fd,
            name: self.name.clone(),
            vnet_hdr_sz,
            offloads: active_offloads(&self.name).map_err(err)?,
        })
    }
}

impl TunState {
    /// Sets the vnet header size and offloads back to what they were.
    pub fn restore(&self) -> io::Result<()> {
        let v = self.vnet_hdr_sz;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, live for the call.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETVNETHDRSZ as _, &v) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD as _,
                self.offloads as libc::c_ulong,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn vnet_hdr_sz(&self) -> libc::c_int {
        self.vnet_hdr_sz
    }

    /// The offloads as TUN_F_* bits.
    pub fn offloads(&self) -> libc::c_uint {
        self.offloads
    }
}

// <linux/ethtool.h>: the tun offloads show as netdev features, which only the ethtool
// feature-string set names portably (feature bit numbers change between kernels).
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;
/// The feature names of the TUN_F_* offloads (drivers/net/tun.c, tun_set_offload).
const TUN_OFFLOAD_FEATURES: [(&str, libc::c_uint); 4] = [
    ("tx-checksum-ip-generic", TUN_F_CSUM),
    ("tx-tcp-segmentation", TUN_F_TSO4),
    ("tx-tcp6-segmentation", TUN_F_TSO6),
    ("tx-tcp-ecn-segmentation", TUN_F_TSO_ECN),
];
const USO_FEATURE: &str = "tx-udp-segmentation";

/// One SIOCETHTOOL request on `name` with `buf` (which starts with the command word).
fn ethtool(name: &str, buf: &mut [u32]) -> io::Result<()> {
    // SAFETY: plain socket(2); the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = iface::ifreq_for(name)?;
    req.ifr_ifru.ifru_data = buf.as_mut_ptr().cast();
    // SAFETY: `req` names the interface and points at `buf`, sized by the caller for the
    // command's reply, both live across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The TUN_F_* bits of `name`'s active features.
fn active_offloads(name: &str) -> io::Result<libc::c_uint> {
    // struct ethtool_sset_info: cmd, reserved, u64 sset_mask, then one u32 per set.
    let mut info = [ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0, 0];
    ethtool(name, &mut info)?;
    let count = info[4] as usize;
    // struct ethtool_gstrings: cmd, string_set, len, then len names of 32 bytes.
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count as u32]);
    ethtool(name, &mut strings)?;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let names: Vec<&[u8]> = bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|c| c.split(|b| *b == 0).next().unwrap_or_default())
        .collect();
    // struct ethtool_gfeatures: cmd, size, then blocks of available, requested, active,
    // never_changed.
    let blocks = count.div_ceil(32);
    let mut features = vec![0u32; 2 + blocks * 4];
    features[..2].copy_from_slice(&[ETHTOOL_GFEATURES, blocks as u32]);
    ethtool(name, &mut features)?;
    let active = |wanted: &str| {
        names
            .iter()
            .position(|n| *n == wanted.as_bytes())
            .is_some_and(|bit| {
                features
                    .get(2 + (bit / 32) * 4 + 2)
                    .is_some_and(|word| word & (1 << (bit % 32)) != 0)
            })
    };
    let mut flags = TUN_OFFLOAD_FEATURES
        .iter()
        .filter(|(feature, _)| active(feature))
        .fold(0, |acc, (_, flag)| acc | flag);
    if active(USO_FEATURE) {
        flags |= TUN_F_USO4 | TUN_F_USO6;
    }
    // What TUNSETOFFLOAD takes: segmentation only with checksums, ECN only with TSO.
    if flags & TUN_F_CSUM == 0 {
        flags = 0;
    }
    if flags & (TUN_F_TSO4 | TUN_F_TSO6) == 0 {
        flags &= !TUN_F_TSO_ECN;
    }
    Ok(flags)
}

impl std::os::fd::AsFd for Tap {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A read/write-style syscall result as io::Result.
fn byte_count(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        byte_count(unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    unsafe fn recv_iovecs(&mut self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let (fd, n) = (self.fd.as_raw_fd(), iovs.len() as libc::c_int);
        // SAFETY: the caller guarantees every iovec is writable for its length.
        byte_count(unsafe { libc::readv(fd, iovs.as_ptr(), n) })
    }

    unsafe fn send(&mut self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let (fd, n) = (self.fd.as_raw_fd(), iovs.len() as libc::c_int);
        // SAFETY: the caller guarantees every iovec is readable for its length.
        byte_count(unsafe { libc::writev(fd, iovs.as_ptr(), n) })
    }

    fn set_vnet_hdr_len(&mut self, len: usize) -> io::Result<()> {
        self.ioctl_int(TUNSETVNETHDRSZ, len as libc::c_uint)
    }

    fn set_offloads(&mut self, o: Offloads) -> io::Result<()> {
        let mut flags = 0;
        if o.csum {
            flags |= TUN_F_CSUM;
        }
        if o.tso4 {
            flags |= TUN_F_TSO4;
        }
        if o.tso6 {
            flags |= TUN_F_TSO6;
        }
        self.ioctl_int(TUNSETOFFLOAD, flags)
    }

    fn set_queue_enabled(&mut self, enabled: bool) -> io::Result<()> {
        self.set_queue_attached(enabled)
    }
}

#[cfg(test)]
mod tests;
