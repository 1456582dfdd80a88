//! The lab scenarios' shell prelude (tests/common/prelude.sh) on this host's /bin/sh: which
//! endings of a guest `lab_fault` calls a fault of the emulated lab and which it leaves as
//! failures, that `lab_try` runs a case once more after the first kind only, and that
//! `lab_run` boots a guest the way `lab_try` judges it. A rerun must never hide netvmm's
//! own failure.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A name of its own for one check's /tmp/NAME.err and /tmp/NAME.log: the tests run in
/// parallel threads.
fn unique_case() -> String {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    format!("netvmm-prelude-{}-{call}", std::process::id())
}

/// Runs `script` after the prelude on /bin/sh, then removes `case`'s files.
fn sh(case: &str, script: &str) -> std::process::Output {
    let out = Command::new("/bin/sh")
        .args(["-c", &format!("{}\n{script}", common::PRELUDE)])
        .output()
        .expect("/bin/sh runs");
    for ext in ["err", "log"] {
        let _ = std::fs::remove_file(format!("/tmp/{case}.{ext}"));
    }
    out
}

/// What `lab_fault STATUS ERR LOG` prints for a netvmm stderr `err` and a guest console
/// `log`.
fn lab_fault(status: u32, err: &str, log: &str) -> String {
    let case = unique_case();
    let (e, l) = (format!("/tmp/{case}.err"), format!("/tmp/{case}.log"));
    std::fs::write(&e, err).expect("write the stderr");
    std::fs::write(&l, log).expect("write the console");
    let out = sh(&case, &format!("lab_fault {status} {e} {l}"));
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

/// Runs `lab_try` on a command whose tries end as `endings` say, one per try: (status,
/// netvmm's stderr). Returns what the scenario printed and `s=$s try=$try` after it.
fn lab_try(endings: &[(u32, &str)]) -> (String, String) {
    let case = unique_case();
    // Try N of the command writes ending N's stderr and a clean console, and exits with
    // ending N's status.
    let mut tries = String::from("n=0\nguest() {\n  n=$((n + 1))\n  case $n in\n");
    for (i, (status, err)) in endings.iter().enumerate() {
        tries.push_str(&format!(
            "  {}) printf '%s' '{err}' > /tmp/{case}.err; printf '%s' '{BOOTED}' > /tmp/{case}.log; return {status} ;;\n",
            i + 1
        ));
    }
    tries.push_str("  esac\n  return 99\n}\n");
    let out = sh(
        &case,
        &format!("{tries}lab_try {case} guest\necho \"s=$s try=$try\"\n"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = stdout.lines().last().unwrap_or_default().to_string();
    (stdout, last)
}

#[test]
fn lab_try_runs_a_case_once_more_after_a_fault_of_the_lab_only() {
    let (out, end) = lab_try(&[(3, TRIPLE), (0, "")]);
    assert_eq!(end, "s=0 try=2", "{out}");
    let reruns: Vec<&str> = out.lines().filter(|l| l.starts_with("rerun=")).collect();
    assert_eq!(reruns.len(), 1, "{out}");
    assert!(reruns[0].contains(" why=silent-triple-fault "), "{out}");

    // netvmm's own failure: no second try.
    let (out, end) = lab_try(&[(1, "netvmm: eth0: cannot open /dev/net/tun\n"), (0, "")]);
    assert_eq!(end, "s=1 try=1", "{out}");
    assert!(!out.contains("rerun="), "{out}");
    // The failed try's stderr is shown.
    assert!(out.contains("cannot open /dev/net/tun"), "{out}");

    // Two faults in a row: two tries in all, and the second one's ending stands.
    let (out, end) = lab_try(&[(3, TRIPLE), (3, TRIPLE), (0, "")]);
    assert_eq!(end, "s=3 try=2", "{out}");
}

#[test]
fn lab_run_boots_one_guest_with_its_report_where_lab_try_looks() {
    let case = unique_case();
    // A stand-in netvmm: its first call triple-faults, its second boots; each shows
    // what it was given, with the report switch, on stderr and the console.
    let script = format!(
        "n=0\nnetvmm() {{\n  n=$((n + 1))\n  echo \"args=$* report=$NETVMM_BOOT_REPORT\" >&2\n  \
         while [ $# -gt 0 ]; do [ \"$1\" = --serial-log ] && printf '%s' '{BOOTED}' > \"$2\"; shift; done\n  \
         echo noise\n  [ $n = 1 ] && {{ printf '%s' '{TRIPLE}' >&2; return 3; }}\n  return 0\n}}\n\
         lab_run {case} --kernel k --net tap\necho \"s=$s try=$try\"\ncat /tmp/{case}.err\n"
    );
    let out = sh(&case, &script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reruns = stdout.lines().filter(|l| l.starts_with("rerun=")).count();
    assert_eq!(reruns, 1, "{stdout}");
    assert!(stdout.contains("s=0 try=2"), "{stdout}");
    // The second try's stderr, in the file lab_try read.
    assert!(
        stdout.contains(&format!(
            "args=run --kernel k --net tap --serial-log /tmp/{case}.log report=1"
        )),
        "{stdout}"
    );
    // The guest's own output (netvmm's stdout) is not the scenario's.
    assert!(!stdout.contains("noise"), "{stdout}");
}
