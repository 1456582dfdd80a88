//! Fuzzes the virtio-pci transport as a hostile driver drives it: configuration space
//! reads and writes at any offset and size (BAR sizing and moving, the command register,
//! MSI-X enable and function mask, the PCI cfg access window), BAR 0 accesses anywhere
//! (common configuration in any order, ISR, device configuration, notifications, MSI-X
//! table and PBA), guest memory contents, frames from the network and the event loop's
//! wake-ups, with the real virtio-net device behind it.
//!
//! Checked: no panic, no hang, no access outside guest memory; device status holds only
//! defined bits; an active device has DRIVER_OK and FEATURES_OK and does not await a
//! reset; a queue's MSI-X vector reads back as one the table has or NO_VECTOR; every MSI
//! route the transport asks for is on one of its own GSIs; the queues' notification
//! ioeventfds sit exactly at BAR 0's notification addresses while it decodes, and nowhere
//! while it does not, and are never removed where they are not.

#![no_main]

use std::sync::{Arc, Mutex};

use devices::pci::msix::{MsiMessage, MsiRoutes, NO_VECTOR};
use devices::pci::{NotifyEvents, PciFunction};
use devices::virtio::events::Transport;
use devices::virtio::net::{Net, OFFERED_FEATURES};
use devices::virtio::pci::{
    PciTransport, BAR_SIZE, DEVICE_OFFSET, ISR_OFFSET, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET,
    NOTIFY_MULTIPLIER, NOTIFY_OFFSET,
};
use devices::virtio::{status, Wake};
use libfuzzer_sys::fuzz_target;
use netvmm_fuzz::{Backend, Input, STATUS_BITS};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM: u64 = 0x2_0000;
const GSI_BASE: u32 = 24;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 3];
/// Common configuration offsets a driver writes, with their widths.
const COMMON: [(u64, usize); 17] = [
    (0x00, 4),
    (0x08, 4),
    (0x0c, 4),
    (0x10, 2),
    (0x14, 1),
    (0x16, 2),
    (0x18, 2),
    (0x1a, 2),
    (0x1c, 2),
    (0x20, 4),
    (0x24, 4),
    (0x28, 4),
    (0x2c, 4),
    (0x30, 4),
    (0x34, 4),
    (0x38, 2),
    (0x3a, 2),
];

/// Records the GSIs routed; binds nothing.
#[derive(Default)]
struct Routes(Mutex<Vec<u32>>);

impl MsiRoutes for Routes {
    fn route(&self, gsi: u32, _message: MsiMessage) -> Result<(), String> {
        self.0.lock().unwrap().push(gsi);
        Ok(())
    }
    fn bind(&self, _evt: &EventFd, _gsi: u32) -> Result<(), String> {
        Ok(())
    }
    fn unbind(&self, _evt: &EventFd, _gsi: u32) -> Result<(), String> {
        Ok(())
    }
}

/// The attached notification ioeventfds, as (address, data).
#[derive(Default)]
struct Notify(Mutex<Vec<(u64, u16)>>);

impl NotifyEvents for Notify {
    fn attach(&self, _evt: &EventFd, addr: u64, data: u16) -> Result<(), String> {
        let mut n = self.0.lock().unwrap();
        assert!(!n.contains(&(addr, data)), "attached twice at {addr:#x}");
        n.push((addr, data));
        Ok(())
    }
    fn detach(&self, _evt: &EventFd, addr: u64, data: u16) -> Result<(), String> {
        let mut n = self.0.lock().unwrap();
        let at = n.iter().position(|&e| e == (addr, data));
        let at = at.unwrap_or_else(|| panic!("detached {addr:#x}, never attached"));
        n.swap_remove(at);
        Ok(())
    }
}

fn bar_w(t: &mut PciTransport<Net<Backend>>, offset: u64, len: usize, v: u32) {
    t.bar_write(offset, &v.to_le_bytes()[..len.min(4)]);
}

fn bar_r(t: &mut PciTransport<Net<Backend>>, offset: u64, len: usize) -> u32 {
    let mut d = [0u8; 4];
    t.bar_read(offset, &mut d[..len.min(4)]);
    u32::from_le_bytes(d)
}

/// Linux's initialisation with both queues at fixed places and vectors 0 and 1.
fn init(t: &mut PciTransport<Net<Backend>>, mem: &GuestMemoryMmap, input: &mut Input) {
    let features = OFFERED_FEATURES & !u64::from(input.u32());
    bar_w(t, 0x14, 1, 0);
    bar_w(t, 0x14, 1, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2u32 {
        bar_w(t, 0x08, 4, sel);
        bar_w(t, 0x0c, 4, (features >> (32 * sel)) as u32);
    }
    bar_w(
        t,
        0x14,
        1,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for q in 0..2u32 {
        let base = u64::from(q) * 0x2000;
        for at in [base + 0x1000, base + 0x1400] {
            mem.write_slice(&[0; 4], GuestAddress(at)).unwrap();
        }
        bar_w(t, 0x16, 2, q);
        bar_w(t, 0x18, 2, 256);
        bar_w(t, 0x1a, 2, q);
        for (i, addr) in [base, base + 0x1000, base + 0x1400].into_iter().enumerate() {
            bar_w(t, 0x20 + 8 * i as u64, 4, addr as u32);
            bar_w(t, 0x24 + 8 * i as u64, 4, 0);
        }
        bar_w(t, 0x1c, 2, 1);
    }
    let s = bar_r(t, 0x14, 1);
    bar_w(t, 0x14, 1, s | status::DRIVER_OK);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    if !data.is_empty() {
        let mut image = vec![0u8; MEM as usize];
        for (i, b) in image.iter_mut().enumerate() {
            *b = data[i % data.len()];
        }
        mem.write_slice(&image, GuestAddress(0)).unwrap();
    }
    let backend = Backend::new();
    let frames = backend.incoming.clone();
    let routes = Arc::new(Routes::default());
    let notify = Arc::new(Notify::default());
    let mut t = PciTransport::new(
        Net::new(backend, MAC),
        mem.clone(),
        0xe000_0000,
        GSI_BASE,
        routes.clone(),
        notify.clone(),
    )
    .unwrap();
    let queues = t.queue_events().len();
    let vectors = PciTransport::<Net<Backend>>::vectors_for(
        devices::virtio::VirtioDevice::queue_max_sizes(t.device()).len(),
    )
    .unwrap();

    let mut steps = 0;
    while !input.done() && steps < 128 {
        steps += 1;
        match input.u8() % 12 {
            0..=2 => {
                let (offset, len) = COMMON[usize::from(input.u8()) % COMMON.len()];
                let v = match input.u8() % 4 {
                    0 => input.u32(),
                    1 => u32::from(input.u8() % 4),
                    _ => u32::from(input.u16()),
                };
                bar_w(&mut t, offset, len, v);
            }
            3 => init(&mut t, &mem, &mut input),
            4 => {
                // Anywhere in (and past) BAR 0, any size.
                let region = [
                    0,
                    ISR_OFFSET,
                    DEVICE_OFFSET,
                    NOTIFY_OFFSET,
                    MSIX_TABLE_OFFSET,
                    MSIX_PBA_OFFSET,
                ];
                let offset = match input.u8() % 3 {
                    0 => u64::from(input.u32()) << 8 | u64::from(input.u8()),
                    _ => region[usize::from(input.u8()) % region.len()] + u64::from(input.u8()),
                };
                let len = usize::from(input.u8() % 10);
                let mut buf = [0u8; 9];
                if input.u8() % 2 == 0 {
                    t.bar_read(offset, &mut buf[..len]);
                } else {
                    buf[..4].copy_from_slice(&input.u32().to_le_bytes());
                    t.bar_write(offset % (2 * BAR_SIZE), &buf[..len]);
                }
            }
            5 => {
                // Configuration space, any offset and size.
                let offset = usize::from(input.u16() % 0x120);
                let len = usize::from(input.u8() % 5);
                let mut buf = input.u32().to_le_bytes();
                if input.u8() % 2 == 0 {
                    t.config_read(offset, &mut buf[..len]);
                } else {
                    t.config_write(offset, &buf[..len]);
                }
            }
            6 => {
                // MSI-X on, an entry programmed and unmasked.
                let v = u64::from(input.u8() % 4);
                t.config_write(0x42, &0x8000u16.to_le_bytes());
                bar_w(&mut t, MSIX_TABLE_OFFSET + 16 * v, 4, 0xfee0_0000);
                bar_w(
                    &mut t,
                    MSIX_TABLE_OFFSET + 16 * v + 8,
                    4,
                    u32::from(input.u8()),
                );
                bar_w(
                    &mut t,
                    MSIX_TABLE_OFFSET + 16 * v + 12,
                    4,
                    u32::from(input.u8() & 1),
                );
            }
            7 => {
                let q = u32::from(input.u8() % 2);
                let a = u64::from(q) * 0x2000 + 0x1000;
                let idx: u16 = mem.read_obj(GuestAddress(a + 2)).unwrap();
                mem.write_obj(
                    u16::from(input.u8()),
                    GuestAddress(a + 4 + 2 * u64::from(idx % 256)),
                )
                .unwrap();
                mem.write_obj(idx.wrapping_add(1), GuestAddress(a + 2))
                    .unwrap();
                bar_w(&mut t, NOTIFY_OFFSET + 4 * u64::from(q), 2, q);
            }
            8 => {
                let len = usize::from(input.u16() % 2048);
                frames.lock().unwrap().push_back(vec![input.u8(); len]);
                t.wake(Wake::Backend(0));
            }
            9 => t.wake(Wake::Activated),
            10 => {
                let kicked: Vec<u16> = (0..)
                    .zip(t.queue_events())
                    .filter(|(_, evt)| evt.read().is_ok())
                    .map(|(q, _)| q)
                    .collect();
                for q in kicked {
                    t.wake(Wake::Queue(q));
                }
            }
            _ => {
                let v = [0, 1, 3, 0xb, 0xf, 0x7, 0x8b, 0x4f, 0x80][usize::from(input.u8()) % 9];
                bar_w(&mut t, 0x14, 1, v);
            }
        }

        let s = t.status();
        assert_eq!(s & !STATUS_BITS, 0, "status {s:#x}");
        assert_eq!(bar_r(&mut t, 0x14, 1), s & 0xff);
        if t.is_active() {
            let want = status::DRIVER_OK | status::FEATURES_OK;
            assert_eq!(s & want, want, "active with status {s:#x}");
            assert_eq!(s & status::DEVICE_NEEDS_RESET, 0, "active awaiting a reset");
        }
        let vector = bar_r(&mut t, 0x1a, 2) as u16;
        assert!(
            vector < vectors || vector == NO_VECTOR,
            "queue vector {vector}"
        );
        let mut attached = notify.0.lock().unwrap().clone();
        attached.sort();
        let wanted: Vec<(u64, u16)> = match t.bar() {
            Some((bar, _)) => (0..queues)
                .map(|q| {
                    let at = bar + NOTIFY_OFFSET + q as u64 * u64::from(NOTIFY_MULTIPLIER);
                    (at, q as u16)
                })
                .collect(),
            None => Vec::new(),
        };
        assert_eq!(attached, wanted, "notification ioeventfds");
        for gsi in routes.0.lock().unwrap().iter() {
            assert!(
                (GSI_BASE..GSI_BASE + u32::from(vectors)).contains(gsi),
                "GSI {gsi}"
            );
        }
    }
});
