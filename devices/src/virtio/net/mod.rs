//! virtio-net (virtio 1.2, 5.1): one RX and one TX queue per queue pair (with more than
//! one pair, VIRTIO_NET_F_MQ and a control queue for VQ_PAIRS_SET), mergeable receive
//! buffers, checksum and TSO offloads passed straight through to the backend.
//!
//! Every pair has a backend of its own (one queue fd of a multi-queue tap or macvtap) and
//! the receive state of its own; all pairs are served by the one device thread.

pub mod backend;
pub mod vhost;

use std::io;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

pub use backend::{NetBackend, Offloads};
pub use vhost::{KernelPath, VhostError};

use super::chain::{Budget, Chain, VIRTIO_RING_F_INDIRECT_DESC};
use super::ring::Ring;
use super::serve::serve_chains;
use super::{Processed, VirtioDevice, Wake, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

pub const VIRTIO_ID_NET: u32 = 1;

// Feature bits (virtio 1.2, 5.1.3).
pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// The config space's `mtu` is the MTU the guest should use (offered only with one).
pub const F_MTU: u64 = 1 << 3;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_HOST_TSO6: u64 = 1 << 12;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;
/// A control queue (the last queue) carries commands; offered with more than one pair.
pub const F_CTRL_VQ: u64 = 1 << 17;
/// More than one queue pair (`max_virtqueue_pairs` in the config space).
pub const F_MQ: u64 = 1 << 22;

// Control queue (virtio 1.2, 5.1.6.5): `struct virtio_net_ctrl` is class, command, data,
// then one device-writable ack byte.
pub const CTRL_CLASS_MQ: u8 = 4;
pub const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
pub const CTRL_OK: u8 = 0;
pub const CTRL_ERR: u8 = 1;
/// The longest command (class, command and data) the device reads: VQ_PAIRS_SET has 4
/// bytes; a longer one is answered VIRTIO_NET_ERR without being read.
const CTRL_MAX_COMMAND: usize = 64;
/// Size of the control queue (QEMU's too): commands are rare and one at a time.
pub const CTRL_QUEUE_SIZE: u16 = 64;
/// The most queue pairs a device takes.
pub const MAX_PAIRS: usize = 8;

/// What this device offers.
pub const OFFERED_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_RING_F_INDIRECT_DESC
    | F_CSUM
    | F_GUEST_CSUM
    | F_MAC
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_MRG_RXBUF
    | F_STATUS;

/// `struct virtio_net_hdr_v1`: with VERSION_1 the header always has `num_buffers`.
pub const VNET_HDR_LEN: usize = 12;
const NUM_BUFFERS_OFFSET: u64 = 10;
/// Largest frame either way: a 64 KiB TSO frame, its Ethernet header and the vnet header.
pub const MAX_FRAME_LEN: usize = 65550 + VNET_HDR_LEN;
/// Frames above this size (after one like it) are read straight into guest buffers.
const DIRECT_RX_MIN: usize = 4096;
/// readv/writev take at most this many iovecs (UIO_MAXIOV).
const MAX_IOVECS: usize = 1024;
/// Queue size offered for both queues.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const STATUS_LINK_UP: u16 = 1;

/// Counters for what was moved and what was dropped (and why, roughly).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames from the guest with a bad chain (wrong direction, out of memory, too long).
    pub tx_invalid: u64,
    /// Frames the backend refused.
    pub tx_backend_errors: u64,
    /// Frames for the guest that its buffers could not hold.
    pub rx_dropped: u64,
    /// Now, not a count: bytes of a received frame waiting for guest buffers.
    pub rx_waiting: u64,
    /// Now, not a count: receive chains the device holds for the next frames.
    pub rx_window: u64,
    /// Control queue commands carried out (VIRTIO_NET_OK).
    pub ctrl_ok: u64,
    /// Control queue commands refused (VIRTIO_NET_ERR, or a chain with no room for the
    /// answer).
    pub ctrl_err: u64,
}

impl NetStats {
    fn add(&mut self, o: &NetStats) {
        self.rx_frames += o.rx_frames;
        self.rx_bytes += o.rx_bytes;
        self.tx_frames += o.tx_frames;
        self.tx_bytes += o.tx_bytes;
        self.tx_invalid += o.tx_invalid;
        self.tx_backend_errors += o.tx_backend_errors;
        self.rx_dropped += o.rx_dropped;
        self.rx_waiting += o.rx_waiting;
        self.rx_window += o.rx_window;
        self.ctrl_ok += o.ctrl_ok;
        self.ctrl_err += o.ctrl_err;
    }
}

pub struct Net<B: NetBackend> {
    pairs: Vec<Pair<B>>,
    mac: [u8; 6],
    mtu: Option<u16>,
    /// vhost-net, when the kernel serves the queues instead of this device.
    kernel: Option<KernelPath>,
    acked: u64,
    /// The guest memory given at activation; the pairs' window iovecs point into it.
    mem: Option<GuestMemoryMmap>,
    /// rx0, tx0, rx1, tx1, ..., then the control queue when there is more than one pair.
    queue_sizes: Vec<u16>,
    /// Pairs the driver uses: 1 until it sets more with VQ_PAIRS_SET.
    active_pairs: usize,
    /// The control queue's counters.
    ctrl: NetStats,
}

/// One queue pair: its backend queue and its receive and transmit state.
struct Pair<B: NetBackend> {
    backend: B,
    /// The features the driver accepted (a copy of the device's).
    acked: u64,
    /// Whether the backend queue is attached (only NICs of several pairs detach any).
    attached: bool,
    rx_buf: Vec<u8>,
    rx_pending: usize,
    rx_used: Vec<(u16, u32)>,
    /// The receive window, oldest chain first. Plain vectors: a frame takes chains from the
    /// front, and in bulk traffic it takes the whole window, so the shift is of nothing.
    win_chains: Vec<WindowChain>,
    win_iovs: Vec<libc::iovec>,
    win_capacity: usize,
    /// Length of the last frame received, to pick the receive path for the next.
    rx_last_len: usize,
    tx_iovs: Vec<libc::iovec>,
    stats: NetStats,
}

// SAFETY: the raw pointers in `tx_iovs` and `win_iovs` point into guest memory, which stays
// mapped for the VM's life; they are only dereferenced (by the kernel, in readv/writev) on the
// thread that holds the device. Chains held in the receive window between passes keep
// their pointers valid for the same reason; a device reset drops them.
unsafe impl<B: NetBackend> Send for Net<B> {}

impl<B: NetBackend> Pair<B> {
    fn new(backend: B) -> Self {
        Self {
            backend,
            acked: 0,
            attached: true,
            rx_buf: vec![0; MAX_FRAME_LEN],
            rx_pending: 0,
            rx_used: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            win_chains: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            win_iovs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            win_capacity: 0,
            rx_last_len: 0,
            tx_iovs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            stats: NetStats::default(),
        }
    }

    fn stats(&self) -> NetStats {
        NetStats {
            rx_waiting: self.rx_pending as u64,
            rx_window: self.win_chains.len() as u64,
            ..self.stats
        }
    }

    /// Forgets what the driver's rings gave: the window's iovecs point into the memory
    /// the device is about to drop.
    fn reset(&mut self) {
        self.acked = 0;
        self.rx_pending = 0;
        self.rx_used.clear();
        self.win_chains.clear();
        self.win_iovs.clear();
        self.win_capacity = 0;
        self.tx_iovs.clear();
    }

    fn set_attached(&mut self, attached: bool) -> io::Result<()> {
        if self.attached != attached {
            self.backend.set_queue_enabled(attached)?;
            self.attached = attached;
        }
        Ok(())
    }
}

impl<B: NetBackend> Net<B> {
    pub fn new(backend: B, mac: [u8; 6]) -> Self {
        Self {
            pairs: vec![Pair::new(backend)],
            mac,
            mtu: None,
            kernel: None,
            acked: 0,
            mem: None,
            queue_sizes: vec![QUEUE_SIZE, QUEUE_SIZE],
            active_pairs: 1,
            ctrl: NetStats::default(),
        }
    }

    /// Adds queue pairs 1, 2, ... over `more` backends (further queues of the same tap or
    /// macvtap): the device then offers VIRTIO_NET_F_MQ with a control queue. At most
    /// [`MAX_PAIRS`] in all; the caller checks (more are ignored).
    pub fn with_more_pairs(mut self, more: Vec<B>) -> Self {
        let room = MAX_PAIRS - self.pairs.len();
        self.pairs
            .extend(more.into_iter().take(room).map(Pair::new));
        let n = self.pairs.len();
        self.queue_sizes = vec![QUEUE_SIZE; 2 * n];
        if n > 1 {
            self.queue_sizes.push(CTRL_QUEUE_SIZE);
        }
        self
    }

    /// The queue pairs this device has (`max_virtqueue_pairs`).
    pub fn pairs(&self) -> usize {
        self.pairs.len()
    }

    /// The pairs the driver uses now (VQ_PAIRS_SET; 1 before it).
    pub fn active_pairs(&self) -> usize {
        self.active_pairs
    }

    /// Each pair's counters, in pair order.
    pub fn pair_stats(&self) -> Vec<NetStats> {
        self.pairs.iter().map(Pair::stats).collect()
    }

    /// The control queue's index, if the driver took one.
    fn ctrl_index(&self) -> Option<usize> {
        (self.pairs.len() > 1 && self.acked & F_CTRL_VQ != 0).then(|| 2 * self.pairs.len())
    }

    /// Attaches the backend queues of the first `n` pairs and detaches the others, so that
    /// the host steers frames only to queues the guest reads.
    fn set_active_pairs(&mut self, n: usize) -> io::Result<()> {
        if self.pairs.len() > 1 {
            for (i, pair) in self.pairs.iter_mut().enumerate() {
                pair.set_attached(i < n)?;
            }
        }
        self.active_pairs = n;
        Ok(())
    }

    /// Tells the driver to use `mtu` (VIRTIO_NET_F_MTU); the backend must carry frames of
    /// that size (the caller sets the host side to match).
    pub fn with_mtu(mut self, mtu: Option<u16>) -> Self {
        self.mtu = mtu;
        self
    }

    /// Lets the kernel serve the queues (vhost-net) from the next activation on.
    pub fn with_kernel_path(mut self, kernel: Option<KernelPath>) -> Self {
        self.kernel = kernel;
        self
    }

    /// Which data path carries the frames: "vhost" (the kernel) or "user" (this device).
    pub fn datapath(&self) -> &'static str {
        if self.kernel.is_some() {
            "vhost"
        } else {
            "user"
        }
    }

    /// The counters of all pairs and the control queue together.
    pub fn stats(&self) -> NetStats {
        let mut all = self.ctrl;
        for p in &self.pairs {
            all.add(&p.stats());
        }
        all
    }

    /// Pair 0's backend.
    pub fn backend(&self) -> &B {
        &self.pairs[0].backend
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Serves the control queue: each chain is one command, answered in its ack byte.
    fn process_ctrl(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
        budget: &mut Budget,
    ) -> (bool, bool) {
        let indirect = self.acked & VIRTIO_RING_F_INDIRECT_DESC != 0;
        let served = serve_chains(q, mem, budget, |ring, head, budget| {
            self.ctrl_command(ring, head, indirect, budget)
        });
        (served.interrupt, served.unfinished)
    }

    /// Reads and carries out the command in the chain at `head`; returns the bytes written
    /// (1, the ack, or 0 when the chain has no device-writable byte to take it). The chain
    /// is the guest's: device-readable descriptors (class, command, data; at most
    /// [`CTRL_MAX_COMMAND`] bytes are read) and then device-writable ones, the first byte
    /// of which takes the ack. Anything else is answered VIRTIO_NET_ERR where it can be.
    fn ctrl_command(&mut self, ring: &Ring, head: u16, indirect: bool, budget: &mut Budget) -> u32 {
        let mem = ring.mem();
        let mut cmd = [0u8; CTRL_MAX_COMMAND];
        let mut len = 0usize;
        let mut well_formed = true;
        let mut ack: Option<GuestAddress> = None;
        let mut chain = Chain::new(ring, head, indirect);
        for desc in chain.by_ref() {
            let Ok(desc) = desc else {
                well_formed = false;
                break;
            };
            let dlen = desc.len() as usize;
            if desc.is_write_only() {
                if ack.is_none() && dlen > 0 {
                    ack = Some(desc.addr());
                }
                continue;
            }
            // The command must come before the answer (virtio 1.2, 2.7.4.2).
            if ack.is_some() {
                well_formed = false;
                break;
            }
            let read = cmd
                .get_mut(len..len.saturating_add(dlen))
                .is_some_and(|into| mem.read_slice(into, desc.addr()).is_ok());
            if read {
                len += dlen;
            } else {
                // Too long for any command, or not in guest memory.
                well_formed = false;
            }
        }
        budget.charge(chain.read());
        // A command that cannot be answered is not carried out: its driver cannot know.
        let ack = ack.filter(|at| mem.address_in_range(*at));
        let status = match (well_formed && ack.is_some(), &cmd[..len]) {
            (true, [class, command, data @ ..]) => self.ctrl_execute(*class, *command, data),
            _ => CTRL_ERR,
        };
        let answered = ack.is_some_and(|at| mem.write_obj(status, at).is_ok());
        if answered && status == CTRL_OK {
            self.ctrl.ctrl_ok += 1;
        } else {
            self.ctrl.ctrl_err += 1;
        }
        u32::from(answered)
    }

    /// Carries out one command; the ack it gets.
    fn ctrl_execute(&mut self, class: u8, command: u8, data: &[u8]) -> u8 {
        match (class, command) {
            (CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET) if self.acked & F_MQ != 0 => {
                let Ok(pairs) = <[u8; 2]>::try_from(data).map(u16::from_le_bytes) else {
                    return CTRL_ERR;
                };
                let pairs = usize::from(pairs);
                if !(1..=self.pairs.len()).contains(&pairs) {
                    return CTRL_ERR;
                }
                match self.set_active_pairs(pairs) {
                    Ok(()) => CTRL_OK,
                    Err(_) => CTRL_ERR,
                }
            }
            // No other class is offered (CTRL_RX, CTRL_VLAN, MAC_ADDR, ... are not).
            _ => CTRL_ERR,
        }
    }
}

impl<B: NetBackend> Pair<B> {
    /// Whether the driver may put a chain in an indirect table: a 64 KiB TSO frame of
    /// ~18 buffers then takes one ring slot, not 18.
    fn indirect(&self) -> bool {
        self.acked & VIRTIO_RING_F_INDIRECT_DESC != 0
    }

    /// Sends the frames the guest queued, as many as `budget` allows. Returns whether the
    /// guest needs an interrupt, and whether chains were left for another turn.
    fn process_tx(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
        budget: &mut Budget,
    ) -> (bool, bool) {
        let served = serve_chains(q, mem, budget, |ring, head, budget| {
            match self.gather_tx(ring, head, budget) {
                // SAFETY: each iovec was built from a guest-memory slice that `Ring::buffer`
                // bounds-checked; guest memory stays mapped for the VM's life, so the
                // pointers are valid for reads during this call.
                Some(total) => match unsafe { self.backend.send(&self.tx_iovs) } {
                    Ok(_) => {
                        self.stats.tx_frames += 1;
                        self.stats.tx_bytes += (total - VNET_HDR_LEN) as u64;
                    }
                    Err(_) => self.stats.tx_backend_errors += 1,
                },
                None => self.stats.tx_invalid += 1,
            }
            self.tx_iovs.clear();
            0
        });
        (served.interrupt, served.unfinished)
    }

    /// Gathers the TX chain at `head` into `tx_iovs`. Returns the frame's length (vnet
    /// header included) if it is one to send: device-readable, in guest memory, a
    /// well-formed chain (an indirect table only if negotiated and sane, no loop), at most
    /// the largest frame.
    fn gather_tx(&mut self, ring: &Ring, head: u16, budget: &mut Budget) -> Option<usize> {
        self.tx_iovs.clear();
        let mut chain = Chain::new(ring, head, self.indirect());
        let mut total = 0usize;
        let mut valid = true;
        for desc in chain.by_ref() {
            let Ok(desc) = desc else {
                valid = false;
                break;
            };
            let len = desc.len() as usize;
            total = total.saturating_add(len);
            if desc.is_write_only() || total > MAX_FRAME_LEN {
                valid = false;
                break;
            }
            if len == 0 {
                continue;
            }
            match ring.buffer(desc.addr(), len) {
                Some(slice) => self.tx_iovs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: len,
                }),
                None => {
                    valid = false;
                    break;
                }
            }
        }
        budget.charge(chain.read());
        (valid && total >= VNET_HDR_LEN).then_some(total)
    }

    /// Copies the pending frame into the guest's receive buffers. `Ok(false)`: not enough
    /// buffers yet (nothing consumed). `Err(())`: the ring is unusable.
    fn deliver(&mut self, ring: &mut Ring, budget: &mut Budget) -> Result<bool, ()> {
        let mem = ring.mem();
        let mergeable = self.acked & F_MRG_RXBUF != 0;
        let len = self.rx_pending;
        let mut written = 0usize;
        // Descriptors read for this frame, over all its chains.
        let mut walked = 0u32;
        let mut header_at: Option<GuestAddress> = None;
        let mut fits = true;
        self.rx_used.clear();
        while written < len {
            let Some(head) = ring.pop() else {
                for _ in 0..self.rx_used.len() {
                    ring.unpop();
                }
                self.rx_used.clear();
                return Ok(false);
            };
            let mut in_chain = 0u32;
            let mut chain = Chain::new(ring, head, self.indirect());
            for desc in chain.by_ref() {
                let Some(desc) = desc.ok().filter(|d| d.is_write_only()) else {
                    fits = false;
                    break;
                };
                let n = (desc.len() as usize).min(len - written);
                if n == 0 {
                    continue;
                }
                if header_at.is_none() {
                    // num_buffers is patched in place later: it must sit in this descriptor.
                    if n < VNET_HDR_LEN {
                        fits = false;
                        break;
                    }
                    header_at = Some(desc.addr());
                }
                if mem
                    .write_slice(&self.rx_buf[written..written + n], desc.addr())
                    .is_err()
                {
                    fits = false;
                    break;
                }
                written += n;
                in_chain += n as u32;
                if written == len {
                    break;
                }
            }
            budget.charge(chain.read());
            walked += chain.read();
            self.rx_used.push((head, in_chain));
            // A frame that needs more buffers than the ring can ever hold would wait
            // forever: drop it instead. A driver has at most a queue size of descriptors
            // in flight, so a frame that walked that many without fitting never will (the
            // chains that share descriptors to make it look otherwise cost this much).
            if !fits || !mergeable || walked >= u32::from(ring.size()) {
                break;
            }
        }
        let complete = fits && written == len;
        if complete {
            let count = self.rx_used.len() as u16;
            if let Some(at) = header_at {
                let _ = mem.write_obj(count.to_le(), at.unchecked_add(NUM_BUFFERS_OFFSET));
            }
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
            self.rx_last_len = len;
        } else {
            // Too big for a non-mergeable buffer, or a broken chain: the frame is lost,
            // the buffers go back to the guest empty.
            self.stats.rx_dropped += 1;
        }
        for &(head, used_len) in &self.rx_used {
            let l = if complete { used_len } else { 0 };
            ring.push_used(head, l).map_err(|_| ())?;
        }
        ring.publish_used().map_err(|_| ())?;
        self.rx_used.clear();
        Ok(true)
    }

    /// Gives every chain held in the receive window back to the ring. They are always the
    /// last ones popped, so stepping the ring back returns exactly them.
    fn release_window(&mut self, ring: &mut Ring) {
        for _ in 0..self.win_chains.len() {
            ring.unpop();
        }
        self.win_chains.clear();
        self.win_iovs.clear();
        self.win_capacity = 0;
    }

    /// Reads the next frame straight into the guest's mergeable buffers (no bounce copy).
    ///
    /// The device holds a window of popped chains big enough for the largest frame; a frame
    /// uses the first chains of the window and the rest wait for the next frame. When the
    /// ring cannot fill the window, the caller releases it and falls back to the bounce
    /// buffer, which can wait for buffers frame by frame.
    fn rx_direct(&mut self, ring: &mut Ring, budget: &mut Budget) -> Direct {
        // Descriptors read to fill the window in this call: like a frame's, at most a
        // queue size (see `deliver`).
        let mut walked = 0u32;
        while self.win_capacity < MAX_FRAME_LEN {
            let Some(head) = ring.pop() else {
                return Direct::NotEnoughBuffers;
            };
            let before = self.win_iovs.len();
            let mut capacity = 0u32;
            let mut usable = true;
            let mut chain = Chain::new(ring, head, self.indirect());
            for desc in chain.by_ref() {
                let Ok(desc) = desc else {
                    usable = false;
                    break;
                };
                let len = desc.len() as usize;
                if !desc.is_write_only() || (self.win_iovs.len() == before && len < VNET_HDR_LEN) {
                    usable = false;
                    break;
                }
                if len == 0 {
                    continue;
                }
                match ring.buffer(desc.addr(), len) {
                    Some(slice) => self.win_iovs.push(libc::iovec {
                        iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                        iov_len: len,
                    }),
                    None => {
                        usable = false;
                        break;
                    }
                }
                capacity = capacity.saturating_add(len as u32);
            }
            budget.charge(chain.read());
            walked += chain.read();
            if !usable || self.win_iovs.len() == before {
                // An odd chain goes back; the bounce path drops exactly the frame it gets.
                self.win_iovs.truncate(before);
                ring.unpop();
                return Direct::NotEnoughBuffers;
            }
            self.win_chains.push(WindowChain {
                head,
                capacity,
                iovs: self.win_iovs.len() - before,
            });
            self.win_capacity += capacity as usize;
            if self.win_chains.len() >= usize::from(ring.size())
                || self.win_iovs.len() > MAX_IOVECS
                || walked >= u32::from(ring.size())
            {
                return Direct::NotEnoughBuffers;
            }
        }
        let iovs = self.win_iovs.as_mut_slice();
        // SAFETY: every iovec comes from a guest-memory slice that `Ring::buffer`
        // bounds-checked for a device-writable descriptor; guest memory stays mapped for the
        // VM's life and no Rust reference points into it during the call.
        let n = match unsafe { self.backend.recv_iovecs(iovs) } {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Direct::Drained,
            // Anything else is retried through the bounce path, which counts it.
            Err(_) => return Direct::NotEnoughBuffers,
        };
        if n < VNET_HDR_LEN {
            // A runt: the buffers it touched are reused for the next frame.
            self.stats.rx_dropped += 1;
            return Direct::Delivered;
        }
        // num_buffers must be in place before the first used entry is published.
        let mut used = 0usize;
        let mut covered = 0usize;
        for c in &self.win_chains {
            if covered >= n {
                break;
            }
            covered += c.capacity as usize;
            used += 1;
        }
        // The window's first iovec is its first chain's header descriptor, which is at
        // least VNET_HDR_LEN long (checked when the chain joined).
        if let Some(header) = self.win_iovs.first() {
            // SAFETY: the header descriptor's buffer was bounds-checked in guest memory,
            // which stays mapped; NUM_BUFFERS_OFFSET + 2 <= VNET_HDR_LEN <= its length, and
            // [u8; 2] needs no alignment. Volatile: the guest may be looking at the same bytes.
            unsafe {
                header
                    .iov_base
                    .cast::<u8>()
                    .add(NUM_BUFFERS_OFFSET as usize)
                    .cast::<[u8; 2]>()
                    .write_volatile((used as u16).to_le_bytes());
            }
        }
        let mut remaining = n;
        // Chains taken out of the window: those returned, and one the used ring refused.
        let (mut taken, mut iovs_taken) = (0, 0);
        let mut broken = false;
        for c in &self.win_chains[..used] {
            let len = remaining.min(c.capacity as usize);
            remaining -= len;
            self.win_capacity -= c.capacity as usize;
            taken += 1;
            iovs_taken += c.iovs;
            if ring.push_used(c.head, len as u32).is_err() {
                broken = true;
                break;
            }
        }
        // Out of the window before anything returns: releasing it gives back to the ring
        // exactly the chains it still holds.
        self.win_chains.drain(..taken);
        self.win_iovs.drain(..iovs_taken);
        if broken || ring.publish_used().is_err() {
            return Direct::Broken;
        }
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += (n - VNET_HDR_LEN) as u64;
        self.rx_last_len = n;
        Direct::Delivered
    }

    /// Moves frames from the backend into the guest until either runs dry or `budget` is
    /// spent. Returns whether the guest needs an interrupt, and whether frames may be left
    /// for another turn.
    fn process_rx(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
        budget: &mut Budget,
    ) -> (bool, bool) {
        let Some(mut ring) = Ring::new(q, mem) else {
            return (false, false);
        };
        let ring = &mut ring;
        let mut delivered = false;
        let mut unfinished = false;
        let mergeable = self.acked & F_MRG_RXBUF != 0;
        loop {
            // Checked per frame, never within one: a frame that cost the rest of the
            // budget is still placed or dropped, so every wake-up makes progress.
            if budget.spent() {
                unfinished = true;
                break;
            }
            // Reading straight into guest buffers pays off for big frames; for small ones one
            // read plus a short copy is cheaper than handing the kernel a whole window of
            // iovecs. The last frame's size predicts the next one (bulk TCP: big frames).
            if self.rx_pending == 0 && mergeable && self.rx_last_len > DIRECT_RX_MIN {
                match self.rx_direct(ring, budget) {
                    Direct::Delivered => {
                        delivered = true;
                        continue;
                    }
                    Direct::Drained => break,
                    Direct::Broken => {
                        self.release_window(ring);
                        return (false, false);
                    }
                    Direct::NotEnoughBuffers => self.release_window(ring),
                }
            } else {
                // The bounce path pops from the ring's next position: chains the window
                // still holds must go back first, or frames would land out of order.
                self.release_window(ring);
            }
            if self.rx_pending == 0 {
                match self.backend.recv(&mut self.rx_buf) {
                    Ok(n) if n >= VNET_HDR_LEN => self.rx_pending = n,
                    Ok(_) => {
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // WouldBlock: drained. Anything else: the backend is gone; the guest
                    // simply stops receiving.
                    Err(_) => break,
                }
            }
            match self.deliver(ring, budget) {
                Ok(true) => {
                    self.rx_pending = 0;
                    delivered = true;
                }
                // Out of buffers: ask to be told when the guest adds some, unless it just did.
                Ok(false) => match arm_for_more_buffers(ring) {
                    Ok(true) => continue,
                    _ => break,
                },
                Err(()) => return (false, false),
            }
        }
        // A full window stays popped for the next pass: releasing and popping it again
        // every time the backend runs dry cost as much ring work as delivering a frame.
        let interrupt = delivered && ring.needs_interrupt();
        (interrupt, unfinished)
    }
}

/// A chain popped into the receive window and not used yet.
struct WindowChain {
    head: u16,
    capacity: u32,
    /// How many of the window's iovecs belong to this chain; the first of them is where
    /// the vnet header (and num_buffers) goes.
    iovs: usize,
}

/// What one zero-copy receive attempt came to.
enum Direct {
    /// A frame (or a runt, dropped) was consumed from the backend.
    Delivered,
    /// The backend has nothing more.
    Drained,
    /// Too few posted buffers (or odd ones) for the largest frame: use the bounce buffer.
    NotEnoughBuffers,
    /// The used ring cannot be written.
    Broken,
}

/// Asks the driver to notify us when it adds buffers beyond those already in the ring,
/// which are not enough for the pending frame. Returns true when buffers arrived meanwhile.
///
/// `enable_notification` alone would set `avail_event` to our position, and with
/// EVENT_IDX the driver only notifies when its index crosses that value: buffers already
/// posted would make it never cross, and the frame would wait forever.
fn arm_for_more_buffers(ring: &mut Ring) -> Result<bool, ()> {
    let before = ring.avail_idx().ok_or(())?;
    ring.enable_notification().map_err(|_| ())?;
    if ring.event_idx_enabled() {
        ring.set_avail_event(before.0).map_err(|_| ())?;
    }
    std::sync::atomic::fence(Ordering::SeqCst);
    let after = ring.avail_idx().ok_or(())?;
    Ok(after != before)
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mq = if self.pairs.len() > 1 {
            F_MQ | F_CTRL_VQ
        } else {
            0
        };
        let offered = OFFERED_FEATURES | mq | if self.mtu.is_some() { F_MTU } else { 0 };
        match &self.kernel {
            Some(k) => k.offerable(offered),
            None => offered,
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac, status, max_virtqueue_pairs (0 when MQ is not offered), mtu (virtio 1.2,
        // 5.1.4).
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        if self.pairs.len() > 1 {
            config[8..10].copy_from_slice(&(self.pairs.len() as u16).to_le_bytes());
        }
        if let Some(mtu) = self.mtu {
            config[10..12].copy_from_slice(&mtu.to_le_bytes());
        }
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = start.checked_add(i).and_then(|at| config.get(at)) {
                *b = *v;
            }
        }
    }

    fn accepts(&self, features: u64) -> bool {
        // MQ needs the control queue (5.1.3.1), and a control queue without MQ would be
        // queue 2, where this device has rx1: the two come together or not at all.
        (features & F_MQ != 0) == (features & F_CTRL_VQ != 0)
    }

    fn activate(&mut self, features: u64, mem: &GuestMemoryMmap) -> Result<(), String> {
        self.acked = features;
        self.mem = Some(mem.clone());
        let offloads = Offloads {
            csum: features & F_GUEST_CSUM != 0,
            tso4: features & F_GUEST_CSUM != 0 && features & F_GUEST_TSO4 != 0,
            tso6: features & F_GUEST_CSUM != 0 && features & F_GUEST_TSO6 != 0,
        };
        // A macvtap keeps the header size and offloads per queue: every queue gets them.
        for (i, pair) in self.pairs.iter_mut().enumerate() {
            pair.acked = features;
            pair.backend
                .set_vnet_hdr_len(VNET_HDR_LEN)
                .map_err(|e| format!("queue pair {i}: cannot set the vnet header length: {e}"))?;
            pair.backend
                .set_offloads(offloads)
                .map_err(|e| format!("queue pair {i}: cannot set offloads: {e}"))?;
        }
        // Until VQ_PAIRS_SET the driver uses pair 0 only (5.1.6.5.5).
        self.set_active_pairs(1)
            .map_err(|e| format!("cannot detach the unused backend queues: {e}"))
    }

    fn reset(&mut self) {
        self.stop();
        self.acked = 0;
        // The window's iovecs point into this memory: they go first, then the memory.
        for pair in &mut self.pairs {
            pair.reset();
        }
        self.mem = None;
        self.active_pairs = 1;
    }

    fn stop(&mut self) {
        if let Some(k) = &mut self.kernel {
            k.stop();
        }
    }

    fn process(&mut self, wake: Wake, queues: &mut [Queue]) -> Processed {
        // Taken out for the call (not cloned: no allocation per wake-up) and put back.
        let Some(mem) = self.mem.take() else {
            return Processed::default();
        };
        let done = self.process_in(wake, queues, &mem);
        self.mem = Some(mem);
        done
    }

    fn backend_fds(&self) -> Vec<std::os::fd::RawFd> {
        match self.kernel {
            Some(_) => Vec::new(),
            None => self.pairs.iter().map(|p| p.backend.as_raw_fd()).collect(),
        }
    }

    fn start_queues(
        &mut self,
        queues: &[Queue],
        kicks: &[vmm_sys_util::eventfd::EventFd],
    ) -> Result<(), String> {
        // Without MQ the driver sets up pair 0 only.
        let pairs = if self.acked & F_MQ != 0 {
            self.pairs.len()
        } else {
            1
        };
        match &mut self.kernel {
            Some(k) => k.start(self.acked, queues, kicks, pairs),
            None => Ok(()),
        }
    }

    fn used_notifiers(&self) -> &[vmm_sys_util::eventfd::EventFd] {
        self.kernel.as_ref().map_or(&[], |k| k.calls())
    }

    fn share_used_notifier(&mut self, irq: &vmm_sys_util::eventfd::EventFd) -> std::io::Result<()> {
        match &mut self.kernel {
            Some(k) => k.share_calls(irq),
            None => Ok(()),
        }
    }
}

impl<B: NetBackend> Net<B> {
    /// [`VirtioDevice::process`] in the activation memory.
    fn process_in(&mut self, wake: Wake, queues: &mut [Queue], mem: &GuestMemoryMmap) -> Processed {
        let mut done = Processed::default();
        if queues.len() != self.queue_sizes.len() {
            return done;
        }
        let n = self.pairs.len();
        let ctrl = self.ctrl_index();
        // Which pairs' TX and RX queues to serve, and whether the control queue.
        let (pairs, tx, rx, serve_ctrl) = match wake {
            Wake::Queue(i) if Some(usize::from(i)) == ctrl => (0..0, false, false, true),
            Wake::Queue(i) => {
                let (p, which) = (usize::from(i) / 2, usize::from(i) % 2);
                (p..(p + 1).min(n), which == TX, which == RX, false)
            }
            Wake::Backend(p) => {
                let p = usize::from(p);
                (p..(p + 1).min(n), false, true, false)
            }
            Wake::Activated => (0..n, true, true, ctrl.is_some()),
        };
        // One budget for the whole wake-up, whichever queues it serves.
        let mut budget = Budget::default();
        let mut note = |(interrupt, unfinished): (bool, bool), queue: usize| {
            if interrupt {
                done.interrupt |= 1 << queue;
            }
            if unfinished {
                done.unfinished |= 1 << queue;
            }
        };
        // The kernel (vhost) serves the pairs; the control queue is always this device's.
        let user_pairs = if self.kernel.is_some() { 0..0 } else { pairs };
        for p in user_pairs {
            let [rxq, txq] = &mut queues[2 * p..2 * p + 2] else {
                continue;
            };
            let pair = &mut self.pairs[p];
            if tx && txq.ready() {
                note(pair.process_tx(txq, mem, &mut budget), 2 * p + TX);
            }
            // Frames only for the pairs the driver uses (5.1.6.5.5).
            if rx && rxq.ready() && p < self.active_pairs {
                note(pair.process_rx(rxq, mem, &mut budget), 2 * p + RX);
            }
        }
        if let (true, Some(c)) = (serve_ctrl, ctrl) {
            if let Some(cq) = queues.get_mut(c).filter(|q| q.ready()) {
                note(self.process_ctrl(cq, mem, &mut budget), c);
            }
        }
        done
    }
}

#[cfg(test)]
mod tests;
