//! vCPU threads: KVM_RUN in a loop, every port and MMIO access sent to the bus, every other
//! exit turned into a decision by [`handle_exit`], a plain function tests can call.

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::bus::Bus;
use devices::exit::{ExitSignal, VmExit};
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

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
        // A triple fault. Linux falls back to one only when every other reboot method
        // failed, and the i8042 (reboot=k) does not fail: this is a crash, and a CI job
        // must not read it as a clean reboot.
        VcpuExit::Shutdown => Some(VmExit::TripleFault { cpu }),
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
                // A device ended the machine (power-off, reset, panic): do not run on.
                if exit.fired() {
                    return;
                }
            }
            // The kick (or a stray signal): stop if the machine is done, else run on.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                if exit.fired() {
                    return;
                }
            }
            Err(e) => {
                exit.signal(VmExit::Fault(format!("vCPU {cpu}: KVM_RUN failed: {e}")));
                return;
            }
        }
    }
}

/// The signal that kicks a vCPU thread out of KVM_RUN, as Firecracker uses: a real-time
/// signal nothing else sends.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing: the signal's only job is to make KVM_RUN return EINTR.
}

/// Installs the kick's (empty) handler; without one the signal would end the process.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// How long the end waits for vCPUs to leave the guest once kicked.
pub const STOP_PATIENCE: Duration = Duration::from_secs(2);

/// The running vCPU threads, by id. Dropped without [`Running::stop`] (an early error
/// return), it stops them all the same.
pub struct Running {
    exit: ExitSignal,
    threads: Vec<(u8, JoinHandle<()>)>,
}

impl Running {
    /// No threads yet; `exit` is the VM's, which stopping fires.
    pub fn new(exit: ExitSignal) -> Self {
        Self {
            exit,
            threads: Vec::new(),
        }
    }

    pub fn push(&mut self, id: u8, thread: JoinHandle<()>) {
        self.threads.push((id, thread));
    }

    /// Stops and joins every vCPU thread: the VM's exit is fired (halted), so that a vCPU
    /// interrupted in KVM_RUN returns instead of running on. A kick that lands just before
    /// a thread enters KVM_RUN is lost, so each thread is kicked again every few
    /// milliseconds until it has ended, for `patience` at most. Returns the ids of the
    /// vCPUs that did not end (left running: joining them would hang the VMM).
    pub fn stop(&mut self, patience: Duration) -> Vec<u8> {
        self.exit.halt();
        let deadline = Instant::now() + patience;
        let mut stuck = Vec::new();
        for (id, thread) in self.threads.drain(..) {
            while !thread.is_finished() && Instant::now() < deadline {
                // ESRCH only: the thread ended meanwhile.
                let _ = thread.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(2));
            }
            if thread.is_finished() {
                // A vCPU thread that panicked has said so on stderr already.
                let _ = thread.join();
            } else {
                stuck.push(id);
            }
        }
        stuck
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop(STOP_PATIENCE);
    }
}

#[cfg(test)]
mod tests {
    //! These run a few instructions on the host's real /dev/kvm (PVM included: it runs small
    //! programs, just not stock kernels). Without a usable /dev/kvm they say so and pass.

    use super::*;
    use std::sync::{Arc, Mutex};

    use devices::bus::BusDevice;
    use devices::legacy::{ExitPort, I8042Reset};
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::Kvm;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    #[derive(Default)]
    struct Capture(Vec<u8>);
    impl BusDevice for Capture {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    fn kvm() -> Option<Kvm> {
        match Kvm::new() {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("skipping: /dev/kvm unusable here: {e}");
                None
            }
        }
    }

    /// A VM with `code` at `load` and one vCPU set up by `setup`.
    fn program_vm(
        kvm: &Kvm,
        load: u64,
        code: &[u8],
        setup: impl Fn(&kvm_ioctls::VcpuFd, &GuestMemoryMmap),
    ) -> (kvm_ioctls::VmFd, kvm_ioctls::VcpuFd, GuestMemoryMmap) {
        let vm = kvm.create_vm().unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        mem.write_slice(code, GuestAddress(load)).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: 4 << 20,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: `mem` outlives the VM within this function and the mapping is not changed.
        unsafe { vm.set_user_memory_region(region) }.unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        setup(&vcpu, &mem);
        (vm, vcpu, mem)
    }

    /// Runs `code` at `load` on one vCPU, set up by `setup`, until handle_exit says stop.
    fn run_program(
        kvm: &Kvm,
        load: u64,
        code: &[u8],
        setup: impl Fn(&kvm_ioctls::VcpuFd, &GuestMemoryMmap),
    ) -> (Option<VmExit>, Vec<u8>) {
        let (_vm, mut vcpu, _mem) = program_vm(kvm, load, code, setup);
        let (exit, rx) = ExitSignal::new().unwrap();
        let capture = Arc::new(Mutex::new(Capture::default()));
        let mut pio = Bus::new();
        pio.insert("capture", 0x3f8, 8, capture.clone()).unwrap();
        pio.insert(
            "i8042",
            0x60,
            5,
            Arc::new(Mutex::new(I8042Reset::new(exit.clone()))),
        )
        .unwrap();
        pio.insert(
            "exit device",
            u64::from(crate::layout::EXIT_PORT),
            1,
            Arc::new(Mutex::new(ExitPort::new(exit.clone()))),
        )
        .unwrap();
        let buses = Buses {
            pio,
            mmio: Bus::new(),
        };
        let mut end = None;
        for _ in 0..10_000 {
            let e = vcpu.run().unwrap();
            // The i8042 reset is reported through the exit signal; HLT ends the program.
            if let Some(x) = handle_exit(0, e, &buses) {
                end = Some(x);
                break;
            }
            // As run_loop does: a device that ended the machine stops the vCPU at once.
            if exit.fired() {
                end = rx.try_recv().ok();
                break;
            }
        }
        let out = capture.lock().unwrap().0.clone();
        (end, out)
    }

    /// Real mode, code segment 0, starting at 0x1000.
    fn real_mode_at_0x1000(vcpu: &kvm_ioctls::VcpuFd, _: &GuestMemoryMmap) {
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let regs = kvm_bindings::kvm_regs {
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).unwrap();
    }

    #[test]
    fn a_kick_takes_a_spinning_vcpu_out_of_the_guest_and_its_thread_is_joined() {
        let Some(kvm) = kvm() else { return };
        install_kick_handler().unwrap();
        // jmp $: the guest never exits on its own.
        let (_vm, vcpu, _mem) = program_vm(&kvm, 0x1000, &[0xeb, 0xfe], real_mode_at_0x1000);
        let (exit, _rx) = ExitSignal::new().unwrap();
        let buses = Arc::new(Buses {
            pio: Bus::new(),
            mmio: Bus::new(),
        });
        let first = Arc::new(OnceLock::new());
        let mut running = Running::new(exit.clone());
        let (e, f) = (exit.clone(), first.clone());
        running.push(
            0,
            std::thread::spawn(move || run_loop(0, vcpu, buses, e, f)),
        );
        while first.get().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        let stuck = running.stop(Duration::from_secs(5));
        assert!(stuck.is_empty(), "vCPUs {stuck:?} still in the guest");
    }

    #[test]
    fn real_mode_program_reaches_the_bus_and_halts() {
        let Some(kvm) = kvm() else { return };
        // mov dx,0x3f8; mov al,'h'; out dx,al; mov al,'i'; out dx,al; hlt
        let code = [0xba, 0xf8, 0x03, 0xb0, b'h', 0xee, 0xb0, b'i', 0xee, 0xf4];
        let (end, out) = run_program(&kvm, 0x1000, &code, real_mode_at_0x1000);
        assert_eq!(out, b"hi");
        assert!(
            matches!(end, Some(VmExit::Fault(ref m)) if m.contains("halted")),
            "{end:?}"
        );
    }

    #[test]
    fn an_out_byte_to_the_exit_port_ends_the_vm_with_its_value() {
        let Some(kvm) = kvm() else { return };
        // mov ax,0x0909; out 0xf4,ax (a word: not the protocol, ignored); in al,0xf4;
        // mov al,7; out 0xf4,al (ends the VM); mov al,8; out 0xf4,al; hlt (never reached)
        let code = [
            0xb8, 0x09, 0x09, 0xe7, 0xf4, 0xe4, 0xf4, 0xb0, 0x07, 0xe6, 0xf4, 0xb0, 0x08, 0xe6,
            0xf4, 0xf4,
        ];
        let (end, _) = run_program(&kvm, 0x1000, &code, real_mode_at_0x1000);
        assert_eq!(end, Some(VmExit::GuestStatus(7)));
    }

    #[test]
    fn a_triple_fault_is_a_guest_crash_not_a_reboot() {
        // (PVM reports a real-mode triple fault as an internal error; the lab's boot test
        // runs a real one on kvm_amd.)
        let buses = Buses {
            pio: Bus::new(),
            mmio: Bus::new(),
        };
        assert_eq!(
            handle_exit(2, VcpuExit::Shutdown, &buses),
            Some(VmExit::TripleFault { cpu: 2 })
        );
    }

    #[test]
    fn long_mode_boot_state_runs_64bit_code() {
        let Some(kvm) = kvm() else { return };
        // 64-bit: mov dx,0x3f8; mov al,'6'; out dx,al; mov rax,0x123456789; mov al,'4';
        // out dx,al; hlt   (the movabs only decodes in long mode)
        let code = [
            0x66, 0xba, 0xf8, 0x03, 0xb0, b'6', 0xee, 0x48, 0xb8, 0x89, 0x67, 0x45, 0x23, 0x01,
            0x00, 0x00, 0x00, 0xb0, b'4', 0xee, 0xf4,
        ];
        let load = 0x20_0000;
        let (end, out) = run_program(&kvm, load, &code, |vcpu, mem| {
            crate::cpu::configure_boot_cpu(vcpu, mem, load).unwrap();
        });
        assert_eq!(out, b"64", "exit was {end:?}");
    }

    #[test]
    fn pvh_boot_state_runs_32bit_code_with_start_info_in_ebx() {
        let Some(kvm) = kvm() else { return };
        // 32-bit: mov dx,0x3f8; mov al,'P'; out dx,al; mov eax,ebx; shr eax,8; out dx,al; hlt
        let code = [
            0x66, 0xba, 0xf8, 0x03, 0xb0, b'P', 0xee, 0x89, 0xd8, 0xc1, 0xe8, 0x08, 0xee, 0xf4,
        ];
        let load = 0x20_0000;
        let (end, out) = run_program(&kvm, load, &code, |vcpu, mem| {
            crate::cpu::configure_boot_cpu_pvh(vcpu, mem, load).unwrap();
        });
        let info_high = (crate::layout::PVH_INFO_START >> 8) as u8;
        assert_eq!(out, vec![b'P', info_high], "exit was {end:?}");
    }
}
