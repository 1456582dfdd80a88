//! The sandbox as the kernel sees it: every thread of a running netvmm shows `Seccomp: 2`
//! (a filter), `NoNewPrivs: 1`, and no capability but CAP_NET_ADMIN, which only the main
//! thread (its event loop watches the bridges; it releases the interfaces at the end)
//! keeps, and only when a NIC needs it. Native: this
//! host's /dev/kvm starts every thread even where it cannot boot the guest (PVM), and that
//! is all this needs; the NIC cases run in a network namespace of their own. The device
//! filter's disk syscalls are checked against the kernel too, in child processes that
//! install the filter netvmm would give a VM with and without a disk.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::NETVMM;

const CAP_NET_ADMIN: u64 = 1 << 12;

/// One thread's sandbox, from /proc/<pid>/task/<tid>/status.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ThreadState {
    seccomp: u32,
    no_new_privs: u32,
    cap_eff: u64,
    cap_prm: u64,
    cap_bnd: u64,
}

fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// <linux/sched.h>: a kernel worker that lives in a user process (KVM's
/// kvm-nx-lpage-recovery thread on recent kernels): it runs no user code.
const PF_USER_WORKER: u64 = 0x4000;

/// Whether task directory `task` is such a kernel worker (its flags: stat field 9).
fn kernel_worker(task: &std::path::Path) -> bool {
    let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
    // The name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let flags = after_name
        .split_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok());
    flags.is_some_and(|f| f & PF_USER_WORKER != 0)
}

/// Thread name -> state, for every thread of `pid` (None once it is gone).
fn threads(pid: u32) -> Option<BTreeMap<String, ThreadState>> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let task = task.ok()?.path();
        if kernel_worker(&task) {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).ok()?;
        let hex = |k| u64::from_str_radix(field(&status, k).unwrap_or("x"), 16).ok();
        let dec = |k| field(&status, k).and_then(|v| v.parse().ok());
        let state = ThreadState {
            seccomp: dec("Seccomp")?,
            no_new_privs: dec("NoNewPrivs")?,
            cap_eff: hex("CapEff")?,
            cap_prm: hex("CapPrm")?,
            cap_bnd: hex("CapBnd")?,
        };
        out.insert(field(&status, "Name")?.to_string(), state);
    }
    Some(out)
}

/// The guest kernel (netvmm's image), or None (and why) where it cannot be had.
fn kernel() -> Option<String> {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipping: no /dev/kvm on this host");
        return None;
    }
    let out = Command::new(NETVMM)
        .args(["image", "path", "kernel"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "skipping: no guest kernel: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn start(kernel: &str, extra: &[&str]) -> Child {
    Command::new(NETVMM)
        .args(["run", "--kernel", kernel, "--timeout", "5"])
        .args(extra)
        .env("NETVMM_ALLOW_PVM", "1")
        .env("NETVMM_BOOT_REPORT", "1")
        // A pipe, held open: the event loop watches it all along.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netvmm runs")
}

/// Waits until `child` has exactly the threads `names`, the main thread confined last
/// (with `seccomp`, until each shows a filter), then returns their states, and the
/// child's stderr and exit status once it has run to its timeout.
fn observe(
    mut child: Child,
    names: &[&str],
    seccomp: bool,
) -> (BTreeMap<String, ThreadState>, String, Option<i32>) {
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut seen = BTreeMap::new();
    while Instant::now() < deadline {
        if let Some(t) = threads(pid) {
            let complete = t.len() == names.len()
                && names.iter().all(|n| t.contains_key(*n))
                && t.values()
                    .all(|s| s.no_new_privs == 1 && (!seccomp || s.seccomp == 2));
            seen = t;
            if complete {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    let status = child.wait().expect("netvmm ends").code();
    (seen, stderr, status)
}

/// Checks every thread: a filter (or none with --seccomp=off), no_new_privs, an empty
/// bounding set, and CAP_NET_ADMIN alone in exactly the threads `admin`.
fn check(
    what: &str,
    (seen, stderr, status): (BTreeMap<String, ThreadState>, String, Option<i32>),
    names: &[&str],
    seccomp: bool,
    admin: &[&str],
) {
    let shown: Vec<&str> = seen.keys().map(String::as_str).collect();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(shown, want, "{what}: threads\n{stderr}");
    for (name, s) in &seen {
        let caps = if admin.contains(&name.as_str()) {
            CAP_NET_ADMIN
        } else {
            0
        };
        let expected = ThreadState {
            seccomp: if seccomp { 2 } else { 0 },
            no_new_privs: 1,
            cap_eff: caps,
            cap_prm: caps,
            // Shrinking the bounding set takes CAP_SETPCAP, which only root starts with.
            cap_bnd: if is_root() { 0 } else { s.cap_bnd },
        };
        assert_eq!(s, &expected, "{what}: thread {name}\n{stderr}");
    }
    // The whole life under the filters: the exit path (report, interfaces released or
    // deleted) too.
    assert!(!stderr.contains("seccomp:"), "{what}: {stderr}");
    assert_eq!(status, Some(124), "{what}: {stderr}");
    assert!(stderr.contains("netvmm-report:"), "{what}: {stderr}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn without_nics_no_thread_keeps_a_capability() {
    let Some(k) = kernel() else { return };
    let names = ["netvmm", "netvmm-vcpu0", "netvmm-vcpu1"];
    let run = observe(start(&k, &["--cpus", "2"]), &names, true);
    check("no NIC", run, &names, true, &[]);
}

#[test]
fn seccomp_off_says_so_and_still_drops_capabilities() {
    let Some(k) = kernel() else { return };
    let names = ["netvmm", "netvmm-vcpu0"];
    let (seen, stderr, status) = observe(start(&k, &["--seccomp=off"]), &names, false);
    assert_eq!(
        stderr.lines().next(),
        Some("netvmm: --seccomp=off: no seccomp filters, for debugging only"),
        "{stderr}"
    );
    check("--seccomp=off", (seen, stderr, status), &names, false, &[]);
}

#[test]
fn only_main_keeps_net_admin_and_only_for_a_bridge() {
    let Some(k) = kernel() else { return };
    let in_netns = net::test_support::in_new_netns(move || {
        let tap_only = observe(
            start(&k, &["--net", "tap"]),
            &["netvmm", "netvmm-net", "netvmm-vcpu0"],
            true,
        );
        net::netlink::create_bridge("nvsbbr0").expect("a bridge in the namespace");
        net::netlink::set_up("nvsbbr0").expect("bridge up");
        let bridged = observe(
            start(&k, &["--net", "tap", "--net", "bridge=nvsbbr0"]),
            &["netvmm", "netvmm-net", "netvmm-vcpu0"],
            true,
        );
        let left: Vec<String> = net::netlink::list_links()
            .expect("links")
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n.starts_with("nvtap"))
            .collect();
        (tap_only, bridged, left)
    });
    let Ok((tap_only, bridged, left)) = in_netns else {
        eprintln!("skipping: cannot make a network namespace here (not root?)");
        return;
    };
    let names = ["netvmm", "netvmm-net", "netvmm-vcpu0"];
    check("--net tap", tap_only, &names, true, &[]);
    let names = ["netvmm", "netvmm-net", "netvmm-vcpu0"];
    check(
        "--net tap --net bridge=",
        bridged,
        &names,
        true,
        &["netvmm"],
    );
    assert!(left.is_empty(), "taps left behind: {left:?}");
}

/// A macvtap with the host-access shim: only main keeps CAP_NET_ADMIN, and its exit path
/// (the shim's lock in this user's private directory, the users list read by pid, start
/// time and pid namespace, the shim and macvtap deleted) runs under its filter. A CI run
/// found that path trapping (geteuid, readlink) and the shim left behind.
#[test]
fn a_macvtap_with_its_shim_is_removed_under_the_filter() {
    let Some(k) = kernel() else { return };
    let in_netns = net::test_support::in_new_netns(move || {
        net::netlink::create_veth("nvsbva", "nvsbvb").expect("a veth in the namespace");
        net::netlink::set_up("nvsbva").expect("veth up");
        let run = observe(
            start(&k, &["--net", "macvtap=nvsbva,host-access=203.0.113.10/24"]),
            &["netvmm", "netvmm-net", "netvmm-vcpu0"],
            true,
        );
        let left: Vec<String> = net::netlink::list_links()
            .expect("links")
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n.starts_with("nvshim") || n.starts_with("nvmvt"))
            .collect();
        (run, left)
    });
    let Ok((run, left)) = in_netns else {
        eprintln!("skipping: cannot make a network namespace here (not root?)");
        return;
    };
    let names = ["netvmm", "netvmm-net", "netvmm-vcpu0"];
    check("--net macvtap,host-access", run, &names, true, &["netvmm"]);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A pseudo-terminal pair (controller, the terminal itself), or None where there is none.
fn pty() -> Option<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt returns a new fd or -1; checked.
    let controller = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
    if controller < 0 {
        return None;
    }
    // SAFETY: `controller` is a fresh fd that only this File owns.
    let controller_file = unsafe { std::fs::File::from_raw_fd(controller) };
    // SAFETY: grantpt/unlockpt/ptsname take the controller fd; ptsname's static result
    // is copied at once, on this thread only.
    let path = unsafe {
        if libc::grantpt(controller) != 0 || libc::unlockpt(controller) != 0 {
            return None;
        }
        let name = libc::ptsname(controller);
        if name.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    };
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ok()?;
    Some((controller_file, terminal))
}

fn termios(f: &std::fs::File) -> libc::termios {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data; tcgetattr fills it from a valid fd.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(f.as_raw_fd(), &mut t), 0);
        t
    }
}

#[test]
fn a_terminal_is_put_back_under_the_filter() {
    let Some(k) = kernel() else { return };
    let Some((_controller, terminal)) = pty() else {
        eprintln!("skipping: no pseudo-terminal here");
        return;
    };
    let before = termios(&terminal);
    let out = Command::new(NETVMM)
        .args(["run", "--kernel", &k, "--timeout", "1"])
        .env("NETVMM_ALLOW_PVM", "1")
        .stdin(terminal.try_clone().expect("dup the terminal"))
        .stdout(Stdio::null())
        .output()
        .expect("netvmm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Raw mode on, then off again at exit (tcsetattr: TCSETS, then TCGETS), from the
    // confined main thread.
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(!stderr.contains("seccomp:"), "{stderr}");
    let after = termios(&terminal);
    assert_eq!(
        (before.c_lflag, before.c_iflag, before.c_oflag),
        (after.c_lflag, after.c_iflag, after.c_oflag),
        "the terminal was not put back"
    );
}

/// Set in the child processes of `the_device_filter_allows_disk_io_only_with_a_disk`:
/// `with:SYSCALL` or `without:SYSCALL`.
const DISK_CHILD: &str = "NETVMM_SANDBOX_DISK_CHILD";

/// In a child: confines this thread as a device thread of a VM with or without a disk,
/// then makes one disk syscall on a memfd (opened before, as a disk image would be).
fn disk_io_child(mode: &str) {
    let (with, syscall) = mode.split_once(':').expect("MODE:SYSCALL");
    // SAFETY: the name is a NUL-terminated literal; the fd returned (or -1) is checked.
    let fd = unsafe { libc::memfd_create(c"netvmm-disk-test".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    let needs = vmm::sandbox::Needs {
        disks: with == "with",
    };
    let sandbox = vmm::sandbox::Sandbox::new(true, needs).expect("the filters compile");
    sandbox
        .enter(vmm::sandbox::ThreadKind::Device, false)
        .expect("enter the device sandbox");
    let mut buf = [7u8; 8];
    // SAFETY: `fd` is this process's memfd and `buf` outlives each call, which reads or
    // writes at most its length.
    let rc = unsafe {
        match syscall {
            "pwrite64" => libc::pwrite64(fd, buf.as_ptr().cast(), buf.len(), 0),
            "pread64" => libc::pread64(fd, buf.as_mut_ptr().cast(), buf.len(), 0),
            "fdatasync" => libc::fdatasync(fd) as isize,
            other => panic!("no such disk syscall here: {other}"),
        }
    };
    assert!(rc >= 0, "{syscall}: {}", std::io::Error::last_os_error());
}

/// The device thread may read, write and flush disk images only in a VM with a disk: in
/// one without, each of pread64, pwrite64 and fdatasync traps (the process ends with the
/// SIGSYS line naming it), and with a disk each runs. Each case in a child process, since
/// a filter is for life.
#[test]
fn the_device_filter_allows_disk_io_only_with_a_disk() {
    if let Ok(mode) = std::env::var(DISK_CHILD) {
        disk_io_child(&mode);
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    for (syscall, nr) in [
        ("pread64", libc::SYS_pread64),
        ("pwrite64", libc::SYS_pwrite64),
        ("fdatasync", libc::SYS_fdatasync),
    ] {
        for with in ["with", "without"] {
            let out = Command::new(&exe)
                .args([
                    "--exact",
                    "the_device_filter_allows_disk_io_only_with_a_disk",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(DISK_CHILD, format!("{with}:{syscall}"))
                .stdin(Stdio::null())
                .output()
                .expect("the test binary runs");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let trapped = format!("made syscall {nr}, which its filter does not allow");
            if with == "with" {
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{syscall} with a disk: {stderr}"
                );
                assert!(
                    !stderr.contains(&trapped),
                    "{syscall} with a disk: {stderr}"
                );
            } else {
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{syscall} without a disk was allowed: {stderr}"
                );
                assert!(
                    stderr.contains(&trapped),
                    "{syscall} without a disk: {stderr}"
                );
            }
        }
    }
}
