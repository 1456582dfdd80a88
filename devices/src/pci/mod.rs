//! A PCI bus 0 for the guest: configuration by port I/O (CONFIG_ADDRESS at 0xcf8,
//! CONFIG_DATA at 0xcfc, "type 1"), a host bridge at 00.0, and the functions' memory BARs
//! inside one MMIO window that the ACPI DSDT announces as the bridge's resources.
//!
//! The window is one bus device that finds the function by its current BAR, so a driver
//! that moves a BAR still reaches the function.

pub mod config;
pub mod msix;

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::{lock, BusDevice};
use config::{ConfigSpace, Identity};

/// A function on the bus (function 0 of its device; no multi-function devices).
pub trait PciFunction: Send {
    /// Reads configuration space at `offset` (an access within one dword).
    fn config_read(&mut self, offset: usize, data: &mut [u8]);
    /// Writes configuration space at `offset` (an access within one dword).
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// BAR 0's guest address and size, when memory decoding is on.
    fn bar(&self) -> Option<(u64, u64)>;
    fn bar_read(&mut self, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, offset: u64, data: &[u8]);
}

/// The VMM's side of queue notifications: the hypervisor signals an eventfd for a guest's
/// write to an address (KVM's ioeventfd), with no exit to the VMM.
pub trait NotifyEvents: Send + Sync {
    /// Makes a 16-bit write of `data` at guest address `addr` signal `evt`.
    fn attach(&self, evt: &EventFd, addr: u64, data: u16) -> Result<(), String>;
    /// Undoes [`NotifyEvents::attach`].
    fn detach(&self, evt: &EventFd, addr: u64, data: u16) -> Result<(), String>;
}

/// Devices per bus.
pub const DEVICES_PER_BUS: usize = 32;

/// The functions on bus 0, by device number.
#[derive(Default)]
pub struct PciBus {
    devices: Vec<Option<Arc<Mutex<dyn PciFunction>>>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("PCI bus 0 is full: it has room for {DEVICES_PER_BUS} devices")]
    Full,
}

impl PciBus {
    /// A bus with its host bridge at 00.0.
    pub fn new() -> Self {
        let mut bus = Self {
            devices: Vec::new(),
        };
        bus.devices
            .push(Some(Arc::new(Mutex::new(HostBridge::new()))));
        bus
    }

    /// Adds a function at the next free device number and returns that number.
    pub fn add(&mut self, function: Arc<Mutex<dyn PciFunction>>) -> Result<u8, PciError> {
        if self.devices.len() >= DEVICES_PER_BUS {
            return Err(PciError::Full);
        }
        self.devices.push(Some(function));
        Ok((self.devices.len() - 1) as u8)
    }

    fn device(&self, number: usize) -> Option<&Arc<Mutex<dyn PciFunction>>> {
        self.devices.get(number)?.as_ref()
    }
}

/// CONFIG_ADDRESS bits.
const ENABLE: u32 = 1 << 31;

/// The configuration ports: an address latch and the data window behind it.
pub struct PciConfigIo {
    bus: Arc<PciBus>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(bus: Arc<PciBus>) -> Self {
        Self { bus, address: 0 }
    }

    /// The function and register offset the latch selects, for an access of `len` bytes
    /// at byte `byte` of CONFIG_DATA.
    fn target(&self, byte: u64, len: usize) -> Option<(&Arc<Mutex<dyn PciFunction>>, usize)> {
        let a = self.address;
        let (bus, device, function) = ((a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 7);
        if a & ENABLE == 0 || bus != 0 || function != 0 {
            return None;
        }
        let offset = (a & 0xfc) as usize + byte as usize;
        // An access stays inside its dword.
        if byte as usize + len > 4 {
            return None;
        }
        Some((self.bus.device(device as usize)?, offset))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        data.fill(0xff);
        if offset >= 4 {
            if let Some((f, reg)) = self.target(offset - 4, data.len()) {
                lock(f).config_read(reg, data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            // Only a dword write sets the latch: Linux's type 1 probe writes a byte at
            // 0xcfb first and expects the latch untouched.
            if let Ok(b) = <[u8; 4]>::try_from(data) {
                self.address = u32::from_le_bytes(b);
            }
            return;
        }
        if offset >= 4 {
            if let Some((f, reg)) = self.target(offset - 4, data.len()) {
                lock(f).config_write(reg, data);
            }
        }
    }
}

/// The MMIO window the functions' BARs live in.
pub struct PciMmioWindow {
    bus: Arc<PciBus>,
    base: u64,
}

impl PciMmioWindow {
    pub fn new(bus: Arc<PciBus>, base: u64) -> Self {
        Self { bus, base }
    }

    fn with_function(&self, offset: u64, len: usize, f: impl FnOnce(&mut dyn PciFunction, u64)) {
        let Some(addr) = self.base.checked_add(offset) else {
            return;
        };
        for function in self.bus.devices.iter().flatten() {
            let mut function = lock(function);
            if let Some((bar, size)) = function.bar() {
                if addr >= bar && addr - bar + len as u64 <= size {
                    f(&mut *function, addr - bar);
                    return;
                }
            }
        }
    }
}

impl BusDevice for PciMmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let len = data.len();
        self.with_function(offset, len, |f, at| f.bar_read(at, data));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.with_function(offset, data.len(), |f, at| f.bar_write(at, data));
    }
}

/// Device 00.0: what Linux's type 1 sanity check looks for (a host bridge class on bus 0).
struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    fn new() -> Self {
        Self {
            // Intel's ID for a virtual PCIe host, as Cloud Hypervisor uses: no driver
            // binds to it, which is what a host bridge wants.
            config: ConfigSpace::new(Identity {
                vendor: 0x8086,
                device: 0x0d57,
                revision: 0,
                class: 0x06_00_00,
                subsystem_vendor: 0,
                subsystem: 0,
            }),
        }
    }
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bar(&self) -> Option<(u64, u64)> {
        None
    }
    fn bar_read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe {
        config: ConfigSpace,
        bar_writes: Vec<(u64, Vec<u8>)>,
    }

    impl PciFunction for Probe {
        fn config_read(&mut self, offset: usize, data: &mut [u8]) {
            self.config.read(offset, data);
        }
        fn config_write(&mut self, offset: usize, data: &[u8]) {
            self.config.write(offset, data);
        }
        fn bar(&self) -> Option<(u64, u64)> {
            let (addr, on) = self.config.bar0();
            on.then_some((addr, 0x1000))
        }
        fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn bar_write(&mut self, offset: u64, data: &[u8]) {
            self.bar_writes.push((offset, data.to_vec()));
        }
    }

    fn select(io: &mut PciConfigIo, device: u32, reg: u32) {
        io.write(0, &(ENABLE | (device << 11) | reg).to_le_bytes());
    }

    fn read32(io: &mut PciConfigIo) -> u32 {
        let mut d = [0; 4];
        io.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    fn rig() -> (PciConfigIo, PciMmioWindow, Arc<Mutex<Probe>>) {
        let mut config = ConfigSpace::new(config::tests::id());
        config.set_bar0(0xe000_1000, 0x1000);
        let probe = Arc::new(Mutex::new(Probe {
            config,
            bar_writes: Vec::new(),
        }));
        let mut bus = PciBus::new();
        assert_eq!(bus.add(probe.clone()).unwrap(), 1);
        let bus = Arc::new(bus);
        (
            PciConfigIo::new(bus.clone()),
            PciMmioWindow::new(bus, 0xe000_0000),
            probe,
        )
    }

    #[test]
    fn type_1_config_reaches_the_host_bridge_and_the_function() {
        let (mut io, _, _) = rig();
        select(&mut io, 0, 0x08);
        assert_eq!(read32(&mut io) >> 8, 0x06_00_00, "host bridge class");
        select(&mut io, 1, 0);
        assert_eq!(read32(&mut io), 0x1041_1af4);
        // A word at byte 2 of CONFIG_DATA.
        let mut w = [0; 2];
        io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1041);
        // An empty slot, another bus, a disabled latch: all ones.
        for addr in [ENABLE | (2 << 11), ENABLE | (1 << 16), 1 << 11] {
            io.write(0, &addr.to_le_bytes());
            assert_eq!(read32(&mut io), u32::MAX, "{addr:#x}");
        }
        // The latch reads back; a byte write at 0xcfb leaves it.
        io.write(3, &[1]);
        let mut d = [0; 4];
        io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1 << 11);
        // A dword access straddling the data window's end belongs to no register.
        select(&mut io, 1, 0);
        let mut d = [0; 4];
        io.read(6, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn the_window_follows_the_bar_and_memory_decode() {
        let (mut io, mut window, probe) = rig();
        let mut d = [0; 4];
        window.read(0x1008, &mut d);
        assert_eq!(d, [0xff; 4], "decoded with memory decode off");
        select(&mut io, 1, 0x04);
        io.write(4, &config::COMMAND_MEMORY.to_le_bytes());
        window.read(0x1008, &mut d);
        assert_eq!(d, [8; 4]);
        // The driver moves the BAR: the old place is empty, the new one answers.
        select(&mut io, 1, 0x10);
        io.write(4, &0xe000_5000u32.to_le_bytes());
        window.read(0x1008, &mut d);
        assert_eq!(d, [0xff; 4]);
        window.write(0x5010, &[1, 2]);
        assert_eq!(probe.lock().unwrap().bar_writes, vec![(0x10, vec![1, 2])]);
        // An access running past the BAR's end reaches nobody.
        window.write(0x5ffe, &[1, 2, 3, 4]);
        assert_eq!(probe.lock().unwrap().bar_writes.len(), 1);
    }
}
