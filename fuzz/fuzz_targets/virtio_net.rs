//! Fuzzes the virtio-net device as a hostile guest and a hostile network would drive it:
//! descriptor tables, avail rings and the contents of guest memory come from the input, and
//! so do the frames the backend hands to the device. TX and RX run through
//! `VirtioDevice::process` with every kind of wake-up. One setup bit makes it a NIC of two
//! queue pairs with MQ and a control queue, whose commands come from the input too.
//!
//! Checked: no panic, no hang (libFuzzer's `-timeout`), no write to guest memory that no
//! descriptor can reach, and the used index in memory in step with the device's.

#![no_main]

use devices::virtio::chain::VIRTIO_RING_F_INDIRECT_DESC;
use devices::virtio::net::{
    Net, F_CTRL_VQ, F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, F_MQ, F_MRG_RXBUF, MAX_FRAME_LEN,
};
use devices::virtio::{VirtioDevice, Wake, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use libfuzzer_sys::fuzz_target;
use netvmm_fuzz::{Backend, Input};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Region A: rings below `BUFS`, buffers from `BUFS` up.
const MEM_A: u64 = 0x1_0000;
const BUFS: u64 = 0x2000;
const RXQ_AT: u64 = 0x0;
const TXQ_AT: u64 = 0x1000;
/// Region B, after a gap: no descriptor address is ever placed in it, so the device must
/// never write it.
const MEM_B: u64 = 0x10_0000;
const MEM_B_LEN: usize = 0x1000;
/// Region C: indirect tables built from the input, each entry like a ring descriptor
/// (never pointing into B or C). No descriptor address is ever placed in it either, so it
/// must never change.
const MEM_C: u64 = 0x20_0000;
const MEM_C_ENTRIES: u64 = 256;
const MEM_C_LEN: usize = 16 * MEM_C_ENTRIES as usize;
/// Region D: the rings of a second queue pair and the control queue (rx1, tx1, ctrl),
/// 0x1000 apart; like region A's rings, written by the device only through its rings
/// (no descriptor address is ever placed in it).
const MEM_D: u64 = 0x30_0000;
const MEM_D_LEN: usize = 0x3000;
const PAINT: u8 = 0xa5;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

#[derive(Clone, Copy)]
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
}

impl Ring {
    fn create(mem: &GuestMemoryMmap, start: u64, size: u16) -> (Ring, Queue) {
        let avail = start + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        for (at, len) in [
            (avail, 6 + 2 * u64::from(size)),
            (used, 6 + 8 * u64::from(size)),
        ] {
            mem.write_slice(&vec![0; len as usize], GuestAddress(at))
                .unwrap();
        }
        let mut q = Queue::new(size).unwrap();
        q.set_desc_table_address(Some(start as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_ready(true);
        let ring = Ring {
            desc: start,
            avail,
            used,
            size,
        };
        (ring, q)
    }

    fn avail_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.avail + 2)).unwrap()
    }

    fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    fn publish(&self, mem: &GuestMemoryMmap, head: u16) {
        let idx = self.avail_idx(mem);
        let slot = self.avail + 4 + 2 * u64::from(idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.set_avail_idx(mem, idx.wrapping_add(1));
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }
}

/// A descriptor address: mostly a buffer in region A, sometimes something hostile; never in
/// region B.
fn address(input: &mut Input) -> u64 {
    let sel = input.u8();
    let x = u64::from(input.u16());
    match sel % 16 {
        0 => MEM_A - (x % 64),          // crossing the end of region A
        1 => MEM_A + (x % 0x1000),      // in the gap
        2 => u64::MAX - (x % 0x1000),   // wraps around
        3 => (1 << 47) + x,             // far out
        4 => x % BUFS,                  // over the rings themselves
        _ => BUFS + x % (MEM_A - BUFS), // a buffer
    }
}

fn length(input: &mut Input) -> u32 {
    let sel = input.u8();
    match sel % 16 {
        0 => 0,
        1 => u32::MAX - u32::from(input.u8()),
        2 => input.u32(),
        3 | 4 => u32::from(input.u16()) + u32::from(input.u8()) * 0x1_0000,
        _ => u32::from(input.u16()) % 4096,
    }
}

fn frame(input: &mut Input) -> Vec<u8> {
    let sel = input.u8();
    let len = match sel % 8 {
        0 => usize::from(input.u8()) % 16,
        1 => MAX_FRAME_LEN - 64 + usize::from(input.u8()),
        2 => usize::from(input.u16()),
        _ => usize::from(input.u16()) % 2048,
    };
    // The device never parses a frame: contents hardly matter, the header bytes aside.
    let mut f = vec![input.u8(); len];
    for b in f.iter_mut().take(12) {
        *b = input.u8();
    }
    f
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MEM_A as usize),
        (GuestAddress(MEM_B), MEM_B_LEN),
        (GuestAddress(MEM_C), MEM_C_LEN),
        (GuestAddress(MEM_D), MEM_D_LEN),
    ])
    .unwrap();
    // The input also makes up the buffers' contents (and so any indirect tables). Built
    // with memcpy: a byte loop here would dominate the run time under coverage tracing.
    if !data.is_empty() {
        let len = (MEM_A - BUFS) as usize;
        let mut image = vec![0u8; len];
        let mut filled = data.len().min(len);
        image[..filled].copy_from_slice(&data[..filled]);
        while filled < len {
            let n = filled.min(len - filled);
            image.copy_within(..n, filled);
            filled += n;
        }
        mem.write_slice(&image, GuestAddress(BUFS)).unwrap();
    }
    mem.write_slice(&[PAINT; MEM_B_LEN], GuestAddress(MEM_B))
        .unwrap();

    let setup = input.u8();
    let size = 1u16 << (setup % 8).min(6);
    let mut features = VIRTIO_F_VERSION_1;
    if setup & 0x08 != 0 {
        features |= F_MRG_RXBUF;
    }
    if setup & 0x10 != 0 {
        features |= F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6;
    }
    let event_idx = setup & 0x20 != 0;
    if event_idx {
        features |= VIRTIO_RING_F_EVENT_IDX;
    }
    let indirect = setup & 0x40 != 0;
    if indirect {
        features |= VIRTIO_RING_F_INDIRECT_DESC;
    }
    let multiqueue = setup & 0x80 != 0;
    if multiqueue {
        features |= F_MQ | F_CTRL_VQ;
    }
    let (rx, rxq) = Ring::create(&mem, RXQ_AT, size);
    let (tx, txq) = Ring::create(&mem, TXQ_AT, size);
    let mut rings = vec![rx, tx];
    let mut queues = vec![rxq, txq];
    if multiqueue {
        // rx1, tx1, ctrl.
        for i in 0..3 {
            let (r, q) = Ring::create(&mem, MEM_D + 0x1000 * i, size);
            rings.push(r);
            queues.push(q);
        }
    }
    for q in &mut queues {
        q.set_event_idx(event_idx);
    }

    // Whether any buffer may overlap the rings: then the used index is the guest's to lose.
    let mut rings_exposed = false;
    // Whether an indirect table may hold any address at all (one in region A, whose bytes
    // are the input's and a frame's): then B may be written through it.
    let mut b_exposed = false;
    if indirect {
        for i in 0..MEM_C_ENTRIES {
            let addr = address(&mut input);
            let len = length(&mut input);
            // Now and then a nested table, which must be refused.
            let flags = u16::from(input.u8()) & (F_NEXT | F_WRITE | F_INDIRECT);
            let next = u16::from(input.u8());
            rings_exposed |= addr < BUFS && flags & F_WRITE != 0;
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            mem.write_obj(d, GuestAddress(MEM_C + 16 * i)).unwrap();
        }
    }
    for &ring in &rings {
        for i in 0..size {
            let mut addr = address(&mut input);
            let mut len = length(&mut input);
            let flags = u16::from(input.u8()) & (F_NEXT | F_WRITE | F_INDIRECT);
            let next = u16::from(input.u8());
            if flags & F_INDIRECT != 0 && indirect && input.u8() % 4 != 0 {
                // Mostly a table in region C: some entries of it, sometimes too many or
                // a length that is not a multiple of 16.
                let first = u64::from(input.u8());
                addr = MEM_C + 16 * first;
                len = match input.u8() % 8 {
                    0 => u32::from(input.u16()),
                    _ => 16 * (1 + u32::from(input.u8()) % (MEM_C_ENTRIES - first) as u32),
                };
            } else if flags & F_INDIRECT != 0 {
                // A table anywhere: the input bytes (and frames) make up its entries. (Not
                // negotiated, it is refused unread; the used index stays unchecked anyway.)
                rings_exposed = true;
                b_exposed |= indirect;
            }
            rings_exposed |= addr < BUFS && flags & F_WRITE != 0;
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            mem.write_obj(d, GuestAddress(ring.desc + 16 * u64::from(i)))
                .unwrap();
        }
    }
    let mut c_before = vec![0u8; MEM_C_LEN];
    mem.read_slice(&mut c_before, GuestAddress(MEM_C)).unwrap();

    let backend = Backend::new();
    let second = Backend::new();
    let frames = [backend.incoming.clone(), second.incoming.clone()];
    let more = if multiqueue { vec![second] } else { Vec::new() };
    let mut net = Net::new(backend, [0x52, 0x54, 0, 0, 0, 1]).with_more_pairs(more);
    assert_eq!(net.queue_max_sizes().len(), queues.len());
    net.activate(features, &mem).unwrap();
    let pairs = if multiqueue { 2 } else { 1 };

    // Then a script of guest and network actions.
    let mut steps = 0;
    while !input.done() && steps < 64 {
        steps += 1;
        let op = input.u8();
        match op % 12 {
            0 => {
                net.process(Wake::Queue(0), &mut queues);
            }
            1 => {
                net.process(Wake::Queue(1), &mut queues);
            }
            2 => {
                net.process(Wake::Backend(u16::from(input.u8() % 3)), &mut queues);
            }
            3 => {
                net.process(Wake::Activated, &mut queues);
            }
            4 => {
                net.process(Wake::Queue(u16::from(input.u8())), &mut queues);
            }
            5 | 6 => {
                // RX or TX of either pair, or (5 with a high byte) the control queue.
                let pick = usize::from(input.u8());
                let ring = match (op % 12, multiqueue) {
                    (5, true) if pick % 3 == 2 => rings[4],
                    (which, _) => rings[2 * (pick % pairs) + usize::from(which == 6)],
                };
                for _ in 0..input.u8() % (size as u8).saturating_add(1) {
                    ring.publish(&mem, u16::from(input.u8()) % (size + 2));
                }
            }
            7 => {
                // An index that says anything at all.
                let ring = rings[usize::from(input.u8()) % rings.len()];
                ring.set_avail_idx(&mem, input.u16());
            }
            8 | 9 => {
                let p = usize::from(input.u8()) % pairs;
                frames[p].lock().unwrap().push_back(frame(&mut input))
            }
            10 => {
                // A frame arrives and the backend fd becomes readable.
                let p = usize::from(input.u8()) % pairs;
                frames[p].lock().unwrap().push_back(frame(&mut input));
                net.process(Wake::Backend(p as u16), &mut queues);
            }
            _ => {
                net.reset();
                net.activate(features, &mem).unwrap();
            }
        }
    }

    let mut b = [0u8; MEM_B_LEN];
    mem.read_slice(&mut b, GuestAddress(MEM_B)).unwrap();
    assert!(
        b_exposed || b == [PAINT; MEM_B_LEN],
        "device wrote guest memory that no descriptor reaches"
    );
    let mut c = vec![0u8; MEM_C_LEN];
    mem.read_slice(&mut c, GuestAddress(MEM_C)).unwrap();
    assert!(c == c_before, "device wrote an indirect table");
    if !rings_exposed {
        for (ring, q) in rings.iter().zip(&queues) {
            assert_eq!(ring.used_idx(&mem), q.next_used(), "used index out of step");
        }
        assert!((1..=pairs).contains(&net.active_pairs()));
    }
});
