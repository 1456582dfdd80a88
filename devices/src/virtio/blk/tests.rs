//! virtio-blk through the [`VirtioDevice`] trait: a small driver writes descriptor tables
//! and rings into real guest memory, and the image is a real file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::chain::DESCRIPTORS_PER_WAKE;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const DESC_TABLE: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const DATA: u64 = 0x10000;
const MEM: usize = 4 << 20;
const DISK: u64 = 64 * 1024;

struct Rig {
    mem: GuestMemoryMmap,
    q: Queue,
    dev: Block,
    image: File,
    path: std::path::PathBuf,
    next_desc: u16,
    avail: u16,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Rig {
    fn new(readonly: bool) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "netvmm-blk-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let image = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        // Each sector holds its own number in every byte.
        for s in 0..DISK / SECTOR_SIZE {
            image
                .write_all_at(&[s as u8; SECTOR_SIZE as usize], s * SECTOR_SIZE)
                .unwrap();
        }
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        let mut dev = Block::new(
            image.try_clone().unwrap(),
            DISK,
            readonly,
            "netvmm-test-disk",
        );
        dev.activate(dev.features(), &mem).unwrap();
        Self {
            mem,
            q,
            dev,
            image,
            path,
            next_desc: 0,
            avail: 0,
        }
    }

    fn desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        self.mem
            .write_obj(d, GuestAddress(DESC_TABLE + 16 * u64::from(index)))
            .unwrap();
    }

    /// Offers a chain of (address, length, writable) buffers; returns its head.
    fn offer(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let index = head + i as u16;
            let last = i + 1 == bufs.len();
            let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.desc(index, addr, len, flags, index + 1);
        }
        self.next_desc += bufs.len() as u16;
        self.publish(head);
        head
    }

    fn publish(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail % QUEUE_SIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        self.mem
            .write_obj(self.avail, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    fn header(&self, at: u64, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(at)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    fn process(&mut self) -> Processed {
        self.dev
            .process(Wake::Queue(0), std::slice::from_mut(&mut self.q))
    }

    fn status(&self, at: u64) -> u8 {
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// The used ring's entries so far: (head, written length).
    fn used(&self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        (0..idx)
            .map(|i| {
                let at = USED + 4 + 8 * u64::from(i);
                (
                    self.mem.read_obj(GuestAddress(at)).unwrap(),
                    self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
                )
            })
            .collect()
    }

    /// A standard three-part request: header, one data buffer, status.
    fn request(&mut self, kind: u32, sector: u64, data_len: u32, data_writable: bool) -> u64 {
        let (hdr, data, status) = (DATA, DATA + 0x100, DATA + 0x8_0000);
        self.header(hdr, kind, sector);
        self.mem.write_obj(0xaau8, GuestAddress(status)).unwrap();
        let mut bufs = vec![(hdr, 16, false)];
        if data_len > 0 {
            bufs.push((data, data_len, data_writable));
        }
        bufs.push((status, 1, true));
        self.offer(&bufs);
        status
    }
}

#[test]
fn reads_whole_sectors_from_the_image() {
    let mut r = Rig::new(false);
    let status = r.request(T_IN, 3, 1024, true);
    assert_ne!(r.process().interrupt, 0);
    assert_eq!(r.status(status), S_OK);
    let mut got = [0u8; 1024];
    r.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x100))
        .unwrap();
    assert!(got[..512].iter().all(|&b| b == 3) && got[512..].iter().all(|&b| b == 4));
    assert_eq!(r.used(), vec![(0, 1025)]);
    assert_eq!(r.dev.stats().read_bytes, 1024);
}

#[test]
fn writes_reach_the_file_and_flush_succeeds() {
    let mut r = Rig::new(false);
    r.mem
        .write_slice(&[0x5a; 512], GuestAddress(DATA + 0x100))
        .unwrap();
    let status = r.request(T_OUT, 7, 512, false);
    r.process();
    assert_eq!(r.status(status), S_OK);
    let mut back = [0u8; 512];
    r.image.read_exact_at(&mut back, 7 * 512).unwrap();
    assert_eq!(back, [0x5a; 512]);
    let status = r.request(T_FLUSH, 0, 0, false);
    r.process();
    assert_eq!(r.status(status), S_OK);
    assert_eq!(r.dev.stats().flushes, 1);
    assert_eq!(r.used()[0].1, 1, "a write returns only its status byte");
}

#[test]
fn a_header_and_data_split_anyhow_still_parse() {
    // Header in two pieces, data in the same descriptor as the status.
    let mut r = Rig::new(false);
    r.header(DATA, T_IN, 1);
    let status_at = DATA + 0x200 + 512;
    r.offer(&[
        (DATA, 10, false),
        (DATA + 10, 6, false),
        (DATA + 0x200, 513, true),
    ]);
    r.process();
    assert_eq!(r.status(status_at), S_OK);
    let b: u8 = r.mem.read_obj(GuestAddress(DATA + 0x200 + 511)).unwrap();
    assert_eq!(b, 1);
}

#[test]
fn get_id_answers_the_serial() {
    let mut r = Rig::new(false);
    let status = r.request(T_GET_ID, 0, ID_LEN as u32, true);
    r.process();
    assert_eq!(r.status(status), S_OK);
    let mut id = [0u8; ID_LEN];
    r.mem
        .read_slice(&mut id, GuestAddress(DATA + 0x100))
        .unwrap();
    assert!(id.starts_with(b"netvmm-test-disk"));
}

#[test]
fn read_only_disks_refuse_writes_and_say_so() {
    let mut r = Rig::new(true);
    assert_ne!(r.dev.features() & F_RO, 0);
    let status = r.request(T_OUT, 0, 512, false);
    r.process();
    assert_eq!(r.status(status), S_IOERR);
    let mut back = [0u8; 512];
    r.image.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, [0; 512], "the image is unchanged");
    let status = r.request(T_IN, 0, 512, true);
    r.process();
    assert_eq!(r.status(status), S_OK, "reads still work");
}

#[test]
fn hostile_requests_end_in_ioerr_not_a_crash() {
    let cases: [(&str, u32, u64, u32, bool); 6] = [
        ("past the end", T_IN, DISK / 512, 512, true),
        ("straddling the end", T_IN, DISK / 512 - 1, 1024, true),
        ("sector overflow", T_IN, u64::MAX, 512, true),
        ("not whole sectors", T_IN, 0, 100, true),
        ("read into a device-readable buffer", T_IN, 0, 512, false),
        ("write from a device-writable buffer", T_OUT, 0, 512, true),
    ];
    for (what, kind, sector, len, writable) in cases {
        let mut r = Rig::new(false);
        let status = r.request(kind, sector, len, writable);
        r.process();
        assert_eq!(r.status(status), S_IOERR, "{what}");
        assert_eq!(r.dev.stats().errors, 1, "{what}");
    }
    let mut r = Rig::new(false);
    let status = r.request(99, 0, 0, false);
    r.process();
    assert_eq!(r.status(status), S_UNSUPP);
}

#[test]
fn data_outside_guest_memory_is_an_error() {
    let mut r = Rig::new(false);
    r.header(DATA, T_IN, 0);
    let status = DATA + 0x100;
    r.offer(&[
        (DATA, 16, false),
        (MEM as u64 - 256, 512, true),
        (status, 1, true),
    ]);
    r.process();
    assert_eq!(r.status(status), S_IOERR);
    r.header(DATA, T_IN, 0);
    r.offer(&[
        (DATA, 16, false),
        (u64::MAX - 100, 512, true),
        (status, 1, true),
    ]);
    r.process();
    assert_eq!(r.status(status), S_IOERR, "an address that would wrap");
}

#[test]
fn a_chain_without_room_for_a_status_is_returned_untouched() {
    let mut r = Rig::new(false);
    r.header(DATA, T_IN, 0);
    r.offer(&[(DATA, 16, false)]);
    r.offer(&[(DATA, 16, false), (DATA + 0x100, 0, true)]);
    r.process();
    assert_eq!(r.used(), vec![(0, 0), (1, 0)]);
    assert_eq!(r.dev.stats().dropped, 2);
}

#[test]
fn loops_long_chains_and_indirect_tables_are_dropped() {
    let mut r = Rig::new(false);
    r.header(DATA, T_IN, 0);
    // A chain that loops on itself through zero-length descriptors.
    r.desc(0, DATA, 16, F_NEXT, 1);
    r.desc(1, DATA + 0x100, 0, F_NEXT | F_WRITE, 1);
    r.publish(0);
    // An indirect descriptor (the feature is not offered).
    r.desc(2, DATA + 0x400, 32, F_INDIRECT, 0);
    r.publish(2);
    r.process();
    assert_eq!(r.used(), vec![(0, 0), (2, 0)]);
    assert_eq!(r.dev.stats().dropped, 2);
}

#[test]
fn a_hostile_ring_is_served_a_budget_at_a_time() {
    // 256 chains of 256 zero-length descriptors each (a queue size of reads apiece).
    let mut r = Rig::new(false);
    for i in 0..QUEUE_SIZE {
        let next = (i + 1) % QUEUE_SIZE;
        r.desc(i, DATA, 0, F_NEXT | F_WRITE, next);
    }
    for i in 0..QUEUE_SIZE {
        r.publish(i);
    }
    let mut turns = 0;
    loop {
        let done = r.process();
        turns += 1;
        let per_turn = DESCRIPTORS_PER_WAKE / u32::from(QUEUE_SIZE) + 1;
        assert!(r.used().len() as u32 <= turns * per_turn, "turn {turns}");
        if done.unfinished == 0 {
            break;
        }
        assert!(turns < 1000, "never finished");
    }
    assert_eq!(r.used().len(), usize::from(QUEUE_SIZE));
    assert!(turns > 1, "a budget must cut a hostile ring into turns");
}

#[test]
fn config_space_has_capacity_size_max_and_seg_max() {
    let r = Rig::new(false);
    let mut b = [0u8; 8];
    r.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), DISK / 512);
    let mut w = [0u8; 4];
    r.dev.read_config(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), SEG_MAX);
    r.dev.read_config(4096, &mut w);
    assert_eq!(w, [0; 4], "past the end reads as zero");
    assert_eq!(r.dev.device_type(), VIRTIO_ID_BLOCK);
    assert_eq!(r.dev.features() & F_RO, 0);
}

#[test]
fn nothing_is_served_before_activation_or_after_a_reset() {
    let mut r = Rig::new(false);
    r.dev.reset();
    let status = r.request(T_IN, 0, 512, true);
    assert_eq!(r.process(), Processed::default());
    assert_eq!(r.status(status), 0xaa, "untouched");
    let mem = r.mem.clone();
    r.dev.activate(r.dev.features(), &mem).unwrap();
    r.process();
    assert_eq!(r.status(status), S_OK);
}
