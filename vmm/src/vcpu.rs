//! vCPU threads: KVM_RUN in a loop, every port and MMIO access sent to the bus, every other
//! exit turned into a decision by [`handle_exit`], a plain function tests can call.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use devices::bus::Bus;
use devices::exit::{ExitSignal, VmExit};
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

/// The two address spaces a vCPU can reach outside RAM.
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

/// Decides what one VM exit means. `None`: keep running.
pub fn handle_exit(cpu: u8, exit: VcpuExit<'_>, buses: &Buses) -> Option<VmExit> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            buses.pio.read(u64::from(port), data);
            None
        }
        VcpuExit::IoOut(port, data) => {
            buses.pio.write(u64::from(port), data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            buses.mmio.read(addr, data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            buses.mmio.write(addr, data);
            None
        }
        // A triple fault: how CPUs reset, and the kernel's last resort for `reboot`.
        VcpuExit::Shutdown => Some(VmExit::Reset),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Some(VmExit::PowerOff),
            KVM_SYSTEM_EVENT_RESET => Some(VmExit::Reset),
            KVM_SYSTEM_EVENT_CRASH => Some(VmExit::GuestPanic),
            other => Some(VmExit::Fault(format!(
                "vCPU {cpu}: unexpected KVM system event {other}"
            ))),
        },
        // With the in-kernel irqchip KVM handles HLT itself; seeing one means the guest
        // halted in a way nothing can wake.
        VcpuExit::Hlt => Some(VmExit::Fault(format!("vCPU {cpu} halted for good"))),
        VcpuExit::FailEntry(reason, hw_cpu) => Some(VmExit::Fault(format!(
            "vCPU {cpu}: KVM could not enter the guest (hardware reason {reason:#x}, cpu {hw_cpu})"
        ))),
        VcpuExit::InternalError => Some(VmExit::Fault(format!(
            "vCPU {cpu}: KVM internal error (often an instruction KVM cannot emulate)"
        ))),
        // An interrupted KVM_RUN (signal) or a window we never asked for: just run again.
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
        other => Some(VmExit::Fault(format!(
            "vCPU {cpu}: unexpected exit {other:?}"
        ))),
    }
}

/// Runs one vCPU until the VM ends; reports the end through `exit`.
pub fn run_loop(
    cpu: u8,
    mut vcpu: VcpuFd,
    buses: Arc<Buses>,
    exit: ExitSignal,
    first_run: Arc<OnceLock<Instant>>,
) {
    if cpu == 0 {
        let _ = first_run.set(Instant::now());
        crate::report::mark_first_run();
    }
    loop {
        match vcpu.run() {
            Ok(e) => {
                if let Some(end) = handle_exit(cpu, e, &buses) {
                    exit.signal(end);
                    return;
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                exit.signal(VmExit::Fault(format!("vCPU {cpu}: KVM_RUN failed: {e}")));
                return;
            }
        }
    }
}
