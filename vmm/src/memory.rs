//! Guest RAM: one region below the 32-bit MMIO hole and, for large guests, one above 4 GiB.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{HIGH_RAM_START, MMIO_HOLE_START};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Allocate {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("guest memory size {0} MiB does not fit the address space")]
    TooLarge(u64),
}

/// The RAM ranges for a guest of `mib` MiB, avoiding the hole below 4 GiB.
pub fn ram_ranges(mib: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    let bytes = mib.checked_mul(1 << 20).ok_or(MemoryError::TooLarge(mib))?;
    let low = bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), to_usize(low, mib)?)];
    if bytes > low {
        ranges.push((GuestAddress(HIGH_RAM_START), to_usize(bytes - low, mib)?));
    }
    Ok(ranges)
}

fn to_usize(v: u64, mib: u64) -> Result<usize, MemoryError> {
    usize::try_from(v).map_err(|_| MemoryError::TooLarge(mib))
}

pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = ram_ranges(mib)?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate { mib, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region_large_guest_skips_the_hole() {
        assert_eq!(ram_ranges(256).unwrap(), vec![(GuestAddress(0), 256 << 20)]);
        let r = ram_ranges(4096).unwrap();
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(r[1].0, GuestAddress(HIGH_RAM_START));
        assert_eq!(r[0].1 + r[1].1, 4096 << 20);
        assert!(ram_ranges(u64::MAX).is_err());
    }
}
