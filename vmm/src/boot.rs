//! Loading a Linux kernel (bzImage or ELF vmlinux), its initrd and command line, and the
//! zero page with the e820 map, following Documentation/arch/x86/boot.rst.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIGH_RAM_START, HIMEM_START,
    KERNEL_CMDLINE_DEFAULT_LIMIT, MMIO_HOLE_START, PVH_INFO_START, ZERO_PAGE_START,
};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load kernel {path}: {reason}")]
    LoadKernel { path: PathBuf, reason: String },
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest RAM above the kernel; give the VM more --memory")]
    InitrdTooLarge { path: PathBuf, size: u64 },
    #[error("kernel command line is invalid or longer than {CMDLINE_MAX_SIZE} bytes: {0}")]
    Cmdline(String),
    #[error("the kernel command line is {len} bytes and this kernel keeps at most {limit}; it would be cut short (a command after -- counts, base64-encoded): shorten it")]
    CmdlineTooLong { len: usize, limit: usize },
    #[error("cannot write {what} into guest memory: {reason}")]
    Memory { what: &'static str, reason: String },
    #[error("too many e820 entries for the zero page")]
    E820Full,
}

/// What the boot vCPU needs to start the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelEntry {
    /// 64-bit entry point (startup_64).
    pub entry: u64,
    /// First guest address after the kernel image.
    pub kernel_end: u64,
    /// The 32-bit PVH entry of an ELF vmlinux that has the Xen PVH note: preferred, since
    /// it is the protocol such kernels document for direct boot.
    pub pvh_entry: Option<u64>,
}

/// 64-bit entry is 0x200 bytes into the protected-mode part of a bzImage.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// "HdrS", the setup header magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// Loader type "undefined": we are not one of the boot loaders with an assigned ID.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
const E820_RAM: u32 = 1;

/// Loads the kernel, choosing the format by its magic bytes, and returns its setup header
/// (bzImage) or a default one (ELF) together with the entry point.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
) -> Result<(KernelEntry, boot_params), BootError> {
    let open = |p: &Path| {
        File::open(p).map_err(|source| BootError::OpenKernel {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut magic = [0u8; 4];
    let mut probe = open(path)?;
    let is_elf = probe.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC;
    let mut image = open(path)?;
    let load_err = |e: loader::Error| BootError::LoadKernel {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut params = boot_params::default();
    let entry = if is_elf {
        let r =
            Elf::load(mem, None, &mut image, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        params.hdr.boot_flag = BOOT_FLAG_MAGIC;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
        let pvh_entry = match r.pvh_boot_cap {
            linux_loader::loader::elf::PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
            _ => None,
        };
        KernelEntry {
            entry: r.kernel_load.0,
            kernel_end: r.kernel_end,
            pvh_entry,
        }
    } else {
        let r = BzImage::load(mem, None, &mut image, Some(GuestAddress(HIMEM_START)))
            .map_err(load_err)?;
        if let Some(hdr) = r.setup_header {
            params.hdr = hdr;
        }
        KernelEntry {
            entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            kernel_end: r.kernel_end,
            pvh_entry: None,
        }
    };
    Ok((entry, params))
}

/// The e820 map: low RAM below the EBDA, RAM from 1 MiB to the hole, RAM above 4 GiB.
/// The legacy area in between (where the ACPI tables live) stays reserved by omission.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<boot_e820_entry> {
    let end = mem.last_addr().0 + 1;
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: EBDA_START,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: HIMEM_START,
            size: end.min(MMIO_HOLE_START) - HIMEM_START,
            r#type: E820_RAM,
        },
    ];
    if end > HIGH_RAM_START {
        map.push(boot_e820_entry {
            addr: HIGH_RAM_START,
            size: end - HIGH_RAM_START,
            r#type: E820_RAM,
        });
    }
    map
}

/// Where an initrd of `size` bytes goes: page-aligned at the top of low RAM, below the
/// kernel's `initrd_addr_max`, and above the kernel image.
pub fn initrd_address(
    mem_end: u64,
    initrd_addr_max: u32,
    kernel_end: u64,
    size: u64,
) -> Option<u64> {
    // Old headers leave initrd_addr_max at 0: the protocol then says 0x37ffffff.
    let max = if initrd_addr_max == 0 {
        0x37ff_ffff
    } else {
        u64::from(initrd_addr_max)
    };
    let top = mem_end.min(MMIO_HOLE_START).min(max + 1);
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

/// Loads the initrd file and records it in `params`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    params: &mut boot_params,
) -> Result<(), BootError> {
    let read_err = |source| BootError::ReadInitrd {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
    };
    let mem_end = mem.last_addr().0 + 1;
    let addr = initrd_address(mem_end, params.hdr.initrd_addr_max, kernel_end, size)
        .ok_or_else(too_large)?;
    let len = usize::try_from(size).map_err(|_| too_large())?;
    // Straight from the file into guest memory: no intermediate copy of a large initrd.
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| BootError::Memory {
            what: "initrd",
            reason: e.to_string(),
        })?;
    params.hdr.ramdisk_image = u32::try_from(addr).map_err(|_| too_large())?;
    params.hdr.ramdisk_size = u32::try_from(size).map_err(|_| too_large())?;
    Ok(())
}

/// Writes the command line into guest memory, refusing one the kernel would truncate
/// (`limit`: the kernel's own, without the NUL).
fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, limit: usize) -> Result<(), BootError> {
    if cmdline.len() > limit {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            limit,
        });
    }
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(|e| BootError::Memory {
        what: "command line",
        reason: e.to_string(),
    })
}

// The PVH boot protocol (xen/include/public/arch-x86/hvm/start_info.h), version 1.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const HVM_START_INFO_SIZE: u64 = 56;
const HVM_MODLIST_ENTRY_SIZE: u64 = 32;
const HVM_MEMMAP_ENTRY_SIZE: u64 = 24;

/// Serialises `hvm_start_info` plus its module list (the initrd) and memory map, little
/// endian, as the layout fixed by the PVH protocol.
pub fn pvh_start_info(
    e820: &[boot_e820_entry],
    initrd: Option<(u64, u64)>,
    rsdp: u64,
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let modlist_at = PVH_INFO_START + HVM_START_INFO_SIZE;
    let memmap_at = modlist_at + HVM_MODLIST_ENTRY_SIZE;
    let mut info = Vec::with_capacity(HVM_START_INFO_SIZE as usize);
    info.extend_from_slice(&XEN_HVM_START_MAGIC_VALUE.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes()); // version
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&u32::from(initrd.is_some()).to_le_bytes());
    info.extend_from_slice(&(if initrd.is_some() { modlist_at } else { 0 }).to_le_bytes());
    info.extend_from_slice(&CMDLINE_START.to_le_bytes());
    info.extend_from_slice(&rsdp.to_le_bytes());
    info.extend_from_slice(&memmap_at.to_le_bytes());
    info.extend_from_slice(&(e820.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    let mut modlist = Vec::new();
    if let Some((addr, size)) = initrd {
        modlist.extend_from_slice(&addr.to_le_bytes());
        modlist.extend_from_slice(&size.to_le_bytes());
        modlist.extend_from_slice(&0u64.to_le_bytes()); // no module command line
        modlist.extend_from_slice(&0u64.to_le_bytes());
    }
    let mut memmap = Vec::with_capacity(e820.len() * HVM_MEMMAP_ENTRY_SIZE as usize);
    for e in e820 {
        memmap.extend_from_slice(&e.addr.to_le_bytes());
        memmap.extend_from_slice(&e.size.to_le_bytes());
        memmap.extend_from_slice(&e.r#type.to_le_bytes());
        memmap.extend_from_slice(&0u32.to_le_bytes());
    }
    (info, modlist, memmap)
}

/// Writes the command line and the PVH start info (instead of a zero page).
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    params: &boot_params,
    cmdline: &str,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    write_cmdline(mem, cmdline, KERNEL_CMDLINE_DEFAULT_LIMIT)?;
    let (ramdisk, size) = (params.hdr.ramdisk_image, params.hdr.ramdisk_size);
    let initrd = (size != 0).then_some((u64::from(ramdisk), u64::from(size)));
    let (info, modlist, memmap) = pvh_start_info(&e820_map(mem), initrd, rsdp.0);
    let mut at = PVH_INFO_START;
    for part in [info, modlist, memmap] {
        mem.write_slice(&part, GuestAddress(at))
            .map_err(|e| BootError::Memory {
                what: "PVH start info",
                reason: e.to_string(),
            })?;
        at += part.len() as u64;
    }
    if at > ZERO_PAGE_START {
        return Err(BootError::E820Full);
    }
    Ok(())
}

/// The longest command line a bzImage keeps: `cmdline_size` of its setup header (boot
/// protocol 2.06 and later), else x86's old fixed limit.
fn kernel_cmdline_limit(params: &boot_params) -> usize {
    const PROTOCOL_WITH_CMDLINE_SIZE: u16 = 0x0206;
    // Copies: the setup header is packed.
    let (size, version) = (params.hdr.cmdline_size, params.hdr.version);
    if size > 0 && version >= PROTOCOL_WITH_CMDLINE_SIZE {
        (size as usize).min(CMDLINE_MAX_SIZE - 1)
    } else {
        KERNEL_CMDLINE_DEFAULT_LIMIT
    }
}

/// Writes the command line and the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    mut params: boot_params,
    cmdline: &str,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    write_cmdline(mem, cmdline, kernel_cmdline_limit(&params))?;
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    params.acpi_rsdp_addr = rsdp.0;
    let map = e820_map(mem);
    if map.len() > params.e820_table.len() {
        return Err(BootError::E820Full);
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = *e;
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::Memory {
        what: "zero page",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(mib: u64) -> GuestMemoryMmap {
        crate::memory::create_guest_memory(mib).unwrap()
    }

    #[test]
    fn e820_skips_legacy_area_and_hole() {
        let m = e820_map(&mem(64));
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].addr, m[0].size), (0, EBDA_START));
        assert_eq!((m[1].addr, m[1].addr + m[1].size), (HIMEM_START, 64 << 20));
        assert!(m.iter().all(|e| e.r#type == E820_RAM));
    }

    #[test]
    fn initrd_goes_high_aligned_and_above_kernel() {
        let a = initrd_address(256 << 20, 0x7fff_ffff, 0x200_0000, 10_000).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + 10_000 <= 256 << 20);
        // initrd_addr_max caps it below the top of RAM.
        let b = initrd_address(256 << 20, 0x00ff_ffff, 0x20_0000, 4096).unwrap();
        assert!(b + 4096 <= 0x100_0000);
        // Does not fit above the kernel.
        assert!(initrd_address(16 << 20, 0x7fff_ffff, 15 << 20, 2 << 20).is_none());
        assert!(initrd_address(1 << 20, 0, 0, 2 << 20).is_none());
    }

    #[test]
    fn zero_page_carries_cmdline_rsdp_and_e820() {
        let m = mem(64);
        let params = boot_params::default();
        write_boot_params(&m, params, "console=ttyS0 quiet", GuestAddress(0xe0000)).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let (rsdp, entries, cmd) = (p.acpi_rsdp_addr, p.e820_entries, p.hdr.cmd_line_ptr);
        assert_eq!(rsdp, 0xe0000);
        assert_eq!(entries, 2);
        assert_eq!(u64::from(cmd), CMDLINE_START);
        let mut buf = [0u8; 19];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0 quiet");
        let loader = p.hdr.type_of_loader;
        assert_eq!(loader, LOADER_TYPE_UNDEFINED);
    }

    #[test]
    fn a_command_line_the_kernel_would_cut_short_is_refused() {
        let m = mem(64);
        let mut params = boot_params::default();
        params.hdr.version = 0x020f;
        params.hdr.cmdline_size = 100;
        let fits = "x".repeat(100);
        write_boot_params(&m, params, &fits, GuestAddress(0xe0000)).unwrap();
        let long = "x".repeat(101);
        let e = write_boot_params(&m, params, &long, GuestAddress(0xe0000)).unwrap_err();
        assert!(
            matches!(
                e,
                BootError::CmdlineTooLong {
                    len: 101,
                    limit: 100
                }
            ),
            "{e}"
        );
        // An old protocol, or an ELF kernel through PVH: x86's 2047 bytes.
        params.hdr.version = 0x0205;
        let e = write_boot_params(&m, params, &"x".repeat(2048), GuestAddress(0xe0000));
        assert!(e.unwrap_err().to_string().contains("at most 2047"));
        let e = write_pvh_start_info(&m, &params, &"x".repeat(2048), GuestAddress(0xe0000));
        assert!(matches!(
            e,
            Err(BootError::CmdlineTooLong { limit: 2047, .. })
        ));
        write_pvh_start_info(&m, &params, &"x".repeat(2047), GuestAddress(0xe0000)).unwrap();
    }

    #[test]
    fn pvh_start_info_has_the_protocol_layout() {
        let m = mem(64);
        let map = e820_map(&m);
        let (info, modlist, memmap) = pvh_start_info(&map, Some((0x100_0000, 0x2000)), 0xe0000);
        assert_eq!(info.len(), 56);
        assert_eq!(&info[0..4], &XEN_HVM_START_MAGIC_VALUE.to_le_bytes());
        assert_eq!(
            u32::from_le_bytes(info[12..16].try_into().unwrap()),
            1,
            "one module"
        );
        let modlist_at = u64::from_le_bytes(info[16..24].try_into().unwrap());
        assert_eq!(modlist_at, PVH_INFO_START + 56);
        assert_eq!(
            u64::from_le_bytes(info[24..32].try_into().unwrap()),
            CMDLINE_START
        );
        assert_eq!(
            u64::from_le_bytes(info[32..40].try_into().unwrap()),
            0xe0000
        );
        assert_eq!(
            u64::from_le_bytes(info[40..48].try_into().unwrap()),
            modlist_at + 32
        );
        assert_eq!(u32::from_le_bytes(info[48..52].try_into().unwrap()), 2);
        assert_eq!(
            u64::from_le_bytes(modlist[0..8].try_into().unwrap()),
            0x100_0000
        );
        assert_eq!(
            u64::from_le_bytes(modlist[8..16].try_into().unwrap()),
            0x2000
        );
        assert_eq!(memmap.len(), 48);
        let (none, empty, _) = pvh_start_info(&map, None, 0);
        assert_eq!(u32::from_le_bytes(none[12..16].try_into().unwrap()), 0);
        assert!(empty.is_empty());
        let mut params = boot_params::default();
        params.hdr.ramdisk_image = 0x100_0000;
        params.hdr.ramdisk_size = 0x2000;
        write_pvh_start_info(&m, &params, "console=ttyS0", GuestAddress(0xe0000)).unwrap();
        let magic: u32 = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(magic, XEN_HVM_START_MAGIC_VALUE);
    }

    #[test]
    fn garbage_kernel_is_a_named_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("netvmm-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("garbage");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = load_kernel(&mem(64), &path).unwrap_err();
        assert!(err.to_string().contains("garbage"), "{err}");
        let elf = dir.join("bad-elf");
        std::fs::write(&elf, b"\x7fELF not really").unwrap();
        assert!(matches!(
            load_kernel(&mem(64), &elf),
            Err(BootError::LoadKernel { .. })
        ));
        let missing = load_kernel(&mem(64), &dir.join("nope")).unwrap_err();
        assert!(matches!(missing, BootError::OpenKernel { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
