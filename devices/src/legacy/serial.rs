//! COM1: the guest console, a 16550A from vm-superio raising its interrupt through an irqfd.

use std::io::Write;

use vm_superio::{serial::SerialEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises a guest interrupt by writing to an eventfd that KVM has registered as an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Makes an eventfd readable when the guest has read the last byte of its receive FIFO,
/// so that whoever feeds it input knows when there is room again without polling.
pub struct InputDrained(Option<EventFd>);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(evt) = &self.0 {
            // An eventfd counter does not overflow from these writes; a failure only
            // delays input until the next one.
            let _ = evt.write(1);
        }
    }
}

/// The serial port as a bus device; output goes to `W`, input comes from [`SerialConsole::enqueue`].
pub struct SerialConsole<W: Write + Send> {
    serial: Serial<IrqTrigger, InputDrained, W>,
}

impl<W: Write + Send> SerialConsole<W> {
    pub fn new(irq: IrqTrigger, out: W) -> Self {
        Self {
            serial: Serial::with_events(irq, InputDrained(None), out),
        }
    }

    /// As [`SerialConsole::new`], and `drained` becomes readable each time the guest has
    /// emptied its receive FIFO.
    pub fn with_input_drained(irq: IrqTrigger, drained: EventFd, out: W) -> Self {
        Self {
            serial: Serial::with_events(irq, InputDrained(Some(drained)), out),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO
    /// (0 when it is full: the caller retries once the guest has read).
    pub fn enqueue(&mut self, input: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(input).unwrap_or(0)
    }

    pub fn writer(&self) -> &W {
        self.serial.writer()
    }

    pub fn writer_mut(&mut self) -> &mut W {
        self.serial.writer_mut()
    }
}

impl<W: Write + Send> BusDevice for SerialConsole<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte-wide registers; wider accesses read the register then zeros.
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // A failing console sink (closed stdout) must not stop the guest.
            let _ = self.serial.write(off, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmits_bytes_and_raises_interrupt_on_input() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = IrqTrigger(evt.try_clone().unwrap());
        let mut com = SerialConsole::new(irq, Vec::new());
        for b in b"hi" {
            com.write(0, &[*b]);
        }
        assert_eq!(com.writer().as_slice(), b"hi");
        // Enable the received-data interrupt, then feed input.
        com.write(1, &[0x01]);
        assert_eq!(com.enqueue(b"x"), 1);
        assert!(evt.read().unwrap() >= 1);
        let mut b = [0u8; 1];
        com.read(0, &mut b);
        assert_eq!(b, *b"x");
    }

    #[test]
    fn the_drained_event_fires_when_the_guest_reads_the_last_input_byte() {
        let irq = IrqTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut com =
            SerialConsole::with_input_drained(irq, drained.try_clone().unwrap(), Vec::new());
        assert_eq!(com.enqueue(b"ab"), 2);
        let mut b = [0u8; 1];
        com.read(0, &mut b);
        assert!(drained.read().is_err(), "one byte is still waiting");
        com.read(0, &mut b);
        assert_eq!(b, *b"b");
        assert_eq!(drained.read().unwrap(), 1);
    }
}
