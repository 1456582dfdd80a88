//! Fuzzes the virtio-mmio transport as a hostile driver drives it: register reads and
//! writes in any order (status transitions, feature negotiation, queue setup with queues of
//! up to 256 entries at any address, notify, interrupt acknowledge, config space, odd-sized
//! accesses), the contents of guest memory, frames from the network and the event loop's
//! wake-ups, with the real virtio-net device behind it on a backend that handles the
//! device's iovecs the way the tap path does.
//!
//! Checked: no panic, no hang (libFuzzer's `-timeout`), no access outside guest memory
//! (the address sanitizer sees the backend's reads and writes through the iovecs); status
//! and interrupt registers hold only defined bits; an active device has DRIVER_OK and FEATURES_OK and does not await a reset; a
//! device that awaits a reset sends nothing; the queues' readiness does not change between
//! DRIVER_OK and the reset.

#![no_main]

use devices::bus::BusDevice;
use devices::virtio::events::Transport;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::{Net, OFFERED_FEATURES};
use devices::virtio::{status, Wake};
use libfuzzer_sys::fuzz_target;
use netvmm_fuzz::{Backend, Input, STATUS_BITS};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

// Registers (virtio 1.2, 4.2.2).
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_SPACE: u64 = 0x100;
const REGISTERS: [u64; 26] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0fc, 0x100, 0x104, 0x108,
];
const INT_BITS: u32 = 1 | 2;

/// Guest memory, `[0, MEM_A)`. Not a second region that must stay untouched, as in the
/// virtio_net target: here the driver may put its rings over the buffers, so any byte may
/// be a descriptor. Queue q's table sits at `q * QUEUE_SPAN`, its avail ring 4 KiB later
/// and its used ring 1 KiB after that (room for 256 entries); buffers from `BUFS` on.
const MEM_A: u64 = 0x2_0000;
const QUEUE_SPAN: u64 = 0x2000;
const BUFS: u64 = 0x4000;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

fn layout(queue: u32) -> (u64, u64, u64) {
    let desc = u64::from(queue % 2) * QUEUE_SPAN;
    (desc, desc + 0x1000, desc + 0x1400)
}

/// A ring address: mostly where the driver's layout has it, sometimes anything at all.
fn ring_address(input: &mut Input, queue: u32, part: usize) -> u64 {
    let sel = input.u8();
    let (d, a, u) = layout(queue);
    let x = u64::from(input.u16());
    match sel % 8 {
        0 => MEM_A - (x % 0x900), // crossing the end of region A
        1 => MEM_A + x,           // past the end of memory
        2 => u64::from(input.u32()) << 32 | u64::from(input.u32()),
        3 => x % MEM_A,       // anywhere in A, maybe misaligned
        4 => [a, u, d][part], // a part where another one belongs
        _ => [d, a, u][part],
    }
}

fn register_value(input: &mut Input, reg: u64, queue_sel: u32) -> u32 {
    let sel = input.u8();
    if sel % 4 == 0 {
        return input.u32();
    }
    match reg {
        STATUS => [0, 1, 3, 0xb, 0xf, 0x7, 0x3, 0x8b, 0x4f, 0x80][usize::from(sel) % 10],
        QUEUE_NUM => [256, 128, 16, 1, 0, 255, 512][usize::from(sel) % 7],
        QUEUE_SEL | QUEUE_NOTIFY => u32::from(sel % 3),
        DRIVER_FEATURES => {
            let f = OFFERED_FEATURES & !(u64::from(input.u32()) << 32 | u64::from(input.u32()));
            if sel % 2 == 0 {
                f as u32
            } else {
                (f >> 32) as u32 | 1
            }
        }
        QUEUE_DESC_LOW | QUEUE_DRIVER_LOW | QUEUE_DEVICE_LOW => {
            let part = ((reg - QUEUE_DESC_LOW) / 0x10) as usize;
            ring_address(input, queue_sel, part) as u32
        }
        QUEUE_DESC_HIGH | QUEUE_DRIVER_HIGH | QUEUE_DEVICE_HIGH => u32::from(sel % 5 == 1),
        _ => u32::from(sel),
    }
}

struct Driver {
    t: MmioTransport<Net<Backend>>,
    mem: GuestMemoryMmap,
    queue_sel: u32,
    /// Whether the driver wrote a reset (status 0) since this was last cleared.
    reset: bool,
}

impl Driver {
    fn w(&mut self, offset: u64, v: u32) {
        if offset == QUEUE_SEL {
            self.queue_sel = v;
        }
        self.reset |= offset == STATUS && v == 0;
        self.t.write(offset, &v.to_le_bytes());
    }

    fn r(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// The whole initialisation (virtio 1.2, 3.1.1) with both queues at the layout's
    /// addresses, `size` entries each: gets the fuzzer to a running device quickly.
    fn init(&mut self, input: &mut Input) {
        let features = OFFERED_FEATURES & !u64::from(input.u32());
        let size = [256, 256, 64, 1][usize::from(input.u8() % 4)];
        self.w(STATUS, 0);
        self.w(STATUS, status::ACKNOWLEDGE);
        self.w(STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w(DEVICE_FEATURES_SEL, 1);
        for (sel, v) in [(0, features as u32), (1, (features >> 32) as u32)] {
            self.w(DRIVER_FEATURES_SEL, sel);
            self.w(DRIVER_FEATURES, v);
        }
        self.w(
            STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        for q in 0..2 {
            let (d, a, u) = layout(q);
            // A driver starts with empty rings.
            for at in [a, u] {
                self.mem.write_slice(&[0; 4], GuestAddress(at)).unwrap();
            }
            self.w(QUEUE_SEL, q);
            self.w(QUEUE_NUM, size);
            for (reg, v) in [
                (QUEUE_DESC_LOW, d),
                (QUEUE_DRIVER_LOW, a),
                (QUEUE_DEVICE_LOW, u),
            ] {
                self.w(reg, v as u32);
                self.w(reg + 4, 0);
            }
            self.w(QUEUE_READY, 1);
        }
        let s = self.r(STATUS);
        self.w(STATUS, s | status::DRIVER_OK);
    }

    /// One turn of the event loop: the queue eventfds that were written (by a notify or by
    /// the transport itself, for work a budget cut short) wake their queue.
    fn event_loop_turn(&mut self) {
        for q in 0..2u16 {
            if self.t.queue_events()[usize::from(q)].read().is_ok() {
                self.t.wake(Wake::Queue(q));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_A as usize)]).unwrap();
    // Descriptor tables, rings and buffers start as the input's bytes, repeated (memcpy:
    // a byte loop would dominate the run time under coverage tracing).
    if !data.is_empty() {
        let mut image = vec![0u8; MEM_A as usize];
        let mut filled = data.len().min(image.len());
        image[..filled].copy_from_slice(&data[..filled]);
        while filled < image.len() {
            let n = filled.min(image.len() - filled);
            image.copy_within(..n, filled);
            filled += n;
        }
        mem.write_slice(&image, GuestAddress(0)).unwrap();
    }

    let backend = Backend::new();
    let frames = backend.incoming.clone();
    let sent = backend.sent.clone();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(
        Net::new(backend, MAC),
        mem.clone(),
        irq.try_clone().unwrap(),
    )
    .unwrap();
    let mut drv = Driver {
        t,
        mem: mem.clone(),
        queue_sel: 0,
        reset: false,
    };

    // What a device awaiting its reset had sent when it stopped.
    let mut sent_when_stopped: Option<u64> = None;
    // Which queues were ready when DRIVER_OK was set.
    let mut ready_at_driver_ok: Option<Vec<bool>> = None;
    let mut steps = 0;
    while !input.done() && steps < 128 {
        steps += 1;
        let op = input.u8();
        match op % 16 {
            0..=3 => {
                let reg = REGISTERS[usize::from(input.u8()) % REGISTERS.len()];
                let v = register_value(&mut input, reg, drv.queue_sel);
                drv.w(reg, v);
            }
            4 => drv.init(&mut input),
            5 => {
                let offset = u64::from(input.u16() % 0x200);
                let len = [1, 2, 4, 8, 0, 3][usize::from(input.u8() % 6)];
                let mut buf = [0u8; 8];
                drv.t.read(offset, &mut buf[..len]);
                if offset >= CONFIG_SPACE + 8 {
                    assert!(
                        buf.iter().all(|&b| b == 0),
                        "config past its end at {offset:#x}"
                    );
                }
            }
            6 => {
                // Odd-sized, unaligned or config-space writes.
                let offset = u64::from(input.u16() % 0x200);
                let len = usize::from(input.u8() % 9);
                let bytes = input.u32().to_le_bytes();
                let data = [bytes, bytes].concat();
                drv.reset |= offset == STATUS && data[..len] == [0; 4];
                drv.t.write(offset, &data[..len]);
            }
            7 => {
                // A descriptor of queue 0 or 1, anything in it.
                let q = u32::from(input.u8() % 2);
                let (d, _, _) = layout(q);
                let i = u64::from(input.u8());
                let addr = match input.u8() % 8 {
                    0 => MEM_A - u64::from(input.u8()),
                    1 => u64::from(input.u32()) << 16,
                    _ => BUFS + u64::from(input.u16()) % (MEM_A - BUFS),
                };
                let len = match input.u8() % 4 {
                    0 => 0,
                    1 => input.u32(),
                    _ => u32::from(input.u16() % 4096),
                };
                let flags = u16::from(input.u8() & 7);
                let next = u16::from(input.u8());
                let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
                mem.write_obj(raw, GuestAddress(d + 16 * i)).unwrap();
            }
            8 => {
                // Publish chains on queue 0 or 1, or set the avail index to anything.
                let q = u32::from(input.u8() % 2);
                let (_, a, _) = layout(q);
                let idx_at = GuestAddress(a + 2);
                let n = input.u8();
                if n == 0xff {
                    mem.write_obj(input.u16(), idx_at).unwrap();
                } else {
                    let idx: u16 = mem.read_obj(idx_at).unwrap();
                    for k in 0..u16::from(n) {
                        let slot = a + 4 + 2 * u64::from(idx.wrapping_add(k) % 256);
                        mem.write_obj(u16::from(input.u8()), GuestAddress(slot))
                            .unwrap();
                    }
                    mem.write_obj(idx.wrapping_add(u16::from(n)), idx_at)
                        .unwrap();
                }
            }
            9 => {
                let len = match input.u8() % 4 {
                    0 => usize::from(input.u8() % 16),
                    1 => 65_562 - usize::from(input.u8()),
                    _ => usize::from(input.u16() % 2048),
                };
                frames.lock().unwrap().push_back(vec![input.u8(); len]);
            }
            10 => drv.t.wake(Wake::Backend(0)),
            11 => drv.t.wake(Wake::Activated),
            12 => drv.event_loop_turn(),
            13 => {
                // The guest's interrupt handler.
                let _ = irq.read();
                let s = drv.r(INTERRUPT_STATUS);
                drv.w(INTERRUPT_ACK, s & u32::from(input.u8()));
            }
            _ => {
                let v = register_value(&mut input, STATUS, 0);
                drv.w(STATUS, v);
            }
        }

        // The checks below follow the device from one reset to the next.
        if std::mem::take(&mut drv.reset) {
            sent_when_stopped = None;
            ready_at_driver_ok = None;
        }
        let s = drv.t.status();
        assert_eq!(s & !STATUS_BITS, 0, "status {s:#x}");
        assert_eq!(drv.r(STATUS), s);
        let i = drv.r(INTERRUPT_STATUS);
        assert_eq!(i & !INT_BITS, 0, "interrupt status {i:#x}");
        if drv.t.is_active() {
            let want = status::DRIVER_OK | status::FEATURES_OK;
            assert_eq!(s & want, want, "active with status {s:#x}");
            assert_eq!(s & status::DEVICE_NEEDS_RESET, 0, "active awaiting a reset");
        }
        let sent_now = *sent.lock().unwrap();
        if s & status::DEVICE_NEEDS_RESET != 0 {
            let before = *sent_when_stopped.get_or_insert(sent_now);
            assert_eq!(sent_now, before, "a device awaiting its reset sent frames");
        } else {
            sent_when_stopped = None;
        }
        let ready: Vec<bool> = drv
            .t
            .ring_state()
            .queues
            .iter()
            .map(Option::is_some)
            .collect();
        if s & status::DRIVER_OK != 0 {
            let at_ok = ready_at_driver_ok.get_or_insert_with(|| ready.clone());
            assert_eq!(&ready, at_ok, "queue readiness changed after DRIVER_OK");
        } else {
            ready_at_driver_ok = None;
        }
    }
});
