//! The lab scenarios' shell prelude (tests/common/prelude.sh) on this host's /bin/sh: which
//! endings of a guest `lab_fault` calls a fault of the emulated lab (the case runs once
//! more) and which it leaves as failures. A rerun must never hide netvmm's own.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// What `lab_fault STATUS ERR LOG` prints for a netvmm stderr `err` and a guest console
/// `log`.
fn lab_fault(status: u32, err: &str, log: &str) -> String {
    // Tests run in parallel threads: a directory per call.
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("netvmm-prelude-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let (e, l) = (dir.join("g.err"), dir.join("g.log"));
    std::fs::write(&e, err).expect("write the stderr");
    std::fs::write(&l, log).expect("write the console");
    let script = format!(
        "{}\nlab_fault {status} {} {}",
        common::PRELUDE,
        e.display(),
        l.display()
    );
    let out = Command::new("/bin/sh")
        .args(["-c", &script])
        .output()
        .expect("/bin/sh runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "lab_fault failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const TRIPLE: &str = "netvmm: the guest crashed: vCPU 0 triple-faulted (RIP 0xffffffff81000000)\n";
const BOOTED: &str =
    "[    0.000000] Linux version 6.1.0\n[    1.2] virtio_net virtio0 eth0: ready\n";

/// eth0's exit report, as netvmm prints it (vmm's nics::counters_line), shortened.
fn report(transport: &str, isr: u32) -> String {
    format!("netvmm-nic-report: eth0 datapath=user transport={transport} queues=1 rx_frames=9 tx_avail=4 isr={isr}\n")
}

#[test]
fn a_triple_fault_with_no_word_from_the_guest_kernel_is_the_labs() {
    assert_eq!(lab_fault(3, TRIPLE, BOOTED), "silent-triple-fault");
    let with_report = format!("{TRIPLE}{}", report("pci", 1));
    assert_eq!(lab_fault(3, &with_report, BOOTED), "silent-triple-fault");
}

#[test]
fn a_guest_kernel_that_said_why_it_died_is_not() {
    for said in [
        "Kernel panic - not syncing: x",
        "Oops: 0000 [#1]",
        "BUG: unable to handle",
    ] {
        let log = format!("{BOOTED}[    2.0] {said}\n");
        assert_eq!(lab_fault(3, TRIPLE, &log), "", "{said}");
    }
    // Status 3 for a panic netvmm saw, with no triple fault.
    assert_eq!(
        lab_fault(3, "netvmm: the guest kernel panicked\n", BOOTED),
        ""
    );
}

#[test]
fn a_timeout_with_an_interrupt_pending_is_the_labs_on_virtio_mmio_only() {
    assert_eq!(
        lab_fault(124, &report("mmio", 1), BOOTED),
        "missed-interrupt"
    );
    // virtio-pci's ISR stays set under MSI-X: it says nothing.
    assert_eq!(lab_fault(124, &report("pci", 1), BOOTED), "");
    assert_eq!(lab_fault(124, &report("mmio", 0), BOOTED), "");
    // No report at all (netvmm died before it printed one).
    assert_eq!(lab_fault(124, "", BOOTED), "");
}

#[test]
fn other_endings_are_failures() {
    for status in [0, 1, 2, 101, 137] {
        let err = format!("{TRIPLE}{}", report("mmio", 1));
        assert_eq!(lab_fault(status, &err, BOOTED), "");
    }
}
