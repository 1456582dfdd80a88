//! The VMM: builds a KVM VM from a [`VmConfig`] and runs it to its end.

use std::fs::File;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use devices::bus::{Bus, BusDevice};
use devices::exit::{ExitSignal, VmExit};
use devices::legacy::{AcpiPmControl, ExitPort, I8042Reset, IrqTrigger, PvPanic, SerialConsole};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, AcpiConfig};
use crate::boot::{self, BootError};
use crate::config::{ConfigError, VmConfig};
use crate::console::{self, ConsoleSink, RawTerminal};
use crate::cpu::{self, CpuError};
use crate::kvm_kind::{self, KvmKind};
use crate::layout;
use crate::memory::{self, MemoryError};
use crate::notice::{Notice, Notices};
use crate::sandbox::{Sandbox, SandboxError, ThreadKind};
use crate::vcpu::{self, Buses};

/// Where KVM may put its three-page TSS for real-mode emulation: just below the BIOS area
/// at the top of 4 GiB, inside our MMIO hole, never RAM.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Entries we ask KVM for when reading the supported CPUID.
const CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    KvmUnusable(String),
    #[error("cannot {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Nic(#[from] crate::nics::NicError),
    #[error(transparent)]
    Disk(#[from] crate::disks::DiskError),
    #[error("cannot wire {0}")]
    Bus(#[from] devices::bus::BusError),
    #[error("cannot create serial log {path}: {source}")]
    SerialLog {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

fn io_err_from_netlink(e: net::netlink::NetlinkError) -> VmmError {
    VmmError::Io {
        what: "watch the bridges for re-creation",
        source: std::io::Error::other(e.to_string()),
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// How a run ended, from the VMM's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(VmExit),
    TimedOut,
    Signalled(i32),
}

/// Exit status for a guest crash (a kernel panic, a triple fault): distinct from errors (1),
/// usage (1) and timeouts (124).
pub const EXIT_GUEST_PANIC: i32 = 3;
/// Exit status when `--timeout` expired, as timeout(1) uses.
pub const EXIT_TIMEOUT: i32 = 124;

impl Outcome {
    /// The process exit status a CI job should see.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited(VmExit::PowerOff | VmExit::Reset) => 0,
            Outcome::Exited(VmExit::GuestStatus(v)) => i32::from(*v),
            Outcome::Exited(VmExit::GuestPanic | VmExit::TripleFault { .. }) => EXIT_GUEST_PANIC,
            Outcome::Exited(VmExit::Fault(_)) => 1,
            Outcome::TimedOut => EXIT_TIMEOUT,
            Outcome::Signalled(sig) => 128 + sig,
        }
    }

    /// One line for stderr, or None when the outcome speaks for itself (clean exit).
    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::Exited(VmExit::PowerOff | VmExit::Reset | VmExit::GuestStatus(0)) => None,
            Outcome::Exited(VmExit::GuestStatus(v)) => Some(format!(
                "the guest reported status {v} through the exit device (port 0xf4)"
            )),
            Outcome::Exited(VmExit::GuestPanic) => Some("the guest kernel panicked".into()),
            Outcome::Exited(VmExit::TripleFault { cpu }) => Some(format!(
                "the guest crashed: vCPU {cpu} triple-faulted (a reboot would have gone through the keyboard controller)"
            )),
            Outcome::Exited(VmExit::Fault(why)) => Some(why.clone()),
            Outcome::TimedOut => Some("timeout expired: the VM was stopped".into()),
            Outcome::Signalled(sig) => Some(format!("stopped by signal {sig}")),
        }
    }
}

/// How a run ended, and the figures the boot report shows (`NETVMM_BOOT_REPORT`, which the
/// CLI reads: the library neither reads the environment nor prints).
#[derive(Debug)]
pub struct Finished {
    pub outcome: Outcome,
    /// One `netvmm-nic-report:` / `netvmm-disk-report:` line per device, then the
    /// `netvmm-report:` line of set-up and boot times and the VMM's memory.
    pub report: Vec<String>,
}

/// A built VM, ready to run.
pub struct Vmm {
    config: VmConfig,
    _kvm: Kvm,
    _vm: Arc<VmFd>,
    guest_memory: GuestMemoryMmap,
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    buses: Arc<Buses>,
    serial: Arc<Mutex<SerialConsole<ConsoleSink>>>,
    /// Readable when the guest has emptied its console receive FIFO.
    serial_drained: EventFd,
    exit_rx: std::sync::mpsc::Receiver<VmExit>,
    exit: ExitSignal,
    notices: Notices,
    started: Instant,
    ready_at: Arc<OnceLock<Instant>>,
    nics: Vec<crate::nics::NicInfo>,
    nic_counters: Vec<crate::nics::NicCounters>,
    net_events: Option<crate::nics::NetEventManager>,
    disks: crate::disks::Disks,
    sandbox: Sandbox,
    /// Dropped when `run` returns (or `new` fails): deletes what netvmm created on the host.
    _host_cleanup: crate::nics::HostCleanup,
}

/// Refuses a KVM that will hang on a stock kernel, unless the user insists
/// (`allow_pvm`: a kernel built for PVM).
pub fn check_kvm(kind: &KvmKind, allow_pvm: bool) -> Result<(), VmmError> {
    match kind {
        KvmKind::Missing(_) => Err(VmmError::KvmUnusable(kind.describe())),
        KvmKind::Pvm if !allow_pvm => Err(VmmError::KvmUnusable(kind.describe())),
        _ => Ok(()),
    }
}

impl Vmm {
    /// Builds the VM: memory, kernel, ACPI, devices, vCPUs. Nothing runs yet. What the
    /// user should hear about, now and while it runs, goes to `notices`.
    pub fn new(config: VmConfig, notices: Notices) -> Result<Self, VmmError> {
        let started = Instant::now();
        config.validate()?;
        config.check_host()?;
        check_kvm(&kvm_kind::detect(), config.allow_pvm)?;

        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("create a KVM VM"))?);
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("set the TSS address"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;

        let needs = crate::sandbox::Needs {
            disks: !config.disks.is_empty(),
        };
        let sandbox = Sandbox::new(config.seccomp, needs)?;
        let guest_memory = memory::create_guest_memory(config.memory_mib)?;
        register_memory(&vm, &guest_memory)?;

        let (exit, exit_rx) = ExitSignal::new().map_err(io_err("create the exit eventfd"))?;
        let ready_at = Arc::new(OnceLock::new());
        let log = match &config.serial_log {
            Some(path) => Some(File::create(path).map_err(|source| VmmError::SerialLog {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let com1_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("create an eventfd"))?;
        vm.register_irqfd(&com1_irq, layout::COM1_GSI)
            .map_err(kvm_err("register the COM1 irqfd"))?;
        let serial_drained =
            EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("create an eventfd"))?;
        let serial = Arc::new(Mutex::new(SerialConsole::with_input_drained(
            IrqTrigger(com1_irq),
            serial_drained
                .try_clone()
                .map_err(io_err("share the console's eventfd"))?,
            ConsoleSink::new(log, exit.clone(), ready_at.clone()),
        )));
        let mut pio = legacy_bus(serial.clone(), &exit)?;
        let mut mmio = Bus::new();
        let mut placer =
            crate::virtio_slot::Placer::new(config.transport, &vm, &guest_memory, &mut mmio)
                .map_err(crate::nics::NicError::Placement)?;
        let crate::nics::Nics {
            infos: nics,
            counters: nic_counters,
            cleanup: host_cleanup,
        } = crate::nics::build(&config.nets, &mut placer, &guest_memory, &notices)?;
        let disks = crate::disks::build(&config.disks, &mut placer)?;
        let placement = placer
            .finish(&mut pio)
            .map_err(crate::nics::NicError::Placement)?;
        let net_events = placement.events;
        let buses = Arc::new(Buses { pio, mmio });

        let (entry, mut params) = boot::load_kernel(&guest_memory, &config.kernel)?;
        if let Some(initrd) = &config.initrd {
            boot::load_initrd(&guest_memory, initrd, entry.kernel_end, &mut params)?;
        }
        let rsdp = acpi::create_acpi_tables(
            &guest_memory,
            &AcpiConfig {
                cpus: config.cpus,
                virtio_mmio: placement.mmio_slots,
                pci: placement.pci,
            },
        )?;
        let cmdline = crate::cmdline::build(&config.cmdline, config.transport);
        if entry.pvh_entry.is_some() {
            boot::write_pvh_start_info(&guest_memory, &params, &cmdline, rsdp)?;
        } else {
            boot::write_boot_params(&guest_memory, params, &cmdline, rsdp)?;
        }

        let supported = kvm
            .get_supported_cpuid(CPUID_ENTRIES)
            .map_err(kvm_err("read the supported CPUID"))?;
        let plan = cpu::CpuidPlan {
            cpus: config.cpus,
            tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
        };
        let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
        for id in 0..config.cpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("create a vCPU"))?;
            cpu::configure_common(&vcpu, id, plan, &supported)?;
            if id == 0 {
                match entry.pvh_entry {
                    Some(pvh) => cpu::configure_boot_cpu_pvh(&vcpu, &guest_memory, pvh)?,
                    None => cpu::configure_boot_cpu(&vcpu, &guest_memory, entry.entry)?,
                }
            }
            vcpus.push(vcpu);
        }

        Ok(Self {
            config,
            _kvm: kvm,
            _vm: vm,
            guest_memory,
            vcpus,
            buses,
            serial,
            serial_drained,
            exit_rx,
            exit,
            notices,
            started,
            ready_at,
            nics,
            nic_counters,
            net_events,
            disks,
            sandbox,
            _host_cleanup: host_cleanup,
        })
    }

    /// The disks, for the user's information.
    pub fn disks(&self) -> &[crate::disks::DiskInfo] {
        &self.disks.infos
    }

    /// The NICs, for the user's information.
    pub fn nics(&self) -> &[crate::nics::NicInfo] {
        &self.nics
    }

    /// Runs the VM until it powers off, resets, panics, faults, times out or is signalled,
    /// then stops every thread it started and, last, puts the host's interfaces back.
    pub fn run(mut self) -> Result<Finished, VmmError> {
        let signals =
            crate::control::StopSignals::install().map_err(io_err("install signal handlers"))?;
        crate::vcpu::install_kick_handler().map_err(io_err("install the vCPU kick handler"))?;
        // Signals go to this thread only: every thread the sandbox starts blocks them.
        let bridges = self
            ._host_cleanup
            .bridge_watcher()
            .map_err(io_err_from_netlink)?;
        let drained = self
            .serial_drained
            .try_clone()
            .map_err(io_err("share the console's eventfd"))?;
        let mut terminal = RawTerminal::enter();
        let stdin = console::stdin_file().map(|input| {
            console::StdinFeed::new(input, self.serial.clone(), drained, terminal.is_raw())
        });
        let devices = match self.net_events.take() {
            Some(em) => Some(crate::nics::DeviceLoop::spawn(em, &self.sandbox)?),
            None => None,
        };
        let first_run = Arc::new(OnceLock::new());
        let mut vcpus = crate::vcpu::Running::new(self.exit.clone());
        let mut go = Vec::with_capacity(self.vcpus.len());
        for (id, vcpu) in self.vcpus.drain(..).enumerate() {
            let (buses, exit, first) = (self.buses.clone(), self.exit.clone(), first_run.clone());
            let id = id as u8;
            let (start, started) = std::sync::mpsc::channel::<()>();
            go.push(start);
            // Confined as it starts; it enters the guest only once every thread is (the
            // main thread last), and never if `run` fails before that.
            let thread =
                self.sandbox
                    .spawn(format!("netvmm-vcpu{id}"), ThreadKind::Vcpu, move || {
                        if started.recv().is_ok() {
                            vcpu::run_loop(id, vcpu, buses, exit, first);
                        }
                    })?;
            vcpus.push(id, thread);
        }
        let control = crate::control::ControlLoop::new(crate::control::Sources {
            exit: self.exit.clone(),
            exit_rx: std::mem::replace(&mut self.exit_rx, std::sync::mpsc::channel().1),
            signals,
            deadline: self.config.timeout.map(|t| self.started + t),
            stdin,
            bridges,
            notices: self.notices.clone(),
        });
        // From here the main thread runs the VMM's event loop, then puts the host's
        // interfaces back (netlink: CAP_NET_ADMIN if any NIC left something to undo).
        let keep = crate::sandbox::needs_net_admin(&self.config.nets);
        let looped = match control {
            Ok(control) => self.sandbox.enter(ThreadKind::Main, keep).map(|()| {
                for start in go {
                    let _ = start.send(());
                }
                control.run()
            }),
            Err(e) => Ok(Err(e)),
        };
        // Every path from here stops the vCPUs and the device thread before the
        // interfaces are released (when `self` drops, after the loop and its bridge
        // watcher are gone).
        let stuck = vcpus.stop(vcpu::STOP_PATIENCE);
        if !stuck.is_empty() {
            (self.notices)(Notice::VcpusStuck(stuck));
        }
        drop(devices);
        terminal.restore();
        // The VMM's closing line, if any, must not start mid-way through the guest's.
        {
            let mut serial = devices::bus::lock(&self.serial);
            if serial.writer().mid_line() {
                serial.writer_mut().end_line();
            }
        }
        let outcome = looped??;
        let mut report = Vec::new();
        for (info, counters) in self.nics.iter().zip(&self.nic_counters) {
            let nic = counters.read();
            if let Some(fault) = &nic.fault {
                (self.notices)(Notice::TransportFault(
                    info.guest_name.clone(),
                    fault.clone(),
                ));
            }
            report.push(crate::nics::counters_line(&info.guest_name, &nic));
        }
        for (info, counters) in self.disks.infos.iter().zip(&self.disks.counters) {
            let (stats, fault) = counters.read();
            if let Some(fault) = fault {
                (self.notices)(Notice::TransportFault(info.guest_name.clone(), fault));
            }
            report.push(crate::disks::counters_line(&info.guest_name, &stats));
        }
        report.push(self.boot_report(first_run.get().copied()));
        Ok(Finished { outcome, report })
    }

    /// One line of figures for the boot benchmark.
    fn boot_report(&self, first_run: Option<Instant>) -> String {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        let since = |t: Option<Instant>, from: Instant| {
            t.map(|t| ms(t.saturating_duration_since(from)))
                .unwrap_or_else(|| "null".into())
        };
        let guest_ranges: Vec<(usize, usize)> = self
            .guest_memory
            .iter()
            .filter_map(|r| {
                let host = self.guest_memory.get_host_address(r.start_addr()).ok()?;
                Some((host as usize, r.len() as usize))
            })
            .collect();
        let rss = crate::report::vmm_rss_kib(&guest_ranges)
            .map(|k| k.to_string())
            .unwrap_or_else(|_| "null".into());
        let cpu = crate::report::setup_cpu_time()
            .map(ms)
            .unwrap_or_else(|| "null".into());
        let ready = self.ready_at.get().copied();
        format!(
            "netvmm-report: setup_ms={} setup_cpu_ms={cpu} guest_boot_ms={} total_to_ready_ms={} vmm_rss_kib={rss} guest_ram_mib={}",
            since(first_run, self.started),
            match (first_run, ready) {
                (Some(f), Some(r)) => ms(r.saturating_duration_since(f)),
                _ => "null".into(),
            },
            since(ready, self.started),
            self.config.memory_mib,
        )
    }
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| VmmError::KvmUnusable("guest memory region has no host mapping".into()))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region's host mapping belongs to `mem`, which the Vmm owns and keeps
        // alive (and never unmaps) for as long as the VM and its vCPUs exist; slots are unique.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("register guest memory"))?;
    }
    Ok(())
}

fn legacy_bus(
    serial: Arc<Mutex<SerialConsole<ConsoleSink>>>,
    exit: &ExitSignal,
) -> Result<Bus, VmmError> {
    let mut pio = Bus::new();
    let dev = |d: Arc<Mutex<dyn BusDevice>>| d;
    pio.insert("COM1", u64::from(layout::COM1_PORT), 8, dev(serial))?;
    pio.insert(
        "i8042",
        u64::from(layout::I8042_DATA_PORT),
        u64::from(layout::I8042_COMMAND_PORT - layout::I8042_DATA_PORT) + 1,
        dev(Arc::new(Mutex::new(I8042Reset::new(exit.clone())))),
    )?;
    pio.insert(
        "pvpanic",
        u64::from(layout::PVPANIC_PORT),
        1,
        dev(Arc::new(Mutex::new(PvPanic::new(exit.clone())))),
    )?;
    pio.insert(
        "exit device",
        u64::from(layout::EXIT_PORT),
        1,
        dev(Arc::new(Mutex::new(ExitPort::new(exit.clone())))),
    )?;
    pio.insert(
        "ACPI sleep registers",
        u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
        2,
        dev(Arc::new(Mutex::new(AcpiPmControl::new(
            layout::ACPI_S5_SLEEP_TYPE,
            exit.clone(),
        )))),
    )?;
    Ok(pio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_outcome() {
        assert_eq!(Outcome::Exited(VmExit::PowerOff).exit_code(), 0);
        assert_eq!(Outcome::Exited(VmExit::Reset).exit_code(), 0);
        assert_eq!(Outcome::Exited(VmExit::GuestPanic).exit_code(), 3);
        let crash = Outcome::Exited(VmExit::TripleFault { cpu: 1 });
        assert_eq!(crash.exit_code(), 3);
        assert!(crash.message().unwrap().contains("vCPU 1 triple-faulted"));
        assert_eq!(Outcome::Exited(VmExit::Fault("x".into())).exit_code(), 1);
        assert_eq!(Outcome::TimedOut.exit_code(), 124);
        assert_eq!(Outcome::Signalled(libc::SIGTERM).exit_code(), 143);
        assert!(Outcome::Exited(VmExit::PowerOff).message().is_none());
    }

    #[test]
    fn a_guest_status_passes_through_and_says_where_it_came_from() {
        for v in [0u8, 3, 7, 124, 255] {
            assert_eq!(
                Outcome::Exited(VmExit::GuestStatus(v)).exit_code(),
                i32::from(v)
            );
        }
        assert!(Outcome::Exited(VmExit::GuestStatus(0)).message().is_none());
        // A command's own 124 or 3 must not read like netvmm's timeout or a crash.
        let own = Outcome::Exited(VmExit::GuestStatus(124)).message().unwrap();
        assert!(own.contains("exit device") && own.contains("124"), "{own}");
        let timeout = Outcome::TimedOut.message().unwrap();
        assert!(!timeout.contains("exit device"), "{timeout}");
        let crash = Outcome::Exited(VmExit::GuestPanic).message().unwrap();
        assert!(!crash.contains("exit device"), "{crash}");
    }

    #[test]
    fn pvm_is_refused_with_a_pointer_to_the_lab() {
        let err = check_kvm(&KvmKind::Pvm, false).unwrap_err().to_string();
        assert!(err.contains("PVM") && err.contains("lab"), "{err}");
        assert!(
            check_kvm(&KvmKind::Pvm, true).is_ok(),
            "a PVM kernel, insisted on"
        );
        assert!(check_kvm(&KvmKind::Hardware("kvm_amd"), false).is_ok());
        assert!(check_kvm(&KvmKind::Missing("gone".into()), true).is_err());
    }

    #[test]
    fn missing_kernel_is_named_before_touching_kvm() {
        let err = Vmm::new(
            VmConfig::new("/nonexistent/bzImage".into()),
            crate::notice::ignore(),
        )
        .err()
        .unwrap()
        .to_string();
        assert_eq!(err, "kernel /nonexistent/bzImage does not exist");
    }
}
