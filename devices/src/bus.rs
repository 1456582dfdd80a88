//! Dispatch of port I/O and MMIO accesses to the device that owns the address.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable on a bus. Offsets are relative to the base the device was inserted at.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset`; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors when wiring devices onto a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} for {name} overlaps {other}")]
    Overlap {
        name: String,
        base: u64,
        len: u64,
        other: String,
    },
    #[error("bus range for {name} is empty or wraps around at {base:#x}+{len:#x}")]
    BadRange { name: String, base: u64, len: u64 },
}

struct Entry {
    len: u64,
    name: String,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// An address space (port I/O or MMIO) mapping ranges to devices.
///
/// Every access goes through here, known address or not: unknown reads return all-ones like
/// an empty ISA bus, unknown writes are dropped. The vCPU loop never filters ports itself.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::BadRange {
                name: name.to_string(),
                base,
                len,
            });
        };
        let overlapping = self
            .ranges
            .range(..end)
            .next_back()
            .filter(|(b, e)| **b + e.len > base);
        if let Some((_, other)) = overlapping {
            return Err(BusError::Overlap {
                name: name.to_string(),
                base,
                len,
                other: other.name.clone(),
            });
        }
        self.ranges.insert(
            base,
            Entry {
                len,
                name: name.to_string(),
                device,
            },
        );
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let (base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must stay inside the device's window.
        let fits = offset
            .checked_add(size as u64)
            .is_some_and(|end| end <= entry.len);
        fits.then_some((entry, offset))
    }

    /// Dispatches a read; returns false when no device claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device claims the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device whose earlier access panicked
/// keeps its last state rather than taking every vCPU down with it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_offset_and_rejects_partial_overlap() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert("rec", 0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(dev.lock().unwrap().writes, vec![(7, vec![9])]);
        // An access straddling the end of the window belongs to nobody.
        let mut w = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut w));
        assert_eq!(w, [0xff, 0xff]);
        assert!(!bus.read(0x3f7, &mut b));
    }

    #[test]
    fn refuses_overlapping_and_empty_ranges() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert("a", 0x100, 0x10, dev.clone()).unwrap();
        let err = bus.insert("b", 0x108, 0x10, dev.clone()).unwrap_err();
        assert!(matches!(err, BusError::Overlap { ref other, .. } if other == "a"));
        assert!(bus.insert("c", 0xf0, 0x11, dev.clone()).is_err());
        assert!(bus.insert("d", 0xf0, 0x10, dev.clone()).is_ok());
        assert!(bus.insert("e", u64::MAX, 2, dev.clone()).is_err());
        assert!(bus.insert("f", 0x1000, 0, dev).is_err());
    }
}
