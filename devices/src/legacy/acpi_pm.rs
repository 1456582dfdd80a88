//! The hardware-reduced ACPI sleep control and status registers (ACPI 6, 4.8.3.7): the only
//! way a guest without a PM1 block powers off. The FADT points at them; the DSDT's `_S5_`
//! tells the guest which SLP_TYP value means "soft off".

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
/// The status register is the byte after the control register.
const STATUS_OFFSET: u64 = 1;
/// WAK_STS: set once the machine "woke", which is what the guest polls for after S-states.
const WAK_STS: u8 = 1 << 7;

pub struct AcpiPmControl {
    s5_type: u8,
    exit: ExitSignal,
}

impl AcpiPmControl {
    /// `s5_type` must be the value the DSDT's `_S5_` package advertises.
    pub fn new(s5_type: u8, exit: ExitSignal) -> Self {
        Self { s5_type, exit }
    }
}

impl BusDevice for AcpiPmControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == STATUS_OFFSET {
            if let Some(b) = data.first_mut() {
                *b = WAK_STS;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if offset != 0 || value & SLP_EN == 0 {
            return;
        }
        if (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == self.s5_type {
            self.exit.signal(VmExit::PowerOff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powers_off_only_on_s5_with_slp_en() {
        let (sig, rx) = ExitSignal::new().unwrap();
        let mut dev = AcpiPmControl::new(5, sig);
        dev.write(0, &[5 << SLP_TYP_SHIFT]);
        dev.write(0, &[(3 << SLP_TYP_SHIFT) | SLP_EN]);
        dev.write(STATUS_OFFSET, &[(5 << SLP_TYP_SHIFT) | SLP_EN]);
        assert!(rx.try_recv().is_err());
        dev.write(0, &[(5 << SLP_TYP_SHIFT) | SLP_EN]);
        assert_eq!(rx.try_recv().unwrap(), VmExit::PowerOff);
    }
}
