//! Legacy PC platform devices on port I/O.

pub mod acpi_pm;
pub mod exit_port;
pub mod i8042;
pub mod pvpanic;
pub mod serial;

pub use acpi_pm::AcpiPmControl;
pub use exit_port::ExitPort;
pub use i8042::I8042Reset;
pub use pvpanic::PvPanic;
pub use serial::{IrqTrigger, SerialConsole};
