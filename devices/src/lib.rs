//! What the guest sees: the port/MMIO bus, legacy platform devices and (later) virtio.
//!
//! Nothing here knows about KVM or host networking: devices are driven by the vCPU
//! threads through [`bus::Bus`] and report machine-level events through [`exit::ExitSignal`].

pub mod bus;
pub mod exit;
pub mod legacy;
pub mod pci;
pub mod virtio;
