//! netvmm's machine: a KVM VM with vCPUs, guest memory, a Linux boot (linux-loader), ACPI
//! tables, the legacy devices and the console. The `netvmm` binary is a thin layer over
//! [`Vmm`]; tests drive the same library.

pub mod acpi;
pub mod boot;
pub mod cmdline;
pub mod config;
pub mod console;
pub mod control;
pub mod cpu;
pub mod disks;
pub mod image_lock;
pub mod kvm_kind;
pub mod layout;
pub mod memory;
pub mod msi;
pub mod nics;
pub mod notice;
pub mod report;
pub mod sandbox;
pub mod vcpu;
pub mod virtio_slot;
pub mod vm;

pub use config::VmConfig;
pub use devices::exit::VmExit;
pub use notice::{Notice, Notices};
pub use vm::{Finished, Outcome, Vmm, VmmError};
