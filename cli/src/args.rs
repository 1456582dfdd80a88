//! The command-line grammar, and its conversion into typed configs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use vmm::config::{DEFAULT_CPUS, DEFAULT_MEMORY_MIB};
use vmm::VmConfig;

#[derive(Parser, Debug)]
#[command(
    name = "netvmm",
    version,
    about = "A small KVM VMM for comparing tap, bridge and macvtap guest networking"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a Linux kernel on this host's KVM.
    Run(RunArgs),
    /// Report what this host offers: KVM kind, tun, modules, privileges, lab tools.
    Doctor,
    /// Remove what netvmm processes that are gone left behind: interfaces (macvtaps, shims),
    /// NAT nftables tables (and the forwarding they turned on), tc qdiscs on NICs.
    Cleanup,
    /// Build (once) and show the guest image: a Debian kernel and a busybox+iperf3 initramfs.
    Image(ImageArgs),
    /// Run in the emulated lab host (QEMU TCG with nested KVM), for hosts whose KVM cannot
    /// boot a stock kernel.
    Lab(LabArgs),
    /// Print the kernel config fragment a kernel built from source needs to boot under
    /// netvmm (merge it onto `make tinyconfig`).
    Kconfig,
    /// Measure tap, NAT, bridge, tc-redirect and macvtap side by side (same guest, same
    /// device) and explain the differences; in the emulated lab or natively in a private
    /// network namespace.
    Compare(crate::compare::CompareArgs),
    /// compare's scenario, run by compare itself inside a private network namespace.
    #[command(name = "__compare-scenario", hide = true)]
    CompareScenario(crate::compare::ScenarioArgs),
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct RunArgs {
    /// Kernel image: a bzImage or an ELF vmlinux.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// Initial ramdisk (cpio, optionally compressed).
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel arguments; netvmm puts its own device arguments in front of them
    /// ("console=ttyS0 reboot=k panic=1", and "pci=off" on virtio-mmio), so yours win.
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub cmdline: String,
    /// Guest RAM in MiB.
    // allow_hyphen_values: so that "-5" is a bad value for --memory, not an unknown flag.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEMORY_MIB, allow_hyphen_values = true)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CPUS, allow_hyphen_values = true)]
    pub cpus: u8,
    /// Also write the guest console to this file.
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
    /// Stop the VM after this many seconds and exit with status 124.
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout, allow_hyphen_values = true)]
    pub timeout: Option<Duration>,
    /// A guest NIC (repeat for eth1, eth2, ...): tap[=NAME][,host-ip=ADDR/PREFIX][,mac=MAC],
    /// tap,nat[=UPLINK][,host-ip=ADDR/PREFIX][,mac=MAC], fd=N[,mac=MAC],
    /// bridge=BR[,tap=NAME][,mac=MAC], tc=NIC[,mac=MAC] or
    /// macvtap=PARENT[,mode=bridge|vepa|private|passthru][,host-access=ADDR/PREFIX][,mac=MAC]
    /// (host-access: the host's address on PARENT's side, so host and guest can talk; nat:
    /// masqueraded out of UPLINK, default the default route's interface; tc: a tap wired to
    /// NIC by tc ingress redirects, the guest on NIC's segment); any of them with
    /// [,mtu=68..65535] (the guest's MTU; the tap or macvtap is set to match, a given one put
    /// back at exit) and [,vhost=on|off|auto] (default off: on, the kernel's vhost-net moves
    /// the frames; auto falls back to netvmm's own device).
    #[arg(long = "net", value_name = "SPEC")]
    pub nets: Vec<String>,
    /// A guest disk (repeat for vdb, vdc, ...): PATH[,readonly], a raw image (a regular
    /// file or a block device), locked against a second netvmm or QEMU writing it.
    #[arg(long = "disk", value_name = "PATH[,readonly]")]
    pub disks: Vec<String>,
    /// Per-thread seccomp filters; `off` is for debugging a filter only (capabilities are
    /// dropped either way).
    #[arg(long, value_enum, value_name = "on|off", default_value_t = Switch::On)]
    pub seccomp: Switch,
    /// How the guest reaches its NICs and disks: `mmio` (virtio-mmio, one interrupt line
    /// per device) or `pci` (virtio-pci with an MSI-X vector per queue; the guest needs
    /// the virtio_pci driver, which netvmm's guest image loads).
    #[arg(long, value_enum, value_name = "mmio|pci", default_value_t = Transport::Mmio)]
    pub transport: Transport,
    /// The guest command, after `--`: netvmm's guest image runs it (each argument intact)
    /// and netvmm exits with its status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Mmio,
    Pci,
}

impl Transport {
    /// What the VM is configured with.
    pub fn virtio(self) -> vmm::config::VirtioTransport {
        match self {
            Transport::Mmio => vmm::config::VirtioTransport::Mmio,
            Transport::Pci => vmm::config::VirtioTransport::Pci,
        }
    }

    /// As `--transport` and netvmm's NIC exit report (`transport=`) write it: the VM's
    /// own name for it, so that compare's check of the report cannot disagree.
    pub fn name(self) -> &'static str {
        self.virtio().name()
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}

/// Arguments that parse but do not make a valid VM.
#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    #[error(transparent)]
    Config(#[from] vmm::config::ConfigError),
    #[error(transparent)]
    Net(#[from] net::SpecError),
    #[error(transparent)]
    GuestCommand(#[from] crate::guest_command::GuestCommandError),
    #[error(transparent)]
    Disk(#[from] vmm::disks::DiskSpecError),
}

impl RunArgs {
    pub fn into_config(self) -> Result<VmConfig, ArgError> {
        let mut c = VmConfig::new(self.kernel);
        c.initrd = self.initrd;
        c.cmdline = crate::guest_command::with_command(&self.cmdline, &self.command)?;
        c.memory_mib = self.memory;
        c.cpus = self.cpus;
        c.serial_log = self.serial_log;
        c.timeout = self.timeout;
        c.seccomp = self.seccomp == Switch::On;
        c.transport = self.transport.virtio();
        c.nets = self
            .nets
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?;
        c.disks = self
            .disks
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?;
        c.validate()?;
        Ok(c)
    }
}

/// clap's rendered error as one line: its first paragraph (which names the argument),
/// without the usage block and the hint after it.
pub fn one_line_error(rendered: &str) -> String {
    let para: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = para.join(" ");
    let line = line.trim_start_matches("error: ");
    if line.is_empty() {
        "invalid arguments".to_string()
    } else {
        line.to_string()
    }
}

/// The shortest timeout taken: anything shorter is a typo (or rounds to no time at all).
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("'{s}' must be a positive number of seconds"));
    }
    let d = Duration::from_secs_f64(secs);
    if d < MIN_TIMEOUT {
        return Err(format!(
            "'{s}' is shorter than the shortest timeout, {} s",
            MIN_TIMEOUT.as_secs_f64()
        ));
    }
    Ok(d)
}

#[derive(Args, Debug)]
pub struct ImageArgs {
    /// Which Debian kernel the guest carries: cloud (linux-image-cloud-amd64, the default)
    /// or generic (linux-image-amd64, the kernel of a standard install).
    #[arg(long, value_enum, default_value_t = Flavour::Cloud, global = true)]
    pub flavour: Flavour,
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Cloud,
    Generic,
}

impl From<Flavour> for lab::GuestFlavour {
    fn from(f: Flavour) -> Self {
        match f {
            Flavour::Cloud => lab::GuestFlavour::Cloud,
            Flavour::Generic => lab::GuestFlavour::Generic,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build the guest image if needed and print its paths.
    Build {
        /// Build the Debian 12 root filesystem image instead (systemd, iproute2, iperf3:
        /// boot it with --disk and root=/dev/vda) and print its path.
        #[arg(long)]
        rootfs: bool,
    },
    /// Print the path of one part: kernel, vmlinux or initrd (building it if needed),
    /// tinykernel: a kernel built from Debian's linux-source-6.1 with `make tinyconfig`
    /// and `netvmm kconfig` (minutes, once), or rootfs: the Debian root filesystem image
    /// (`image build --rootfs`).
    Path {
        #[arg(value_parser = ["kernel", "vmlinux", "initrd", "tinykernel", "rootfs"])]
        part: String,
    },
}

#[derive(Args, Debug)]
pub struct LabArgs {
    /// Lab host RAM in MiB.
    #[arg(long, value_name = "MIB", default_value_t = lab::runner::DEFAULT_LAB_MEMORY_MIB, global = true, allow_hyphen_values = true)]
    pub lab_memory: u64,
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// `netvmm run` inside the lab host; files named by the arguments are carried in.
    Run(RunArgs),
    /// Run a shell script inside the lab host (netvmm on PATH, guest image in /lab/guest).
    Exec {
        /// The script file to run.
        script: PathBuf,
        /// Carry this host file into the lab host as /lab/files/<its file name> (repeatable).
        #[arg(long = "file", value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Stop the lab host after this many seconds.
        #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
        timeout: Option<Duration>,
    },
    /// Build the guest and lab images if needed.
    Build,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        let mut v = vec!["netvmm"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map_err(|e| one_line_error(&e.render().to_string()))
    }

    fn run_args(args: &[&str]) -> RunArgs {
        match parse(args).unwrap().command {
            Command::Run(r) => r,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn transport_is_mmio_unless_pci_is_asked_for() {
        use vmm::config::VirtioTransport;
        let t = |args: &[&str]| run_args(args).into_config().unwrap().transport;
        assert_eq!(t(&["run", "--kernel", "/k"]), VirtioTransport::Mmio);
        assert_eq!(
            t(&["run", "--kernel", "/k", "--transport", "pci"]),
            VirtioTransport::Pci
        );
        let e = parse(&["run", "--kernel", "/k", "--transport", "isa"]).unwrap_err();
        assert!(e.contains("--transport"), "{e}");
    }

    #[test]
    fn seccomp_is_on_unless_turned_off() {
        let on = |args: &[&str]| run_args(args).into_config().unwrap().seccomp;
        assert!(on(&["run", "--kernel", "/k"]));
        assert!(on(&["run", "--kernel", "/k", "--seccomp", "on"]));
        assert!(!on(&["run", "--kernel", "/k", "--seccomp=off"]));
        let e = parse(&["run", "--kernel", "/k", "--seccomp", "maybe"]).unwrap_err();
        assert!(e.contains("--seccomp"), "{e}");
    }

    #[test]
    fn run_defaults_and_values() {
        let r = run_args(&["run", "--kernel", "/k"]);
        assert_eq!((r.memory, r.cpus, r.timeout), (256, 1, None));
        let r = run_args(&[
            "run",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "quiet -- x",
            "--memory",
            "512",
            "--cpus",
            "2",
            "--timeout",
            "1.5",
            "--serial-log",
            "/tmp/l",
        ]);
        assert_eq!(r.timeout, Some(Duration::from_millis(1500)));
        let c = r.into_config().unwrap();
        assert_eq!((c.memory_mib, c.cpus), (512, 2));
        assert_eq!(c.cmdline, "quiet -- x");
        assert_eq!(c.initrd, Some(PathBuf::from("/i")));
        assert!(c.nets.is_empty());
    }

    #[test]
    fn net_options_become_nics_in_order() {
        let c = run_args(&[
            "run",
            "--kernel",
            "/k",
            "--net",
            "tap",
            "--net",
            "tap=vm1,mac=52:54:00:00:00:09",
        ])
        .into_config()
        .unwrap();
        assert_eq!(c.nets.len(), 2);
        assert_eq!(c.nets[1].mac.unwrap().to_string(), "52:54:00:00:00:09");
        let e = run_args(&["run", "--kernel", "/k", "--net", "tap,mac=nope"])
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn bad_input_names_the_argument() {
        let e = parse(&["run"]).unwrap_err();
        assert!(e.contains("--kernel"), "{e}");
        let e = parse(&["run", "--kernel", "/k", "--memory", "lots"]).unwrap_err();
        assert!(e.contains("--memory"), "{e}");
        let e = parse(&["run", "--kernel", "/k", "--timeout", "-3"]).unwrap_err();
        assert!(e.contains("--timeout"), "{e}");
        let e = parse(&["run", "--kernel", "/k", "--cpus", "300"]).unwrap_err();
        assert!(e.contains("--cpus"), "{e}");
        for flag in ["--memory", "--cpus"] {
            let e = parse(&["run", "--kernel", "/k", flag, "-5"]).unwrap_err();
            assert!(e.contains(flag) && e.contains("-5"), "{e}");
        }
        let e = parse(&["lab", "--lab-memory", "-5", "build"]).unwrap_err();
        assert!(e.contains("--lab-memory"), "{e}");
        for tiny in ["1e-12", "0.0009"] {
            let e = parse(&["run", "--kernel", "/k", "--timeout", tiny]).unwrap_err();
            assert!(
                e.contains("--timeout") && e.contains("shortest timeout"),
                "{e}"
            );
        }
        let r = run_args(&["run", "--kernel", "/k", "--timeout", "0.001"]);
        assert_eq!(r.timeout, Some(Duration::from_millis(1)));
        let e = run_args(&["run", "--kernel", "/k", "--cpus", "0"])
            .into_config()
            .unwrap_err();
        assert!(e.to_string().contains("--cpus 0"));
    }

    #[test]
    fn everything_after_the_double_dash_is_the_guest_command() {
        let r = run_args(&[
            "run",
            "--kernel",
            "/k",
            "--cmdline",
            "quiet",
            "--",
            "sh",
            "-c",
            "exit 5",
            "--net",
        ]);
        assert_eq!(r.command, ["sh", "-c", "exit 5", "--net"]);
        assert!(r.nets.is_empty());
        let c = r.into_config().unwrap();
        assert!(
            c.cmdline.starts_with("quiet netvmm.run64="),
            "{}",
            c.cmdline
        );
        let e = run_args(&[
            "run",
            "--kernel",
            "/k",
            "--cmdline",
            "netvmm.run=x",
            "--",
            "y",
        ])
        .into_config()
        .unwrap_err();
        assert!(e.to_string().contains("one way"), "{e}");
    }

    #[test]
    fn net_help_names_every_backend_key() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string();
        for key in [
            "tap",
            "fd=",
            "bridge=",
            "macvtap=",
            "nat[=UPLINK]",
            "tc=NIC",
            "host-ip=",
            "host-access=",
            "mode=",
            "mac=",
        ] {
            assert!(help.contains(key), "--net help lacks {key}: {help}");
        }
    }

    #[test]
    fn lab_run_takes_the_same_arguments() {
        let cli = parse(&[
            "lab",
            "--lab-memory",
            "1024",
            "run",
            "--kernel",
            "/k",
            "--cpus",
            "2",
        ])
        .unwrap();
        match cli.command {
            Command::Lab(l) => {
                assert_eq!(l.lab_memory, 1024);
                assert!(matches!(l.command, LabCommand::Run(ref r) if r.cpus == 2));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn image_flavour_defaults_to_cloud_and_goes_anywhere() {
        let flavour = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Command::Image(i)) => Ok(i.flavour),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(flavour(&["image", "build"]), Ok(Flavour::Cloud));
        assert_eq!(
            flavour(&["image", "--flavour", "generic", "build"]),
            Ok(Flavour::Generic)
        );
        assert_eq!(
            flavour(&["image", "path", "kernel", "--flavour", "generic"]),
            Ok(Flavour::Generic)
        );
        let e = flavour(&["image", "build", "--flavour", "rt"]).unwrap_err();
        assert!(e.contains("--flavour") && e.contains("rt"), "{e}");
        assert_eq!(
            lab::GuestFlavour::from(Flavour::Generic).metapackage(),
            "linux-image-amd64"
        );
    }

    #[test]
    fn image_rootfs_is_a_build_flag_and_a_path_part() {
        let image = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Command::Image(i)) => Ok(i.command),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert!(matches!(
            image(&["image", "build", "--rootfs"]),
            Ok(ImageCommand::Build { rootfs: true })
        ));
        assert!(matches!(
            image(&["image", "build"]),
            Ok(ImageCommand::Build { rootfs: false })
        ));
        assert!(matches!(
            image(&["image", "path", "rootfs"]),
            Ok(ImageCommand::Path { ref part }) if part == "rootfs"
        ));
        let e = image(&["image", "path", "rootfs.ext4"]).unwrap_err();
        assert!(e.contains("rootfs"), "{e}");
    }
}
