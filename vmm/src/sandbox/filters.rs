//! The allow-lists, one per thread kind: every syscall a thread of that kind makes once its
//! filter is on, each with the reason it needs it. Anything else traps (see
//! [`super::sigsys`]). Found by tracing (strace -ff) real guests in the lab on every
//! backend (tap with traffic, bridge, a given tap, macvtap with the host-access shim) and
//! every end (power-off, timeout, panic, SIGTERM, a bridge re-created meanwhile), then
//! reviewed one by one; what no trace showed is only here with a reason.

use std::collections::BTreeMap;

use vmm_sys_util::ioctl::{ioctl_expr, _IOC_WRITE};

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

/// Syscall number -> the argument patterns it is allowed with (empty: any arguments).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// <linux/kvm.h>: _IO(KVMIO, 0x80).
pub const KVM_RUN: u64 = 0xae80;
/// <linux/if_tun.h>: _IOW('T', 208, unsigned int).
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
/// <linux/if_tun.h>: _IOW('T', 216, int).
pub const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
/// <linux/if_tun.h>: _IOW('T', 217, int).
pub const TUNSETQUEUE: u64 = 0x4004_54d9;

const KVMIO: u32 = 0xae;
/// `_IOW(KVMIO, nr, T)` for an argument of `size` bytes.
const fn kvm_iow(nr: u32, size: usize) -> u64 {
    ioctl_expr(_IOC_WRITE, KVMIO, nr, size as u32) as u64
}
/// <linux/kvm.h>: _IOW(KVMIO, 0x6a, struct kvm_irq_routing).
pub const KVM_SET_GSI_ROUTING: u64 =
    kvm_iow(0x6a, std::mem::size_of::<kvm_bindings::kvm_irq_routing>());
/// <linux/kvm.h>: _IOW(KVMIO, 0x76, struct kvm_irqfd).
pub const KVM_IRQFD: u64 = kvm_iow(0x76, std::mem::size_of::<kvm_bindings::kvm_irqfd>());
/// <linux/kvm.h>: _IOW(KVMIO, 0x79, struct kvm_ioeventfd).
pub const KVM_IOEVENTFD: u64 = kvm_iow(0x79, std::mem::size_of::<kvm_bindings::kvm_ioeventfd>());

/// <linux/vhost.h>, the per-ring ioctls a vCPU makes when the driver activates or resets
/// a vhost=on NIC (STATUS writes run on the vCPU thread). Opening /dev/vhost-net,
/// VHOST_SET_OWNER and VHOST_SET_MEM_TABLE happen at setup, before any filter.
/// _IOW(VHOST_VIRTIO, 0x00, __u64).
pub const VHOST_SET_FEATURES: u64 = 0x4008_af00;
/// _IOW(VHOST_VIRTIO, 0x10, struct vhost_vring_state).
pub const VHOST_SET_VRING_NUM: u64 = 0x4008_af10;
/// _IOW(VHOST_VIRTIO, 0x11, struct vhost_vring_addr).
pub const VHOST_SET_VRING_ADDR: u64 = 0x4028_af11;
/// _IOW(VHOST_VIRTIO, 0x12, struct vhost_vring_state).
pub const VHOST_SET_VRING_BASE: u64 = 0x4008_af12;
/// _IOW(VHOST_VIRTIO, 0x20, struct vhost_vring_file).
pub const VHOST_SET_VRING_KICK: u64 = 0x4008_af20;
/// _IOW(VHOST_VIRTIO, 0x21, struct vhost_vring_file).
pub const VHOST_SET_VRING_CALL: u64 = 0x4008_af21;
/// _IOW(VHOST_VIRTIO, 0x30, struct vhost_vring_file).
pub const VHOST_NET_SET_BACKEND: u64 = 0x4008_af30;

const FUTEX_WAIT: u64 = 0;
const FUTEX_WAKE: u64 = 1;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_PRIVATE_FLAG: u64 = 128;
const FUTEX_CLOCK_REALTIME: u64 = 256;

/// Builds one list; each call says what one syscall may do.
struct List(Rules);

impl List {
    fn new() -> Self {
        Self(Rules::new())
    }

    /// `nr` with any arguments.
    fn any(mut self, nr: i64) -> Self {
        self.0.insert(nr, Vec::new());
        self
    }

    /// `nr` when argument `arg` is `value` (several calls: any of those values).
    fn when(self, nr: i64, arg: u8, value: u64) -> Self {
        self.when_all(nr, &[(arg, SeccompCmpOp::Eq, value)])
    }

    /// `nr` when every condition holds (several calls: any of those patterns).
    fn when_all(mut self, nr: i64, conditions: &[(u8, SeccompCmpOp, u64)]) -> Self {
        let conditions = conditions
            .iter()
            .map(|(arg, op, value)| {
                // Only argument indexes 0..=5 fail here, and those are constants below.
                SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, op.clone(), *value)
                    .expect("argument index in 0..=5")
            })
            .collect();
        let rule = SeccompRule::new(conditions).expect("at least one condition");
        self.0.entry(nr).or_default().push(rule);
        self
    }

    /// `nr` when argument `arg` has none of the bits of `mask`.
    fn without_bits(self, nr: i64, arg: u8, mask: u64) -> Self {
        self.when_all(nr, &[(arg, SeccompCmpOp::MaskedEq(mask), 0)])
    }

    /// `ioctl` with request `request` (argument 1).
    fn ioctl(self, request: u64) -> Self {
        self.when(libc::SYS_ioctl, 1, request)
    }

    /// What any Rust thread here does, whatever its job.
    fn runtime(self) -> Self {
        let mut l = self;
        // Mutexes, condvars, channels and thread joins: private futexes (std) and
        // shared ones (glibc's pthread_join waits on the thread id word).
        for base in [FUTEX_WAIT, FUTEX_WAKE, FUTEX_WAIT_BITSET] {
            for flags in [0, FUTEX_PRIVATE_FLAG] {
                l = l.when(libc::SYS_futex, 1, base | flags);
            }
        }
        for flags in [0, FUTEX_PRIVATE_FLAG] {
            l = l.when(
                libc::SYS_futex,
                1,
                FUTEX_WAIT_BITSET | FUTEX_CLOCK_REALTIME | flags,
            );
        }
        l
            // std's channels back off with it under contention.
            .any(libc::SYS_sched_yield)
            // The allocator: heap growth and big blocks; never executable memory.
            .any(libc::SYS_brk)
            .without_bits(libc::SYS_mmap, 2, libc::PROT_EXEC as u64)
            .without_bits(libc::SYS_mprotect, 2, libc::PROT_EXEC as u64)
            .any(libc::SYS_munmap)
            .any(libc::SYS_mremap)
            // glibc's malloc trims freed arenas and thread stacks with it.
            .when(libc::SYS_madvise, 2, libc::MADV_DONTNEED as u64)
            // Clocks fall back to the syscall where the vDSO cannot read the clocksource
            // (the emulated lab host).
            .any(libc::SYS_clock_gettime)
            // Errors and panics go to stderr (and the SIGSYS line).
            .any(libc::SYS_write)
            // Returning from a signal handler (SIGINT/SIGTERM, a vCPU's interrupted run).
            .any(libc::SYS_rt_sigreturn)
            // glibc blocks signals around thread exit; std removes its alternate signal
            // stack when a thread ends.
            .any(libc::SYS_rt_sigprocmask)
            .any(libc::SYS_sigaltstack)
            // A syscall interrupted by SIGSTOP resumes through it.
            .any(libc::SYS_restart_syscall)
            // An abort (a panic while panicking) raises SIGABRT, with the default action.
            .when(libc::SYS_rt_sigaction, 0, libc::SIGABRT as u64)
            .any(libc::SYS_getpid)
            .any(libc::SYS_gettid)
            .when(libc::SYS_tgkill, 2, libc::SIGABRT as u64)
            // A thread's end, the process's end (and the SIGSYS handler's _exit).
            .any(libc::SYS_exit)
            .any(libc::SYS_exit_group)
    }

    /// Sleeping for a while (std::thread::sleep; glibc's nanosleep is clock_nanosleep).
    fn sleep(self) -> Self {
        self.any(libc::SYS_clock_nanosleep)
    }

    /// Request/reply and monitor NETLINK_ROUTE sockets (net::netlink).
    fn netlink(self) -> Self {
        self
            // Only netlink sockets: nothing that reaches beyond this host's kernel.
            .when(libc::SYS_socket, 0, libc::AF_NETLINK as u64)
            .any(libc::SYS_bind)
            .any(libc::SYS_getsockname)
            .any(libc::SYS_setsockopt)
            .any(libc::SYS_sendto)
            .any(libc::SYS_recvfrom)
            .any(libc::SYS_close)
    }
}

/// A vCPU thread: KVM_RUN, and the device registers it dispatches exits to (the serial
/// console's output, the exit devices, a virtio transport activated by the driver).
pub fn vcpu() -> Rules {
    List::new()
        .runtime()
        // Running the guest; no other KVM ioctl is needed once it runs.
        .ioctl(KVM_RUN)
        // A driver's DRIVER_OK activates its NIC from the vCPU that wrote it: the tap
        // gets the vnet header size and offloads the guest negotiated.
        .ioctl(TUNSETOFFLOAD)
        .ioctl(TUNSETVNETHDRSZ)
        // A NIC of several queue pairs detaches the tap queues of the pairs the driver
        // does not use yet (it uses pair 0 until its VQ_PAIRS_SET).
        .ioctl(TUNSETQUEUE)
        // With vhost=on the same DRIVER_OK hands the rings to the kernel (features, each
        // ring's size, addresses, base, call and kick eventfds, then the tap), and a
        // reset (status 0) takes the tap away again (SET_BACKEND with fd -1).
        .ioctl(VHOST_SET_FEATURES)
        .ioctl(VHOST_SET_VRING_NUM)
        .ioctl(VHOST_SET_VRING_ADDR)
        .ioctl(VHOST_SET_VRING_BASE)
        .ioctl(VHOST_SET_VRING_KICK)
        .ioctl(VHOST_SET_VRING_CALL)
        .ioctl(VHOST_NET_SET_BACKEND)
        // virtio-pci: a driver writing an MSI-X table entry moves its vector's route, and
        // the DRIVER_OK of a vhost=on NIC binds the kernel's used-buffer eventfds to the
        // queues' vectors (a reset unbinds them).
        .ioctl(KVM_SET_GSI_ROUTING)
        .ioctl(KVM_IRQFD)
        // virtio-pci: the queues' notification ioeventfds follow BAR 0, placed when the
        // driver turns memory decoding on and moved when it moves the BAR.
        .ioctl(KVM_IOEVENTFD)
        // vCPU 0 marks the set-up CPU time for the boot report as it enters the guest.
        .any(libc::SYS_getrusage)
        // A vCPU thread that ends (the VM ended) closes its vCPU fd, and, holding the
        // last reference to the buses, perhaps the devices' fds.
        .any(libc::SYS_close)
        .0
}

/// The device thread: the event loop over the NICs' queue eventfds and backends, and the
/// disks' when the VM has any.
pub fn device(needs: Needs) -> Rules {
    let list = List::new()
        .runtime()
        .sleep()
        // The event loop (every fd was registered before the thread started).
        .any(libc::SYS_epoll_wait)
        // eventfds and the tap: frames in and out.
        .any(libc::SYS_read)
        .any(libc::SYS_readv)
        .any(libc::SYS_writev)
        // virtio-net's control queue: VQ_PAIRS_SET attaches the tap queues of the pairs
        // the driver uses and detaches the others (TUNSETQUEUE), and nothing else.
        .ioctl(TUNSETQUEUE)
        // Stopped at the VM's end, the loop closes its epoll and stop eventfd (and, when
        // it holds the last reference, a device's eventfds and backend).
        .any(libc::SYS_close);
    if !needs.disks {
        // No image to read or write: a guest that takes this thread over gets no
        // positioned I/O on whatever fd it finds.
        return list.0;
    }
    list
        // virtio-blk: the image read and written at the request's offset, and flushed
        // (fdatasync) on the guest's FLUSH.
        .any(libc::SYS_pread64)
        .any(libc::SYS_pwrite64)
        .any(libc::SYS_fdatasync)
        .0
}

/// The syscalls only a VM with a disk needs on its device thread.
pub const DISK_SYSCALLS: [i64; 3] = [libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync];

/// What the VM has that widens a list beyond what every VM needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// At least one `--disk`.
    pub disks: bool,
}

/// The main thread once everything runs: its event loop (the VM's end, stop signals, the
/// timeout, stdin to the console, link notifications for re-created bridges), then the
/// end: vCPUs kicked and joined, the device thread stopped, the terminal restored, the
/// report, the host interfaces released or deleted (netlink).
pub fn main_thread() -> Rules {
    List::new()
        .runtime()
        .netlink()
        // The event loop: it waits, and takes stdin out while input waits for the guest
        // (and back in), or for good at its end.
        .any(libc::SYS_epoll_wait)
        .any(libc::SYS_epoll_ctl)
        // The exit and drained eventfds, the signal pipe, the timerfd, stdin.
        .any(libc::SYS_read)
        // The kick that takes a vCPU out of KVM_RUN at the end (pthread_kill), and
        // nothing else: the signal is the real-time one only vCPUs handle.
        .when(libc::SYS_tgkill, 2, crate::vcpu::kick_signal() as u64)
        // Waiting for the vCPU threads to leave the guest between kicks.
        .sleep()
        // The terminal back to how it was: glibc's tcsetattr sets (TCSETS), then reads
        // the settings back (TCGETS) to check what the kernel took.
        .ioctl(libc::TCSETS)
        .ioctl(libc::TCGETS)
        // A given tap's vnet header size and offloads put back as found.
        .ioctl(TUNSETOFFLOAD)
        .ioctl(TUNSETVNETHDRSZ)
        // The boot report reads /proc/self/smaps (std sizes the read with statx); the
        // shim's lock file is opened and locked when a macvtap's shim use is released.
        .any(libc::SYS_openat)
        .any(libc::SYS_statx)
        .any(libc::SYS_flock)
        // The shim's lock lives in this user's private directory ($TMPDIR/netvmm-<uid>):
        // its name needs the euid, and it is made (or found made) and checked first.
        .any(libc::SYS_geteuid)
        .any(libc::SYS_mkdir)
        .any(libc::SYS_newfstatat)
        .any(libc::SYS_fstat)
        // The shim's user list names users by pid, start time and pid namespace
        // (/proc/self/ns/pid, a link), so that a reused pid is never taken for a user.
        .any(libc::SYS_readlink)
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_are_those_of_linux_kvm_h() {
        // As strace prints them on x86_64.
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
    }

    #[test]
    fn every_list_compiles_and_only_vcpus_may_run_the_guest() {
        let disks = Needs { disks: true };
        for (name, rules) in [
            ("vcpu", vcpu()),
            ("device", device(Needs::default())),
            ("device with disks", device(disks)),
            ("main", main_thread()),
        ] {
            assert!(rules.contains_key(&libc::SYS_exit_group), "{name}");
            assert!(!rules.contains_key(&libc::SYS_execve), "{name}");
            assert!(!rules.contains_key(&libc::SYS_clone), "{name}");
            let ioctls = rules.get(&libc::SYS_ioctl).map_or(0, Vec::len);
            // The device thread's one ioctl is TUNSETQUEUE.
            let ioctls_allowed = usize::from(name.starts_with("device"));
            assert!(
                name == "vcpu" || name == "main" || ioctls == ioctls_allowed,
                "{name}"
            );
            let disk_io = DISK_SYSCALLS.iter().filter(|nr| rules.contains_key(nr));
            let want = if name == "device with disks" { 3 } else { 0 };
            assert_eq!(disk_io.count(), want, "{name}: the disk syscalls");
            super::super::compile(rules).unwrap();
        }
    }
}
