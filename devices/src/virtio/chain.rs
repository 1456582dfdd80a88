//! Walking a guest's descriptor chains (virtio 1.2, 2.7.5) within limits the device sets,
//! and the budget that bounds the ring work of one wake-up.
//!
//! Not virtio-queue's `DescriptorChain` iterator: it follows INDIRECT tables of up to 65535
//! entries whether or not the feature was negotiated, and ends a bad chain silently, so a
//! caller cannot tell a loop from the end of a chain.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileMemory, VolatileSlice};

use super::ring::Ring;

/// Descriptors one wake-up of a device may read before it leaves the rest for a later
/// turn of the event loop. A well-behaved driver never has more than a queue size (256)
/// of descriptors in flight, so a full ring fits with room for what it adds meanwhile;
/// a hostile one costs at most this plus one chain per wake-up, and the other devices on
/// the event thread (and the vCPUs waiting for the transport's lock) get their turn.
pub const DESCRIPTORS_PER_WAKE: u32 = 512;

/// Feature bit: the driver may put a chain in a table of its own (virtio 1.2, 2.7.5.3).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

/// Size of one split-ring descriptor in guest memory.
const DESC_SIZE: u32 = 16;

/// Why an indirect table was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadTable {
    /// Not a whole number of 16-byte descriptors, or none at all.
    Length,
    /// More entries than the queue has: a chain may not be longer than the queue
    /// (virtio 1.2, 2.7.5.3.1), indirect or not.
    TooBig,
    /// INDIRECT together with NEXT, which a driver must not set (2.7.5.3.1).
    AlsoNext,
    /// Some of it is not guest memory.
    OutOfMemory,
}

impl std::fmt::Display for BadTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Length => "its length is not a non-zero multiple of 16",
            Self::TooBig => "it has more entries than the queue",
            Self::AlsoNext => "it also has NEXT set",
            Self::OutOfMemory => "it is not in guest memory",
        })
    }
}

/// Why a chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor {index} is past the end of the {size}-entry table")]
    OutOfTable { index: u16, size: u16 },
    #[error("descriptor {index} cannot be read from guest memory")]
    Unreadable { index: u16 },
    /// The driver did not negotiate VIRTIO_RING_F_INDIRECT_DESC (or the device does not
    /// offer it).
    #[error("descriptor {index} refers to an indirect table, which was not negotiated")]
    Indirect { index: u16 },
    /// An indirect table's entry refers to another table (2.7.5.3.1 forbids it).
    #[error("descriptor {index} of an indirect table refers to another table")]
    NestedIndirect { index: u16 },
    #[error("descriptor {index} refers to an indirect table of {len} bytes, refused: {why}")]
    BadIndirect { index: u16, len: u32, why: BadTable },
    /// More descriptors than the table has: the chain loops.
    #[error("the chain is longer than the {size}-entry table")]
    TooLong { size: u16 },
}

/// Which table the walk is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// The queue's own table; indirect tables refused.
    Queue,
    /// The queue's own table; the driver negotiated indirect tables.
    QueueOrIndirect,
    /// An indirect table: the rest of the chain is in it.
    Indirect,
}

/// The descriptors of one chain, in order; an error ends the walk. Zero-length descriptors
/// count like any other: a chain yields at most a queue size of descriptors from the
/// queue's table, and as many again from one indirect table, if negotiated.
pub struct Chain<'a> {
    mem: &'a GuestMemoryMmap,
    /// The table the walk is in, already in host memory.
    table: VolatileSlice<'a>,
    size: u16,
    /// The queue's size: the most entries an indirect table may have.
    queue_size: u16,
    kind: Table,
    next: Option<u16>,
    /// Descriptors read in the current table.
    read_here: u32,
    read: u32,
}

impl<'a> Chain<'a> {
    /// The chain that starts at descriptor `head` of `ring`'s table; `indirect` says
    /// whether the driver negotiated VIRTIO_RING_F_INDIRECT_DESC.
    pub fn new(ring: &Ring<'a>, head: u16, indirect: bool) -> Self {
        Self {
            mem: ring.mem(),
            table: *ring.descriptors(),
            size: ring.size(),
            queue_size: ring.size(),
            kind: if indirect {
                Table::QueueOrIndirect
            } else {
                Table::Queue
            },
            next: Some(head),
            read_here: 0,
            read: 0,
        }
    }

    /// Descriptors read from guest memory so far: the work this chain cost.
    pub fn read(&self) -> u32 {
        self.read
    }

    /// Moves the walk into the table `desc` (descriptor `index`) refers to, if it is one
    /// the device accepts.
    fn enter_table(&mut self, index: u16, desc: &Descriptor) -> Result<(), ChainError> {
        let len = desc.len();
        let bad = |why| ChainError::BadIndirect { index, len, why };
        match self.kind {
            Table::Queue => return Err(ChainError::Indirect { index }),
            Table::Indirect => return Err(ChainError::NestedIndirect { index }),
            Table::QueueOrIndirect => {}
        }
        if desc.has_next() {
            return Err(bad(BadTable::AlsoNext));
        }
        if len == 0 || !len.is_multiple_of(DESC_SIZE) {
            return Err(bad(BadTable::Length));
        }
        let entries = len / DESC_SIZE;
        if entries > u32::from(self.queue_size) {
            return Err(bad(BadTable::TooBig));
        }
        // One slice, so a table across two regions is refused too: in vmm's memory layout
        // regions never touch, so such a table has a hole in it anyway.
        self.table = self
            .mem
            .get_slice(desc.addr(), len as usize)
            .map_err(|_| bad(BadTable::OutOfMemory))?;
        // At most the queue size, which is a u16.
        self.size = entries as u16;
        self.kind = Table::Indirect;
        self.read_here = 0;
        self.next = Some(0);
        Ok(())
    }

    fn read_desc(&mut self, index: u16) -> Result<Descriptor, ChainError> {
        if self.read_here >= u32::from(self.size) {
            return Err(ChainError::TooLong { size: self.size });
        }
        if index >= self.size {
            return Err(ChainError::OutOfTable {
                index,
                size: self.size,
            });
        }
        self.read += 1;
        self.read_here += 1;
        // One volatile read: the guest may be rewriting the entry meanwhile, and each
        // field is checked where it is used.
        self.table
            .get_ref::<Descriptor>(DESC_SIZE as usize * usize::from(index))
            .map(|d| d.load())
            .map_err(|_| ChainError::Unreadable { index })
    }
}

impl Iterator for Chain<'_> {
    type Item = Result<Descriptor, ChainError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let index = self.next.take()?;
            let desc = match self.read_desc(index) {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            if desc.refers_to_indirect_table() {
                // The table's descriptors are the chain's; this one carries no data.
                match self.enter_table(index, &desc) {
                    Ok(()) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            if desc.has_next() {
                self.next = Some(desc.next());
            }
            return Some(Ok(desc));
        }
    }
}

/// What is left of a wake-up's [`DESCRIPTORS_PER_WAKE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    left: u32,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            left: DESCRIPTORS_PER_WAKE,
        }
    }
}

impl Budget {
    /// Charges a chain that read `descriptors` descriptors; one whose head was not even
    /// readable still cost an avail ring entry, so every chain costs at least one.
    pub fn charge(&mut self, descriptors: u32) {
        self.left = self.left.saturating_sub(descriptors.max(1));
    }

    pub fn spent(&self) -> bool {
        self.left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    const F_NEXT: u16 = 1;
    const F_INDIRECT: u16 = 4;

    fn queue(size: u16, table: u32) -> Queue {
        let mut q = Queue::new(size).unwrap();
        q.set_desc_table_address(Some(table), Some(0));
        q
    }

    fn set_at(mem: &GuestMemoryMmap, table: u64, i: u16, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(Descriptor::new(0x8000, len, flags, next));
        mem.write_obj(d, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }

    fn set(mem: &GuestMemoryMmap, i: u16, len: u32, flags: u16, next: u16) {
        set_at(mem, 0x1000, i, len, flags, next);
    }

    fn walk(mem: &GuestMemoryMmap, q: &mut Queue, head: u16) -> (usize, Option<ChainError>, u32) {
        walk_with(mem, q, head, false)
    }

    fn walk_with(
        mem: &GuestMemoryMmap,
        q: &mut Queue,
        head: u16,
        indirect: bool,
    ) -> (usize, Option<ChainError>, u32) {
        let ring = Ring::new(q, mem).unwrap();
        let mut chain = Chain::new(&ring, head, indirect);
        let mut ok = 0;
        let mut err = None;
        for d in chain.by_ref() {
            match d {
                Ok(_) => ok += 1,
                Err(e) => err = Some(e),
            }
        }
        (ok, err, chain.read())
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap()
    }

    #[test]
    fn a_plain_chain_ends_where_next_is_not_set() {
        let mem = memory();
        let mut q = queue(8, 0x1000);
        set(&mem, 2, 12, F_NEXT, 5);
        set(&mem, 5, 100, 0, 0);
        assert_eq!(walk(&mem, &mut q, 2), (2, None, 2));
    }

    #[test]
    fn zero_length_self_loop_stops_at_the_queue_size() {
        let mem = memory();
        let mut q = queue(256, 0x1000);
        set(&mem, 0, 0, F_NEXT, 0);
        assert_eq!(
            walk(&mem, &mut q, 0),
            (256, Some(ChainError::TooLong { size: 256 }), 256)
        );
    }

    #[test]
    fn indirect_descriptor_is_refused_without_reading_its_table() {
        let mem = memory();
        let mut q = queue(16, 0x1000);
        set(&mem, 0, 12, F_NEXT, 1);
        set(&mem, 1, 16 * 4096, F_INDIRECT, 0);
        assert_eq!(
            walk(&mem, &mut q, 0),
            (1, Some(ChainError::Indirect { index: 1 }), 2)
        );
    }

    #[test]
    fn next_past_the_table_or_out_of_memory_is_an_error() {
        let mem = memory();
        let mut q = queue(16, 0x1000);
        set(&mem, 0, 12, F_NEXT, 16);
        assert_eq!(
            walk(&mem, &mut q, 0),
            (
                1,
                Some(ChainError::OutOfTable {
                    index: 16,
                    size: 16
                }),
                1
            )
        );
        // A table that runs past the end of memory is refused before any chain is walked.
        let mut q = queue(16, 0xfff0);
        assert!(Ring::new(&mut q, &mem).is_none());
    }

    /// A queue at 0x1000 whose descriptor 0 refers to a table at 0x4000 of `len` bytes
    /// with `flags` besides INDIRECT.
    fn indirect_queue(mem: &GuestMemoryMmap, size: u16, len: u32, flags: u16) -> Queue {
        let q = queue(size, 0x1000);
        let d = RawDescriptor::from(Descriptor::new(0x4000, len, F_INDIRECT | flags, 0));
        mem.write_obj(d, GuestAddress(0x1000)).unwrap();
        q
    }

    #[test]
    fn a_negotiated_indirect_table_is_walked_in_place_of_its_descriptor() {
        let mem = memory();
        let mut q = indirect_queue(&mem, 16, 3 * 16, 0);
        set_at(&mem, 0x4000, 0, 12, F_NEXT, 2);
        set_at(&mem, 0x4000, 2, 0, F_NEXT, 1);
        set_at(&mem, 0x4000, 1, 100, 0, 0);
        let ring = Ring::new(&mut q, &mem).unwrap();
        let mut chain = Chain::new(&ring, 0, true);
        let lens: Vec<u32> = chain.by_ref().map(|d| d.unwrap().len()).collect();
        assert_eq!(lens, [12, 0, 100]);
        // The indirect descriptor itself was read too.
        assert_eq!(chain.read(), 4);
    }

    #[test]
    fn an_indirect_table_that_loops_stops_at_its_own_size() {
        let mem = memory();
        let mut q = indirect_queue(&mem, 256, 4 * 16, 0);
        // Zero-length entries that point at each other: they count.
        for i in 0..4 {
            set_at(&mem, 0x4000, i, 0, F_NEXT, (i + 1) % 4);
        }
        assert_eq!(
            walk_with(&mem, &mut q, 0, true),
            (4, Some(ChainError::TooLong { size: 4 }), 5)
        );
        // A next index past the table's end.
        set_at(&mem, 0x4000, 1, 0, F_NEXT, 4);
        assert_eq!(
            walk_with(&mem, &mut q, 0, true).1,
            Some(ChainError::OutOfTable { index: 4, size: 4 })
        );
    }

    #[test]
    fn hostile_indirect_tables_are_refused_before_any_entry_is_read() {
        let mem = memory();
        let refused = |size: u16, len: u32, flags: u16, why: BadTable| {
            let mut q = indirect_queue(&mem, size, len, flags);
            let err = ChainError::BadIndirect { index: 0, len, why };
            assert_eq!(
                walk_with(&mem, &mut q, 0, true),
                (0, Some(err), 1),
                "{why:?}"
            );
        };
        refused(16, 0, 0, BadTable::Length);
        refused(16, 17, 0, BadTable::Length);
        refused(16, 16 * 8 + 8, 0, BadTable::Length);
        // 65535 entries in a 16-entry queue, and one more than the queue.
        refused(16, 16 * 4095, 0, BadTable::TooBig);
        refused(16, 16 * 17, 0, BadTable::TooBig);
        refused(16, 16, F_NEXT, BadTable::AlsoNext);
        // A table that runs past the end of guest memory (0xf000 + 0x4000 > 0x1_0000).
        let mut q = queue(1024, 0x1000);
        let d = RawDescriptor::from(Descriptor::new(0xf000, 16 * 1024, F_INDIRECT, 0));
        mem.write_obj(d, GuestAddress(0x1000)).unwrap();
        let why = BadTable::OutOfMemory;
        let err = ChainError::BadIndirect {
            index: 0,
            len: 16 * 1024,
            why,
        };
        assert_eq!(walk_with(&mem, &mut q, 0, true), (0, Some(err), 1));
        // Exactly the queue size, up to the last byte of memory, is fine.
        let mut q = indirect_queue(&mem, 16, 16 * 16, 0);
        set_at(&mem, 0x4000, 0, 64, 0, 0);
        assert_eq!(walk_with(&mem, &mut q, 0, true), (1, None, 2));
    }

    #[test]
    fn an_indirect_table_inside_an_indirect_table_is_refused() {
        let mem = memory();
        let mut q = indirect_queue(&mem, 16, 2 * 16, 0);
        set_at(&mem, 0x4000, 0, 12, F_NEXT, 1);
        set_at(&mem, 0x4000, 1, 16, F_INDIRECT, 0);
        assert_eq!(
            walk_with(&mem, &mut q, 0, true),
            (1, Some(ChainError::NestedIndirect { index: 1 }), 3)
        );
    }

    #[test]
    fn direct_descriptors_may_lead_to_an_indirect_table() {
        let mem = memory();
        let mut q = queue(16, 0x1000);
        set(&mem, 0, 12, F_NEXT, 1);
        set_at(&mem, 0x1000, 1, 0, 0, 0);
        let d = RawDescriptor::from(Descriptor::new(0x4000, 16, F_INDIRECT, 0));
        mem.write_obj(d, GuestAddress(0x1000 + 16)).unwrap();
        set_at(&mem, 0x4000, 0, 50, 0, 0);
        assert_eq!(walk_with(&mem, &mut q, 0, true), (2, None, 3));
    }

    #[test]
    fn budget_charges_at_least_one_per_chain() {
        let mut b = Budget::default();
        for _ in 0..DESCRIPTORS_PER_WAKE - 1 {
            b.charge(0);
        }
        assert!(!b.spent());
        b.charge(300);
        assert!(b.spent());
    }
}
