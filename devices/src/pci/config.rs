//! A type-0 PCI configuration header (PCI Local Bus 3.0, 6.1) with one 32-bit memory BAR
//! and a capability list, kept as bytes with a mask of the bits the driver may write.
//!
//! BAR sizing falls out of the mask: the driver writes all ones and reads back the bits it
//! could set, which are the address bits above the BAR's size.

/// Size of the conventional configuration space.
pub const CONFIG_SIZE: usize = 256;

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION: usize = 0x08;
pub const CLASS: usize = 0x09;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
/// Where the first capability goes: right after the header.
pub const FIRST_CAPABILITY: usize = 0x40;

/// Command register bits a driver may set: I/O and memory decode, bus master, INTx off.
pub const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_WRITABLE: u16 = 1 | COMMAND_MEMORY | (1 << 2) | (1 << 10);
/// Status: the capability list is valid.
const STATUS_CAPABILITIES: u16 = 1 << 4;

/// Who a function is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Base class, subclass and programming interface, high byte first.
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// One function's configuration space.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    writable: [u8; CONFIG_SIZE],
    /// The end of the capability list so far, and where the last one's next pointer is.
    next_capability: usize,
    last_link: usize,
}

impl ConfigSpace {
    pub fn new(id: Identity) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
            next_capability: FIRST_CAPABILITY,
            last_link: CAPABILITIES_POINTER,
        };
        c.put(VENDOR_ID, &id.vendor.to_le_bytes());
        c.put(DEVICE_ID, &id.device.to_le_bytes());
        c.put(REVISION, &[id.revision]);
        c.put(CLASS, &id.class.to_le_bytes()[..3]);
        c.put(SUBSYSTEM_VENDOR_ID, &id.subsystem_vendor.to_le_bytes());
        c.put(SUBSYSTEM_ID, &id.subsystem.to_le_bytes());
        c.allow(COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        c.allow(INTERRUPT_LINE, &[0xff]);
        c
    }

    /// Gives the function a 32-bit, non-prefetchable memory BAR 0 of `size` bytes (a power
    /// of two, at least 16) at `addr`.
    pub fn set_bar0(&mut self, addr: u32, size: u32) {
        debug_assert!(size.is_power_of_two() && size >= 16);
        self.put(BAR0, &(addr & !(size - 1)).to_le_bytes());
        self.allow(BAR0, &(!(size - 1)).to_le_bytes());
    }

    /// BAR 0's address and whether memory decoding is on.
    pub fn bar0(&self) -> (u64, bool) {
        let addr = u64::from(self.dword(BAR0) & !0xf);
        (addr, self.word(COMMAND) & COMMAND_MEMORY != 0)
    }

    /// Appends a capability: `body` starts with its ID byte; its next pointer (the second
    /// byte) is filled in here. `writable` masks the body's bytes the driver may change.
    /// Returns its offset, or None when the space is full.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> Option<usize> {
        let at = self.next_capability;
        let end = at.checked_add(body.len()).filter(|&e| e <= CONFIG_SIZE)?;
        if body.len() < 2 || writable.len() > body.len() {
            return None;
        }
        self.put(at, body);
        self.bytes[at + 1] = 0;
        self.allow(at, writable);
        self.bytes[self.last_link] = at as u8;
        self.last_link = at + 1;
        // Capabilities are dword aligned.
        self.next_capability = (end + 3) & !3;
        let status = self.word(STATUS) | STATUS_CAPABILITIES;
        self.put(STATUS, &status.to_le_bytes());
        Some(at)
    }

    /// Reads `data.len()` bytes at `offset`; past the end reads as ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Writes what the mask lets through; the rest of each byte keeps its value.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|&o| o < CONFIG_SIZE) else {
                return;
            };
            let mask = self.writable[o];
            self.bytes[o] = (self.bytes[o] & !mask) | (b & mask);
        }
    }

    pub fn word(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn dword(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Sets bytes regardless of the mask: the function's own view.
    pub fn put(&mut self, offset: usize, data: &[u8]) {
        if let Some(dst) = self.bytes.get_mut(offset..offset + data.len()) {
            dst.copy_from_slice(data);
        }
    }

    fn allow(&mut self, offset: usize, mask: &[u8]) {
        if let Some(dst) = self.writable.get_mut(offset..offset + mask.len()) {
            dst.copy_from_slice(mask);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A virtio-net function's identity, for tests of the bus and of config space.
    pub(crate) fn id() -> Identity {
        Identity {
            vendor: 0x1af4,
            device: 0x1041,
            revision: 1,
            class: 0x02_00_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        }
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask_and_the_address_sticks() {
        let mut c = ConfigSpace::new(id());
        c.set_bar0(0xe000_0000, 0x8000);
        assert_eq!(c.dword(BAR0), 0xe000_0000);
        c.write(BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(c.dword(BAR0), 0xffff_8000);
        c.write(BAR0, &0xe001_0000u32.to_le_bytes());
        assert_eq!(c.bar0(), (0xe001_0000, false));
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(c.bar0(), (0xe001_0000, true));
        // Unimplemented BARs read as zero whatever is written.
        c.write(BAR0 + 4, &u32::MAX.to_le_bytes());
        assert_eq!(c.dword(BAR0 + 4), 0);
    }

    #[test]
    fn identity_is_read_only_and_reads_past_the_end_are_ones() {
        let mut c = ConfigSpace::new(id());
        c.write(VENDOR_ID, &[0, 0, 0, 0]);
        assert_eq!(c.dword(VENDOR_ID), 0x1041_1af4);
        assert_eq!(c.dword(REVISION), 0x0200_0001);
        let mut b = [0; 4];
        c.read(CONFIG_SIZE - 2, &mut b);
        assert_eq!(b, [0, 0, 0xff, 0xff]);
        c.write(CONFIG_SIZE - 1, &[1, 2, 3]);
    }

    #[test]
    fn capabilities_are_chained_and_keep_their_masks() {
        let mut c = ConfigSpace::new(id());
        assert_eq!(c.word(STATUS) & STATUS_CAPABILITIES, 0);
        let a = c.add_capability(&[0x11, 0xaa, 1, 2, 3], &[0, 0, 0, 0xff]);
        let b = c.add_capability(&[0x09, 0, 16], &[]);
        assert_eq!((a, b), (Some(0x40), Some(0x48)));
        assert_eq!(c.bytes[CAPABILITIES_POINTER], 0x40);
        assert_eq!(c.bytes[0x41], 0x48);
        assert_eq!(c.bytes[0x49], 0);
        assert_ne!(c.word(STATUS) & STATUS_CAPABILITIES, 0);
        c.write(0x42, &[9, 9, 9]);
        assert_eq!(&c.bytes[0x42..0x45], &[1, 9, 3]);
        assert_eq!(c.add_capability(&[0; 200], &[]), None);
    }
}
