//! The sandbox netvmm's threads run in once the VM is built: each thread, as it starts,
//! drops every capability it will not use (all of them, except CAP_NET_ADMIN for the one
//! thread that changes interfaces later: the main thread, whose event loop puts taps back
//! on re-created bridges and which releases the interfaces at the end, and only when some
//! NIC needs it), sets `no_new_privs`, and installs the seccomp filter of its kind
//! ([`filters`]). Capabilities, `no_new_privs` and seccomp filters are all per thread on
//! Linux, so no thread can do it for another; the vCPU threads do it before their first
//! KVM_RUN, and the guest runs only once every thread has.

pub mod caps;
pub mod filters;
mod sigsys;

pub use filters::Needs;

use std::sync::Arc;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// What a thread does, which decides its filter and its capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Vcpu,
    Device,
    Main,
}

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Device => "device",
            ThreadKind::Main => "main",
        }
    }

    fn rules(self, needs: filters::Needs) -> filters::Rules {
        match self {
            ThreadKind::Vcpu => filters::vcpu(),
            ThreadKind::Device => filters::device(needs),
            ThreadKind::Main => filters::main_thread(),
        }
    }

    const ALL: [ThreadKind; 3] = [ThreadKind::Vcpu, ThreadKind::Device, ThreadKind::Main];
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot build the {thread} thread's seccomp filter: {source}")]
    Compile {
        thread: &'static str,
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    #[error("{thread} thread: cannot drop its capabilities: {source}")]
    Caps {
        thread: &'static str,
        source: std::io::Error,
    },
    #[error("{thread} thread: cannot install its seccomp filter: {source}")]
    Install {
        thread: &'static str,
        source: seccompiler::Error,
    },
    #[error("cannot start the {thread} thread: {source}")]
    Spawn {
        thread: &'static str,
        source: std::io::Error,
    },
    #[error("{thread} thread: cannot block the stop signals: {source}")]
    Signals {
        thread: &'static str,
        source: std::io::Error,
    },
    #[error("the {0} thread ended before entering its sandbox")]
    Vanished(&'static str),
}

/// Compiles one list; a forbidden syscall traps (SIGSYS, see [`sigsys`]).
pub fn compile(rules: filters::Rules) -> Result<BpfProgram, seccompiler::Error> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// The compiled filters (none with `--seccomp=off`), shared by the threads that install
/// them.
#[derive(Clone)]
pub struct Sandbox {
    filters: Option<Arc<Vec<(ThreadKind, BpfProgram)>>>,
}

impl Sandbox {
    /// Compiles every filter up front (a list that does not compile fails the VM before
    /// anything runs), each for what this VM `needs` and no more, and installs the SIGSYS
    /// handler; `seccomp: false` keeps only the capability drop.
    pub fn new(seccomp: bool, needs: filters::Needs) -> Result<Self, SandboxError> {
        if !seccomp {
            return Ok(Self { filters: None });
        }
        let mut compiled = Vec::new();
        for kind in ThreadKind::ALL {
            let bpf = compile(kind.rules(needs)).map_err(|source| SandboxError::Compile {
                thread: kind.name(),
                source,
            })?;
            compiled.push((kind, bpf));
        }
        sigsys::install_handler().map_err(SandboxError::Handler)?;
        Ok(Self {
            filters: Some(Arc::new(compiled)),
        })
    }

    /// Puts the calling thread into `kind`'s sandbox, keeping CAP_NET_ADMIN when
    /// `keep_net_admin` (and it had it). Irreversible.
    pub fn enter(&self, kind: ThreadKind, keep_net_admin: bool) -> Result<(), SandboxError> {
        let thread = kind.name();
        caps::restrict_thread(keep_net_admin)
            .map_err(|source| SandboxError::Caps { thread, source })?;
        let Some(filters) = &self.filters else {
            return Ok(());
        };
        sigsys::remember_thread_name();
        let bpf = filters
            .iter()
            .find_map(|(k, bpf)| (*k == kind).then_some(bpf))
            .expect("every kind is compiled");
        seccompiler::apply_filter(bpf).map_err(|source| SandboxError::Install { thread, source })
    }

    /// Starts thread `name` of `kind`, which blocks the stop signals (they are the main
    /// thread's: see [`crate::control`]) and enters its sandbox (no capabilities kept)
    /// before it runs `body`. Returns once it has, so that the caller knows the thread is
    /// confined (or why it could not be, and then `body` never runs).
    pub fn spawn(
        &self,
        name: String,
        kind: ThreadKind,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<std::thread::JoinHandle<()>, SandboxError> {
        let thread = kind.name();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let sandbox = self.clone();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let entered = crate::control::StopSignals::block_in_this_thread()
                    .map_err(|source| SandboxError::Signals { thread, source })
                    .and_then(|()| sandbox.enter(kind, false));
                let ok = entered.is_ok();
                let _ = tx.send(entered);
                if ok {
                    body();
                }
            })
            .map_err(|source| SandboxError::Spawn { thread, source })?;
        rx.recv().map_err(|_| SandboxError::Vanished(thread))??;
        Ok(handle)
    }
}

/// Whether the host side of these NICs needs CAP_NET_ADMIN after setup: a created tap
/// (and an inherited fd) goes away with its fd and needs nothing; a tap on a bridge is
/// re-enslaved if the bridge comes back, a tap named by the user may be a given one that
/// is put back as found, a macvtap (and its shim) is deleted at exit, and so are a NAT
/// tap's nftables table (and the uplink's forwarding) and a tc wiring's qdisc on its NIC.
pub fn needs_net_admin(nets: &[net::NetSpec]) -> bool {
    use net::spec::BackendSpec;
    nets.iter().any(|n| match &n.backend {
        BackendSpec::Tap { name, .. } => name.is_some(),
        BackendSpec::Fd(_) => false,
        BackendSpec::Bridge { .. }
        | BackendSpec::Macvtap { .. }
        | BackendSpec::Nat { .. }
        | BackendSpec::TcRedirect { .. } => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_created_taps_and_fds_leave_no_capability() {
        let specs =
            |s: &[&str]| -> Vec<net::NetSpec> { s.iter().map(|s| s.parse().unwrap()).collect() };
        assert!(!needs_net_admin(&[]));
        assert!(!needs_net_admin(&specs(&[
            "tap",
            "fd=3",
            "tap,host-ip=192.0.2.1/24"
        ])));
        assert!(needs_net_admin(&specs(&["tap", "tap=given0"])));
        assert!(needs_net_admin(&specs(&["bridge=br0"])));
        assert!(needs_net_admin(&specs(&["macvtap=eth9"])));
        assert!(needs_net_admin(&specs(&["tap,nat"])));
        assert!(needs_net_admin(&specs(&["tc=veth0"])));
    }

    #[test]
    fn a_forbidden_syscall_stops_the_process_with_one_line() {
        // In a child process: the filter is for life.
        let exe = std::env::current_exe().unwrap();
        if std::env::var_os("NETVMM_SANDBOX_CHILD").is_some() {
            let sandbox = Sandbox::new(true, filters::Needs::default()).unwrap();
            sandbox.enter(ThreadKind::Device, false).unwrap();
            // SAFETY: getppid has no arguments; it is not on the device list.
            unsafe { libc::getppid() };
            unreachable!("getppid was allowed");
        }
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "sandbox::tests::a_forbidden_syscall_stops_the_process_with_one_line",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NETVMM_SANDBOX_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let line = format!(
            "made syscall {}, which its filter does not allow",
            libc::SYS_getppid
        );
        assert!(stderr.contains(&line), "{stderr}");
    }
}
