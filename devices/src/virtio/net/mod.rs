//! virtio-net (virtio 1.2, 5.1): one RX and one TX queue, mergeable receive buffers,
//! checksum and TSO offloads passed straight through to the backend.

pub mod backend;
pub mod vhost;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

pub use backend::{NetBackend, Offloads};
pub use vhost::{KernelPath, VhostError};

use super::chain::{Budget, Chain, VIRTIO_RING_F_INDIRECT_DESC};
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
}

pub struct Net<B: NetBackend> {
    backend: B,
    mac: [u8; 6],
    mtu: Option<u16>,
    /// vhost-net, when the kernel serves the queues instead of this device.
    kernel: Option<KernelPath>,
    acked: u64,
    rx_buf: Vec<u8>,
    rx_pending: usize,
    rx_used: Vec<(u16, u32)>,
    win_chains: VecDeque<WindowChain>,
    win_iovs: VecDeque<libc::iovec>,
    win_capacity: usize,
    /// Length of the last frame received, to pick the receive path for the next.
    rx_last_len: usize,
    tx_iovs: Vec<libc::iovec>,
    /// The guest memory given at activation; `win_iovs` point into it.
    mem: Option<GuestMemoryMmap>,
    stats: NetStats,
}

// SAFETY: the raw pointers in `tx_iovs` and `win_iovs` point into guest memory, which stays
// mapped for the VM's life; they are only dereferenced (by the kernel, in readv/writev) on the
// thread that holds the device. Chains held in the receive window between passes keep
// their pointers valid for the same reason; a device reset drops them.
unsafe impl<B: NetBackend> Send for Net<B> {}

impl<B: NetBackend> Net<B> {
    pub fn new(backend: B, mac: [u8; 6]) -> Self {
        Self {
            backend,
            mac,
            mtu: None,
            kernel: None,
            acked: 0,
            rx_buf: vec![0; MAX_FRAME_LEN],
            rx_pending: 0,
            rx_used: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            win_chains: VecDeque::with_capacity(usize::from(QUEUE_SIZE)),
            win_iovs: VecDeque::with_capacity(usize::from(QUEUE_SIZE)),
            win_capacity: 0,
            rx_last_len: 0,
            tx_iovs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            mem: None,
            stats: NetStats::default(),
        }
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

    pub fn stats(&self) -> NetStats {
        NetStats {
            rx_waiting: self.rx_pending as u64,
            rx_window: self.win_chains.len() as u64,
            ..self.stats
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

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
        let served = serve_chains(q, mem, budget, |q, head, budget| {
            match self.gather_tx(q, mem, head, budget) {
                // SAFETY: each iovec was built from a guest-memory slice that `get_slice`
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
    fn gather_tx(
        &mut self,
        q: &Queue,
        mem: &GuestMemoryMmap,
        head: u16,
        budget: &mut Budget,
    ) -> Option<usize> {
        self.tx_iovs.clear();
        let mut chain = Chain::new(mem, q, head, self.indirect());
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
            match mem.get_slice(desc.addr(), len) {
                Ok(slice) => self.tx_iovs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: len,
                }),
                Err(_) => {
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
    fn deliver(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
        budget: &mut Budget,
    ) -> Result<bool, ()> {
        let mergeable = self.acked & F_MRG_RXBUF != 0;
        let len = self.rx_pending;
        let mut written = 0usize;
        // Descriptors read for this frame, over all its chains.
        let mut walked = 0u32;
        let mut header_at: Option<GuestAddress> = None;
        let mut fits = true;
        self.rx_used.clear();
        while written < len {
            let Some(head) = q.pop_descriptor_chain(mem).map(|c| c.head_index()) else {
                for _ in 0..self.rx_used.len() {
                    q.go_to_previous_position();
                }
                self.rx_used.clear();
                return Ok(false);
            };
            let mut in_chain = 0u32;
            let mut chain = Chain::new(mem, q, head, self.indirect());
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
            if !fits || !mergeable || walked >= u32::from(q.size()) {
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
            q.add_used(mem, head, l).map_err(|_| ())?;
        }
        self.rx_used.clear();
        Ok(true)
    }

    /// Gives every chain held in the receive window back to the ring. They are always the
    /// last ones popped, so stepping the ring back returns exactly them.
    fn release_window(&mut self, q: &mut Queue) {
        for _ in 0..self.win_chains.len() {
            q.go_to_previous_position();
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
    fn rx_direct(&mut self, q: &mut Queue, mem: &GuestMemoryMmap, budget: &mut Budget) -> Direct {
        // Descriptors read to fill the window in this call: like a frame's, at most a
        // queue size (see `deliver`).
        let mut walked = 0u32;
        while self.win_capacity < MAX_FRAME_LEN {
            let Some(head) = q.pop_descriptor_chain(mem).map(|c| c.head_index()) else {
                return Direct::NotEnoughBuffers;
            };
            let before = self.win_iovs.len();
            let mut capacity = 0u32;
            let mut first = None;
            let mut usable = true;
            let mut chain = Chain::new(mem, q, head, self.indirect());
            for desc in chain.by_ref() {
                let Ok(desc) = desc else {
                    usable = false;
                    break;
                };
                let len = desc.len() as usize;
                if !desc.is_write_only() || (first.is_none() && len < VNET_HDR_LEN) {
                    usable = false;
                    break;
                }
                if len == 0 {
                    continue;
                }
                match mem.get_slice(desc.addr(), len) {
                    Ok(slice) => self.win_iovs.push_back(libc::iovec {
                        iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                        iov_len: len,
                    }),
                    Err(_) => {
                        usable = false;
                        break;
                    }
                }
                first.get_or_insert(desc.addr());
                capacity = capacity.saturating_add(len as u32);
            }
            budget.charge(chain.read());
            walked += chain.read();
            let Some(first) = first.filter(|_| usable) else {
                // An odd chain goes back; the bounce path drops exactly the frame it gets.
                self.win_iovs.truncate(before);
                q.go_to_previous_position();
                return Direct::NotEnoughBuffers;
            };
            self.win_chains.push_back(WindowChain {
                head,
                capacity,
                iovs: self.win_iovs.len() - before,
                first,
            });
            self.win_capacity += capacity as usize;
            if self.win_chains.len() >= usize::from(q.size())
                || self.win_iovs.len() > MAX_IOVECS
                || walked >= u32::from(q.size())
            {
                return Direct::NotEnoughBuffers;
            }
        }
        let iovs = self.win_iovs.make_contiguous();
        // SAFETY: every iovec comes from a guest-memory slice that `get_slice` bounds-checked
        // for a device-writable descriptor; guest memory stays mapped for the VM's life and
        // no Rust reference points into it during the call.
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
        if let Some(c) = self.win_chains.front() {
            let _ = mem.write_obj(
                (used as u16).to_le(),
                c.first.unchecked_add(NUM_BUFFERS_OFFSET),
            );
        }
        let mut remaining = n;
        for _ in 0..used {
            let Some(c) = self.win_chains.pop_front() else {
                break;
            };
            let len = remaining.min(c.capacity as usize);
            remaining -= len;
            self.win_capacity -= c.capacity as usize;
            self.win_iovs.drain(..c.iovs);
            if q.add_used(mem, c.head, len as u32).is_err() {
                return Direct::Broken;
            }
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
                match self.rx_direct(q, mem, budget) {
                    Direct::Delivered => {
                        delivered = true;
                        continue;
                    }
                    Direct::Drained => break,
                    Direct::Broken => {
                        self.release_window(q);
                        return (false, false);
                    }
                    Direct::NotEnoughBuffers => self.release_window(q),
                }
            } else {
                // The bounce path pops from the ring's next position: chains the window
                // still holds must go back first, or frames would land out of order.
                self.release_window(q);
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
            match self.deliver(q, mem, budget) {
                Ok(true) => {
                    self.rx_pending = 0;
                    delivered = true;
                }
                // Out of buffers: ask to be told when the guest adds some, unless it just did.
                Ok(false) => match arm_for_more_buffers(q, mem) {
                    Ok(true) => continue,
                    _ => break,
                },
                Err(()) => return (false, false),
            }
        }
        // A full window stays popped for the next pass: releasing and popping it again
        // every time the backend runs dry cost as much ring work as delivering a frame.
        let interrupt = delivered && q.needs_notification(mem).unwrap_or(false);
        (interrupt, unfinished)
    }
}

/// A chain popped into the receive window and not used yet.
struct WindowChain {
    head: u16,
    capacity: u32,
    /// How many of the window's iovecs belong to this chain.
    iovs: usize,
    /// Its first descriptor, where the vnet header (and num_buffers) goes.
    first: GuestAddress,
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
fn arm_for_more_buffers(q: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, ()> {
    let before = q.avail_idx(mem, Ordering::Acquire).map_err(|_| ())?;
    q.enable_notification(mem).map_err(|_| ())?;
    if q.event_idx_enabled() {
        let avail_event = super::avail_event_addr(q).ok_or(())?;
        mem.write_obj(before.0.to_le(), avail_event)
            .map_err(|_| ())?;
    }
    std::sync::atomic::fence(Ordering::SeqCst);
    let after = q.avail_idx(mem, Ordering::Acquire).map_err(|_| ())?;
    Ok(after != before)
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let offered = OFFERED_FEATURES | if self.mtu.is_some() { F_MTU } else { 0 };
        match &self.kernel {
            Some(k) => k.offerable(offered),
            None => offered,
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac, status, max_virtqueue_pairs (0: MQ is not offered), mtu (virtio 1.2, 5.1.4).
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
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

    fn activate(&mut self, features: u64, mem: &GuestMemoryMmap) -> Result<(), String> {
        self.acked = features;
        self.mem = Some(mem.clone());
        self.backend
            .set_vnet_hdr_len(VNET_HDR_LEN)
            .map_err(|e| format!("cannot set the vnet header length: {e}"))?;
        let offloads = Offloads {
            csum: features & F_GUEST_CSUM != 0,
            tso4: features & F_GUEST_CSUM != 0 && features & F_GUEST_TSO4 != 0,
            tso6: features & F_GUEST_CSUM != 0 && features & F_GUEST_TSO6 != 0,
        };
        self.backend
            .set_offloads(offloads)
            .map_err(|e| format!("cannot set offloads: {e}"))
    }

    fn reset(&mut self) {
        if let Some(k) = &mut self.kernel {
            k.stop();
        }
        self.acked = 0;
        // The window's iovecs point into this memory: they go first, then the memory.
        self.win_iovs.clear();
        self.mem = None;
        self.rx_pending = 0;
        self.rx_used.clear();
        self.win_chains.clear();
        self.win_iovs.clear();
        self.win_capacity = 0;
        self.tx_iovs.clear();
    }

    fn process(&mut self, wake: Wake, queues: &mut [Queue]) -> Processed {
        if self.kernel.is_some() {
            return Processed::default();
        }
        // Taken out for the call (not cloned: no allocation per wake-up) and put back.
        let Some(mem) = self.mem.take() else {
            return Processed::default();
        };
        let done = self.process_in(wake, queues, &mem);
        self.mem = Some(mem);
        done
    }

    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        match self.kernel {
            Some(_) => None,
            None => Some(self.backend.as_raw_fd()),
        }
    }

    fn start_queues(
        &mut self,
        queues: &[Queue],
        kicks: &[vmm_sys_util::eventfd::EventFd],
    ) -> Result<(), String> {
        match &mut self.kernel {
            Some(k) => k.start(self.acked, queues, kicks),
            None => Ok(()),
        }
    }

    fn used_notifiers(&self) -> &[vmm_sys_util::eventfd::EventFd] {
        self.kernel.as_ref().map_or(&[], |k| k.calls())
    }
}

impl<B: NetBackend> Net<B> {
    /// [`VirtioDevice::process`] in the activation memory.
    fn process_in(&mut self, wake: Wake, queues: &mut [Queue], mem: &GuestMemoryMmap) -> Processed {
        let mut done = Processed::default();
        let [rxq, txq] = queues else {
            return done;
        };
        let (tx, rx) = match wake {
            Wake::Queue(i) => (usize::from(i) == TX, usize::from(i) == RX),
            Wake::Backend => (false, true),
            Wake::Activated => (true, true),
        };
        // One budget for the whole wake-up, whichever queues it serves.
        let mut budget = Budget::default();
        let mut note = |(interrupt, unfinished): (bool, bool), queue: usize| {
            done.interrupt |= interrupt;
            if unfinished {
                done.unfinished |= 1 << queue;
            }
        };
        if tx && txq.ready() {
            note(self.process_tx(txq, mem, &mut budget), TX);
        }
        if rx && rxq.ready() {
            note(self.process_rx(rxq, mem, &mut budget), RX);
        }
        done
    }
}

#[cfg(test)]
mod tests;
