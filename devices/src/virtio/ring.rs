//! One wake-up's hold on a split virtqueue (virtio 1.2, 2.7): the descriptor table, the
//! avail ring and the used ring are translated to host memory once, when the device starts
//! its turn, instead of once per descriptor and ring entry.
//!
//! Why not virtio-queue's `pop_descriptor_chain` and `add_used`: each looks the address up
//! among the guest's memory regions and copies through vm-memory's generic slice walk, and
//! a 64 KiB frame received into 4 KiB buffers takes 17 chains. Measured on the device path
//! (`cargo bench -p vmm --bench device_path`, tap RX 64 KiB), that ring work was 29% of the
//! device's time, the readv into the guest's buffers the rest.
//!
//! The guest may rewrite any of these areas at any time: every read is a single volatile
//! load whose value is checked before use, like the library's.

use std::cell::Cell;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress, VolatileMemory, VolatileSlice,
};

/// The avail ring's header (flags, idx) and the size of one of its entries.
const AVAIL_HEADER: usize = 4;
const AVAIL_ENTRY: usize = 2;
/// The used ring's header (flags, idx) and the size of one of its elements (id, len).
const USED_HEADER: usize = 4;
const USED_ELEM: usize = 8;
/// Where either ring keeps its index.
const IDX: usize = 2;

/// Why a ring operation failed: the driver broke its queue, which then stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("head {head} is past the end of the {size}-entry queue")]
    NoSuchHead { head: u16, size: u16 },
    #[error("the queue's rings cannot be accessed in guest memory")]
    Memory,
}

/// A queue and its three areas in host memory, for one turn of the device.
pub struct Ring<'a> {
    q: &'a mut Queue,
    mem: &'a GuestMemoryMmap,
    desc: VolatileSlice<'a>,
    avail: VolatileSlice<'a>,
    used: VolatileSlice<'a>,
    size: u16,
    /// The driver's avail index as last read: chains before it are popped without reading
    /// it again.
    avail_idx: Wrapping<u16>,
    /// The used index when [`Ring::needs_interrupt`] last looked (or the turn began):
    /// whether the driver asked for an interrupt depends on every entry added since.
    used_checked: Wrapping<u16>,
    /// The guest memory region the last buffer was in (its start and all of it): a frame's
    /// buffers are almost always in the same one.
    last_region: Cell<Option<(u64, VolatileSlice<'a>)>>,
}

impl<'a> Ring<'a> {
    /// `q`'s areas in `mem`, or `None` when one of them is not wholly in one region of
    /// guest memory: the queue is then unusable. Activation already refuses such a queue,
    /// so this only meets one changed behind the transport's back.
    pub fn new(q: &'a mut Queue, mem: &'a GuestMemoryMmap) -> Option<Self> {
        let size = q.size();
        // virtio-queue never leaves a size of 0, but every index below is taken modulo it.
        if size == 0 {
            return None;
        }
        let n = usize::from(size);
        let area = |at: u64, len: usize| mem.get_slice(GuestAddress(at), len).ok();
        // A 2-byte event word follows each ring's entries (used_event, avail_event).
        let desc = area(q.desc_table(), 16 * n)?;
        let avail = area(q.avail_ring(), AVAIL_HEADER + AVAIL_ENTRY * n + 2)?;
        let used = area(q.used_ring(), USED_HEADER + USED_ELEM * n + 2)?;
        let next_avail = Wrapping(q.next_avail());
        let next_used = Wrapping(q.next_used());
        Some(Self {
            q,
            mem,
            desc,
            avail,
            used,
            size,
            avail_idx: next_avail,
            used_checked: next_used,
            last_region: Cell::new(None),
        })
    }

    /// The `len` bytes of guest memory at `addr` that a descriptor names, or `None` when
    /// they are not all guest memory.
    pub fn buffer(&self, addr: GuestAddress, len: usize) -> Option<VolatileSlice<'a>> {
        let within = |(start, region): (u64, VolatileSlice<'a>)| {
            let offset = usize::try_from(addr.0.checked_sub(start)?).ok()?;
            region.subslice(offset, len).ok()
        };
        if let Some(slice) = self.last_region.get().and_then(within) {
            return Some(slice);
        }
        let region = self.mem.find_region(addr)?;
        let whole = region
            .get_slice(MemoryRegionAddress(0), usize::try_from(region.len()).ok()?)
            .ok()?;
        let found = (region.start_addr().0, whole);
        self.last_region.set(Some(found));
        within(found)
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn mem(&self) -> &'a GuestMemoryMmap {
        self.mem
    }

    /// The descriptor table, `size` entries of 16 bytes.
    pub fn descriptors(&self) -> &VolatileSlice<'a> {
        &self.desc
    }

    /// The driver's avail index now, or `None` if it cannot be read.
    pub fn avail_idx(&self) -> Option<Wrapping<u16>> {
        self.avail
            .load::<u16>(IDX, Ordering::Acquire)
            .ok()
            .map(|i| Wrapping(u16::from_le(i)))
    }

    /// Whether the driver has offered chains the device has not taken yet.
    pub fn has_pending(&self) -> bool {
        self.avail_idx()
            .is_some_and(|idx| idx.0 != self.q.next_avail())
    }

    /// The head of the next chain the driver offers, or `None` when there is none, or the
    /// avail ring is broken: its index more than a queue size ahead of the device (a driver
    /// never has more chains than that in flight), or unreadable.
    pub fn pop(&mut self) -> Option<u16> {
        let next = Wrapping(self.q.next_avail());
        if next == self.avail_idx {
            // Acquire: the entries (and the descriptors they name) are read after it.
            self.avail_idx = self.avail_idx()?;
            if next == self.avail_idx {
                return None;
            }
        }
        if (self.avail_idx - next).0 > self.size {
            return None;
        }
        let slot = AVAIL_HEADER + AVAIL_ENTRY * usize::from(next.0 % self.size);
        let head = self.avail.load::<u16>(slot, Ordering::Relaxed).ok()?;
        self.q.set_next_avail((next + Wrapping(1)).0);
        Some(u16::from_le(head))
    }

    /// Gives the last popped chain back: the next [`Ring::pop`] returns it again.
    pub fn unpop(&mut self) {
        self.q.go_to_previous_position();
    }

    /// Returns the chain at `head` to the driver with `len` bytes written into it. The
    /// driver sees it at the next [`Ring::publish_used`]. `Err` when `head` is not a
    /// descriptor of this queue or the used ring cannot be written; what was pushed before
    /// is then published, so the used index never lags what the device returned.
    pub fn push_used(&mut self, head: u16, len: u32) -> Result<(), RingError> {
        let pushed = self.write_used(head, len);
        if pushed.is_err() {
            let _ = self.publish_used();
        }
        pushed
    }

    fn write_used(&mut self, head: u16, len: u32) -> Result<(), RingError> {
        if head >= self.size {
            return Err(RingError::NoSuchHead {
                head,
                size: self.size,
            });
        }
        let next = self.q.next_used();
        let at = USED_HEADER + USED_ELEM * usize::from(next % self.size);
        let elem = (u64::from(len) << 32) | u64::from(head);
        self.used
            .get_ref::<u64>(at)
            .map_err(|_| RingError::Memory)?
            .store(elem.to_le());
        self.q.set_next_used(next.wrapping_add(1));
        Ok(())
    }

    /// Makes the chains pushed so far visible to the driver.
    pub fn publish_used(&self) -> Result<(), RingError> {
        // Release: the elements are written before the index that hands them over.
        self.used
            .store(self.q.next_used().to_le(), IDX, Ordering::Release)
            .map_err(|_| RingError::Memory)
    }

    /// [`Ring::push_used`] and [`Ring::publish_used`] for one chain.
    pub fn add_used(&mut self, head: u16, len: u32) -> Result<(), RingError> {
        self.push_used(head, len)?;
        self.publish_used()
    }

    /// Whether the driver wants an interrupt for the chains published since the last call
    /// (or since the turn began). With VIRTIO_RING_F_EVENT_IDX that is when the used index
    /// passed the driver's `used_event` (2.7.10); without it, always (the library ignores
    /// VRING_AVAIL_F_NO_INTERRUPT too, and an extra interrupt is harmless).
    pub fn needs_interrupt(&mut self) -> bool {
        let now = Wrapping(self.q.next_used());
        let old = std::mem::replace(&mut self.used_checked, now);
        if !self.q.event_idx_enabled() {
            return true;
        }
        // The used index is written before the driver's used_event is read.
        fence(Ordering::SeqCst);
        let at = AVAIL_HEADER + AVAIL_ENTRY * usize::from(self.size);
        let Ok(event) = self.avail.load::<u16>(at, Ordering::Relaxed) else {
            return true;
        };
        let event = Wrapping(u16::from_le(event));
        now - event - Wrapping(1) < now - old
    }

    /// Asks the driver to notify the device of new chains; `true` when some arrived while
    /// notifications were off (they must be served now, no notification will come).
    pub fn enable_notification(&mut self) -> Result<bool, RingError> {
        self.q
            .enable_notification(self.mem)
            .map_err(|_| RingError::Memory)
    }

    pub fn disable_notification(&mut self) -> Result<(), RingError> {
        self.q
            .disable_notification(self.mem)
            .map_err(|_| RingError::Memory)
    }

    /// Sets the device's `avail_event` (with EVENT_IDX): the driver notifies when its avail
    /// index passes `idx`.
    pub fn set_avail_event(&self, idx: u16) -> Result<(), RingError> {
        let at = USED_HEADER + USED_ELEM * usize::from(self.size);
        self.used
            .store(idx.to_le(), at, Ordering::Relaxed)
            .map_err(|_| RingError::Memory)
    }

    pub fn event_idx_enabled(&self) -> bool {
        self.q.event_idx_enabled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap()
    }

    fn queue(size: u16) -> Queue {
        let mut q = Queue::new(size).unwrap();
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// The driver offers `heads` after those already offered.
    fn offer(mem: &GuestMemoryMmap, size: u16, heads: &[u16]) {
        let idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
        for (k, h) in heads.iter().enumerate() {
            let slot = (idx.wrapping_add(k as u16) % size) as u64;
            mem.write_obj(*h, GuestAddress(AVAIL + 4 + 2 * slot))
                .unwrap();
        }
        mem.write_obj(
            idx.wrapping_add(heads.len() as u16),
            GuestAddress(AVAIL + 2),
        )
        .unwrap();
    }

    #[test]
    fn pops_what_the_driver_offered_in_order_and_sees_later_offers() {
        let mem = memory();
        let mut q = queue(4);
        offer(&mem, 4, &[2, 0]);
        let mut ring = Ring::new(&mut q, &mem).unwrap();
        assert_eq!(ring.pop(), Some(2));
        offer(&mem, 4, &[3]);
        assert_eq!(ring.pop(), Some(0));
        assert_eq!(ring.pop(), Some(3));
        assert_eq!(ring.pop(), None);
        ring.unpop();
        assert_eq!(ring.pop(), Some(3));
        assert!(!ring.has_pending());
        assert_eq!(q.next_avail(), 3);
    }

    #[test]
    fn an_avail_index_more_than_a_queue_size_ahead_pops_nothing() {
        let mem = memory();
        let mut q = queue(4);
        mem.write_obj(5u16, GuestAddress(AVAIL + 2)).unwrap();
        let mut ring = Ring::new(&mut q, &mem).unwrap();
        assert_eq!(ring.pop(), None);
        assert!(ring.has_pending());
    }

    #[test]
    fn used_entries_are_invisible_until_published_and_bad_heads_refused() {
        let mem = memory();
        let mut q = queue(4);
        let mut ring = Ring::new(&mut q, &mem).unwrap();
        ring.push_used(3, 1500).unwrap();
        ring.push_used(1, 7).unwrap();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 0);
        ring.publish_used().unwrap();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 2);
        let elem = |i: u64| {
            let id: u32 = mem.read_obj(GuestAddress(USED + 4 + 8 * i)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(USED + 8 + 8 * i)).unwrap();
            (id, len)
        };
        assert_eq!((elem(0), elem(1)), ((3, 1500), (1, 7)));
        ring.push_used(2, 5).unwrap();
        assert_eq!(
            ring.push_used(4, 0),
            Err(RingError::NoSuchHead { head: 4, size: 4 })
        );
        // The entry pushed before the refused one was published with the refusal.
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 3);
        // Wraps around the ring.
        for _ in 0..3 {
            ring.add_used(0, 9).unwrap();
        }
        assert_eq!(elem(0), (0, 9));
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 6);
    }

    #[test]
    fn with_event_idx_interrupts_only_when_used_event_is_passed() {
        let mem = memory();
        let mut q = queue(8);
        q.set_event_idx(true);
        // used_event = 2: interrupt once the used index passes 2, i.e. reaches 3.
        mem.write_obj(2u16, GuestAddress(AVAIL + 4 + 2 * 8))
            .unwrap();
        let mut ring = Ring::new(&mut q, &mem).unwrap();
        ring.add_used(0, 1).unwrap();
        ring.add_used(1, 1).unwrap();
        assert!(!ring.needs_interrupt());
        ring.add_used(2, 1).unwrap();
        assert!(ring.needs_interrupt());
        // Nothing new since: no second interrupt for the same entries.
        assert!(!ring.needs_interrupt());
        ring.add_used(3, 1).unwrap();
        assert!(!ring.needs_interrupt());
    }

    #[test]
    fn without_event_idx_always_interrupts() {
        let mem = memory();
        let mut q = queue(8);
        let mut ring = Ring::new(&mut q, &mem).unwrap();
        assert!(ring.needs_interrupt());
    }

    #[test]
    fn buffers_are_found_in_any_region_and_never_cross_one() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0x2_0000), 0x1000),
        ])
        .unwrap();
        let mut q = queue(8);
        let ring = Ring::new(&mut q, &mem).unwrap();
        let at = |addr: u64, len: usize| {
            ring.buffer(GuestAddress(addr), len).map(|s| {
                let base = mem.get_host_address(GuestAddress(addr)).unwrap();
                assert_eq!((s.ptr_guard().as_ptr(), s.len()), (base as *const u8, len));
            })
        };
        assert!(at(0x100, 64).is_some());
        assert!(at(0x2_0100, 0xf00).is_some());
        // Back in the first region after the cache moved to the second.
        assert!(at(0xfff0, 0x10).is_some());
        assert!(at(0xfff0, 0x11).is_none());
        assert!(at(0x2_0100, 0xf01).is_none());
        assert!(at(0x1_8000, 1).is_none());
        assert!(at(u64::MAX, 1).is_none());
    }

    #[test]
    fn areas_outside_guest_memory_give_no_ring() {
        let mem = memory();
        let mut q = queue(8);
        q.set_used_ring_address(Some(0xfff8), Some(0));
        assert!(Ring::new(&mut q, &mem).is_none());
    }
}
