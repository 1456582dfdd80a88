//! KVM's GSI routing for MSI: every GSI from [`MSI_GSI_START`] on is a virtio-pci vector
//! whose route follows what the driver wrote into its MSI-X table entry.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so the table always starts with the
//! routes KVM_CREATE_IRQCHIP installs (GSIs 0-15 on the PIC and IOAPIC, 16-23 on the
//! IOAPIC), which the serial console and virtio-mmio devices keep using.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::pci::msix::{MsiMessage, MsiRoutes};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::layout::IOAPIC_PINS;
pub use crate::layout::MSI_GSI_START;

/// The routes KVM_CREATE_IRQCHIP sets up (virt/kvm/irqchip.c's default table).
fn irqchip_routes() -> Vec<kvm_irq_routing_entry> {
    let chip = |gsi: u32, irqchip: u32, pin: u32| kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip, pin },
        },
        ..Default::default()
    };
    let mut routes = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            routes.push(chip(gsi, pic, gsi % 8));
        }
        routes.push(chip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    routes
}

fn msi_route(gsi: u32, m: MsiMessage) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            msi: kvm_irq_routing_msi {
                address_lo: m.address as u32,
                address_hi: (m.address >> 32) as u32,
                data: m.data,
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

/// The whole table for these MSI routes.
fn table(msi: &BTreeMap<u32, MsiMessage>) -> Result<KvmIrqRouting, String> {
    let mut routes = irqchip_routes();
    routes.extend(msi.iter().map(|(&gsi, &m)| msi_route(gsi, m)));
    KvmIrqRouting::from_entries(&routes).map_err(|e| format!("{e:?}"))
}

/// The VM's MSI routes; shared by every virtio-pci function.
pub struct MsiRouter {
    vm: Arc<VmFd>,
    msi: Mutex<BTreeMap<u32, MsiMessage>>,
}

impl MsiRouter {
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            msi: Mutex::new(BTreeMap::new()),
        }
    }
}

impl MsiRoutes for MsiRouter {
    fn route(&self, gsi: u32, message: MsiMessage) -> Result<(), String> {
        if gsi < MSI_GSI_START {
            return Err(format!("GSI {gsi} belongs to the IOAPIC"));
        }
        let mut msi = lock(&self.msi);
        msi.insert(gsi, message);
        let t = table(&msi)?;
        self.vm.set_gsi_routing(&t).map_err(|e| e.to_string())
    }

    fn bind(&self, evt: &EventFd, gsi: u32) -> Result<(), String> {
        self.vm.register_irqfd(evt, gsi).map_err(|e| e.to_string())
    }

    fn unbind(&self, evt: &EventFd, gsi: u32) -> Result<(), String> {
        self.vm
            .unregister_irqfd(evt, gsi)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_the_irqchip_routes_and_adds_msi_after_them() {
        let chips = irqchip_routes();
        // 16 PIC entries and 24 IOAPIC entries, as KVM installs them.
        assert_eq!(chips.len(), 40);
        let ioapic: Vec<u32> = chips
            .iter()
            .filter(|e| {
                // SAFETY: irqchip_routes only builds IRQCHIP entries, whose union member
                // is `irqchip`.
                unsafe { e.u.irqchip.irqchip == KVM_IRQCHIP_IOAPIC }
            })
            .map(|e| e.gsi)
            .collect();
        assert_eq!(ioapic, (0..24).collect::<Vec<_>>());
        let mut msi = BTreeMap::new();
        msi.insert(
            MSI_GSI_START + 1,
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x41,
            },
        );
        let t = table(&msi).unwrap();
        let entries = t.as_slice();
        assert_eq!(entries.len(), 41);
        let last = entries[40];
        assert_eq!(
            (last.gsi, last.type_),
            (MSI_GSI_START + 1, KVM_IRQ_ROUTING_MSI)
        );
        // SAFETY: an MSI entry's union member is `msi`.
        let m = unsafe { last.u.msi };
        assert_eq!((m.address_lo, m.address_hi, m.data), (0xfee0_1000, 1, 0x41));
    }
}
