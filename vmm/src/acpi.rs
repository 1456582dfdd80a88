//! ACPI tables for a hardware-reduced x86 guest.
//!
//! Debian's stock kernels have neither `CONFIG_X86_MPPARSE` nor
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, so ACPI is the only way they learn about secondary
//! CPUs (MADT) and about the virtio-mmio, serial and pvpanic devices (DSDT).
//!
//! The tables are built with the `acpi_tables` crate: the RSDP, XSDT and FADT from its table
//! types, the MADT and DSDT inside its generic [`Sdt`] container, and all AML from its `aml`
//! module. The only hand-written bytes are the MADT's Local APIC NMI entry, for which the crate
//! has no type (it only knows Processor Local APIC and I/O APIC entries on x86).
//!
//! Everything is built and size-checked in host memory first, so an oversized configuration
//! fails without touching the guest.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout::{
    ACPI_END, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, ACPI_START,
    APIC_ADDR, COM1_GSI, COM1_PORT, IOAPIC_ADDR, IOAPIC_PINS, PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN,
    PVPANIC_PORT,
};

/// OEM ID in every table header and in the RSDP.
const OEM_ID: [u8; 6] = *b"NETVMM";
/// OEM table ID; Linux only prints it, so one value serves all tables.
const OEM_TABLE_ID: [u8; 8] = *b"NETVMM  ";
const OEM_REVISION: u32 = 1;

/// DSDT revision 2 and above switches the AML interpreter to 64-bit integers.
const DSDT_REVISION: u8 = 6;
/// MADT revision of ACPI 6.x; Linux accepts any.
const MADT_REVISION: u8 = 5;

/// Tables are placed on 16-byte boundaries: the RSDP must be (the legacy scan only looks at
/// 16-byte boundaries), and keeping the others aligned costs a few bytes.
const TABLE_ALIGN: u64 = 16;

/// Device names in the DSDT are `V000`..`VFFF`, so this many slots can be named.
pub const MAX_VIRTIO_MMIO_SLOTS: usize = 0x1000;

/// IAPC_BOOT_ARCH bits (ACPI 6.5, table 5.11). Without NO_CMOS_RTC Linux probes a CMOS RTC
/// at port 0x70 that does not exist; NO_VGA keeps it from poking the legacy VGA window.
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const IAPC_BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;

/// MADT Local APIC NMI structure (type 4, 6 bytes): every processor (UID 0xff), flags 0
/// (conforms to bus), LINT1. This is how a PC wires NMI, and what Linux assumes anyway.
const MADT_LOCAL_APIC_NMI: [u8; 6] = [4, 6, 0xff, 0, 0, 1];

/// Layout of the MADT's fixed part: the table header, then the local APIC address and flags.
const MADT_LAPIC_ADDR_OFFSET: usize = 36;
const MADT_FLAGS_OFFSET: usize = 40;
const MADT_FIXED_LEN: u32 = 44;
/// Length of a bare table header, for tables built by appending to an [`Sdt`].
const SDT_HEADER_LEN: u32 = 36;

// The FADT's 32-bit DSDT field needs the whole ACPI area below 4 GiB, and the RSDP at its
// start must be 16-byte aligned for the legacy scan.
const _: () = assert!(ACPI_END <= u32::MAX as u64);
const _: () = assert!(ACPI_START < ACPI_END);
const _: () = assert!(ACPI_START.is_multiple_of(TABLE_ALIGN));

/// One virtio-mmio device window, announced in the DSDT as `LNRO0005`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Guest physical address of the register window.
    pub addr: u64,
    /// Size of the register window in bytes.
    pub size: u64,
    /// IOAPIC input (edge, active high) the device interrupts on.
    pub gsi: u32,
}

/// The PCI host bridge the DSDT announces: bus 0 only, configuration by port I/O, BARs
/// inside one 32-bit memory window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHostBridge {
    pub mmio_base: u64,
    pub mmio_size: u64,
}

/// What the tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs; CPU `i` gets ACPI processor UID `i` and local APIC ID `i`.
    pub cpus: u8,
    /// virtio-mmio devices; slot `i` gets `_UID` `i`.
    pub virtio_mmio: Vec<VirtioMmioSlot>,
    /// The PCI host bridge, when devices sit on PCI.
    pub pci: Option<PciHostBridge>,
}

/// Errors from building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The MADT must list at least the boot CPU.
    #[error("cannot build ACPI MADT for 0 CPUs: at least one is needed")]
    NoCpus,
    /// More virtio-mmio slots than the DSDT can name.
    #[error(
        "cannot describe {count} virtio-mmio devices in the ACPI DSDT: at most {max} are supported"
    )]
    TooManyVirtioSlots { count: usize, max: usize },
    /// A window that a 32-bit Memory32Fixed descriptor cannot express.
    #[error(
        "virtio-mmio slot {index} at {addr:#x} (size {size:#x}) cannot be described in the ACPI \
         DSDT: the window must be non-empty and lie below 4 GiB"
    )]
    InvalidVirtioWindow { index: usize, addr: u64, size: u64 },
    /// A PCI window that a DWordMemory descriptor cannot express.
    #[error(
        "the PCI window at {base:#x} (size {size:#x}) cannot be described in the ACPI DSDT: \
         it must be non-empty and lie below 4 GiB"
    )]
    InvalidPciWindow { base: u64, size: u64 },
    /// A GSI the in-kernel IOAPIC does not have.
    #[error("virtio-mmio slot {index} uses GSI {gsi}, but the IOAPIC only has GSIs 0..{pins}")]
    InvalidVirtioGsi { index: usize, gsi: u32, pins: u32 },
    /// The tables are larger than the reserved ACPI area.
    #[error(
        "ACPI tables need {needed:#x} bytes but the ACPI area {start:#x}..{end:#x} has only \
         {available:#x}"
    )]
    TooLarge {
        needed: u64,
        available: u64,
        start: u64,
        end: u64,
    },
    /// Writing a table into guest memory failed.
    #[error("ACPI tables do not fit in guest memory at {addr:#x}: {source}")]
    GuestMemory { addr: u64, source: GuestMemoryError },
}

/// Writes RSDP, XSDT, FADT, MADT, DSDT into guest memory in [ACPI_START, ACPI_END) with the RSDP
/// first (at ACPI_START, 16-byte aligned so the kernel's legacy scan of 0xE0000-0xFFFFF finds
/// it). Returns the RSDP address.
///
/// The caller must keep [ACPI_START, ACPI_END) out of the guest's usable e820 RAM; it may also
/// pass the returned address in `boot_params.acpi_rsdp_addr` to spare the kernel the scan.
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    validate(cfg)?;

    // The MADT and DSDT do not depend on any address, so they are built first and their sizes
    // decide where everything goes.
    let madt = madt(cfg.cpus);
    let dsdt = dsdt(&cfg.virtio_mmio, cfg.pci);

    let rsdp_addr = ACPI_START;
    let xsdt_addr = align_up(rsdp_addr + Rsdp::len() as u64);
    // The XSDT lists exactly two tables: FADT and MADT.
    let xsdt_len = u64::from(SDT_HEADER_LEN) + 2 * 8;
    let fadt_addr = align_up(xsdt_addr + xsdt_len);
    let madt_addr = align_up(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let dsdt_addr = align_up(madt_addr + madt.len() as u64);
    let end = dsdt_addr + dsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge {
            needed: end - ACPI_START,
            available: ACPI_END - ACPI_START,
            start: ACPI_START,
            end: ACPI_END,
        });
    }

    let fadt = to_bytes(&fadt(dsdt_addr));

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    debug_assert_eq!(xsdt.len() as u64, xsdt_len);

    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    for (addr, bytes) in [
        (rsdp_addr, rsdp.as_slice()),
        (xsdt_addr, xsdt.as_slice()),
        (fadt_addr, fadt.as_slice()),
        (madt_addr, madt.as_slice()),
        (dsdt_addr, dsdt.as_slice()),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::GuestMemory { addr, source })?;
    }

    Ok(GuestAddress(rsdp_addr))
}

/// Rejects configurations the tables cannot express, before any AML is generated (the `aml`
/// module asserts on bad names, and an absurd slot count should not allocate megabytes).
fn validate(cfg: &AcpiConfig) -> Result<(), AcpiError> {
    if cfg.cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if cfg.virtio_mmio.len() > MAX_VIRTIO_MMIO_SLOTS {
        return Err(AcpiError::TooManyVirtioSlots {
            count: cfg.virtio_mmio.len(),
            max: MAX_VIRTIO_MMIO_SLOTS,
        });
    }
    for (index, slot) in cfg.virtio_mmio.iter().enumerate() {
        let below_4g = slot
            .addr
            .checked_add(slot.size)
            .is_some_and(|end| end <= 1 << 32);
        if slot.size == 0 || !below_4g {
            return Err(AcpiError::InvalidVirtioWindow {
                index,
                addr: slot.addr,
                size: slot.size,
            });
        }
        if slot.gsi >= IOAPIC_PINS {
            return Err(AcpiError::InvalidVirtioGsi {
                index,
                gsi: slot.gsi,
                pins: IOAPIC_PINS,
            });
        }
    }
    if let Some(pci) = cfg.pci {
        let below_4g = pci
            .mmio_base
            .checked_add(pci.mmio_size)
            .is_some_and(|end| end <= 1 << 32);
        if pci.mmio_size == 0 || !below_4g {
            return Err(AcpiError::InvalidPciWindow {
                base: pci.mmio_base,
                size: pci.mmio_size,
            });
        }
    }
    Ok(())
}

fn align_up(addr: u64) -> u64 {
    addr.next_multiple_of(TABLE_ALIGN)
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn fadt(dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    // Hardware-reduced: no PM1/GPE blocks, no SCI, no fixed-feature buttons. PWR_BUTTON and
    // SLP_BUTTON set mean "no fixed-feature button", which keeps Linux from registering
    // LNXPWRBN/LNXSLPBN devices that could never fire.
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    // Both DSDT pointers hold the same address: ACPICA prefers X_DSDT and only warns when the
    // two disagree, while older readers only know the 32-bit field. The cast is lossless: the
    // ACPI area is below 4 GiB (asserted at the top of this file).
    fadt.dsdt = (dsdt_addr as u32).into();
    fadt.x_dsdt = dsdt_addr.into();
    fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC).into();
    // On a hardware-reduced platform Linux offers S5 (and so power-off through ACPI) only if
    // both of these registers are present; it then writes (SLP_TYP << 2) | SLP_EN to the
    // control register.
    fadt.sleep_control_reg = io_port_byte(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_port_byte(ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"NETVMM\0\0").into();
    fadt.finalize()
}

fn io_port_byte(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

fn madt(cpus: u8) -> Vec<u8> {
    // Built in a generic Sdt rather than acpi_tables' MADT type, because that type only accepts
    // entries it defines and has none for the Local APIC NMI entry.
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_FIXED_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(MADT_LAPIC_ADDR_OFFSET, APIC_ADDR);
    // No PCAT_COMPAT: a hardware-reduced machine has no 8259 pair to mask.
    madt.write_u32(MADT_FLAGS_OFFSET, 0);
    for id in 0..cpus {
        madt.append_slice(&to_bytes(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    madt.append_slice(&to_bytes(&IoApic::new(0, IOAPIC_ADDR, 0)));
    madt.append_slice(&MADT_LOCAL_APIC_NMI);
    madt.as_slice().to_vec()
}

/// The host bridge of PCI bus 0 (PNP0A08, PCI Express, which Linux also takes as
/// PNP0A03). Its resources: bus 0, the configuration ports, and the BAR window. No
/// `_PRT`: our functions have no INTx pin, they interrupt by MSI-X only.
fn pci_host_bridge(pci: PciHostBridge, sink: &mut Vec<u8>) {
    // validate() keeps the window non-empty and below 4 GiB: the casts are lossless.
    let first = pci.mmio_base as u32;
    let last = (pci.mmio_base + pci.mmio_size - 1) as u32;
    aml::Device::new(
        "PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
            &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_ADR".into(), &aml::ZERO),
            &aml::Name::new("_SEG".into(), &aml::ZERO),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_BBN".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::AddressSpace::new_bus_number(0u16, 0u16),
                    &aml::IO::new(
                        PCI_CONFIG_PORT,
                        PCI_CONFIG_PORT,
                        1,
                        PCI_CONFIG_PORT_LEN as u8,
                    ),
                    &aml::AddressSpace::new_memory(
                        aml::AddressSpaceCacheable::NotCacheable,
                        true,
                        first,
                        last,
                        None,
                    ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(sink);
}

fn dsdt(slots: &[VirtioMmioSlot], pci: Option<PciHostBridge>) -> Vec<u8> {
    let mut sb = Vec::new();
    if let Some(pci) = pci {
        pci_host_bridge(pci, &mut sb);
    }

    aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
                    &aml::Interrupt::new(true, true, false, false, COM1_GSI),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut sb);

    // Linux's pvpanic-mmio driver binds QEMU0001 and accepts an I/O port resource.
    aml::Device::new(
        "PEVT".into(),
        vec![
            &aml::Name::new("_HID".into(), &"QEMU0001"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1)]),
            ),
        ],
    )
    .to_aml_bytes(&mut sb);

    for (uid, slot) in (0u32..).zip(slots) {
        // validate() guarantees uid < 0x1000 and a window below 4 GiB, so the name has
        // exactly four characters and the casts are lossless.
        let name = format!("V{uid:03X}");
        aml::Device::new(
            name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![
                        &aml::Memory32Fixed::new(true, slot.addr as u32, slot.size as u32),
                        &aml::Interrupt::new(true, true, false, false, slot.gsi),
                    ]),
                ),
            ],
        )
        .to_aml_bytes(&mut sb);
    }

    let mut body = aml::Scope::raw("\\_SB_".into(), sb);
    // Linux reads SLP_TYPa from element 0 and SLP_TYPb from element 1.
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![
            &ACPI_S5_SLEEP_TYPE,
            &aml::ZERO,
            &aml::ZERO,
            &aml::ZERO,
        ]),
    )
    .to_aml_bytes(&mut body);

    let mut dsdt = Sdt::new(
        *b"DSDT",
        SDT_HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const MEM_SIZE: usize = 2 << 20;

    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn slots(n: u32) -> Vec<VirtioMmioSlot> {
        (0..n)
            .map(|i| VirtioMmioSlot {
                addr: crate::layout::MMIO_DEVICES_START
                    + u64::from(i) * crate::layout::MMIO_DEVICE_SIZE,
                size: crate::layout::MMIO_DEVICE_SIZE,
                gsi: crate::layout::VIRTIO_GSI_START + i,
            })
            .collect()
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |acc, x| acc.wrapping_add(*x))
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }

    /// Reads a whole table from guest memory after checking that it lies in the ACPI area,
    /// carries `signature` and has a valid checksum.
    fn read_table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let mut header = [0u8; 36];
        mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
        assert_eq!(&header[0..4], signature, "table at {addr:#x}");
        let len = u32_at(&header, 4) as usize;
        assert!(len >= 36);
        assert!(addr >= ACPI_START && addr + len as u64 <= ACPI_END);
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        assert_eq!(sum(&table), 0, "checksum of {:?}", signature);
        table
    }

    struct Tables {
        rsdp: Vec<u8>,
        xsdt_addr: u64,
        fadt_addr: u64,
        fadt: Vec<u8>,
        madt_addr: u64,
        madt: Vec<u8>,
        dsdt_addr: u64,
        dsdt: Vec<u8>,
    }

    fn build(cfg: &AcpiConfig) -> Tables {
        let mem = guest_memory();
        let rsdp_addr = create_acpi_tables(&mem, cfg).unwrap();
        assert_eq!(rsdp_addr, GuestAddress(ACPI_START));
        assert_eq!(rsdp_addr.0 % 16, 0);

        let mut rsdp = vec![0u8; 36];
        mem.read_slice(&mut rsdp, rsdp_addr).unwrap();
        let xsdt_addr = u64_at(&rsdp, 24);
        let xsdt = read_table(&mem, xsdt_addr, b"XSDT");
        assert_eq!(xsdt.len(), 36 + 16);
        let fadt_addr = u64_at(&xsdt, 36);
        let madt_addr = u64_at(&xsdt, 44);
        let fadt = read_table(&mem, fadt_addr, b"FACP");
        let madt = read_table(&mem, madt_addr, b"APIC");
        let dsdt_addr = u64_at(&fadt, 140);
        let dsdt = read_table(&mem, dsdt_addr, b"DSDT");
        Tables {
            rsdp,
            xsdt_addr,
            fadt_addr,
            fadt,
            madt_addr,
            madt,
            dsdt_addr,
            dsdt,
        }
    }

    fn default_config() -> AcpiConfig {
        AcpiConfig {
            cpus: 2,
            virtio_mmio: slots(2),
            pci: None,
        }
    }

    #[test]
    fn rsdp_is_valid_revision_2() {
        let t = build(&default_config());
        assert_eq!(&t.rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&t.rsdp[0..20]), 0);
        assert_eq!(sum(&t.rsdp[0..36]), 0);
        assert_eq!(t.rsdp[15], 2, "revision");
        assert_eq!(u32_at(&t.rsdp, 20), 36, "length");
        assert_eq!(&t.rsdp[9..15], b"NETVMM");
    }

    #[test]
    fn tables_are_aligned_and_do_not_overlap() {
        let t = build(&default_config());
        let mut spans = [
            (ACPI_START, 36u64),
            (t.xsdt_addr, 52),
            (t.fadt_addr, t.fadt.len() as u64),
            (t.madt_addr, t.madt.len() as u64),
            (t.dsdt_addr, t.dsdt.len() as u64),
        ];
        spans.sort();
        for (addr, len) in spans {
            assert_eq!(addr % 8, 0);
            assert!(addr >= ACPI_START && addr + len <= ACPI_END);
        }
        for pair in spans.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?} overlap");
        }
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_registers() {
        let t = build(&default_config());
        let f = &t.fadt;
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6, "major revision");
        assert_eq!(f[131], 5, "minor revision");
        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_eq!(u16_at(f, 109), (1 << 2) | (1 << 5), "IAPC_BOOT_ARCH");
        assert_eq!(u64_at(f, 140), t.dsdt_addr, "X_DSDT");
        assert_eq!(u64::from(u32_at(f, 40)), t.dsdt_addr, "DSDT");
        assert_eq!(u16_at(f, 46), 0, "SCI_INT");
        // SLEEP_CONTROL_REG at 244 and SLEEP_STATUS_REG at 256: System I/O, 8 bits, byte access.
        for (off, port) in [(244, 0x600u64), (256, 0x601)] {
            assert_eq!(&f[off..off + 4], &[1, 8, 0, 1], "GAS at {off}");
            assert_eq!(u64_at(f, off + 4), port);
        }
        assert_eq!(&f[268..276], b"NETVMM\0\0");
    }

    #[test]
    fn madt_lists_cpus_ioapic_and_nmi() {
        let t = build(&default_config());
        let m = &t.madt;
        assert_eq!(u32_at(m, 36), APIC_ADDR);
        assert_eq!(u32_at(m, 40), 0, "flags");
        let mut lapics = Vec::new();
        let mut ioapics = Vec::new();
        let mut nmis = Vec::new();
        let mut off = 44;
        while off < m.len() {
            let (kind, len) = (m[off], m[off + 1] as usize);
            assert!(len >= 2 && off + len <= m.len());
            let entry = &m[off..off + len];
            match kind {
                0 => lapics.push((entry[2], entry[3], u32_at(entry, 4))),
                1 => ioapics.push((entry[2], u32_at(entry, 4), u32_at(entry, 8))),
                4 => nmis.push(entry.to_vec()),
                other => panic!("unexpected MADT entry type {other}"),
            }
            off += len;
        }
        assert_eq!(off, m.len());
        assert_eq!(lapics, vec![(0, 0, 1), (1, 1, 1)]);
        assert_eq!(ioapics, vec![(0, IOAPIC_ADDR, 0)]);
        assert_eq!(nmis, vec![vec![4, 6, 0xff, 0, 0, 1]]);
    }

    #[test]
    fn dsdt_describes_devices_and_s5() {
        let cfg = AcpiConfig {
            cpus: 1,
            virtio_mmio: slots(3),
            pci: None,
        };
        let t = build(&cfg);
        let d = &t.dsdt;
        assert_eq!(d[8], 6, "revision");
        assert_eq!(count(d, b"LNRO0005"), 3);
        assert_eq!(count(d, b"QEMU0001"), 1);
        assert_eq!(count(d, b"_S5_"), 1);
        assert_eq!(count(d, b"_SB_"), 1);
        // EisaId("PNP0501") as a DWord constant.
        assert_eq!(count(d, &[0x0c, 0x41, 0xd0, 0x05, 0x01]), 1);
        // Name(_S5_, Package(4) { 5, 0, 0, 0 })
        assert_eq!(
            count(
                d,
                &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0, 0, 0]
            ),
            1
        );
        for slot in &cfg.virtio_mmio {
            let mut mem32 = vec![0x86, 9, 0, 1];
            mem32.extend_from_slice(&(slot.addr as u32).to_le_bytes());
            mem32.extend_from_slice(&(slot.size as u32).to_le_bytes());
            assert_eq!(count(d, &mem32), 1, "Memory32Fixed for {slot:x?}");
            // Extended interrupt: consumer, edge, active high, exclusive, one GSI.
            let mut irq = vec![0x89, 6, 0, 0b0011, 1];
            irq.extend_from_slice(&slot.gsi.to_le_bytes());
            assert_eq!(count(d, &irq), 1, "Interrupt for {slot:x?}");
        }
        // COM1: IO(Decode16, 0x3f8, 0x3f8, 1, 8) and its GSI 4.
        assert_eq!(count(d, &[0x47, 1, 0xf8, 0x03, 0xf8, 0x03, 1, 8]), 1);
        assert_eq!(count(d, &[0x89, 6, 0, 0b0011, 1, 4, 0, 0, 0]), 1);
        // pvpanic: IO(Decode16, 0x505, 0x505, 1, 1).
        assert_eq!(count(d, &[0x47, 1, 0x05, 0x05, 0x05, 0x05, 1, 1]), 1);
    }

    #[test]
    fn no_virtio_devices_is_fine() {
        let t = build(&AcpiConfig {
            cpus: 1,
            virtio_mmio: Vec::new(),
            pci: None,
        });
        assert_eq!(count(&t.dsdt, b"LNRO0005"), 0);
        assert_eq!(count(&t.dsdt, b"QEMU0001"), 1);
    }

    #[test]
    fn max_cpus_and_all_ioapic_pins_fit() {
        let t = build(&AcpiConfig {
            cpus: u8::MAX,
            virtio_mmio: slots(IOAPIC_PINS - crate::layout::VIRTIO_GSI_START),
            pci: None,
        });
        assert_eq!(t.madt.len(), 44 + 255 * 8 + 12 + 6);
    }

    #[test]
    fn absurd_slot_count_is_an_error() {
        let mem = guest_memory();
        let cfg = AcpiConfig {
            cpus: 1,
            virtio_mmio: vec![
                VirtioMmioSlot {
                    addr: 0xd000_0000,
                    size: 0x1000,
                    gsi: 5,
                };
                10_000
            ],
            pci: None,
        };
        let err = create_acpi_tables(&mem, &cfg).unwrap_err();
        assert!(matches!(
            err,
            AcpiError::TooManyVirtioSlots { count: 10_000, .. }
        ));
    }

    #[test]
    fn dsdt_describes_the_pci_host_bridge_only_when_asked() {
        let bridge = PciHostBridge {
            mmio_base: 0xe000_0000,
            mmio_size: 0x1000_0000,
        };
        let with = build(&AcpiConfig {
            cpus: 1,
            virtio_mmio: Vec::new(),
            pci: Some(bridge),
        });
        let d = &with.dsdt;
        assert_eq!(count(d, b"PCI0"), 1);
        // EisaId("PNP0A08") and EisaId("PNP0A03") as DWord constants.
        assert_eq!(count(d, &[0x0c, 0x41, 0xd0, 0x0a, 0x08]), 1);
        assert_eq!(count(d, &[0x0c, 0x41, 0xd0, 0x0a, 0x03]), 1);
        // IO(Decode16, 0xcf8, 0xcf8, 1, 8): the configuration ports.
        assert_eq!(count(d, &[0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]), 1);
        // DWordMemory from 0xe0000000 to 0xefffffff.
        let mut range = 0xe000_0000u32.to_le_bytes().to_vec();
        range.extend_from_slice(&0xefff_ffffu32.to_le_bytes());
        assert_eq!(count(d, &range), 1);
        let sum = d.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        assert_eq!(sum, 0, "DSDT checksum");
        let without = build(&default_config());
        assert_eq!(count(&without.dsdt, b"PCI0"), 0);
        let mem = guest_memory();
        for (base, size) in [(0xf000_0000, 0x2000_0000), (0xe000_0000, 0), (u64::MAX, 2)] {
            let cfg = AcpiConfig {
                cpus: 1,
                virtio_mmio: Vec::new(),
                pci: Some(PciHostBridge {
                    mmio_base: base,
                    mmio_size: size,
                }),
            };
            let e = create_acpi_tables(&mem, &cfg).unwrap_err();
            assert!(matches!(e, AcpiError::InvalidPciWindow { .. }), "{e}");
        }
    }

    #[test]
    fn tables_larger_than_the_area_are_an_error() {
        let mem = guest_memory();
        let cfg = AcpiConfig {
            cpus: 1,
            virtio_mmio: vec![
                VirtioMmioSlot {
                    addr: 0xd000_0000,
                    size: 0x1000,
                    gsi: 5,
                };
                MAX_VIRTIO_MMIO_SLOTS
            ],
            pci: None,
        };
        let err = create_acpi_tables(&mem, &cfg).unwrap_err();
        assert!(matches!(err, AcpiError::TooLarge { .. }), "{err}");
        // Nothing was written.
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(ACPI_START)).unwrap();
        assert_eq!(sig, [0; 8]);
    }

    #[test]
    fn bad_configs_are_errors() {
        let mem = guest_memory();
        let err = |cfg: AcpiConfig| create_acpi_tables(&mem, &cfg).unwrap_err();
        let one = |slot| AcpiConfig {
            cpus: 1,
            virtio_mmio: vec![slot],
            pci: None,
        };

        assert!(matches!(
            err(AcpiConfig {
                cpus: 0,
                virtio_mmio: Vec::new(),
                pci: None
            }),
            AcpiError::NoCpus
        ));
        assert!(matches!(
            err(one(VirtioMmioSlot {
                addr: 0x1_0000_0000,
                size: 0x1000,
                gsi: 5
            })),
            AcpiError::InvalidVirtioWindow { index: 0, .. }
        ));
        assert!(matches!(
            err(one(VirtioMmioSlot {
                addr: 0xffff_f000,
                size: 0x2000,
                gsi: 5
            })),
            AcpiError::InvalidVirtioWindow { .. }
        ));
        assert!(matches!(
            err(one(VirtioMmioSlot {
                addr: u64::MAX,
                size: 2,
                gsi: 5
            })),
            AcpiError::InvalidVirtioWindow { .. }
        ));
        assert!(matches!(
            err(one(VirtioMmioSlot {
                addr: 0xd000_0000,
                size: 0,
                gsi: 5
            })),
            AcpiError::InvalidVirtioWindow { .. }
        ));
        let e = err(one(VirtioMmioSlot {
            addr: 0xd000_0000,
            size: 0x1000,
            gsi: IOAPIC_PINS,
        }));
        assert!(matches!(
            e,
            AcpiError::InvalidVirtioGsi {
                index: 0,
                gsi: 24,
                ..
            }
        ));
        assert!(e.to_string().contains("GSI 24"), "{e}");
    }

    #[test]
    fn guest_memory_without_the_acpi_area_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        let err = create_acpi_tables(&mem, &default_config()).unwrap_err();
        assert!(
            matches!(err, AcpiError::GuestMemory { addr, .. } if addr == ACPI_START),
            "{err}"
        );
        assert!(err.to_string().contains("0xe0000"), "{err}");
    }
}
