//! The virtio-pci transport driven as Linux's virtio_pci modern driver drives it.

use std::os::fd::AsRawFd;
use std::sync::Mutex;

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::pci::config::{CAPABILITIES_POINTER, COMMAND, COMMAND_MEMORY};
use crate::pci::msix::MsiMessage;
use crate::pci::NotifyEvents;
use crate::virtio::{status, Processed, VIRTIO_F_VERSION_1};

const BAR: u32 = 0xe000_0000;
const GSI_BASE: u32 = 24;
const QSIZE: u16 = 16;

/// Keeps the eventfds it was asked to bind, to see which GSI fires.
#[derive(Default)]
struct Kvm {
    bound: Mutex<Vec<(u32, EventFd)>>,
    unbound: Mutex<Vec<(i32, u32)>>,
    routes: Mutex<Vec<(u32, MsiMessage)>>,
    /// Attached ioeventfds: (address, data, eventfd).
    notify: Mutex<Vec<(u64, u16, i32)>>,
    refuse_notify: std::sync::atomic::AtomicBool,
}

impl NotifyEvents for Kvm {
    fn attach(&self, evt: &EventFd, addr: u64, data: u16) -> Result<(), String> {
        if self.refuse_notify.load(Ordering::SeqCst) {
            return Err("out of ioeventfds".into());
        }
        let mut n = self.notify.lock().unwrap();
        if n.iter().any(|&(a, d, _)| (a, d) == (addr, data)) {
            return Err("File exists".into());
        }
        n.push((addr, data, evt.as_raw_fd()));
        Ok(())
    }
    fn detach(&self, evt: &EventFd, addr: u64, data: u16) -> Result<(), String> {
        let mut n = self.notify.lock().unwrap();
        let before = n.len();
        n.retain(|&e| e != (addr, data, evt.as_raw_fd()));
        if n.len() == before {
            return Err("No such file or directory".into());
        }
        Ok(())
    }
}

impl MsiRoutes for Kvm {
    fn route(&self, gsi: u32, message: MsiMessage) -> Result<(), String> {
        self.routes.lock().unwrap().push((gsi, message));
        Ok(())
    }
    fn bind(&self, evt: &EventFd, gsi: u32) -> Result<(), String> {
        let clone = evt.try_clone().map_err(|e| e.to_string())?;
        self.bound.lock().unwrap().push((gsi, clone));
        Ok(())
    }
    fn unbind(&self, evt: &EventFd, gsi: u32) -> Result<(), String> {
        self.unbound.lock().unwrap().push((evt.as_raw_fd(), gsi));
        Ok(())
    }
}

impl Kvm {
    /// GSIs whose bound eventfds were written since the last look.
    fn fired(&self) -> Vec<u32> {
        let mut gsis: Vec<u32> = self
            .bound
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.read().is_ok())
            .map(|(g, _)| *g)
            .collect();
        gsis.sort();
        gsis.dedup();
        gsis
    }
}

/// Two queues; a wake-up of queue N says queue N used a buffer. With `kernel` the first
/// queue is "served by the kernel" (vhost) and has a used-buffer eventfd.
struct Toy {
    sizes: Vec<u16>,
    kernel: Vec<EventFd>,
    activated: bool,
}

impl VirtioDevice for Toy {
    fn device_type(&self) -> u32 {
        1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << 5
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0x50 + offset as u8 + i as u8;
        }
    }
    fn activate(&mut self, _features: u64, _mem: &GuestMemoryMmap) -> Result<(), String> {
        self.activated = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.activated = false;
    }
    fn process(&mut self, wake: Wake, _queues: &mut [Queue]) -> Processed {
        match wake {
            Wake::Queue(q) => Processed {
                interrupt: 1 << q,
                unfinished: 0,
            },
            _ => Processed::default(),
        }
    }
    fn used_notifiers(&self) -> &[EventFd] {
        &self.kernel
    }
}

struct Rig {
    t: PciTransport<Toy>,
    kvm: Arc<Kvm>,
}

impl Rig {
    fn new(kernel: bool) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        for at in [0x1000u64, 0x2000, 0x3000, 0x5000, 0x6000, 0x7000] {
            mem.write_slice(&[0; 8], GuestAddress(at)).unwrap();
        }
        let kvm = Arc::new(Kvm::default());
        let toy = Toy {
            sizes: vec![QSIZE, QSIZE],
            kernel: if kernel {
                vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()]
            } else {
                Vec::new()
            },
            activated: false,
        };
        let t = PciTransport::new(toy, mem, BAR, GSI_BASE, kvm.clone(), kvm.clone()).unwrap();
        Self { t, kvm }
    }

    fn cfg(&mut self, offset: usize, len: usize) -> u32 {
        let mut d = [0u8; 4];
        self.t.config_read(offset, &mut d[..len]);
        u32::from_le_bytes(d)
    }

    fn cfg_w(&mut self, offset: usize, data: &[u8]) {
        self.t.config_write(offset, data);
    }

    fn r(&mut self, offset: u64, len: usize) -> u32 {
        let mut d = [0u8; 4];
        self.t.bar_read(offset, &mut d[..len]);
        u32::from_le_bytes(d)
    }

    fn w(&mut self, offset: u64, len: usize, v: u32) {
        self.t.bar_write(offset, &v.to_le_bytes()[..len]);
    }

    /// The capabilities as (offset, id, virtio cfg_type).
    fn caps(&mut self) -> Vec<(usize, u8, u8)> {
        let mut out = Vec::new();
        let mut at = self.cfg(CAPABILITIES_POINTER, 1) as usize;
        while at != 0 && out.len() < 16 {
            let id = self.cfg(at, 1) as u8;
            let cfg_type = self.cfg(at + 3, 1) as u8;
            out.push((at, id, cfg_type));
            at = self.cfg(at + 1, 1) as usize;
        }
        out
    }

    /// Enables MSI-X and programs vector v with data 0x30 + v, unmasked.
    fn msix_on(&mut self) {
        let msix = self.caps()[0].0;
        self.cfg_w(msix + 2, &0x8000u16.to_le_bytes());
        for v in 0..3u64 {
            let e = MSIX_TABLE_OFFSET + 16 * v;
            self.w(e, 4, 0xfee0_0000);
            self.w(e + 4, 4, 0);
            self.w(e + 8, 4, 0x30 + v as u32);
            self.w(e + 12, 4, 0);
        }
    }

    /// What Linux does: status, features, each queue with its vector, DRIVER_OK.
    fn init(&mut self) {
        self.w(0x14, 1, status::ACKNOWLEDGE | status::DRIVER);
        self.w(0x08, 4, 1);
        self.w(0x0c, 4, 1);
        self.w(
            0x14,
            1,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_ne!(self.r(0x14, 1) & status::FEATURES_OK, 0, "features refused");
        self.w(0x10, 2, 2);
        for q in 0..2u32 {
            self.w(0x16, 2, q);
            self.w(0x18, 2, u32::from(QSIZE));
            self.w(0x1a, 2, q);
            assert_eq!(self.r(0x1a, 2), q, "vector not taken");
            let base = 0x1000 + 0x4000 * u64::from(q);
            for (i, addr) in [base, base + 0x1000, base + 0x2000].iter().enumerate() {
                self.w(0x20 + 8 * i as u64, 4, *addr as u32);
                self.w(0x24 + 8 * i as u64, 4, 0);
            }
            self.w(0x1c, 2, 1);
        }
        self.w(0x14, 1, 0xf);
        assert!(self.t.is_active());
    }
}

#[test]
fn identifies_as_a_modern_virtio_net_function_with_its_capabilities() {
    let mut rig = Rig::new(false);
    assert_eq!(rig.cfg(0, 4), 0x1041_1af4);
    assert_eq!(rig.cfg(0x08, 4), 0x0200_0001, "class and revision");
    assert_eq!(rig.cfg(0x10, 4), BAR);
    let caps = rig.caps();
    let ids: Vec<(u8, u8)> = caps.iter().map(|c| (c.1, c.2)).collect();
    assert_eq!(
        ids,
        vec![(0x11, 0), (9, 1), (9, 3), (9, 4), (9, 2), (9, 5)],
        "MSI-X, then common, ISR, device, notify, PCI cfg"
    );
    let msix = caps[0].0;
    assert_eq!(
        rig.cfg(msix + 2, 2) & 0x7ff,
        2,
        "3 vectors: 2 queues + config"
    );
    assert_eq!(rig.cfg(msix + 4, 4), MSIX_TABLE_OFFSET as u32);
    let notify = caps[4].0;
    assert_eq!(rig.cfg(notify + 8, 4), NOTIFY_OFFSET as u32);
    assert_eq!(rig.cfg(notify + 16, 4), NOTIFY_MULTIPLIER);
    // Two queues, their notify offsets, the device config through BAR 0.
    assert_eq!(rig.r(0x12, 2), 2);
    rig.w(0x16, 2, 1);
    assert_eq!(rig.r(0x1e, 2), 1);
    assert_eq!(rig.r(0x18, 2), u32::from(QSIZE));
    assert_eq!(rig.r(DEVICE_OFFSET + 2, 2), 0x5352);
    // The BAR is not decoded until the driver turns memory decode on.
    assert_eq!(rig.t.bar(), None);
    rig.cfg_w(COMMAND, &COMMAND_MEMORY.to_le_bytes());
    assert_eq!(rig.t.bar(), Some((u64::from(BAR), BAR_SIZE)));
}

#[test]
fn each_queue_interrupts_on_its_own_vector() {
    let mut rig = Rig::new(false);
    rig.msix_on();
    rig.init();
    let routes = rig.kvm.routes.lock().unwrap().clone();
    assert!(routes.contains(&(
        GSI_BASE + 1,
        MsiMessage {
            address: 0xfee0_0000,
            data: 0x31
        }
    )));
    rig.kvm.fired();
    rig.t.wake(Wake::Queue(1));
    assert_eq!(rig.kvm.fired(), vec![GSI_BASE + 1]);
    rig.t.wake(Wake::Queue(0));
    assert_eq!(rig.kvm.fired(), vec![GSI_BASE]);
    // A masked vector holds its interrupt until unmasked.
    rig.w(MSIX_TABLE_OFFSET + 12, 4, 1);
    rig.t.wake(Wake::Queue(0));
    assert!(rig.kvm.fired().is_empty());
    assert_eq!(rig.r(MSIX_PBA_OFFSET, 4), 1);
    rig.w(MSIX_TABLE_OFFSET + 12, 4, 0);
    assert_eq!(rig.kvm.fired(), vec![GSI_BASE]);
}

#[test]
fn a_vector_the_table_lacks_reads_back_as_no_vector() {
    let mut rig = Rig::new(false);
    rig.w(0x16, 2, 0);
    rig.w(0x1a, 2, 3);
    assert_eq!(rig.r(0x1a, 2), u32::from(NO_VECTOR));
    rig.w(0x10, 2, 9);
    assert_eq!(rig.r(0x10, 2), u32::from(NO_VECTOR));
    // A queue that does not exist reads as size 0 and takes nothing.
    rig.w(0x16, 2, 7);
    assert_eq!(rig.r(0x18, 2), 0);
    rig.w(0x1a, 2, 0);
    assert_eq!(rig.r(0x1a, 2), u32::from(NO_VECTOR));
}

#[test]
fn a_driver_error_needs_reset_and_interrupts_on_the_config_vector() {
    let mut rig = Rig::new(false);
    rig.msix_on();
    rig.init();
    rig.kvm.fired();
    // Dropping DRIVER_OK without a reset.
    rig.w(0x14, 1, status::ACKNOWLEDGE);
    assert_ne!(rig.r(0x14, 1) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(rig.kvm.fired(), vec![GSI_BASE + 2]);
    assert_eq!(rig.r(ISR_OFFSET, 1), ISR_CONFIG);
    assert_eq!(rig.r(ISR_OFFSET, 1), 0, "ISR read did not clear it");
    // A reset brings back the vectors' defaults.
    rig.w(0x14, 1, 0);
    assert_eq!(rig.r(0x10, 2), u32::from(NO_VECTOR));
    assert!(!rig.t.device().activated);
}

#[test]
fn kernel_served_queues_are_bound_to_their_vectors_and_unbound_at_reset() {
    let mut rig = Rig::new(true);
    rig.msix_on();
    let bound_before = rig.kvm.bound.lock().unwrap().len();
    rig.init();
    let kernel_fd = rig.t.device().kernel[0].as_raw_fd();
    {
        let bound = rig.kvm.bound.lock().unwrap();
        assert_eq!(bound.len(), bound_before + 1);
        assert_eq!(bound.last().map(|b| b.0), Some(GSI_BASE));
    }
    rig.w(0x14, 1, 0);
    assert_eq!(
        *rig.kvm.unbound.lock().unwrap(),
        vec![(kernel_fd, GSI_BASE)]
    );
}

#[test]
fn a_masked_vector_holds_back_the_kernels_interrupts_until_unmasked() {
    let mut rig = Rig::new(true);
    rig.msix_on();
    rig.init();
    let kernel = rig.t.device().kernel[0].try_clone().unwrap();
    // GSI_BASE also carries netvmm's own eventfd for vector 0, bound from the start.
    let bound = |rig: &Rig| {
        let all = rig.kvm.bound.lock().unwrap();
        all.iter().filter(|b| b.0 == GSI_BASE).count() - 1
    };
    let unbound = |rig: &Rig| rig.kvm.unbound.lock().unwrap().len();
    assert_eq!((bound(&rig), unbound(&rig)), (1, 0));
    let _ = rig.kvm.fired();

    // Vector 0 masked: the kernel's eventfd leaves KVM; what it signals meanwhile waits in
    // the eventfd, and the unmask binds it again (KVM then injects what is there).
    rig.w(MSIX_TABLE_OFFSET + 12, 4, 1);
    assert_eq!(unbound(&rig), 1);
    kernel.write(1).unwrap();
    rig.w(MSIX_TABLE_OFFSET + 8, 4, 0x30);
    assert_eq!(bound(&rig), 1, "a masked vector was bound again");
    rig.w(MSIX_TABLE_OFFSET + 12, 4, 0);
    assert_eq!(bound(&rig), 2);
    assert_eq!(rig.kvm.fired(), vec![GSI_BASE], "the held interrupt");

    // The function mask holds back every vector the same way.
    let msix = rig.caps()[0].0;
    rig.cfg_w(msix + 2, &0xc000u16.to_le_bytes());
    assert_eq!(unbound(&rig), 2);
    rig.cfg_w(msix + 2, &0x8000u16.to_le_bytes());
    assert_eq!(bound(&rig), 3);

    // A reset unbinds it; masks that change afterwards bind nothing.
    rig.w(0x14, 1, 0);
    assert_eq!(unbound(&rig), 3);
    rig.w(MSIX_TABLE_OFFSET + 12, 4, 1);
    rig.w(MSIX_TABLE_OFFSET + 12, 4, 0);
    assert_eq!((bound(&rig), unbound(&rig)), (3, 3));
}

impl Rig {
    /// Where the queues' ioeventfds sit: (address, data) in queue order.
    fn notify_addrs(&self) -> Vec<(u64, u16)> {
        let mut n: Vec<(u64, u16)> = (self.kvm.notify.lock().unwrap().iter())
            .map(|&(a, d, _)| (a, d))
            .collect();
        n.sort();
        n
    }
}

#[test]
fn the_queue_ioeventfds_follow_bar_0_and_memory_decode() {
    let mut rig = Rig::new(false);
    let at = |bar: u32| {
        let area = u64::from(bar) + NOTIFY_OFFSET;
        vec![(area, 0), (area + u64::from(NOTIFY_MULTIPLIER), 1)]
    };
    assert!(rig.notify_addrs().is_empty(), "none before decoding");
    rig.cfg_w(COMMAND, &COMMAND_MEMORY.to_le_bytes());
    assert_eq!(rig.notify_addrs(), at(BAR));
    // Sizing with decoding off, as Linux does, then a new place.
    rig.cfg_w(COMMAND, &0u16.to_le_bytes());
    assert!(rig.notify_addrs().is_empty());
    rig.cfg_w(0x10, &u32::MAX.to_le_bytes());
    rig.cfg_w(0x10, &0xe001_0000u32.to_le_bytes());
    assert!(rig.notify_addrs().is_empty());
    rig.cfg_w(COMMAND, &COMMAND_MEMORY.to_le_bytes());
    assert_eq!(rig.notify_addrs(), at(0xe001_0000));
    // Moved while decoding: the old place is free for another function's kicks.
    rig.cfg_w(0x10, &BAR.to_le_bytes());
    assert_eq!(rig.notify_addrs(), at(BAR));
    assert_eq!(rig.t.fault(), None);
}

#[test]
fn a_refused_ioeventfd_is_a_fault_and_kicks_still_arrive_through_the_bar() {
    let mut rig = Rig::new(false);
    rig.kvm.refuse_notify.store(true, Ordering::SeqCst);
    rig.cfg_w(COMMAND, &COMMAND_MEMORY.to_le_bytes());
    assert!(rig.notify_addrs().is_empty());
    let fault = rig.t.fault().unwrap_or_default().to_owned();
    assert!(
        fault.contains("queue 0") && fault.contains("0xe0003000") && fault.contains("out of"),
        "{fault}"
    );
    rig.msix_on();
    rig.init();
    for evt in rig.t.queue_events() {
        let _ = evt.read();
    }
    rig.w(NOTIFY_OFFSET + u64::from(NOTIFY_MULTIPLIER), 2, 1);
    assert!(rig.t.queue_events()[1].read().is_ok(), "queue 1's kick");
    assert!(rig.t.queue_events()[0].read().is_err());
    // Once the hypervisor takes them, the next decode change places them.
    rig.kvm.refuse_notify.store(false, Ordering::SeqCst);
    rig.cfg_w(COMMAND, &0u16.to_le_bytes());
    rig.cfg_w(COMMAND, &COMMAND_MEMORY.to_le_bytes());
    assert_eq!(rig.notify_addrs().len(), 2);
}

#[test]
fn the_pci_cfg_window_reaches_bar_0() {
    let mut rig = Rig::new(false);
    let at = rig.caps()[5].0;
    rig.cfg_w(at + 4, &[0]);
    rig.cfg_w(at + 8, &0x12u32.to_le_bytes());
    rig.cfg_w(at + 12, &2u32.to_le_bytes());
    assert_eq!(rig.cfg(at + 16, 4), 2, "num_queues through the window");
    // Pointed at another BAR it reads nothing.
    rig.cfg_w(at + 4, &[1]);
    assert_eq!(rig.cfg(at + 16, 4), 0);
}

#[test]
fn odd_accesses_do_not_panic_or_change_state() {
    let mut rig = Rig::new(false);
    for offset in [
        0u64,
        3,
        0x13,
        0x3f,
        0x40,
        ISR_OFFSET + 3,
        BAR_SIZE - 1,
        u64::MAX - 2,
    ] {
        // Up to 8 bytes reach the registers (a guest's movq); wider is refused outright.
        for len in 0usize..=8 {
            let mut d = [0u8; 8];
            rig.t.bar_read(offset, &mut d[..len]);
            rig.t.bar_write(offset, &[0xff; 8][..len]);
        }
    }
    let mut big = [0u8; 16];
    rig.t.bar_read(0, &mut big);
    rig.t.bar_write(0, &big);
    for offset in [0usize, 0xfe, 0xff, 0x100, usize::MAX] {
        let mut d = [0u8; 4];
        rig.t.config_read(offset, &mut d);
        rig.t.config_write(offset, &[0xff; 4]);
    }
    assert!(!rig.t.is_active());
}
