//! Fuzzes the virtio-blk device as a hostile guest would drive it: the descriptor table,
//! the avail ring and every request header come from the input, over a small real image.
//!
//! Checked: no panic, no hang (libFuzzer's `-timeout`), the image never changes size, the
//! used index in memory never runs ahead of the driver's avail index, and a read-only disk
//! is never written.

#![no_main]

use std::os::unix::fs::FileExt;

use devices::virtio::blk::{Block, QUEUE_SIZE};
use devices::virtio::{VirtioDevice, Wake};
use libfuzzer_sys::fuzz_target;
use netvmm_fuzz::Input;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 0x4_0000;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const BUFS: u64 = 0x3000;
const IMAGE: u64 = 64 * 1024;

fn image(readonly_pattern: u8) -> std::fs::File {
    let path = std::env::temp_dir().join(format!("netvmm-fuzz-blk-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    f.write_all_at(&vec![readonly_pattern; IMAGE as usize], 0)
        .unwrap();
    f
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let readonly = input.u8() & 1 == 1;
    let file = image(0x5a);
    let probe = file.try_clone().unwrap();
    let mut dev = Block::new(file, IMAGE, readonly, "fuzz");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    dev.activate(dev.features(), &mem).unwrap();

    // Descriptors: addresses mostly inside the buffer area, some anywhere at all.
    for i in 0..QUEUE_SIZE {
        if input.done() {
            break;
        }
        let addr = match input.u8() % 8 {
            0 => u64::from(input.u32()) << 12 | u64::from(input.u16()),
            _ => BUFS + u64::from(input.u16()) % (MEM - BUFS),
        };
        let len = match input.u8() % 4 {
            0 => input.u32(),
            1 => 1,
            2 => 16,
            _ => u32::from(input.u16()) & !511,
        };
        let d = Descriptor::new(addr, len, input.u16() & 7, input.u16() % QUEUE_SIZE);
        mem.write_obj(
            RawDescriptor::from(d),
            GuestAddress(DESC + 16 * u64::from(i)),
        )
        .unwrap();
    }
    // Request headers at the start of the buffer area, and the rest of it from the input.
    let mut at = BUFS;
    while !input.done() && at + 16 <= MEM {
        let kind = [0u32, 1, 4, 8, input.u32()][usize::from(input.u8() % 5)];
        mem.write_obj(kind, GuestAddress(at)).unwrap();
        mem.write_obj(u64::from(input.u16()), GuestAddress(at + 8))
            .unwrap();
        at += 16 + u64::from(input.u8());
    }
    // Publish: heads and an avail index from the input, then wake the device a few times.
    let avail = input.u16();
    for slot in 0..QUEUE_SIZE {
        mem.write_obj(
            input.u16() % QUEUE_SIZE,
            GuestAddress(AVAIL + 4 + 2 * u64::from(slot)),
        )
        .unwrap();
    }
    mem.write_obj(avail, GuestAddress(AVAIL + 2)).unwrap();
    for _ in 0..4 {
        dev.process(Wake::Queue(0), std::slice::from_mut(&mut q));
    }

    let used: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert!(
        used <= avail.max(QUEUE_SIZE),
        "used {used} ran past avail {avail}"
    );
    assert_eq!(
        probe.metadata().unwrap().len(),
        IMAGE,
        "the image changed size"
    );
    if readonly {
        let mut back = vec![0u8; IMAGE as usize];
        probe.read_exact_at(&mut back, 0).unwrap();
        assert!(
            back.iter().all(|&b| b == 0x5a),
            "a read-only image was written"
        );
    }
});
