//! End-to-end boot tests: the real Debian guest image booted by netvmm inside the emulated
//! lab host (QEMU TCG with nested KVM), so that they run on hosts whose own KVM cannot boot
//! a stock kernel. The cloud kernel's cases share one lab boot, each case one `netvmm run`;
//! Debian's generic kernel boots in a lab of its own.

mod common;

const SCENARIO: &str = r#"
G="--kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD"
ready() { grep -a 'netvmm-guest: ready' "$1" | tr -d '\r' | sed 's/^.*netvmm-guest: ready//' | head -n 1; }

netvmm run $G --cpus 2 --memory 384 --timeout 300 --serial-log /tmp/smp.log \
  --cmdline 'netvmm.run="echo guest-says-hello; ls /sys/bus/platform/drivers/pvpanic-mmio"'
s=$?
hello=$(tr -d '\r' < /tmp/smp.log | grep -c '^guest-says-hello$')
pvpanic=$(grep -c 'QEMU0001' /tmp/smp.log)
echo "case=smp status=$s $(ready /tmp/smp.log) hello=$hello pvpanic=$pvpanic"

netvmm run $G --timeout 300 --serial-log /tmp/up.log --cmdline 'netvmm.run="true"'
s=$?; echo "case=up status=$s $(ready /tmp/up.log)"

netvmm run --kernel $NETVMM_GUEST_VMLINUX --initrd $NETVMM_GUEST_INITRD --timeout 300 \
  --serial-log /tmp/elf.log --cmdline 'netvmm.run="true"'
s=$?; echo "case=elf status=$s $(ready /tmp/elf.log)"

netvmm run $G --timeout 300 --serial-log /tmp/reboot.log --cmdline 'netvmm.run="reboot -f"'
s=$?; echo "case=reboot status=$s $(ready /tmp/reboot.log)"

netvmm run $G --timeout 300 --serial-log /tmp/panic.log \
  --cmdline 'netvmm.run="echo c > /proc/sysrq-trigger"'
s=$?; echo "case=panic status=$s $(ready /tmp/panic.log)"

printf "$TRIPLE_FAULT_ELF" > /tmp/triple.elf
netvmm run --kernel /tmp/triple.elf --timeout 60 2>/tmp/triple.err
s=$?; echo "case=triple status=$s said=$(grep -c 'vCPU 0 triple-faulted' /tmp/triple.err)"

start=$(date +%s)
netvmm run $G --timeout 60 --serial-log /tmp/timeout.log --cmdline 'netvmm.run="sleep 100000"'
s=$?; end=$(date +%s)
echo "case=timeout status=$s elapsed=$((end - start)) $(ready /tmp/timeout.log)"

# Console input from a pipe, written once the guest's shell is up (no netvmm.run: init
# starts a shell on the console).
booted() {
  n=0; until grep -aq 'netvmm-guest: ready' "$1" 2>/dev/null || [ $n -ge 200 ]; do sleep 1; n=$((n + 1)); done
  sleep 2
}
( booted /tmp/stdin.log; printf 'echo stdin-says-$((6*7))\n'; sleep 2; printf 'poweroff -f\n' ) |
  netvmm run $G --timeout 300 --serial-log /tmp/stdin.log
s=$?; echo "case=stdin status=$s said=$(tr -d '\r' < /tmp/stdin.log | grep -c '^stdin-says-42$')"

# SIGTERM to a running two-vCPU guest: both vCPUs are kicked out of the guest and joined.
netvmm run $G --cpus 2 --timeout 300 --serial-log /tmp/term.log \
  --cmdline 'netvmm.run="sleep 100000"' 2>/tmp/term.err &
p=$!; booted /tmp/term.log; kill -TERM $p; wait $p
s=$?; echo "case=term status=$s said=$(grep -c 'stopped by signal 15' /tmp/term.err) $(ready /tmp/term.log)"
"#;

/// The smallest x86-64 ELF kernel that crashes: `lidt` of an empty IDT, then `int3`. The
/// breakpoint's vector lies beyond the IDT (#GP), so does the #GP's (#DF), and the #DF's: the
/// CPU shuts down (a triple fault), as a kernel that dies before its IDT is set up would.
fn triple_fault_elf() -> Vec<u8> {
    const AT: u64 = 0x100_0000;
    const HEADERS: u64 = 64 + 56;
    // lidt [rip+1]; int3; then the 10-byte IDT descriptor (limit 0, base 0).
    let code: [u8; 18] = [
        0x0f, 0x01, 0x1d, 0x01, 0x00, 0x00, 0x00, 0xcc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let size = HEADERS + code.len() as u64;
    let mut e = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    e.extend(2u16.to_le_bytes()); // ET_EXEC
    e.extend(0x3eu16.to_le_bytes()); // EM_X86_64
    e.extend(1u32.to_le_bytes());
    e.extend((AT + HEADERS).to_le_bytes()); // entry: the code after the headers
    e.extend(64u64.to_le_bytes()); // program headers right after this header
    e.extend(0u64.to_le_bytes());
    e.extend(0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        e.extend(v.to_le_bytes());
    }
    e.extend(1u32.to_le_bytes()); // PT_LOAD
    e.extend(5u32.to_le_bytes()); // R+X
    for v in [0, AT, AT, size, size, 0x1000] {
        e.extend(v.to_le_bytes());
    }
    e.extend(code);
    e
}

#[test]
fn guest_boots_counts_cpus_and_exits_with_the_right_status() {
    // printf(1) writes the ELF inside the lab: every byte as an octal escape.
    let elf: String = triple_fault_elf()
        .iter()
        .map(|b| format!("\\{b:03o}"))
        .collect();
    let out = common::lab(&format!("TRIPLE_FAULT_ELF='{elf}'\n{SCENARIO}"), 1500);
    let dump = out.dump();
    assert_eq!(out.status, 0, "{dump}");

    // --cpus 2 --memory 384: the guest sees both CPUs (MADT) and about 384 MiB.
    assert_eq!(out.field("smp", "status").as_deref(), Some("0"), "{dump}");
    assert_eq!(out.field("smp", "cpus").as_deref(), Some("2"), "{dump}");
    let mem_kb: u64 = out
        .field("smp", "mem_kb")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        (300_000..=393_216).contains(&mem_kb),
        "MemTotal {mem_kb} kB\n{dump}"
    );
    assert_eq!(out.field("smp", "hello").as_deref(), Some("1"), "{dump}");
    // The pvpanic device from the DSDT is bound by the guest's pvpanic-mmio driver.
    assert_eq!(out.field("smp", "pvpanic").as_deref(), Some("1"), "{dump}");

    // Defaults: one CPU, 256 MiB; poweroff is status 0.
    assert_eq!(out.field("up", "status").as_deref(), Some("0"), "{dump}");
    assert_eq!(out.field("up", "cpus").as_deref(), Some("1"), "{dump}");
    let mem_kb: u64 = out
        .field("up", "mem_kb")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        (180_000..=262_144).contains(&mem_kb),
        "MemTotal {mem_kb} kB\n{dump}"
    );

    // An ELF vmlinux boots too.
    assert_eq!(out.field("elf", "status").as_deref(), Some("0"), "{dump}");
    assert!(
        out.field("elf", "cpus").is_some(),
        "ELF guest never got ready\n{dump}"
    );

    // reboot is a clean end as well.
    assert_eq!(
        out.field("reboot", "status").as_deref(),
        Some("0"),
        "{dump}"
    );
    assert!(out.field("reboot", "cpus").is_some(), "{dump}");

    // A kernel panic is status 3, after the guest had booted.
    assert!(out.field("panic", "cpus").is_some(), "{dump}");
    assert_eq!(out.field("panic", "status").as_deref(), Some("3"), "{dump}");

    // A triple fault is a crash (3), said in one line, not a clean reboot (0).
    assert_eq!(
        out.field("triple", "status").as_deref(),
        Some("3"),
        "{dump}"
    );
    assert_eq!(out.field("triple", "said").as_deref(), Some("1"), "{dump}");

    // The timeout kills a running guest with 124, and not much later than asked. 60 s, not
    // less: a loaded CI machine once took longer than 25 s to bring the nested guest up.
    assert!(out.field("timeout", "cpus").is_some(), "{dump}");
    assert_eq!(
        out.field("timeout", "status").as_deref(),
        Some("124"),
        "{dump}"
    );
    let elapsed: u64 = out
        .field("timeout", "elapsed")
        .and_then(|v| v.parse().ok())
        .unwrap_or(999);
    assert!(elapsed < 90, "timeout took {elapsed} s\n{dump}");

    // Piped stdin reaches the guest's console shell, whose poweroff ends the VM with 0.
    assert_eq!(out.field("stdin", "said").as_deref(), Some("1"), "{dump}");
    assert_eq!(out.field("stdin", "status").as_deref(), Some("0"), "{dump}");

    // SIGTERM stops a running guest at once: 128 + 15, said in one line.
    assert!(out.field("term", "cpus").is_some(), "{dump}");
    assert_eq!(
        out.field("term", "status").as_deref(),
        Some("143"),
        "{dump}"
    );
    assert_eq!(out.field("term", "said").as_deref(), Some("1"), "{dump}");
}

/// Debian's generic kernel (linux-image-amd64, the kernel of a standard install) boots too:
/// it finds both CPUs through the MADT and the virtio-mmio NIC through the DSDT, with its
/// own modules in the same initramfs, and passes traffic.
#[test]
fn debian_generic_kernel_boots_with_both_cpus_and_its_nic() {
    let built = common::netvmm(&["image", "build", "--flavour", "generic"]);
    let listing = String::from_utf8_lossy(&built.stdout).into_owned();
    assert!(
        built.status.success(),
        "{listing}{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let part = |name: &str| {
        listing
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|p| p.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {listing}"))
    };
    let (kernel, initrd) = (part("kernel"), part("initrd"));
    assert!(kernel.contains("guest-generic"), "{listing}");

    let dir = std::env::temp_dir().join(format!("netvmm-generic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("serial.log");
    let out = common::netvmm_in_lab(&[
        "lab",
        "run",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--cpus",
        "2",
        "--memory",
        "384",
        "--timeout",
        "300",
        "--net",
        "tap,host-ip=192.0.2.1/24",
        "--serial-log",
        log.to_str().unwrap(),
        "--cmdline",
        "quiet netvmm.ip=192.0.2.2/24 netvmm.run=\"echo release=\\$(uname -r); ping -c 2 -W 2 192.0.2.1\"",
    ]);
    let console = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .replace('\r', "");
    let dump = format!(
        "status {:?}\n--- console ---\n{console}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(0), "{dump}");
    let release = console
        .lines()
        .find_map(|l| l.strip_prefix("release="))
        .unwrap_or_else(|| panic!("no uname line\n{dump}"));
    assert!(
        release.ends_with("-amd64") && !release.contains("cloud"),
        "{release}\n{dump}"
    );
    let ready = console
        .lines()
        .find(|l| l.contains("netvmm-guest: ready"))
        .unwrap_or_else(|| panic!("no ready line\n{dump}"));
    assert!(ready.contains(" cpus=2 "), "{ready}\n{dump}");
    assert!(console.contains("bytes from 192.0.2.1"), "{dump}");
    assert!(
        console.contains("netvmm-guest: command exited with status 0"),
        "{dump}"
    );
}

/// A lab host whose kernel reports a netvmm task stuck is stopped with one line, and the
/// report's backtrace reaches the console first (lab-init copies it from the kernel log,
/// which the quiet lab console would not show). The report here is written to /dev/kmsg at
/// warning level, below the console's loglevel, so only that copy can bring it out.
#[test]
fn a_hung_lab_host_is_stopped_and_says_where_it_hung() {
    let out = common::lab_once(
        r#"
echo '<4>watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [netvmm:190]' > /dev/kmsg
echo '<4>Call Trace: test_frame_one+0x1/0x2' > /dev/kmsg
echo '<4>RIP: 0010:test_frame_two+0x3/0x4' > /dev/kmsg
sleep 120
echo case=hang finished=yes
"#,
        150,
        &[],
    );
    let dump = out.dump();
    assert_ne!(out.status, 0, "{dump}");
    assert!(
        out.stderr.contains(common::LAB_HOST_HUNG) && out.stderr.contains("[netvmm:190]"),
        "{dump}"
    );
    for frame in ["Call Trace: test_frame_one", "RIP: 0010:test_frame_two"] {
        assert!(
            out.stdout.contains(&format!("netvmm-lab: kernel: {frame}")),
            "{frame}\n{dump}"
        );
    }
    // Where the lab host's CPUs were, from QEMU's monitor.
    assert!(
        out.stderr.contains("the hung lab host's CPUs: CPU#0 RIP=")
            && out.stderr.contains("; CPU#1 RIP="),
        "{dump}"
    );
    // Stopped when the hang was seen, not when the scenario ended.
    assert_eq!(out.field("hang", "finished"), None, "{dump}");
}

/// A lab host that falls silent as a whole (both CPUs stuck: nothing inside it can report
/// that) is stopped once its heartbeat stops. Stopping the heartbeat job stands in for it.
#[test]
fn a_silent_lab_host_is_stopped() {
    let out = common::lab_once(
        "kill -STOP $(cat /run/netvmm-lab-heartbeat.pid)\nsleep 120\necho case=silent finished=yes\n",
        150,
        &[("NETVMM_LAB_SILENCE_S", "15")],
    );
    let dump = out.dump();
    assert_ne!(out.status, 0, "{dump}");
    assert!(
        out.stderr.contains(common::LAB_HOST_HUNG) && out.stderr.contains("no sign of life"),
        "{dump}"
    );
    assert!(
        out.stderr.contains("the hung lab host's CPUs: CPU#0 RIP="),
        "{dump}"
    );
    assert_eq!(out.field("silent", "finished"), None, "{dump}");
}

/// A lab host whose own kernel panics (QEMU ends, no status) is reported as crashed, naming
/// the panic, so that the harness runs the lab again (seen in the nested emulation:
/// "corrupted stack end detected inside scheduler"). A sysrq crash stands in for it.
#[test]
fn a_crashed_lab_host_says_its_kernel_panicked() {
    let out = common::lab_once(
        "echo c > /proc/sysrq-trigger\nsleep 30\necho case=crash finished=yes\n",
        120,
        &[],
    );
    let dump = out.dump();
    assert_ne!(out.status, 0, "{dump}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains(common::LAB_HOST_CRASHED))
        .unwrap_or_else(|| panic!("no crash line\n{dump}"));
    assert!(line.contains("Kernel panic - not syncing"), "{dump}");
    assert_eq!(out.field("crash", "finished"), None, "{dump}");
}
