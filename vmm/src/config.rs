//! The typed description of one VM, built by the CLI (or a test) and consumed by [`crate::Vmm`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use net::BackendSpec;

/// Default guest RAM in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Default number of vCPUs.
pub const DEFAULT_CPUS: u8 = 1;
/// Most vCPUs we describe: one byte of APIC ID in the MADT entries we write, minus the
/// broadcast ID, and far beyond what these tests need.
pub const MAX_CPUS: u8 = 254;
/// Smallest guest RAM we accept: below this a distribution kernel plus initramfs cannot boot.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest RAM we accept (1 TiB): a typo guard, not a hardware limit.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// What the user wants the kernel to get; netvmm prepends what its devices need.
    pub cmdline: String,
    pub memory_mib: u64,
    pub cpus: u8,
    pub serial_log: Option<PathBuf>,
    pub timeout: Option<Duration>,
    /// Guest NICs in order: eth0, eth1, ...
    pub nets: Vec<net::NetSpec>,
    /// Guest disks in order: vda, vdb, ...
    pub disks: Vec<crate::disks::DiskSpec>,
    /// Per-thread seccomp filters (see [`crate::sandbox`]); off only for debugging.
    /// Capabilities are dropped either way.
    pub seccomp: bool,
    /// Run on a PVM /dev/kvm anyway (only kernels built for PVM boot there).
    pub allow_pvm: bool,
    /// How the guest reaches its virtio devices.
    pub transport: VirtioTransport,
}

/// The bus virtio devices sit on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VirtioTransport {
    /// virtio-mmio: a register window and one interrupt line per device, described in
    /// the DSDT. Every kernel with virtio_mmio boots with it.
    #[default]
    Mmio,
    /// virtio-pci on PCI bus 0, with an MSI-X vector per queue: no status register read
    /// per interrupt, and interrupts spread over the vCPUs. Needs the guest's virtio_pci.
    Pci,
}

impl VirtioTransport {
    /// As `--transport` and the NIC exit report (`transport=`) write it.
    pub fn name(self) -> &'static str {
        match self {
            VirtioTransport::Mmio => "mmio",
            VirtioTransport::Pci => "pci",
        }
    }
}

impl VmConfig {
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: String::new(),
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: DEFAULT_CPUS,
            serial_log: None,
            timeout: None,
            nets: Vec::new(),
            disks: Vec::new(),
            seccomp: true,
            allow_pvm: false,
            transport: VirtioTransport::Mmio,
        }
    }

    /// Checks limits that do not need the filesystem or KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(ConfigError::Cpus(self.cpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        let fds = self.inherited_fds();
        for (i, fd) in fds.iter().enumerate() {
            if fds[..i].contains(fd) {
                return Err(ConfigError::FdTwice(*fd));
            }
            if let Some(name) = STANDARD_STREAMS.get(*fd as usize) {
                return Err(ConfigError::StandardStream { fd: *fd, name });
            }
        }
        Ok(())
    }

    /// Checks what this host must offer before netvmm opens anything: the kernel and
    /// initrd are regular files, and every inherited `--net fd=N` is open and a
    /// description of its own. (Checked this early, an `fd=N` that netvmm itself would
    /// open later, for an earlier `--net tap`, is still closed, and so refused.)
    pub fn check_host(&self) -> Result<(), ConfigError> {
        check_file("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_file("initrd", initrd)?;
        }
        let fds = self.inherited_fds();
        for (i, &fd) in fds.iter().enumerate() {
            // SAFETY: F_GETFD only asks whether the descriptor is open.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(ConfigError::FdNotOpen(fd));
            }
            if let Some(&first) = fds[..i].iter().find(|&&other| same_file(other, fd)) {
                return Err(ConfigError::FdSameFile { first, fd });
            }
        }
        Ok(())
    }

    fn inherited_fds(&self) -> Vec<i32> {
        self.nets
            .iter()
            .filter_map(|n| match n.backend {
                BackendSpec::Fd(fd) => Some(fd),
                _ => None,
            })
            .collect()
    }
}

/// What descriptors 0, 1 and 2 already are to netvmm.
const STANDARD_STREAMS: [&str; 3] = ["stdin", "stdout", "stderr"];

fn check_file(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let m = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad("does not exist".into()))
        }
        Err(e) => return Err(bad(format!("cannot be read: {e}"))),
    };
    if m.is_dir() {
        return Err(bad("is a directory, not a file".into()));
    }
    if !m.is_file() {
        return Err(bad("is not a regular file".into()));
    }
    Ok(())
}

/// Whether two descriptors are one open file description (one dup'ed from the other):
/// kcmp(2) tells exactly. Where it is not allowed (no CONFIG_KCMP, a seccomp filter) the
/// numbers, already distinct, are all that can be compared.
fn same_file(a: i32, b: i32) -> bool {
    const KCMP_FILE: libc::c_int = 0;
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    // SAFETY: kcmp only compares two descriptors of this process; nothing is written.
    let rc = unsafe { libc::syscall(libc::SYS_kcmp, me, me, KCMP_FILE, a, b) };
    rc == 0
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--cpus {0} is out of range: use 1 to {MAX_CPUS}")]
    Cpus(u8),
    #[error("--memory {0} MiB is out of range: use {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB")]
    Memory(u64),
    #[error("{what} {} {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--net fd={0} is given twice: one descriptor can back only one NIC")]
    FdTwice(i32),
    #[error("--net fd={fd} is netvmm's {name}, not a tap")]
    StandardStream { fd: i32, name: &'static str },
    #[error("--net fd={0}: no such open file descriptor (netvmm was not given one)")]
    FdNotOpen(i32),
    #[error(
        "--net fd={fd} is the same open file as fd={first} (a dup of it): one descriptor \
         can back only one NIC"
    )]
    FdSameFile { first: i32, fd: i32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_with_named_errors() {
        let mut c = VmConfig::new("k".into());
        assert!(c.validate().is_ok());
        c.cpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::Cpus(0)));
        c.cpus = 2;
        c.memory_mib = 1;
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("--memory 1 MiB"));
    }

    fn with_fds(fds: &[i32]) -> VmConfig {
        let mut c = VmConfig::new("/proc/self/exe".into());
        c.nets = fds
            .iter()
            .map(|fd| format!("fd={fd}").parse().unwrap())
            .collect();
        c
    }

    #[test]
    fn one_fd_number_twice_or_a_standard_stream_is_refused() {
        let mut c = with_fds(&[9, 9]);
        c.nets.insert(1, "tap".parse().unwrap());
        assert_eq!(c.validate(), Err(ConfigError::FdTwice(9)));
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--net fd=9 is given twice: one descriptor can back only one NIC"
        );
        assert_eq!(
            with_fds(&[1]).validate(),
            Err(ConfigError::StandardStream {
                fd: 1,
                name: "stdout"
            })
        );
        assert!(with_fds(&[9, 10]).validate().is_ok());
    }

    #[test]
    fn an_fd_must_be_open_and_not_a_dup_of_another() {
        use std::os::fd::AsRawFd;
        // Above any RLIMIT_NOFILE: never open.
        let e = with_fds(&[999_999]).check_host().unwrap_err();
        assert_eq!(e, ConfigError::FdNotOpen(999_999));
        assert!(e.to_string().contains("fd=999999"), "{e}");
        let a = std::fs::File::open("/dev/null").unwrap();
        let dup = a.try_clone().unwrap();
        let other = std::fs::File::open("/dev/null").unwrap();
        let (a, dup, other) = (a.as_raw_fd(), dup.as_raw_fd(), other.as_raw_fd());
        assert_eq!(
            with_fds(&[a, other, dup]).check_host(),
            Err(ConfigError::FdSameFile { first: a, fd: dup })
        );
        assert!(
            with_fds(&[a, other]).check_host().is_ok(),
            "two opens of one file are two descriptions"
        );
    }

    #[test]
    fn kernel_and_initrd_must_be_regular_files() {
        let msg = |kernel: &str, initrd: Option<&str>| {
            let mut c = VmConfig::new(kernel.into());
            c.initrd = initrd.map(PathBuf::from);
            c.check_host().map_err(|e| e.to_string())
        };
        assert_eq!(
            msg("/nonexistent/k", None),
            Err("kernel /nonexistent/k does not exist".into())
        );
        assert_eq!(
            msg("/", None),
            Err("kernel / is a directory, not a file".into())
        );
        assert_eq!(
            msg("/dev/null", None),
            Err("kernel /dev/null is not a regular file".into())
        );
        assert_eq!(
            msg("/proc/self/exe", Some("/")),
            Err("initrd / is a directory, not a file".into())
        );
        assert_eq!(msg("/proc/self/exe", Some("/proc/self/exe")), Ok(()));
    }
}
