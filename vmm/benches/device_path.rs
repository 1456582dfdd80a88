//! The virtio-net device path alone, against the raw fd it sits on: frames/s and Gbit/s of
//! TX (guest ring -> backend writev) and RX (backend read -> guest buffers) through a real
//! tap, next to plain writev/read on the same tap fd in the same run. Prints numbers; asserts
//! nothing. Runs in a private network namespace (no VM, no lab needed).
//!
//! A second baseline, raw@ring, does the raw writev or readv on the very guest buffers the
//! device's ring points at: for TX the ring's page-aligned frames, for RX the 4 KiB buffers
//! a frame scatters over (a 64 KiB frame over 17 of them). Its ratio is what the device
//! adds to the kernel's own work. Where a buffer sits changes the kernel's copy: on this
//! project's AMD EPYC host a 64 KiB readv into page-aligned 4 KiB buffers ran at 38 k
//! frames/s, and into the same buffers 16 bytes further on at 202 k (a baseline in a Vec,
//! 16 bytes off by malloc's header, once made the device look 7x slower than raw).
//!
//! RX1 is RX with one frame per wake-up of the device (frames that trickle in, not a burst):
//! each wake-up also pays the read that finds the backend empty, which raw does not.
//!
//! `cargo bench -p vmm --bench device_path` (NETVMM_BENCH_SECONDS per figure, default 1,
//! in 5 slices that alternate with the baselines'; NETVMM_BENCH_ONLY=tap,RX,64 KiB picks
//! cases).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use devices::virtio::net::{
    Net, NetBackend, F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_HOST_TSO4, F_MRG_RXBUF, VNET_HDR_LEN,
};
use devices::virtio::{VirtioDevice, Wake, VIRTIO_F_VERSION_1};
use net::Tap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const QSIZE: u16 = 256;
const RX_BUF: u32 = 4096;
/// Where the receive ring's buffers start in guest memory (page-aligned, as is each buffer).
const RX_BUFS: u64 = 0x10_0000;
/// Guest memory of the RX cases.
const RX_MEM: usize = 64 << 20;

/// The RX cases' guest memory: the device's ring and raw@ring's buffers sit at the same
/// addresses of one such mapping each.
fn rx_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RX_MEM)]).unwrap()
}
const DESC_F_WRITE: u16 = 2;
const TAP: &str = "nvbench0";
/// Largest MTU a tap takes (65535 minus its Ethernet header): a 64 KiB frame fits.
const MTU: usize = 65521;
const BIG_FRAME: usize = MTU + 14;

/// A split ring laid out by hand in guest memory: descriptor i always points at buffer i.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
}

impl Ring {
    fn new(
        mem: &GuestMemoryMmap,
        base: u64,
        buf_base: u64,
        buf_len: u32,
        flags: u16,
    ) -> (Self, Queue) {
        let desc = base;
        let avail = desc + 16 * u64::from(QSIZE);
        let used = (avail + 6 + 2 * u64::from(QSIZE) + 3) & !3;
        for i in 0..u64::from(QSIZE) {
            let d = desc + 16 * i;
            mem.write_obj(buf_base + i * u64::from(buf_len), GuestAddress(d))
                .unwrap();
            mem.write_obj(buf_len, GuestAddress(d + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            mem.write_obj(0u16, GuestAddress(d + 14)).unwrap();
        }
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        q.set_ready(true);
        assert!(q.is_valid(mem));
        (
            Ring {
                desc,
                avail,
                used,
                avail_idx: 0,
            },
            q,
        )
    }

    /// Refills the ring: every descriptor the device has returned is offered again (each
    /// descriptor is its own chain, and ring slot s always carries descriptor s % size).
    fn refill(&mut self, mem: &GuestMemoryMmap, len: u32) -> u16 {
        let used_idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let outstanding = self.avail_idx.wrapping_sub(used_idx);
        let n = QSIZE - outstanding;
        for k in 0..n {
            let slot = self.avail_idx.wrapping_add(k) % QSIZE;
            mem.write_obj(slot, GuestAddress(self.avail + 4 + 2 * u64::from(slot)))
                .unwrap();
            mem.write_obj(len, GuestAddress(self.desc + 16 * u64::from(slot) + 8))
                .unwrap();
        }
        self.avail_idx = self.avail_idx.wrapping_add(n);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        n
    }
}

/// Ethernet frame of `len` bytes (after the vnet header) to a MAC that is not the host's,
/// so the host stack drops it early on both paths alike.
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN + len];
    let eth = &mut f[VNET_HDR_LEN..];
    eth[..6].copy_from_slice(&[0x52, 0x54, 0, 0xee, 0xee, 0xee]);
    eth[6..12].copy_from_slice(&[0x52, 0x54, 0, 0x11, 0x11, 0x11]);
    eth[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f
}

#[derive(Default)]
struct Figure {
    frames: u64,
    bytes: u64,
    elapsed: Duration,
    /// Frames the tap refused (its backlog was full): not counted in `frames`.
    refused: u64,
}

impl Figure {
    fn fps(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64()
    }
    fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

impl std::ops::AddAssign for Figure {
    fn add_assign(&mut self, o: Figure) {
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.elapsed += o.elapsed;
        self.refused += o.refused;
    }
}

/// Each figure is measured in this many slices, the device's and the baselines' taking
/// turns: the host's speed drifts by more than the differences measured (one case's ratio
/// ranged 0.75-0.94 over five back-to-back runs when each figure was one stretch).
const SLICES: u32 = 5;

/// The time one slice of one figure runs: NETVMM_BENCH_SECONDS (default 1) per figure.
fn budget() -> Duration {
    static SLICE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SLICE.get_or_init(|| {
        let s = std::env::var("NETVMM_BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(1.0);
        Duration::from_secs_f64(s) / SLICES
    })
}

/// One wake-up of the device and, as the transport does when the wake-up's budget cut the
/// work short, the queue wake-ups that finish it.
fn serve(net: &mut Net<Tap>, wake: Wake, queues: &mut [Queue]) {
    let mut unfinished = net.process(wake, queues).unfinished;
    while unfinished != 0 {
        let queue = unfinished.trailing_zeros();
        unfinished &= !(1 << queue);
        unfinished |= net.process(Wake::Queue(queue as u16), queues).unfinished;
    }
}

/// Where the transmit ring's frames start in guest memory; frame i is at
/// `TX_BUFS + i * tx_stride(len)`, page-aligned like a guest's skb pages often are.
const TX_BUFS: u64 = 1 << 20;

fn tx_stride(len: usize) -> u64 {
    (VNET_HDR_LEN + len).next_multiple_of(4096) as u64
}

/// The TX cases' guest memory with a ring's worth of frames of `len` bytes in place: the
/// device's ring and raw@ring's writes use the same addresses of one such mapping each.
fn tx_memory(len: usize) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 128 << 20)]).unwrap();
    let f = frame(len);
    for i in 0..u64::from(QSIZE) {
        mem.write_slice(&f, GuestAddress(TX_BUFS + i * tx_stride(len)))
            .unwrap();
    }
    mem
}

fn tx_device(tap: Tap, len: usize) -> Figure {
    let mem = tx_memory(len);
    let f = frame(len);
    let stride = tx_stride(len);
    let (_rxr, rxq) = Ring::new(&mem, 0x1000, RX_BUFS, RX_BUF, DESC_F_WRITE);
    let (mut txr, txq) = Ring::new(&mem, 0x8000, TX_BUFS, stride as u32, 0);
    let mut net = Net::new(tap, [0x52, 0x54, 0, 0x11, 0x11, 0x11]);
    net.activate(VIRTIO_F_VERSION_1 | F_CSUM | F_HOST_TSO4, &mem)
        .unwrap();
    let mut queues = [rxq, txq];
    let (mut frames, mut elapsed) = (0u64, Duration::ZERO);
    while elapsed < budget() {
        txr.refill(&mem, f.len() as u32);
        let t = Instant::now();
        serve(&mut net, Wake::Queue(1), &mut queues);
        elapsed += t.elapsed();
        frames += u64::from(QSIZE);
    }
    let st = net.stats();
    assert_eq!(
        st.tx_frames + st.tx_backend_errors,
        frames,
        "every frame was offered to the tap: {st:?}"
    );
    Figure {
        frames: st.tx_frames,
        bytes: st.tx_frames * len as u64,
        elapsed,
        refused: st.tx_backend_errors,
    }
}

fn tx_raw(tap: &mut Tap, len: usize) -> Figure {
    // As many distinct buffers as the ring has, like the guest's: the same cache footprint.
    let bufs: Vec<Vec<u8>> = (0..QSIZE).map(|_| frame(len)).collect();
    let iovs: Vec<[libc::iovec; 1]> = bufs
        .iter()
        .map(|f| {
            [libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            }]
        })
        .collect();
    tx_raw_from(tap, &iovs)
}

/// Raw writev of the very frames the device's ring points at: where a buffer sits changes
/// the kernel's copy (see the module's doc), so raw@ring must not differ from the device in
/// that. What the device costs beyond this is its own ring work.
fn tx_raw_at_ring(tap: &mut Tap, len: usize) -> Figure {
    let mem = tx_memory(len);
    let stride = tx_stride(len) as usize;
    let ring = mem
        .get_slice(GuestAddress(TX_BUFS), usize::from(QSIZE) * stride)
        .unwrap();
    let base = ring.ptr_guard_mut().as_ptr();
    let iovs: Vec<[libc::iovec; 1]> = (0..usize::from(QSIZE))
        .map(|i| {
            [libc::iovec {
                // SAFETY: the offset is below the ring's length.
                iov_base: unsafe { base.add(i * stride) }.cast(),
                iov_len: VNET_HDR_LEN + len,
            }]
        })
        .collect();
    let figure = tx_raw_from(tap, &iovs);
    drop(mem);
    figure
}

/// Writes each of `iovs` (one frame each) in turn until the time budget is spent.
fn tx_raw_from(tap: &mut Tap, iovs: &[[libc::iovec; 1]]) -> Figure {
    let len = iovs.first().map_or(0, |iov| iov[0].iov_len - VNET_HDR_LEN);
    let (mut frames, mut refused, mut elapsed) = (0u64, 0u64, Duration::ZERO);
    let mut last_err = None;
    while elapsed < budget() {
        let t = Instant::now();
        for iov in iovs {
            // SAFETY: the caller's buffers are alive and readable for their length.
            match unsafe { tap.send(iov) } {
                Ok(_) => frames += 1,
                Err(e) => {
                    refused += 1;
                    last_err = Some(e);
                }
            }
        }
        elapsed += t.elapsed();
    }
    if let Some(e) = last_err {
        eprintln!("(raw TX: the tap refused {refused} frames, last error: {e})");
    }
    Figure {
        frames,
        bytes: frames * len as u64,
        elapsed,
        refused,
    }
}

/// Sends `count` frames of `len` bytes out of the tap interface (so they queue on its fd)
/// through a packet socket bound to it.
struct Injector {
    fd: i32,
    addr: libc::sockaddr_ll,
    frame: Vec<u8>,
}

impl Injector {
    /// Frames sent on `ifindex` addressed to `dst` (default: the bench's guest MAC).
    fn to(ifindex: u32, len: usize, dst: Option<[u8; 6]>) -> Self {
        // SAFETY: plain socket(2); checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: sockaddr_ll is plain data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        // A macvtap does not orphan the frames it queues (a tap does): they stay charged to
        // this socket until the device reads them, which is after the round's injection. A
        // send buffer that holds a whole round keeps sendto from waiting on itself.
        let sndbuf: libc::c_int = 64 << 20;
        // SAFETY: setsockopt with a pointer to a live c_int and its size; checked.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&sndbuf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(r, 0, "SO_SNDBUFFORCE: {}", std::io::Error::last_os_error());
        let mut f = frame(len);
        if let Some(d) = dst {
            f[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&d);
        }
        Injector {
            fd,
            addr,
            frame: f[VNET_HDR_LEN..].to_vec(),
        }
    }

    fn inject(&self, count: usize) {
        for _ in 0..count {
            // SAFETY: frame and address are valid for the call.
            let n = unsafe {
                libc::sendto(
                    self.fd,
                    self.frame.as_ptr().cast(),
                    self.frame.len(),
                    // Never wait: a round with fewer frames is measured as such.
                    libc::MSG_DONTWAIT,
                    &self.addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n <= 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "inject: {e}");
                break;
            }
        }
    }
}

/// How many of the ring's RX_BUF-sized buffers a frame of `len` bytes fills.
fn buffers_per_frame(len: usize) -> usize {
    (VNET_HDR_LEN + len).div_ceil(RX_BUF as usize)
}

fn frames_per_round(len: usize) -> usize {
    (usize::from(QSIZE) / buffers_per_frame(len)).min(200)
}

fn rx_device(tap: Tap, via: (u32, Option<[u8; 6]>), len: usize, per_round: usize) -> Figure {
    let mem = rx_memory();
    let (mut rxr, rxq) = Ring::new(&mem, 0x1000, RX_BUFS, RX_BUF, DESC_F_WRITE);
    let (_txr, txq) = Ring::new(&mem, 0x8000, 0x20_0000, 2048, 0);
    let mut net = Net::new(tap, [0x52, 0x54, 0, 0x11, 0x11, 0x11]);
    net.activate(
        VIRTIO_F_VERSION_1 | F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4,
        &mem,
    )
    .unwrap();
    let mut queues = [rxq, txq];
    let inj = Injector::to(via.0, len, via.1);
    let (mut frames, mut elapsed) = (0u64, Duration::ZERO);
    while elapsed < budget() {
        rxr.refill(&mem, RX_BUF);
        inj.inject(per_round);
        let before = net.stats().rx_frames;
        let t = Instant::now();
        serve(&mut net, Wake::Backend(0), &mut queues);
        elapsed += t.elapsed();
        frames += net.stats().rx_frames - before;
        // Anything the ring could not take this round is read and thrown away, so that the
        // next round starts from an empty tap queue.
        let mut sink = vec![0u8; VNET_HDR_LEN + MTU + 14];
        while net.backend().as_raw_fd() >= 0 {
            // SAFETY: sink is writable for its length.
            let n = unsafe {
                libc::read(
                    net.backend().as_raw_fd(),
                    sink.as_mut_ptr().cast(),
                    sink.len(),
                )
            };
            if n <= 0 {
                break;
            }
        }
        // The device now holds back the first frame it could not place; a fresh ring next
        // round takes it.
    }
    Figure {
        frames,
        bytes: frames * len as u64,
        elapsed,
        refused: 0,
    }
}

fn rx_raw(tap: &mut Tap, via: (u32, Option<[u8; 6]>), len: usize, per_round: usize) -> Figure {
    let inj = Injector::to(via.0, len, via.1);
    // One buffer per frame of a round, like the guest's ring.
    let mut bufs: Vec<Vec<u8>> = (0..per_round)
        .map(|_| vec![0u8; VNET_HDR_LEN + MTU + 14])
        .collect();
    raw_rounds(&inj, len, per_round, |i| tap.recv(&mut bufs[i]).is_ok())
}

/// Rounds of `per_round` frames injected, then read back with `read(i)` for the round's
/// i-th frame (false: the tap had none left); only the reads are timed.
fn raw_rounds(
    inj: &Injector,
    len: usize,
    per_round: usize,
    mut read: impl FnMut(usize) -> bool,
) -> Figure {
    let (mut frames, mut elapsed) = (0u64, Duration::ZERO);
    while elapsed < budget() {
        inj.inject(per_round);
        let t = Instant::now();
        for i in 0..per_round {
            if !read(i) {
                break;
            }
            frames += 1;
        }
        elapsed += t.elapsed();
    }
    Figure {
        frames,
        bytes: frames * len as u64,
        elapsed,
        refused: 0,
    }
}

/// Raw readv into the buffer layout the device gets from the ring: each frame scattered over
/// as many RX_BUF-sized buffers as it needs, the buffers of a round spread over a ring's
/// worth of memory. What the device costs beyond this is its own ring work.
fn rx_raw_scattered(
    tap: &mut Tap,
    via: (u32, Option<[u8; 6]>),
    len: usize,
    per_round: usize,
) -> Figure {
    let inj = Injector::to(via.0, len, via.1);
    let per_frame = buffers_per_frame(len);
    // The very addresses the device's ring has: where a buffer sits changes the kernel's
    // copy (see the module's doc), so raw@ring must not differ from the device in that.
    let mem = rx_memory();
    let ring = mem
        .get_slice(GuestAddress(RX_BUFS), usize::from(QSIZE) * RX_BUF as usize)
        .unwrap();
    let base = ring.ptr_guard_mut().as_ptr();
    let iovs: Vec<Vec<libc::iovec>> = (0..per_round)
        .map(|f| {
            (0..per_frame)
                .map(|b| libc::iovec {
                    // Wraps within the ring, as the guest's buffers do.
                    // SAFETY: the offset is below the ring's length.
                    iov_base: unsafe {
                        base.add(((f * per_frame + b) % usize::from(QSIZE)) * RX_BUF as usize)
                    }
                    .cast(),
                    iov_len: RX_BUF as usize,
                })
                .collect()
        })
        .collect();
    let figure = raw_rounds(&inj, len, per_round, |i| {
        // SAFETY: every iovec points into `mem`'s mapping, which outlives the call.
        unsafe { tap.recv_iovecs(&iovs[i]) }.is_ok()
    });
    drop(mem);
    figure
}

fn set_mtu(name: &str, mtu: usize) {
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    let mut req = net::iface::ifreq_for(name).unwrap();
    req.ifr_ifru.ifru_mtu = mtu as i32;
    // SAFETY: valid socket and ifreq for SIOCSIFMTU.
    let rc = unsafe { libc::ioctl(sock, libc::SIOCSIFMTU as _, &mut req as *mut libc::ifreq) };
    assert_eq!(rc, 0, "set MTU: {}", std::io::Error::last_os_error());
    // SAFETY: closing our socket.
    unsafe { libc::close(sock) };
}

/// One host method's fd and how to make frames arrive on it.
struct Subject {
    label: &'static str,
    tap: Tap,
    /// Interface to send from so that frames queue on `tap`, and the destination MAC.
    via: (u32, Option<[u8; 6]>),
    _keep: Option<net::backends::Opened>,
}

fn subjects() -> Vec<Subject> {
    use net::netlink;
    let mut out = Vec::new();
    // plain tap
    let cidr = "198.51.100.1/24".parse().unwrap();
    let mut tap = Tap::open(Some(TAP), Some(cidr)).expect("create the bench tap");
    tap.set_vnet_hdr_len(VNET_HDR_LEN).unwrap();
    set_mtu(TAP, MTU);
    let ifindex = net::iface::index_of(TAP).unwrap();
    out.push(Subject {
        label: "tap",
        tap,
        via: (ifindex, None),
        _keep: None,
    });

    // the "NIC": a veth pair with a big MTU; the far end injects
    netlink::create_veth("bnic0", "bnic1").unwrap();
    for n in ["bnic0", "bnic1"] {
        set_mtu(n, MTU);
        netlink::set_up(n).unwrap();
    }
    // a tap on a bridge (the bridge backend)
    netlink::create_bridge("bbr0").unwrap();
    set_mtu("bbr0", MTU);
    netlink::set_up("bbr0").unwrap();
    let spec: net::NetSpec = "bridge=bbr0".parse().unwrap();
    let mut o = net::backends::open(&spec, 1).expect("bridge backend");
    o.tap.set_vnet_hdr_len(VNET_HDR_LEN).unwrap();
    set_mtu(o.tap.name(), MTU);
    let idx = net::iface::index_of(o.tap.name()).unwrap();
    let t = Tap::from_fd(dup(&o.tap)).unwrap();
    out.push(Subject {
        label: "bridge",
        tap: t,
        via: (idx, None),
        _keep: Some(o),
    });

    // a macvtap (bridge mode) on the veth; frames come in from the far end
    let spec: net::NetSpec = "macvtap=bnic0,mac=52:54:00:ab:cd:ef".parse().unwrap();
    let mut o = net::backends::open(&spec, 2).expect("macvtap backend");
    o.tap.set_vnet_hdr_len(VNET_HDR_LEN).unwrap();
    set_mtu(o.tap.name(), MTU);
    let far = net::iface::index_of("bnic1").unwrap();
    let t = Tap::from_fd(dup(&o.tap)).unwrap();
    out.push(Subject {
        label: "macvtap",
        tap: t,
        via: (far, Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])),
        _keep: Some(o),
    });
    out
}

fn main() {
    let result = net::test_support::in_new_netns(|| {
        println!("virtio-net device path vs raw readv/writev on the same fd (own netns)");
        println!(
            "{:<8} {:<4} {:<8} {:>12} {:>9} {:>12} {:>9} {:>7} {:>9} {:>12} {:>7}",
            "backend",
            "dir",
            "frame",
            "device f/s",
            "Gbit/s",
            "raw f/s",
            "Gbit/s",
            "ratio",
            "refused",
            "raw@ring f/s",
            "ratio"
        );
        for mut sub in subjects() {
            for (label, len) in [("64 B", 64usize), ("1500 B", 1500), ("64 KiB", BIG_FRAME)] {
                for dir in ["TX", "RX", "RX1"] {
                    // NETVMM_BENCH_ONLY=tap,RX,64 KiB: just the cases that match (for a
                    // profiler).
                    if let Ok(only) = std::env::var("NETVMM_BENCH_ONLY") {
                        let case = [sub.label, dir, label];
                        if !only.split(',').all(|w| case.contains(&w.trim())) {
                            continue;
                        }
                    }
                    // RX1: one frame per wake-up, as when frames trickle in; RX: as many as
                    // the ring holds.
                    let n = if dir == "RX1" {
                        1
                    } else {
                        frames_per_round(len)
                    };
                    let (mut dev, mut raw, mut at_ring) =
                        (Figure::default(), Figure::default(), Figure::default());
                    for _ in 0..SLICES {
                        // The device gets its own descriptor on the same queue; raw uses
                        // the subject's after the device is done.
                        let dev_tap = Tap::from_fd(dup(&sub.tap)).unwrap();
                        if dir == "TX" {
                            dev += tx_device(dev_tap, len);
                            raw += tx_raw(&mut sub.tap, len);
                            at_ring += tx_raw_at_ring(&mut sub.tap, len);
                        } else {
                            dev += rx_device(dev_tap, sub.via, len, n);
                            raw += rx_raw(&mut sub.tap, sub.via, len, n);
                            at_ring += rx_raw_scattered(&mut sub.tap, sub.via, len, n);
                        }
                    }
                    println!(
                        "{:<8} {dir:<4} {label:<8} {:>12.0} {:>9.2} {:>12.0} {:>9.2} {:>7.2} {:>4}/{:<4} {:>12.0} {:>7.2}",
                        sub.label,
                        dev.fps(),
                        dev.gbps(),
                        raw.fps(),
                        raw.gbps(),
                        dev.fps() / raw.fps(),
                        dev.refused,
                        raw.refused,
                        at_ring.fps(),
                        dev.fps() / at_ring.fps()
                    );
                }
            }
        }
    });
    if let Err(e) = result {
        eprintln!("device_path benchmark needs a network namespace and /dev/net/tun: {e}");
        std::process::exit(1);
    }
}

fn dup(tap: &Tap) -> i32 {
    // SAFETY: duplicating a descriptor we own; the copy is handed to Tap::from_fd.
    unsafe { libc::dup(tap.as_raw_fd()) }
}
