//! pvpanic (ACPI `QEMU0001`): the guest kernel writes here when it panics, so a CI job gets a
//! distinct exit status instead of a hang or a reboot that looks like success.

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};

/// Events the device offers: bit 0 "panicked", bit 1 "crash kernel loaded".
const PVPANIC_PANICKED: u8 = 1 << 0;
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

pub struct PvPanic {
    exit: ExitSignal,
}

impl PvPanic {
    pub fn new(exit: ExitSignal) -> Self {
        Self { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        // A kdump kernel being loaded is not the end of the VM; a panic is.
        if data.first().is_some_and(|v| v & PVPANIC_PANICKED != 0) {
            self.exit.signal(VmExit::GuestPanic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_events_and_reports_panic() {
        let (sig, rx) = ExitSignal::new().unwrap();
        let mut dev = PvPanic::new(sig);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], 3);
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        assert!(rx.try_recv().is_err());
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(rx.try_recv().unwrap(), VmExit::GuestPanic);
    }
}
