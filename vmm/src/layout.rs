//! Guest physical address map and interrupt numbers: the one place where addresses live.
//!
//! ```text
//! 0x0000_0500  GDT                 0x0000_7000  boot_params (zero page)
//! 0x0000_8ff0  boot stack top      0x0000_9000  PML4, PDPTE, PDE (identity map)
//! 0x0002_0000  kernel command line 0x0009_fc00  end of low RAM (EBDA above)
//! 0x000e_0000  ACPI tables (RSDP first, where the kernel also scans for it)
//! 0x0010_0000  kernel (HIMEM)      ...          initrd at the top of low RAM
//! 0xd000_0000  virtio-mmio windows 0xe000_0000  PCI BARs (--transport pci)
//! 0xfec0_0000  IOAPIC              0xfee0_0000  LAPIC
//! 0x1_0000_0000 RAM above 4 GiB when the guest has more than fits below the MMIO hole
//! ```

/// Global descriptor table used for the 64-bit boot entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty) loaded at boot.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, then its module list and memory map (ELF kernels with a PVH note).
pub const PVH_INFO_START: u64 = 0x6000;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 of the boot identity mapping.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot identity mapping.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of the boot identity mapping (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Largest command line we hand to the kernel (its own limit is 2048 on x86 for old
/// kernels, `cmdline_size` in the setup header for newer ones).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// The longest command line (without its NUL) a kernel keeps when it does not say: x86's
/// COMMAND_LINE_SIZE is 2048. An ELF vmlinux (PVH) has no setup header to say otherwise.
pub const KERNEL_CMDLINE_DEFAULT_LIMIT: usize = 2047;
/// First byte past the low RAM area; the EBDA and BIOS area above are not RAM.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables live here; the RSDP is first so that the kernel's legacy scan finds it too.
pub const ACPI_START: u64 = 0x000e_0000;
/// End (exclusive) of the ACPI table area.
pub const ACPI_END: u64 = 0x0010_0000;
/// Where the kernel is loaded: 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the window where virtio-mmio devices are placed.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// Start of the 32-bit hole (devices, IOAPIC, LAPIC): RAM stops here and resumes at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// RAM above the hole starts here.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// IOAPIC base address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// Number of IOAPIC pins the in-kernel irqchip provides.
pub const IOAPIC_PINS: u32 = 24;

/// Legacy COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's interrupt line.
pub const COM1_GSI: u32 = 4;
/// i8042 data and command ports (the command port receives the reset pulse).
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// pvpanic, at the port QEMU uses, announced in the DSDT as `QEMU0001`.
pub const PVPANIC_PORT: u16 = 0x505;
/// The exit device: `outb v, 0xf4` ends the VM with status v (where QEMU's isa-debug-exit sits).
pub const EXIT_PORT: u16 = 0xf4;
/// ACPI hardware-reduced sleep control register (one byte) and status register after it.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// The `_S5_` sleep type the DSDT advertises; the guest writes it back to power off.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// First GSI handed to virtio-mmio devices (COM1 keeps 4).
pub const VIRTIO_GSI_START: u32 = 5;

/// PCI configuration by port I/O ("type 1"): CONFIG_ADDRESS at 0xcf8, CONFIG_DATA at
/// 0xcfc..0xcff. Linux probes it without MCFG, so no ECAM window is needed.
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_PORT_LEN: u64 = 8;
/// The window virtio-pci BARs are placed in, announced as the host bridge's memory
/// resource: above the virtio-mmio windows, below the IOAPIC.
pub const PCI_MMIO_START: u64 = 0xe000_0000;
pub const PCI_MMIO_SIZE: u64 = 0x1000_0000;
const _: () = assert!(PCI_MMIO_START >= MMIO_DEVICES_START + 24 * MMIO_DEVICE_SIZE);
const _: () = assert!(PCI_MMIO_START + PCI_MMIO_SIZE <= IOAPIC_ADDR as u64);
/// The first GSI of MSI routes: right after the IOAPIC's pins.
pub const MSI_GSI_START: u32 = IOAPIC_PINS;
