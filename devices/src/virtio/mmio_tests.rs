//! Tests of the virtio-mmio transport, driven like a guest driver does: 4-byte little-endian
//! register accesses through [`BusDevice`], with the real virtio-net device on a mock
//! backend and real guest memory.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::bus::BusDevice;
use crate::virtio::net::{
    Net, NetBackend, Offloads, F_GUEST_CSUM, F_GUEST_TSO4, F_MAC, F_MRG_RXBUF, F_STATUS,
    OFFERED_FEATURES, QUEUE_SIZE,
};
use crate::virtio::{status, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use virtio_queue::Queue;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
const MEM_SIZE: u64 = 0x10_0000;
/// Queue layout used by the "driver": size 16, rings right after the table.
const QSIZE: u16 = 16;
const RXQ_AT: u64 = 0x0;
const TXQ_AT: u64 = 0x1000;
const BUFS: u64 = 0x1_0000;
/// `VRING_DESC_F_WRITE` (virtio-bindings is not a direct dependency of this crate).
const F_WRITE: u16 = 2;

// ---------------------------------------------------------------------------------------
// Mock backend
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Shared {
    sent: Vec<Vec<u8>>,
    incoming: VecDeque<Vec<u8>>,
    vnet_hdr_len: Option<usize>,
    offloads: Option<Offloads>,
    fail_config: bool,
}

struct MockBackend {
    shared: Arc<Mutex<Shared>>,
    fd: EventFd,
}

impl AsRawFd for MockBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for MockBackend {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self
            .shared
            .lock()
            .unwrap()
            .incoming
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    unsafe fn send(&mut self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let mut frame = Vec::new();
        for iov in iovs.iter().filter(|iov| iov.iov_len > 0) {
            // SAFETY: the caller guarantees that every iovec points at memory valid for
            // reads of its length for the whole call; the bytes are copied before returning.
            let bytes =
                unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) };
            frame.extend_from_slice(bytes);
        }
        let n = frame.len();
        self.shared.lock().unwrap().sent.push(frame);
        Ok(n)
    }

    fn set_vnet_hdr_len(&mut self, len: usize) -> io::Result<()> {
        let mut shared = self.shared.lock().unwrap();
        if shared.fail_config {
            return Err(io::Error::from_raw_os_error(libc::EBADFD));
        }
        shared.vnet_hdr_len = Some(len);
        Ok(())
    }

    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        self.shared.lock().unwrap().offloads = Some(offloads);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Driver side
// ---------------------------------------------------------------------------------------

type NetTransport = MmioTransport<Net<MockBackend>>;

struct Rig {
    t: NetTransport,
    mem: GuestMemoryMmap,
    /// The transport's interrupt eventfd.
    irq: EventFd,
    /// The mock backend's descriptor: writing it makes the backend "readable".
    backend_evt: EventFd,
    shared: Arc<Mutex<Shared>>,
}

/// Where a split queue of `QSIZE` entries at `start` has its parts.
fn layout(start: u64) -> (u64, u64, u64) {
    let avail = start + 16 * u64::from(QSIZE);
    let used = (avail + 6 + 2 * u64::from(QSIZE) + 3) & !3;
    (start, avail, used)
}

impl Rig {
    fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let backend_evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let backend = MockBackend {
            shared: shared.clone(),
            fd: backend_evt.try_clone().unwrap(),
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(
            Net::new(backend, MAC),
            mem.clone(),
            irq.try_clone().unwrap(),
        )
        .unwrap();
        Self {
            t,
            mem,
            irq,
            backend_evt,
            shared,
        }
    }

    fn w(&mut self, offset: u64, v: u32) {
        self.t.write(offset, &v.to_le_bytes());
    }

    fn r(&mut self, offset: u64) -> u32 {
        let mut data = [0xffu8; 4];
        self.t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write_features(&mut self, features: u64) {
        self.w(DRIVER_FEATURES_SEL, 0);
        self.w(DRIVER_FEATURES, features as u32);
        self.w(DRIVER_FEATURES_SEL, 1);
        self.w(DRIVER_FEATURES, (features >> 32) as u32);
    }

    fn device_features(&mut self) -> u64 {
        self.w(DEVICE_FEATURES_SEL, 0);
        let low = self.r(DEVICE_FEATURES);
        self.w(DEVICE_FEATURES_SEL, 1);
        let high = self.r(DEVICE_FEATURES);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns the status read back.
    fn negotiate(&mut self, features: u64) -> u32 {
        self.w(STATUS, 0);
        self.w(STATUS, status::ACKNOWLEDGE);
        self.w(STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write_features(features);
        self.w(
            STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.r(STATUS)
    }

    /// Programs queue `index` at guest addresses (desc, avail, used) and marks it ready.
    fn setup_queue(&mut self, index: u32, size: u32, (desc, avail, used): (u64, u64, u64)) {
        // Fresh rings: flags and indices zero.
        for at in [avail, used] {
            self.mem.write_slice(&[0; 4], GuestAddress(at)).ok();
        }
        self.w(QUEUE_SEL, index);
        self.w(QUEUE_NUM, size);
        self.w(QUEUE_DESC_LOW, desc as u32);
        self.w(QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.w(QUEUE_DRIVER_LOW, avail as u32);
        self.w(QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        self.w(QUEUE_DEVICE_LOW, used as u32);
        self.w(QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        self.w(QUEUE_READY, 1);
    }

    fn driver_ok(&mut self) {
        let s = self.r(STATUS);
        self.w(STATUS, s | status::DRIVER_OK);
    }

    /// The whole initialisation of virtio 1.2, 3.1.1, with both queues in guest memory.
    fn init(&mut self, features: u64) {
        let s = self.negotiate(features);
        assert_ne!(s & status::FEATURES_OK, 0, "features {features:#x} refused");
        self.setup_queue(0, u32::from(QSIZE), layout(RXQ_AT));
        self.setup_queue(1, u32::from(QSIZE), layout(TXQ_AT));
        self.driver_ok();
    }

    fn queue_tx(&mut self, i: u16, payload: usize) -> Vec<u8> {
        queue_tx(&self.mem, i, payload)
    }

    fn queue_rx(&mut self, i: u16) {
        queue_rx(&self.mem, i)
    }

    fn used_idx(&self, queue_at: u64) -> u16 {
        used_idx(&self.mem, queue_at)
    }

    fn sent(&self) -> Vec<Vec<u8>> {
        self.shared.lock().unwrap().sent.clone()
    }

    /// Whether the interrupt eventfd was written since the last call.
    fn irq_fired(&self) -> bool {
        self.irq.read().is_ok()
    }
}

/// Publishes a one-descriptor TX chain with a 12-byte header and `payload` bytes, at table
/// index `i` (the i-th chain of a fresh queue).
fn queue_tx(mem: &GuestMemoryMmap, i: u16, payload: usize) -> Vec<u8> {
    let (desc, avail, _) = layout(TXQ_AT);
    let frame: Vec<u8> = (0..12 + payload).map(|b| b as u8).collect();
    let at = BUFS + 0x1000 * u64::from(i);
    mem.write_slice(&frame, GuestAddress(at)).unwrap();
    let d = RawDescriptor::from(SplitDescriptor::new(at, frame.len() as u32, 0, 0));
    mem.write_obj(d, GuestAddress(desc + 16 * u64::from(i)))
        .unwrap();
    publish(mem, avail, i);
    frame
}

/// Publishes a one-descriptor 2 KiB receive buffer at table index `i`.
fn queue_rx(mem: &GuestMemoryMmap, i: u16) {
    let (desc, avail, _) = layout(RXQ_AT);
    let at = BUFS + 0x8_0000 + 0x1000 * u64::from(i);
    let d = RawDescriptor::from(SplitDescriptor::new(at, 2048, F_WRITE, 0));
    mem.write_obj(d, GuestAddress(desc + 16 * u64::from(i)))
        .unwrap();
    publish(mem, avail, i);
}

fn publish(mem: &GuestMemoryMmap, avail: u64, head: u16) {
    let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap();
    let slot = avail + 4 + 2 * u64::from(idx % QSIZE);
    mem.write_obj(head, GuestAddress(slot)).unwrap();
    mem.write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
        .unwrap();
}

fn used_idx(mem: &GuestMemoryMmap, queue_at: u64) -> u16 {
    let (_, _, used) = layout(queue_at);
    mem.read_obj(GuestAddress(used + 2)).unwrap()
}

const BASIC: u64 = VIRTIO_F_VERSION_1 | F_MAC | F_STATUS;

// ---------------------------------------------------------------------------------------
// Identification and feature negotiation
// ---------------------------------------------------------------------------------------

#[test]
fn identifies_as_a_modern_virtio_net_device() {
    let mut rig = Rig::new();
    assert_eq!(rig.r(MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rig.r(VERSION), 2);
    assert_eq!(rig.r(DEVICE_ID), 1);
    assert_eq!(rig.r(VENDOR_ID), VENDOR);
    for (sel, max) in [(0, QUEUE_SIZE), (1, QUEUE_SIZE), (2, 0), (u32::MAX, 0)] {
        rig.w(QUEUE_SEL, sel);
        assert_eq!(rig.r(QUEUE_NUM_MAX), u32::from(max), "queue {sel}");
        assert_eq!(rig.r(QUEUE_READY), 0);
    }
    assert_eq!(rig.r(STATUS), 0);
    assert_eq!(rig.r(INTERRUPT_STATUS), 0);
    assert_eq!(rig.r(CONFIG_GENERATION), 0);
    // Write-only and unknown registers read as zero.
    for offset in [
        DRIVER_FEATURES,
        QUEUE_NOTIFY,
        INTERRUPT_ACK,
        QUEUE_NUM,
        0x0c0,
        0x0f8,
    ] {
        assert_eq!(rig.r(offset), 0, "register {offset:#x}");
    }
}

#[test]
fn device_features_come_in_two_banks() {
    let mut rig = Rig::new();
    assert_eq!(rig.device_features(), OFFERED_FEATURES);
    assert_ne!(rig.device_features() & VIRTIO_F_VERSION_1, 0);
    for sel in [2, 3, u32::MAX] {
        rig.w(DEVICE_FEATURES_SEL, sel);
        assert_eq!(rig.r(DEVICE_FEATURES), 0, "bank {sel}");
    }
}

#[test]
fn full_driver_init_activates_the_device() {
    let mut rig = Rig::new();
    let features = BASIC | F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4 | VIRTIO_RING_F_EVENT_IDX;
    let s = rig.negotiate(features);
    assert_eq!(
        s,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        "FEATURES_OK not kept"
    );
    rig.setup_queue(0, u32::from(QSIZE), layout(RXQ_AT));
    rig.setup_queue(1, u32::from(QSIZE), layout(TXQ_AT));
    for q in 0..2 {
        rig.w(QUEUE_SEL, q);
        assert_eq!(rig.r(QUEUE_READY), 1);
    }
    assert!(!rig.t.is_active());
    rig.driver_ok();

    assert!(rig.t.is_active());
    assert_eq!(rig.r(STATUS), 0xf);
    assert_eq!(rig.t.core.driver_features, features);
    assert_eq!(
        rig.t.core.activate_evt.read().unwrap(),
        1,
        "event loop not told"
    );
    let (desc, avail, used) = layout(TXQ_AT);
    let q = &rig.t.core.queues[1];
    assert_eq!(
        (q.size(), q.desc_table(), q.avail_ring(), q.used_ring()),
        (QSIZE, desc, avail, used)
    );
    assert!(rig.t.core.queues.iter().all(|q| q.event_idx_enabled()));
    let shared = rig.shared.lock().unwrap();
    assert_eq!(shared.vnet_hdr_len, Some(12));
    assert_eq!(
        shared.offloads,
        Some(Offloads {
            csum: true,
            tso4: true,
            tso6: false
        })
    );
    drop(shared);
    assert!(!rig.irq_fired(), "interrupt on a successful activation");
}

#[test]
fn features_and_status_written_in_one_go_also_activate() {
    let mut rig = Rig::new();
    rig.setup_queue(0, u32::from(QSIZE), layout(RXQ_AT));
    rig.setup_queue(1, u32::from(QSIZE), layout(TXQ_AT));
    rig.write_features(BASIC);
    rig.w(STATUS, 0xf);
    assert!(rig.t.is_active());
    assert_eq!(rig.r(STATUS), 0xf);
}

#[test]
fn features_without_version_1_are_refused() {
    let mut rig = Rig::new();
    let s = rig.negotiate(F_MAC | F_STATUS | F_MRG_RXBUF);
    assert_eq!(s & status::FEATURES_OK, 0, "legacy driver accepted");
    rig.setup_queue(0, u32::from(QSIZE), layout(RXQ_AT));
    rig.setup_queue(1, u32::from(QSIZE), layout(TXQ_AT));
    rig.driver_ok();
    assert!(!rig.t.is_active());
    assert_ne!(rig.r(STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert!(rig.shared.lock().unwrap().vnet_hdr_len.is_none());
}

#[test]
fn features_not_offered_are_refused() {
    // Bit 3 (MTU: offered only with one), 17 (CTRL_VQ), 27 (ANY_LAYOUT), 34 (ACCESS_PLATFORM),
    // 63: none offered.
    for extra in [1u64 << 3, 1 << 17, 1 << 27, 1 << 34, 1 << 63] {
        let mut rig = Rig::new();
        let s = rig.negotiate(BASIC | extra);
        assert_eq!(s & status::FEATURES_OK, 0, "feature {extra:#x} accepted");
        // The driver may try again with a subset: FEATURES_OK is then kept.
        rig.w(STATUS, status::ACKNOWLEDGE | status::DRIVER);
        rig.write_features(BASIC);
        rig.w(
            STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_ne!(rig.r(STATUS) & status::FEATURES_OK, 0);
    }
}

#[test]
fn driver_features_are_frozen_once_features_ok_is_set() {
    let mut rig = Rig::new();
    rig.negotiate(BASIC);
    rig.write_features(BASIC | F_MRG_RXBUF | (1 << 3));
    assert_eq!(rig.t.core.driver_features, BASIC);
    rig.w(DRIVER_FEATURES_SEL, 7);
    rig.w(DRIVER_FEATURES, u32::MAX);
    assert_eq!(rig.t.core.driver_features, BASIC);
}

#[test]
fn driver_ok_without_features_ok_needs_reset() {
    let mut rig = Rig::new();
    rig.w(STATUS, status::ACKNOWLEDGE | status::DRIVER);
    rig.write_features(BASIC);
    rig.setup_queue(0, u32::from(QSIZE), layout(RXQ_AT));
    rig.w(
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert!(!rig.t.is_active());
    assert_ne!(rig.r(STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(rig.r(INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert!(rig.irq_fired());
}

// ---------------------------------------------------------------------------------------
// Queue configuration
// ---------------------------------------------------------------------------------------

#[test]
fn queue_size_must_be_a_power_of_two_no_larger_than_the_maximum() {
    let mut rig = Rig::new();
    rig.w(QUEUE_SEL, 0);
    for bad in [0, 3, 100, 255, 257, 512, 1024, 0x1_0010, u32::MAX] {
        rig.w(QUEUE_NUM, bad);
        assert_eq!(
            rig.t.core.queues[0].size(),
            QUEUE_SIZE,
            "size {bad} accepted"
        );
    }
    for good in [1u16, 2, 64, 256] {
        rig.w(QUEUE_NUM, u32::from(good));
        assert_eq!(rig.t.core.queues[0].size(), good);
    }
    // A queue that does not exist: nothing to set, nothing breaks.
    rig.w(QUEUE_SEL, 2);
    rig.w(QUEUE_NUM, 16);
    rig.w(QUEUE_READY, 1);
    rig.w(QUEUE_DESC_LOW, 0x1000);
    assert_eq!(rig.r(QUEUE_READY), 0);
}

#[test]
fn misaligned_ring_addresses_are_not_taken() {
    let mut rig = Rig::new();
    rig.w(QUEUE_SEL, 1);
    rig.w(QUEUE_DESC_LOW, 0x1008); // descriptor table: 16-byte aligned
    rig.w(QUEUE_DRIVER_LOW, 0x2001); // avail ring: 2-byte aligned
    rig.w(QUEUE_DEVICE_LOW, 0x3002); // used ring: 4-byte aligned
    let q = &rig.t.core.queues[1];
    assert_ne!(q.desc_table(), 0x1008);
    assert_ne!(q.avail_ring(), 0x2001);
    assert_ne!(q.used_ring(), 0x3002);
}

#[test]
fn queue_configuration_is_frozen_after_driver_ok() {
    let mut rig = Rig::new();
    rig.init(BASIC);
    rig.w(QUEUE_SEL, 1);
    rig.w(QUEUE_NUM, 4);
    rig.w(QUEUE_READY, 0);
    rig.w(QUEUE_DESC_LOW, 0x8_0000);
    rig.w(QUEUE_DRIVER_HIGH, 1);
    rig.w(QUEUE_DEVICE_LOW, 0x9_0000);
    let (desc, avail, used) = layout(TXQ_AT);
    let q = &rig.t.core.queues[1];
    assert_eq!(
        (
            q.size(),
            q.ready(),
            q.desc_table(),
            q.avail_ring(),
            q.used_ring()
        ),
        (QSIZE, true, desc, avail, used)
    );
}

#[test]
fn queue_addresses_outside_memory_lead_to_needs_reset_not_activation() {
    let mut rig = Rig::new();
    rig.negotiate(BASIC);
    rig.setup_queue(0, u32::from(QSIZE), layout(RXQ_AT));
    // The used ring of TX crosses the end of guest memory, the table is beyond it.
    rig.setup_queue(
        1,
        u32::from(QSIZE),
        (MEM_SIZE + 0x1000, 0x8000, MEM_SIZE - 8),
    );
    rig.driver_ok();
    assert!(!rig.t.is_active());
    let s = rig.r(STATUS);
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0, "status {s:#x}");
    assert_eq!(rig.r(INTERRUPT_STATUS) & INT_CONFIG, INT_CONFIG);
    assert_eq!(rig.r(CONFIG_GENERATION), 1);
    assert!(rig.irq_fired());
    assert!(rig.shared.lock().unwrap().vnet_hdr_len.is_none());
    assert!(
        rig.t.core.activate_evt.read().is_err(),
        "event loop told of a failed activation"
    );
    // Notifications are ignored, DRIVER_OK again does not activate.
    rig.w(QUEUE_NOTIFY, 1);
    assert!(rig.t.queue_events()[1].read().is_err());
    rig.driver_ok();
    assert!(!rig.t.is_active());
    // After a reset, a correct setup works.
    rig.w(INTERRUPT_ACK, INT_CONFIG);
    rig.init(BASIC);
    assert!(rig.t.is_active());
    assert_eq!(rig.r(STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn backend_refusing_activation_leads_to_needs_reset() {
    let mut rig = Rig::new();
    rig.shared.lock().unwrap().fail_config = true;
    rig.init(BASIC);
    assert!(!rig.t.is_active());
    assert_ne!(rig.r(STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert!(rig.irq_fired());
}

// ---------------------------------------------------------------------------------------
// Notifications, interrupts, reset
// ---------------------------------------------------------------------------------------

#[test]
fn notifications_before_driver_ok_do_nothing() {
    let mut rig = Rig::new();
    rig.negotiate(BASIC);
    rig.setup_queue(0, u32::from(QSIZE), layout(RXQ_AT));
    rig.setup_queue(1, u32::from(QSIZE), layout(TXQ_AT));
    rig.queue_tx(0, 50);
    for q in [0, 1, 2, u32::MAX] {
        rig.w(QUEUE_NOTIFY, q);
    }
    for evt in rig.t.queue_events() {
        assert!(
            evt.read().is_err(),
            "queue eventfd written before DRIVER_OK"
        );
    }
    // Even a stray wake-up from the event loop does no work on an inactive device.
    rig.t.wake(Wake::Queue(1));
    rig.t.wake(Wake::Activated);
    assert!(rig.sent().is_empty());
    assert_eq!(rig.used_idx(TXQ_AT), 0);
    assert!(!rig.irq_fired());
}

#[test]
fn notify_after_activation_signals_the_queue_eventfd_instead_of_working_inline() {
    let mut rig = Rig::new();
    rig.init(BASIC);
    let frame = rig.queue_tx(0, 50);
    rig.w(QUEUE_NOTIFY, 1);
    // The vCPU thread only forwarded the notification.
    assert!(rig.sent().is_empty());
    assert_eq!(rig.used_idx(TXQ_AT), 0);
    assert!(rig.t.queue_events()[1].read().unwrap() >= 1);
    assert!(rig.t.queue_events()[0].read().is_err());
    // Out-of-range queue numbers go nowhere.
    rig.w(QUEUE_NOTIFY, 2);
    rig.w(QUEUE_NOTIFY, u32::MAX);
    assert!(rig.t.queue_events().iter().all(|e| e.read().is_err()));

    // The event thread's turn.
    rig.t.wake(Wake::Queue(1));
    assert_eq!(rig.sent(), vec![frame]);
    assert_eq!(rig.used_idx(TXQ_AT), 1);
    assert_eq!(rig.r(INTERRUPT_STATUS), INT_VRING);
    assert!(rig.irq_fired());
    rig.w(INTERRUPT_ACK, INT_VRING);
    assert_eq!(rig.r(INTERRUPT_STATUS), 0);
}

#[test]
fn receive_through_the_transport() {
    let mut rig = Rig::new();
    rig.init(BASIC | F_MRG_RXBUF);
    let frame: Vec<u8> = (0..300).map(|b| b as u8).collect();
    rig.shared.lock().unwrap().incoming.push_back(frame.clone());
    // No buffers yet: the backend wake-up does nothing visible.
    rig.t.wake(Wake::Backend(0));
    assert_eq!(rig.used_idx(RXQ_AT), 0);
    assert!(!rig.irq_fired());
    rig.queue_rx(0);
    rig.t.wake(Wake::Queue(0));
    assert_eq!(rig.used_idx(RXQ_AT), 1);
    assert!(rig.irq_fired());
    let mut got = vec![0u8; frame.len()];
    rig.mem
        .read_slice(&mut got, GuestAddress(BUFS + 0x8_0000))
        .unwrap();
    assert_eq!(got[12..], frame[12..]);
    assert_eq!(got[10..12], [1, 0], "num_buffers");
}

#[test]
fn writing_status_zero_resets_and_the_driver_can_start_over() {
    let mut rig = Rig::new();
    rig.init(BASIC | F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX);
    rig.queue_tx(0, 20);
    rig.t.wake(Wake::Queue(1));
    assert_eq!(rig.sent().len(), 1);
    assert_ne!(rig.r(INTERRUPT_STATUS), 0);

    rig.w(STATUS, 0);

    assert_eq!(rig.r(STATUS), 0);
    assert!(!rig.t.is_active());
    assert_eq!(rig.r(INTERRUPT_STATUS), 0);
    assert_eq!(rig.t.core.driver_features, 0);
    for q in 0..2 {
        rig.w(QUEUE_SEL, q);
        assert_eq!(rig.r(QUEUE_READY), 0, "queue {q} still ready");
        let queue = &rig.t.core.queues[q as usize];
        assert_eq!(
            (queue.size(), queue.next_avail(), queue.next_used()),
            (QUEUE_SIZE, 0, 0)
        );
        assert!(!queue.event_idx_enabled());
    }
    // Work requested after the reset is not done.
    rig.t.wake(Wake::Queue(1));
    assert_eq!(rig.sent().len(), 1);

    // Same init again, on fresh rings: the device works as new.
    rig.init(BASIC);
    assert!(rig.t.is_active());
    assert_eq!(rig.used_idx(TXQ_AT), 0);
    let frame = rig.queue_tx(0, 30);
    rig.t.wake(Wake::Queue(1));
    assert_eq!(rig.sent().last(), Some(&frame));
    assert_eq!(rig.used_idx(TXQ_AT), 1);
}

// ---------------------------------------------------------------------------------------
// Accesses a driver should not make
// ---------------------------------------------------------------------------------------

#[test]
fn odd_sized_and_unaligned_accesses_do_not_panic_or_change_state() {
    let mut rig = Rig::new();
    rig.init(BASIC);
    let status_before = rig.r(STATUS);
    for offset in (0..0x120u64).chain([0xffc, 0x1000, u64::MAX - 8, u64::MAX - 3, u64::MAX]) {
        for len in [0usize, 1, 2, 3, 5, 8, 16] {
            let mut data = vec![0xaau8; len];
            rig.t.read(offset, &mut data);
            if offset < CONFIG_SPACE {
                assert!(
                    data.iter().all(|&b| b == 0),
                    "{len}-byte read at {offset:#x}"
                );
            }
            // All zeros: were it taken, a STATUS write would reset the device.
            rig.t.write(offset, &vec![0u8; len]);
        }
        if offset % 4 != 0 && offset < CONFIG_SPACE {
            let mut data = [0xaau8; 4];
            rig.t.read(offset, &mut data);
            assert_eq!(data, [0; 4], "unaligned read at {offset:#x}");
            rig.t.write(offset, &[0; 4]);
        }
    }
    assert!(rig.t.is_active());
    assert_eq!(rig.r(STATUS), status_before);
}

#[test]
fn config_space_holds_mac_and_link_status_and_ignores_writes() {
    let mut rig = Rig::new();
    let mut mac = [0u8; 6];
    rig.t.read(CONFIG_SPACE, &mut mac);
    assert_eq!(mac, MAC);
    assert_eq!(
        rig.r(CONFIG_SPACE),
        u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]])
    );
    assert_eq!(
        rig.r(CONFIG_SPACE + 4),
        u32::from_le_bytes([MAC[4], MAC[5], 1, 0])
    );
    let mut status = [0u8; 2];
    rig.t.read(CONFIG_SPACE + 6, &mut status);
    assert_eq!(u16::from_le_bytes(status), 1, "link not up");
    assert_eq!(rig.r(CONFIG_SPACE + 8), 0);
    assert_eq!(rig.r(CONFIG_SPACE + 0xefc), 0);
    rig.t.write(CONFIG_SPACE, &[0xff; 6]);
    rig.w(CONFIG_SPACE, 0);
    rig.t.read(CONFIG_SPACE, &mut mac);
    assert_eq!(mac, MAC);
}

// ---------------------------------------------------------------------------------------
// The event-loop side
// ---------------------------------------------------------------------------------------

/// A driver's initialisation through `regs` (offset, value) up to FEATURES_OK with BASIC
/// and both queues ready at RXQ_AT and TXQ_AT; DRIVER_OK is the caller's.
fn features_and_queues(regs: &impl Fn(u64, u32)) {
    regs(STATUS, status::ACKNOWLEDGE | status::DRIVER);
    regs(DRIVER_FEATURES_SEL, 1);
    regs(DRIVER_FEATURES, (BASIC >> 32) as u32);
    regs(DRIVER_FEATURES_SEL, 0);
    regs(DRIVER_FEATURES, BASIC as u32);
    regs(
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for (q, at) in [(0u32, RXQ_AT), (1, TXQ_AT)] {
        let (desc, avail, used) = layout(at);
        regs(QUEUE_SEL, q);
        regs(QUEUE_NUM, u32::from(QSIZE));
        regs(QUEUE_DESC_LOW, desc as u32);
        regs(QUEUE_DRIVER_LOW, avail as u32);
        regs(QUEUE_DEVICE_LOW, used as u32);
        regs(QUEUE_READY, 1);
    }
}

#[test]
fn event_loop_wakes_the_device_on_activation_notify_and_backend_readiness() {
    use event_manager::{EventManager, SubscriberOps};

    let Rig {
        t,
        mem,
        irq,
        backend_evt,
        shared,
    } = Rig::new();
    let transport = Arc::new(Mutex::new(t));
    let mut em = EventManager::<MmioEvents<Net<MockBackend>>>::new().unwrap();
    em.add_subscriber(MmioEvents::new(transport.clone()).unwrap());
    let run = |em: &mut EventManager<_>| em.run_with_timeout(1000).unwrap();
    let regs = |offset: u64, v: u32| transport.lock().unwrap().write(offset, &v.to_le_bytes());
    // Nothing happens before the driver has done anything.
    assert_eq!(em.run_with_timeout(0).unwrap(), 0);

    // A frame waits in the backend and the driver offers a buffer before DRIVER_OK: the
    // activation event makes the device catch up.
    shared.lock().unwrap().incoming.push_back(vec![7u8; 60]);
    for at in [RXQ_AT, TXQ_AT] {
        let (_, avail, used) = layout(at);
        for ring in [avail, used] {
            mem.write_slice(&[0; 4], GuestAddress(ring)).unwrap();
        }
    }
    features_and_queues(&regs);
    queue_rx(&mem, 0);
    regs(STATUS, 0xf);
    assert!(transport.lock().unwrap().is_active());
    assert!(run(&mut em) >= 1);
    assert_eq!(
        used_idx(&mem, RXQ_AT),
        1,
        "pending frame not delivered on activation"
    );
    assert!(irq.read().is_ok());

    // TX: the notify write goes to the queue eventfd, the loop does the work.
    let frame = queue_tx(&mem, 0, 40);
    regs(QUEUE_NOTIFY, 1);
    assert!(shared.lock().unwrap().sent.is_empty());
    assert!(run(&mut em) >= 1);
    assert_eq!(shared.lock().unwrap().sent, vec![frame]);
    assert_eq!(used_idx(&mem, TXQ_AT), 1);

    // RX: backend readiness.
    queue_rx(&mem, 1);
    shared.lock().unwrap().incoming.push_back(vec![9u8; 80]);
    backend_evt.write(1).unwrap();
    assert!(run(&mut em) >= 1);
    assert_eq!(used_idx(&mem, RXQ_AT), 2);
}

// ---------------------------------------------------------------------------------------
// The vCPU-side front
// ---------------------------------------------------------------------------------------

#[test]
fn front_serves_interrupt_registers_while_the_transport_is_busy() {
    let mut rig = Rig::new();
    // A config interrupt, raised by the transport (DRIVER_OK without FEATURES_OK).
    rig.w(
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    let Rig { t, .. } = rig;
    let transport = Arc::new(Mutex::new(t));
    let mut front = MmioFront::new(transport.clone());
    let read = |front: &mut MmioFront<_>, offset| {
        let mut data = [0u8; 4];
        front.read(offset, &mut data);
        u32::from_le_bytes(data)
    };

    // The event thread holds the transport (moving a burst of frames): the guest's
    // interrupt handler still reads and acknowledges without waiting for it.
    let busy = transport.lock().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let handler = std::thread::spawn(move || {
        let status = read(&mut front, INTERRUPT_STATUS);
        front.write(INTERRUPT_ACK, &status.to_le_bytes());
        let after = read(&mut front, INTERRUPT_STATUS);
        tx.send((status, after)).unwrap();
        front
    });
    let (status, after) = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the interrupt registers do not wait for the transport's lock");
    assert_eq!(status & INT_CONFIG, INT_CONFIG);
    assert_eq!(after, 0);
    drop(busy);
    let mut front = handler.join().unwrap();

    // Both views agree, and the other registers still reach the transport.
    transport.lock().unwrap().raise(INT_VRING);
    assert_eq!(read(&mut front, INTERRUPT_STATUS), INT_VRING);
    assert_eq!(read(&mut front, MAGIC_VALUE), MMIO_MAGIC);
    front.write(INTERRUPT_ACK, &INT_VRING.to_le_bytes());
    let mut data = [0u8; 4];
    transport.lock().unwrap().read(INTERRUPT_STATUS, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0);
    // A short access to the status register is not served from the atomic.
    transport.lock().unwrap().raise(INT_VRING);
    let mut short = [0xffu8; 2];
    front.read(INTERRUPT_STATUS, &mut short);
    assert_eq!(short, [0, 0]);
}

#[test]
fn ring_state_says_who_waits_for_whom() {
    let mut rig = Rig::new();
    assert_eq!(
        rig.t.ring_state().queues,
        vec![None, None],
        "no queue ready yet"
    );
    rig.init(BASIC | VIRTIO_RING_F_EVENT_IDX);
    // A frame arrives, the guest has posted no receive buffer: the device holds the frame
    // and asks to be notified at the driver's current avail index.
    rig.shared
        .lock()
        .unwrap()
        .incoming
        .push_back(vec![0; 12 + 100]);
    rig.t.wake(Wake::Backend(0));
    rig.queue_tx(0, 20);
    rig.t.wake(Wake::Queue(1));
    let state = rig.t.ring_state();
    let rx = state.queues[0].expect("rx ready");
    let tx = state.queues[1].expect("tx ready");
    assert_eq!((rx.avail, rx.taken, rx.used), (Some(0), 0, 0));
    assert_eq!(rx.avail_event, Some(0), "waiting for the first buffer");
    assert_eq!((tx.avail, tx.taken, tx.used), (Some(1), 1, 1));
    assert_eq!(tx.avail_event, Some(1));
    assert_eq!(tx.used_event, Some(0), "the driver's field, untouched");
    assert_eq!(state.interrupt_status, INT_VRING);
    assert_eq!(rig.t.core.device().stats().rx_waiting, 112);
    // One backend wake-up, one TX notification and the interrupt for its used buffer.
    assert_eq!(state.backend_wakes, vec![1]);
    let (rx, tx) = (state.counts[0], state.counts[1]);
    assert_eq!((rx.wakes, rx.resumed, rx.interrupts), (0, 0, 0));
    assert_eq!((tx.wakes, tx.resumed, tx.interrupts), (1, 0, 1));
}

#[test]
fn a_registration_the_event_loop_refuses_is_reported_not_dropped() {
    use event_manager::{EventManager, SubscriberOps};

    let rig = Rig::new();
    let transport = Arc::new(Mutex::new(rig.t));
    let mut em = EventManager::<MmioEvents<Net<MockBackend>>>::new().unwrap();
    let first = MmioEvents::new(transport.clone()).unwrap();
    let ok = first.registration();
    em.add_subscriber(first);
    assert!(ok.check().is_ok());
    // A second subscriber for the same backend fd (as when one tap backs two NICs).
    let second = MmioEvents::new(transport).unwrap();
    let refused = second.registration();
    em.add_subscriber(second);
    let e = refused.check().unwrap_err().to_string();
    assert!(
        e.starts_with("the event loop cannot watch its backend fd "),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// One ring cannot hold the event loop (issue 12, defect 4)
// ---------------------------------------------------------------------------------------

#[test]
fn a_hostile_ring_gets_a_budget_per_turn_while_another_nic_is_served() {
    use event_manager::{EventManager, SubscriberOps};

    // Two NICs on one event loop, as the VMM runs them. NIC A's driver offers 256 TX
    // chains, each a zero-length descriptor that points at itself; NIC B sends one frame.
    const BIG: u16 = QUEUE_SIZE;
    let (desc, avail) = (0x8000u64, 0x8000 + 16 * u64::from(BIG));
    let used = (avail + 6 + 2 * u64::from(BIG) + 3) & !3;
    let mut a = Rig::new();
    a.negotiate(BASIC);
    a.setup_queue(0, u32::from(QSIZE), layout(RXQ_AT));
    a.setup_queue(1, u32::from(BIG), (desc, avail, used));
    a.driver_ok();
    let a_used = |mem: &GuestMemoryMmap| -> u16 { mem.read_obj(GuestAddress(used + 2)).unwrap() };

    let mut b = Rig::new();
    b.init(BASIC);

    let (a_mem, b_mem, b_shared) = (a.mem.clone(), b.mem.clone(), b.shared.clone());
    let a = Arc::new(Mutex::new(a.t));
    let b = Arc::new(Mutex::new(b.t));
    let mut em = EventManager::<MmioEvents<Net<MockBackend>>>::new().unwrap();
    em.add_subscriber(MmioEvents::new(a.clone()).unwrap());
    em.add_subscriber(MmioEvents::new(b.clone()).unwrap());
    // Both were just activated: let that pass, then both drivers kick their TX queue.
    while em.run_with_timeout(0).unwrap() > 0 {}
    let d = RawDescriptor::from(SplitDescriptor::new(BUFS, 0, 1, 0)); // NEXT, to itself
    a_mem.write_obj(d, GuestAddress(desc)).unwrap();
    a_mem
        .write_slice(&[0; 512], GuestAddress(avail + 4))
        .unwrap();
    a_mem.write_obj(BIG, GuestAddress(avail + 2)).unwrap();
    let frame = queue_tx(&b_mem, 0, 40);
    for t in [&a, &b] {
        t.lock().unwrap().write(QUEUE_NOTIFY, &1u32.to_le_bytes());
    }

    // One turn of the loop: B's frame is out, A got a budget's worth and no more.
    let most = (crate::virtio::chain::DESCRIPTORS_PER_WAKE / u32::from(BIG)) as u16 + 1;
    em.run_with_timeout(0).unwrap();
    assert_eq!(b_shared.lock().unwrap().sent, vec![frame]);
    let mut taken = a_used(&a_mem);
    assert!(
        (1..=most).contains(&taken),
        "one turn took {taken} of A's looping chains (at most {most})"
    );
    // A's driver does not kick again: the transport's own notification brings the rest,
    // a budget per turn.
    let mut turns = 1;
    while taken < BIG {
        assert!(em.run_with_timeout(0).unwrap() >= 1, "A stalled at {taken}");
        let now = a_used(&a_mem);
        assert!(
            now > taken && now - taken <= most,
            "turn {turns}: {taken} -> {now}"
        );
        taken = now;
        turns += 1;
    }
    assert_eq!(
        em.run_with_timeout(0).unwrap(),
        0,
        "work left after the last chain"
    );
    assert_eq!(
        a.lock().unwrap().device().stats().tx_invalid,
        u64::from(BIG)
    );
    // The report counts the driver's one kick and each turn the device resumed itself.
    let tx = a.lock().unwrap().ring_state().counts[1];
    assert_eq!((tx.wakes, tx.resumed), (turns, turns - 1));
}

// ---------------------------------------------------------------------------------------
// Status transitions a driver must not make (virtio 1.2, 2.1 and 4.2.2)
// ---------------------------------------------------------------------------------------

#[test]
fn clearing_driver_ok_without_a_reset_needs_reset_and_keeps_the_queues_frozen() {
    let mut rig = Rig::new();
    rig.init(BASIC);
    let _ = rig.irq_fired(); // whatever the initialisation raised
    let generation = rig.r(CONFIG_GENERATION);
    // DRIVER_OK dropped, everything else kept.
    rig.w(
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    let s = rig.r(STATUS);
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0, "status {s:#x}");
    assert_ne!(
        s & status::DRIVER_OK,
        0,
        "DRIVER_OK taken back without a reset"
    );
    assert!(!rig.t.is_active());
    assert_ne!(rig.r(INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert!(rig.irq_fired());
    assert_eq!(rig.r(CONFIG_GENERATION), generation.wrapping_add(1));

    // Queue setup stays closed: the device must not run on rings the driver moves now.
    rig.w(QUEUE_SEL, 1);
    rig.w(QUEUE_NUM, 4);
    rig.w(QUEUE_READY, 0);
    rig.w(QUEUE_DESC_LOW, 0x8_0000);
    rig.w(QUEUE_DRIVER_LOW, 0x9_0000);
    rig.w(QUEUE_DEVICE_LOW, 0xa_0000);
    let (desc, avail, used) = layout(TXQ_AT);
    let q = &rig.t.core.queues[1];
    assert_eq!(
        (
            q.size(),
            q.ready(),
            q.desc_table(),
            q.avail_ring(),
            q.used_ring()
        ),
        (QSIZE, true, desc, avail, used)
    );
    // And it does no work: neither a notify nor a wake-up sends the frame.
    rig.queue_tx(0, 20);
    rig.w(QUEUE_NOTIFY, 1);
    assert!(rig.t.queue_events()[1].read().is_err(), "notify forwarded");
    rig.t.wake(Wake::Queue(1));
    assert!(rig.sent().is_empty());
    // Setting DRIVER_OK again does not bring it back either; only a reset does.
    rig.w(STATUS, 0xf);
    assert!(!rig.t.is_active());
    rig.w(STATUS, 0);
    assert_eq!(rig.r(STATUS), 0);
    rig.init(BASIC);
    assert!(rig.t.is_active());
    let frame = rig.queue_tx(0, 30);
    rig.t.wake(Wake::Queue(1));
    assert_eq!(rig.sent(), vec![frame]);
}

#[test]
fn clearing_any_status_bit_before_driver_ok_also_needs_reset() {
    for (from, to) in [
        (status::ACKNOWLEDGE | status::DRIVER, status::ACKNOWLEDGE),
        (
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            status::ACKNOWLEDGE | status::FEATURES_OK,
        ),
    ] {
        let mut rig = Rig::new();
        rig.write_features(BASIC);
        rig.w(STATUS, from);
        assert_eq!(rig.r(STATUS), from);
        rig.w(STATUS, to);
        assert_ne!(
            rig.r(STATUS) & status::DEVICE_NEEDS_RESET,
            0,
            "{from:#x} -> {to:#x}"
        );
        assert!(rig.irq_fired());
        // Completing the initialisation does not activate a device that awaits a reset.
        rig.setup_queue(0, u32::from(QSIZE), layout(RXQ_AT));
        rig.setup_queue(1, u32::from(QSIZE), layout(TXQ_AT));
        assert_eq!(
            rig.r(QUEUE_READY),
            0,
            "queue setup open while awaiting reset"
        );
        rig.w(STATUS, 0xf);
        assert!(!rig.t.is_active(), "{from:#x} -> {to:#x} -> 0xf activated");
        // FAILED, the driver giving up, is still recorded.
        rig.w(STATUS, status::FAILED);
        assert_ne!(rig.r(STATUS) & status::FAILED, 0);
    }
}

#[test]
fn the_driver_cannot_set_or_clear_device_needs_reset() {
    let mut rig = Rig::new();
    rig.w(
        STATUS,
        status::ACKNOWLEDGE | status::DEVICE_NEEDS_RESET | 0x30,
    );
    assert_eq!(rig.r(STATUS), status::ACKNOWLEDGE);
    // A driver that writes back what it read (as Linux does) keeps the bit.
    rig.w(STATUS, 0);
    rig.w(
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    let s = rig.r(STATUS);
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0);
    rig.w(STATUS, s | status::FEATURES_OK);
    assert_ne!(rig.r(STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert!(!rig.t.is_active());
}

// ---------------------------------------------------------------------------------------
// A device whose queues the kernel serves (vhost)
// ---------------------------------------------------------------------------------------

/// What the transport did to a kernel-served device.
#[derive(Default)]
struct Handed {
    /// The kick eventfds (raw numbers) and queue sizes of each start_queues call.
    starts: Vec<(Vec<RawFd>, Vec<u16>)>,
    resets: usize,
    /// Stops short of a reset (the kernel must let go of the rings).
    stops: usize,
    processed: usize,
    wakes: Vec<Wake>,
    refuse: bool,
}

struct KernelServed {
    used: Vec<EventFd>,
    handed: Arc<Mutex<Handed>>,
    /// The queues: the kernel serves the first `used.len()`, the rest are the device's.
    sizes: Vec<u16>,
}

impl VirtioDevice for KernelServed {
    fn device_type(&self) -> u32 {
        1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        BASIC
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, _features: u64, _mem: &GuestMemoryMmap) -> Result<(), String> {
        Ok(())
    }
    fn reset(&mut self) {
        self.handed.lock().unwrap().resets += 1;
    }
    fn stop(&mut self) {
        self.handed.lock().unwrap().stops += 1;
    }
    fn process(&mut self, wake: Wake, _queues: &mut [Queue]) -> crate::virtio::Processed {
        let mut h = self.handed.lock().unwrap();
        h.processed += 1;
        h.wakes.push(wake);
        crate::virtio::Processed::default()
    }
    fn start_queues(&mut self, queues: &[Queue], kicks: &[EventFd]) -> Result<(), String> {
        let mut h = self.handed.lock().unwrap();
        h.starts.push((
            kicks.iter().map(AsRawFd::as_raw_fd).collect(),
            queues.iter().map(|q| q.size()).collect(),
        ));
        if h.refuse {
            return Err("refused".into());
        }
        Ok(())
    }
    fn used_notifiers(&self) -> &[EventFd] {
        &self.used
    }
    fn share_used_notifier(&mut self, irq: &EventFd) -> std::io::Result<()> {
        for evt in &mut self.used {
            *evt = irq.try_clone()?;
        }
        Ok(())
    }
}

#[test]
fn a_kernel_served_device_gets_the_queues_and_its_interrupts_are_the_kernels() {
    use event_manager::{EventManager, SubscriberOps};

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let handed = Arc::new(Mutex::new(Handed::default()));
    let used: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let device = KernelServed {
        used,
        handed: handed.clone(),
        sizes: vec![QSIZE, QSIZE],
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(device, mem.clone(), irq.try_clone().unwrap()).unwrap();
    let kicks: Vec<RawFd> = t.queue_events().iter().map(AsRawFd::as_raw_fd).collect();
    let transport = Arc::new(Mutex::new(t));
    let mut em = EventManager::<MmioEvents<KernelServed>>::new().unwrap();
    em.add_subscriber(MmioEvents::new(transport.clone()).unwrap());
    let regs = |offset: u64, v: u32| transport.lock().unwrap().write(offset, &v.to_le_bytes());
    let isr = || {
        let mut d = [0u8; 4];
        transport.lock().unwrap().read(INTERRUPT_STATUS, &mut d);
        u32::from_le_bytes(d)
    };
    let bring_up = || {
        features_and_queues(&regs);
        regs(STATUS, 0xf);
    };
    // The kernel signals every queue's used buffers on the device's one interrupt eventfd
    // (one irqfd per edge-triggered line: two would merge edges and lose interrupts).
    let used_kernel: Vec<EventFd> = {
        let t = transport.lock().unwrap();
        let used = t.core().device().used_notifiers();
        assert_eq!(used.len(), 2);
        used.iter().map(|e| e.try_clone().unwrap()).collect()
    };
    for (i, kernel) in used_kernel.iter().enumerate() {
        kernel.write(i as u64 + 1).unwrap();
        assert_eq!(irq.read().unwrap(), i as u64 + 1);
    }
    assert_eq!(isr(), 0, "nothing pending before the driver is up");
    bring_up();
    assert!(transport.lock().unwrap().is_active());
    assert_eq!(
        handed.lock().unwrap().starts,
        vec![(kicks.clone(), vec![QSIZE, QSIZE])],
        "the kernel gets the queues and the very eventfds KVM signals"
    );
    em.run_with_timeout(100).unwrap();
    // The activation wake-up reaches the device (which has nothing to do); nothing after.
    let processed = handed.lock().unwrap().processed;

    // A notify is the kernel's to see: the event loop does not even wake for it.
    regs(QUEUE_NOTIFY, 1);
    assert_eq!(em.run_with_timeout(100).unwrap(), 0);

    // The kernel used buffers of queue 1: its signal is KVM's to turn into the interrupt,
    // so the loop does not wake for it and injects nothing itself; while the kernel serves
    // the queues, the driver's handler reads "used buffer", acknowledged or not.
    let _ = irq.read();
    used_kernel[1].write(1).unwrap();
    assert_eq!(em.run_with_timeout(100).unwrap(), 0);
    assert_eq!(
        irq.read().unwrap(),
        1,
        "the loop injected an interrupt of its own"
    );
    assert_eq!(isr(), INT_VRING);
    regs(INTERRUPT_ACK, INT_VRING);
    assert_eq!(isr(), INT_VRING);
    // An acknowledgement of every bit changes nothing the driver has not seen.
    regs(INTERRUPT_ACK, u32::MAX);
    assert_eq!(isr(), INT_VRING);
    assert_eq!(handed.lock().unwrap().processed, processed);

    // A reset stops the device: the status says nothing any more. Bringing it up again
    // hands the queues over again. A kernel that refuses them leaves the device waiting
    // for a reset.
    regs(STATUS, 0);
    assert_eq!(isr(), 0);
    assert_eq!(handed.lock().unwrap().resets, 1);
    handed.lock().unwrap().refuse = true;
    bring_up();
    assert!(!transport.lock().unwrap().is_active());
    let mut d = [0u8; 4];
    transport.lock().unwrap().read(STATUS, &mut d);
    assert_ne!(u32::from_le_bytes(d) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(handed.lock().unwrap().starts.len(), 2);
    // A device that is not running says "configuration changed" (the reset request),
    // not "used buffer".
    assert_eq!(isr(), INT_CONFIG);
}

/// A kernel-served device of three queues (the kernel serves 0 and 1, the device 2),
/// brought up through the registers, with its event loop.
type KernelServedRig = (
    Arc<Mutex<MmioTransport<KernelServed>>>,
    Arc<Mutex<Handed>>,
    event_manager::EventManager<MmioEvents<KernelServed>>,
);

fn kernel_served_rig() -> KernelServedRig {
    use event_manager::{EventManager, SubscriberOps};
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let handed = Arc::new(Mutex::new(Handed::default()));
    let used: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let device = KernelServed {
        used,
        handed: handed.clone(),
        sizes: vec![QSIZE, QSIZE, QSIZE],
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(device, mem, irq).unwrap();
    let transport = Arc::new(Mutex::new(t));
    let mut em = EventManager::<MmioEvents<KernelServed>>::new().unwrap();
    em.add_subscriber(MmioEvents::new(transport.clone()).unwrap());
    {
        let regs = |offset: u64, v: u32| transport.lock().unwrap().write(offset, &v.to_le_bytes());
        features_and_queues(&regs);
        regs(STATUS, 0xf);
    }
    assert!(transport.lock().unwrap().is_active());
    em.run_with_timeout(100).unwrap();
    (transport, handed, em)
}

#[test]
fn the_queues_past_the_kernel_served_ones_are_woken_for_the_device() {
    let (transport, handed, mut em) = kernel_served_rig();
    handed.lock().unwrap().wakes.clear();
    let regs = |offset: u64, v: u32| transport.lock().unwrap().write(offset, &v.to_le_bytes());
    // The kernel's queues: no wake-up. The control queue (2): the device's.
    regs(QUEUE_NOTIFY, 0);
    regs(QUEUE_NOTIFY, 1);
    assert_eq!(em.run_with_timeout(100).unwrap(), 0);
    regs(QUEUE_NOTIFY, 2);
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(handed.lock().unwrap().wakes, vec![Wake::Queue(2)]);
}

#[test]
fn a_driver_that_drops_driver_ok_or_fails_stops_the_kernel_without_a_reset() {
    // DRIVER_OK cleared, everything else kept (issue 14's vhost defect: the kernel went
    // on serving the rings until a real reset).
    let (transport, handed, _em) = kernel_served_rig();
    let regs = |offset: u64, v: u32| transport.lock().unwrap().write(offset, &v.to_le_bytes());
    regs(
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(handed.lock().unwrap().stops, 1);
    assert_eq!(handed.lock().unwrap().resets, 0);
    assert!(!transport.lock().unwrap().is_active());
    // FAILED afterwards, and the reset, are fine (the device is stopped already).
    regs(STATUS, 0xf | status::FAILED);
    regs(STATUS, 0);
    assert_eq!(handed.lock().unwrap().resets, 1);

    // The driver gives up on a running device: FAILED added to DRIVER_OK.
    let (transport, handed, _em) = kernel_served_rig();
    let regs = |offset: u64, v: u32| transport.lock().unwrap().write(offset, &v.to_le_bytes());
    regs(STATUS, 0xf | status::FAILED);
    assert_eq!(handed.lock().unwrap().stops, 1);
    assert!(!transport.lock().unwrap().is_active());
    let mut d = [0u8; 4];
    transport.lock().unwrap().read(STATUS, &mut d);
    assert_ne!(u32::from_le_bytes(d) & status::FAILED, 0);
    // A notify now reaches nobody; a reset and a new DRIVER_OK start the queues again.
    regs(QUEUE_NOTIFY, 2);
    regs(STATUS, 0);
    let regs = |offset: u64, v: u32| transport.lock().unwrap().write(offset, &v.to_le_bytes());
    features_and_queues(&regs);
    regs(STATUS, 0xf);
    assert!(transport.lock().unwrap().is_active());
    assert_eq!(handed.lock().unwrap().starts.len(), 2);

    // A device that refuses DRIVER_OK's queues is stopped too (needs reset).
    let (transport, handed, _em) = kernel_served_rig();
    let regs = |offset: u64, v: u32| transport.lock().unwrap().write(offset, &v.to_le_bytes());
    regs(STATUS, 0);
    handed.lock().unwrap().refuse = true;
    features_and_queues(&regs);
    regs(STATUS, 0xf);
    assert!(!transport.lock().unwrap().is_active());
    assert_eq!(handed.lock().unwrap().stops, 1);
}

/// A device that takes only some feature combinations.
struct Picky;

impl VirtioDevice for Picky {
    fn device_type(&self) -> u32 {
        1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QSIZE, QSIZE]
    }
    fn features(&self) -> u64 {
        BASIC | 1 << 22
    }
    fn accepts(&self, features: u64) -> bool {
        features & 1 << 22 == 0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, _features: u64, _mem: &GuestMemoryMmap) -> Result<(), String> {
        Ok(())
    }
    fn reset(&mut self) {}
    fn process(&mut self, _wake: Wake, _queues: &mut [Queue]) -> crate::virtio::Processed {
        crate::virtio::Processed::default()
    }
}

#[test]
fn features_the_device_cannot_serve_together_are_refused_at_features_ok() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Picky, mem, irq).unwrap();
    for (features, taken) in [(BASIC | 1 << 22, false), (BASIC, true)] {
        let mut regs = |offset: u64, v: u32| t.write(offset, &v.to_le_bytes());
        regs(STATUS, 0);
        regs(STATUS, status::ACKNOWLEDGE | status::DRIVER);
        regs(DRIVER_FEATURES_SEL, 1);
        regs(DRIVER_FEATURES, (features >> 32) as u32);
        regs(DRIVER_FEATURES_SEL, 0);
        regs(DRIVER_FEATURES, features as u32);
        regs(
            STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        let mut d = [0u8; 4];
        t.read(STATUS, &mut d);
        let now = u32::from_le_bytes(d);
        assert_eq!(now & status::FEATURES_OK != 0, taken, "{features:#x}");
    }
}
