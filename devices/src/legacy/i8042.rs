//! Just enough of the keyboard controller for the kernel's reset path: writing 0xFE to the
//! command port pulses the CPU reset line, which here ends the VM (it is how `reboot` exits).

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};

const CMD_RESET_CPU: u8 = 0xfe;
/// Port 0x64 is at offset 4 when the device spans 0x60..=0x64.
const COMMAND_OFFSET: u64 = 4;

pub struct I8042Reset {
    exit: ExitSignal,
}

impl I8042Reset {
    pub fn new(exit: ExitSignal) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042Reset {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so the kernel's kb_wait()
        // returns at once and the reset command follows.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.signal(VmExit::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reset_command_on_command_port_resets() {
        let (sig, rx) = ExitSignal::new().unwrap();
        let mut dev = I8042Reset::new(sig);
        dev.write(0, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[0xaa]);
        assert!(rx.try_recv().is_err());
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(rx.try_recv().unwrap(), VmExit::Reset);
    }
}
