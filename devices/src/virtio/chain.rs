//! Walking a guest's descriptor chains (virtio 1.2, 2.7.5) within limits the device sets,
//! and the budget that bounds the ring work of one wake-up.
//!
//! Not virtio-queue's `DescriptorChain` iterator: it follows INDIRECT tables of up to 65535
//! entries whether or not the feature was negotiated, and ends a bad chain silently, so a
//! caller cannot tell a loop from the end of a chain.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Descriptors one wake-up of a device may read before it leaves the rest for a later
/// turn of the event loop. A well-behaved driver never has more than a queue size (256)
/// of descriptors in flight, so a full ring fits with room for what it adds meanwhile;
/// a hostile one costs at most this plus one chain per wake-up, and the other devices on
/// the event thread (and the vCPUs waiting for the transport's lock) get their turn.
pub const DESCRIPTORS_PER_WAKE: u32 = 512;

/// Why a chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor {index} is past the end of the {size}-entry table")]
    OutOfTable { index: u16, size: u16 },
    #[error("descriptor {index} cannot be read from guest memory")]
    Unreadable { index: u16 },
    /// The device does not offer VIRTIO_RING_F_INDIRECT_DESC, so the driver cannot have
    /// negotiated it.
    #[error("descriptor {index} refers to an indirect table, which was not negotiated")]
    Indirect { index: u16 },
    /// More descriptors than the table has: the chain loops.
    #[error("the chain is longer than the {size}-entry queue")]
    TooLong { size: u16 },
}

/// The descriptors of one chain, in order; an error ends the walk. Zero-length descriptors
/// count like any other: a chain yields at most a queue size of descriptors.
pub struct Chain<'a> {
    mem: &'a GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    next: Option<u16>,
    read: u32,
}

impl<'a> Chain<'a> {
    /// The chain that starts at descriptor `head` of `q`'s table.
    pub fn new(mem: &'a GuestMemoryMmap, q: &Queue, head: u16) -> Self {
        Self {
            mem,
            table: GuestAddress(q.desc_table()),
            size: q.size(),
            next: Some(head),
            read: 0,
        }
    }

    /// Descriptors read from guest memory so far: the work this chain cost.
    pub fn read(&self) -> u32 {
        self.read
    }
}

impl Iterator for Chain<'_> {
    type Item = Result<Descriptor, ChainError>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next.take()?;
        if self.read >= u32::from(self.size) {
            return Some(Err(ChainError::TooLong { size: self.size }));
        }
        if index >= self.size {
            return Some(Err(ChainError::OutOfTable {
                index,
                size: self.size,
            }));
        }
        self.read += 1;
        let desc: Descriptor = match self
            .table
            .checked_add(16 * u64::from(index))
            .and_then(|at| self.mem.read_obj(at).ok())
        {
            Some(d) => d,
            None => return Some(Err(ChainError::Unreadable { index })),
        };
        if desc.refers_to_indirect_table() {
            return Some(Err(ChainError::Indirect { index }));
        }
        if desc.has_next() {
            self.next = Some(desc.next());
        }
        Some(Ok(desc))
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

    fn walk(mem: &GuestMemoryMmap, q: &Queue, head: u16) -> (usize, Option<ChainError>, u32) {
        let mut chain = Chain::new(mem, q, head);
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
        let q = queue(8, 0x1000);
        set(&mem, 2, 12, F_NEXT, 5);
        set(&mem, 5, 100, 0, 0);
        assert_eq!(walk(&mem, &q, 2), (2, None, 2));
    }

    #[test]
    fn zero_length_self_loop_stops_at_the_queue_size() {
        let mem = memory();
        let q = queue(256, 0x1000);
        set(&mem, 0, 0, F_NEXT, 0);
        assert_eq!(
            walk(&mem, &q, 0),
            (256, Some(ChainError::TooLong { size: 256 }), 256)
        );
    }

    #[test]
    fn indirect_descriptor_is_refused_without_reading_its_table() {
        let mem = memory();
        let q = queue(16, 0x1000);
        set(&mem, 0, 12, F_NEXT, 1);
        set(&mem, 1, 16 * 4096, F_INDIRECT, 0);
        assert_eq!(
            walk(&mem, &q, 0),
            (1, Some(ChainError::Indirect { index: 1 }), 2)
        );
    }

    #[test]
    fn next_past_the_table_or_out_of_memory_is_an_error() {
        let mem = memory();
        let q = queue(16, 0x1000);
        set(&mem, 0, 12, F_NEXT, 16);
        assert_eq!(
            walk(&mem, &q, 0),
            (
                1,
                Some(ChainError::OutOfTable {
                    index: 16,
                    size: 16
                }),
                1
            )
        );
        // A table whose descriptor 0 is the last 16 bytes of memory.
        let q = queue(16, 0xfff0);
        set_at(&mem, 0xfff0, 0, 12, F_NEXT, 1);
        let (ok, err, _) = walk(&mem, &q, 0);
        assert_eq!((ok, err), (1, Some(ChainError::Unreadable { index: 1 })));
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
