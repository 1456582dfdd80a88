//! The emulated lab host: a QEMU TCG machine (`-cpu max`, so it has SVM) running Debian's
//! cloud kernel with kvm_amd, inside which netvmm gets a hardware-style /dev/kvm. Used when
//! the real host's KVM cannot boot a stock kernel (PVM), and by the integration tests.
//!
//! One lab run: the cached lab image (resources/build-lab.sh) plus an appended cpio holding
//! `/lab/scenario`, the netvmm binary with its libraries, the guest image and any files the
//! scenario names. The lab's init runs the scenario on its console (our stdout) and writes
//! `netvmm-lab-exit=N` to its second serial port (a file we read back).

pub mod cpio;
pub mod images;
pub mod monitor;
pub mod progress;
pub mod runner;
pub mod signals;

pub use images::{GuestFlavour, ImageError, ImageStore, Images};
pub use progress::{Progress, ProgressSink};

/// The kernel config fragment for guests of netvmm (`netvmm kconfig`), the same file
/// resources/build-kernel.sh merges onto `make tinyconfig` for the tests.
pub const KCONFIG_FRAGMENT: &str = include_str!("../../resources/netvmm.kconfig");
pub use runner::{Console, LabContext, LabError, LabRun};
