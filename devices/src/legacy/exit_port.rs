//! The exit device: a one-byte write of `v` to I/O port 0xf4 ends the VM at once and netvmm
//! exits with status `v`. Any guest can use it (`/dev/port`, `outb`), so a CI job gets the
//! verdict of a guest that knows nothing of netvmm and of a guest whose console is garbled.
//!
//! QEMU's isa-debug-exit sits on the same port but exits with `(v << 1) | 1`; this device
//! passes `v` through unchanged, so 0 can mean success.

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};

pub struct ExitPort {
    exit: ExitSignal,
}

impl ExitPort {
    pub fn new(exit: ExitSignal) -> Self {
        Self { exit }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Reading is not part of the protocol; an idle ISA port floats high.
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only `outb v, 0xf4` counts: a wider access is some other driver probing the port.
        if let ([v], 0) = (data, offset) {
            self.exit.signal(VmExit::GuestStatus(*v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_write_ends_the_vm_with_that_value() {
        for v in [0u8, 7, 124, 255] {
            let (sig, rx) = ExitSignal::new().unwrap();
            ExitPort::new(sig).write(0, &[v]);
            assert_eq!(rx.try_recv().unwrap(), VmExit::GuestStatus(v));
        }
    }

    #[test]
    fn reads_and_other_widths_are_harmless() {
        let (sig, rx) = ExitSignal::new().unwrap();
        let mut dev = ExitPort::new(sig.clone());
        let mut b = [0u8; 4];
        dev.read(0, &mut b);
        assert_eq!(b, [0xff; 4]);
        dev.write(0, &[1, 2]);
        dev.write(0, &[1, 2, 3, 4]);
        dev.write(1, &[5]);
        dev.write(0, &[]);
        assert!(!sig.fired());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn the_first_status_wins_over_a_later_power_off() {
        let (sig, rx) = ExitSignal::new().unwrap();
        ExitPort::new(sig.clone()).write(0, &[9]);
        sig.signal(VmExit::PowerOff);
        sig.signal(VmExit::Reset);
        assert_eq!(rx.try_recv().unwrap(), VmExit::GuestStatus(9));
        assert!(rx.try_recv().is_err());
    }
}
