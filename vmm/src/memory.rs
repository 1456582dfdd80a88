//! Guest RAM: one region below the 32-bit MMIO hole and, for large guests, one above 4 GiB.
//!
//! Each region is mapped at a 2 MiB-aligned host address and marked for transparent huge
//! pages, as QEMU and Cloud Hypervisor do: guest 2 MiB pages then line up with host huge
//! pages, and KVM can map them with 2 MiB entries in its nested page tables (fewer TLB
//! misses, fewer page-table pages). A plain mmap of the size lands wherever the kernel
//! likes, usually off by some 4 KiB pages, and every guest 2 MiB page would then straddle
//! two host ones.

use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::layout::{HIGH_RAM_START, MMIO_HOLE_START};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Allocate { mib: u64, source: std::io::Error },
    #[error("cannot set up {mib} MiB of guest memory: {reason}")]
    Layout { mib: u64, reason: String },
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

/// The transparent huge page size on x86_64.
const HUGE_PAGE: usize = 2 << 20;

const PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;
const FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// Maps `size` bytes of anonymous memory at a `HUGE_PAGE`-aligned address: maps a huge page
/// more than asked, then unmaps the unaligned head and the tail.
///
/// The mapping is never unmapped: it is guest RAM, which device threads may touch until the
/// process ends, and a netvmm process runs one VM.
fn map_aligned(size: usize) -> std::io::Result<*mut u8> {
    let len = size
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a new anonymous private mapping at an address the kernel picks; it touches
    // no existing memory.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), len, PROT, FLAGS, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let start = base as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let (head, tail) = (aligned - start, len - (aligned - start) - size);
    // SAFETY: both ranges lie inside the mapping made above, which nothing else uses yet,
    // and outside [aligned, aligned + size), which is what is kept.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
        // Only a hint: without THP (or with it off) the memory is simply small pages.
        libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
    }
    Ok(aligned as *mut u8)
}

pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::new();
    for (at, size) in ram_ranges(mib)? {
        let addr = map_aligned(size).map_err(|source| MemoryError::Allocate { mib, source })?;
        // SAFETY: `addr` starts a live mapping of `size` bytes made with PROT and FLAGS,
        // owned by nobody else and never unmapped (see map_aligned).
        let mapping = unsafe { MmapRegion::build_raw(addr, size, PROT, FLAGS) }.map_err(|e| {
            MemoryError::Layout {
                mib,
                reason: e.to_string(),
            }
        })?;
        let region = GuestRegionMmap::new(mapping, at).ok_or_else(|| MemoryError::Layout {
            mib,
            reason: format!("a region of {size} bytes at {:#x} overflows", at.0),
        })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Layout {
        mib,
        reason: e.to_string(),
    })
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

    #[test]
    fn guest_ram_starts_on_a_huge_page_and_is_usable() {
        use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
        let mem = create_guest_memory(64).unwrap();
        for region in mem.iter() {
            let host = region.get_host_address(vm_memory::MemoryRegionAddress(0));
            assert_eq!(host.unwrap() as usize % HUGE_PAGE, 0);
        }
        mem.write_obj(0xabcd_u64, GuestAddress((64 << 20) - 8))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress((64 << 20) - 8)).unwrap(),
            0xabcd
        );
        assert!(mem.write_obj(1u8, GuestAddress(64 << 20)).is_err());
    }
}
