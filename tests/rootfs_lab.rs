//! The Debian root filesystem image (`netvmm image path rootfs`) booted through netvmm's
//! initramfs with `root=/dev/vda`, in the emulated lab host; and what that initramfs does
//! when the root device never appears.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// `root=` without a disk: guest-init says so in one line and ends the VM with status 125
/// through the exit device within seconds, rather than hanging until the timeout or passing
/// as a clean power-off.
#[test]
fn a_root_device_that_never_appears_fails_the_boot_at_once() {
    let out = common::lab(
        r#"
G="--kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD"
start=$(date +%s)
netvmm run $G --timeout 240 --serial-log /tmp/noroot.log \
  --cmdline 'quiet root=/dev/vda netvmm.run="echo must-not-run"' >/dev/null 2>/tmp/noroot.err
s=$?; end=$(date +%s)
said=$(grep -c 'netvmm-guest: root device /dev/vda did not appear within 5 s' /tmp/noroot.log)
ran=$(tr -d '\r' < /tmp/noroot.log | grep -c '^must-not-run')
ready=$(grep -c 'netvmm-guest: ready' /tmp/noroot.log)
echo "case=noroot status=$s said=$said ran=$ran ready=$ready elapsed=$((end - start))"
"#,
        600,
    );
    let dump = out.dump();
    assert_eq!(out.status, 0, "{dump}");
    assert_eq!(
        out.field("noroot", "status").as_deref(),
        Some("125"),
        "{dump}"
    );
    assert_eq!(out.field("noroot", "said").as_deref(), Some("1"), "{dump}");
    assert_eq!(out.field("noroot", "ran").as_deref(), Some("0"), "{dump}");
    assert_eq!(out.field("noroot", "ready").as_deref(), Some("0"), "{dump}");
    // Well before --timeout 240 (which would be 124 anyway): the wait is bounded.
    let elapsed: u64 = out
        .field("noroot", "elapsed")
        .and_then(|v| v.parse().ok())
        .unwrap_or(999);
    assert!(elapsed < 200, "took {elapsed} s\n{dump}");
}

/// `netvmm image path PART`, built if needed.
fn image_path(part: &str) -> String {
    let built = common::netvmm(&["image", "path", part]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    String::from_utf8_lossy(&built.stdout).trim().to_string()
}

/// A writable copy of the rootfs image (the guest writes to its disk), sparse like it.
fn rootfs_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("rootfs.ext4");
    let out = Command::new("cp")
        .args(["--sparse=always", &image_path("rootfs")])
        .arg(&copy)
        .output()
        .expect("cp runs");
    assert!(out.status.success(), "{out:?}");
    copy
}

/// One `netvmm lab run` of the rootfs guest from `disk`: its status and console.
fn lab_boot(disk: &Path, extra: &[&str], cmdline: &str, command: &[&str]) -> (i32, String, String) {
    let log = disk.with_file_name("serial.log");
    let (kernel, initrd) = (image_path("kernel"), image_path("initrd"));
    let mut args = vec![
        "lab",
        "run",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--memory",
        "512",
        "--timeout",
        "900",
        "--disk",
        disk.to_str().unwrap(),
        "--serial-log",
        log.to_str().unwrap(),
        "--cmdline",
        cmdline,
    ];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(command);
    let out = common::netvmm_in_lab(&args);
    let console = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .replace('\r', "");
    let dump = format!(
        "status {:?}\n--- console ---\n{console}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), console, dump)
}

/// Value of `key=` on the first console line holding `marker`.
fn field(console: &str, marker: &str, key: &str) -> Option<String> {
    let line = console.lines().find(|l| l.contains(marker))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

/// The Debian rootfs boots through netvmm's initramfs to multi-user.target, runs the
/// command (status back through the exit device), reaches the host through a tap, leaves
/// what it wrote in the host's image file, and a `poweroff` inside it ends netvmm with 0.
#[test]
fn debian_rootfs_boots_to_multi_user_runs_the_command_and_reaches_the_network() {
    let dir = std::env::temp_dir().join(format!("netvmm-rootfs-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = rootfs_copy(&dir);
    let (status, console, dump) = lab_boot(
        &disk,
        &["--net", "tap,host-ip=192.0.2.1/24"],
        "quiet root=/dev/vda netvmm.ip=192.0.2.2/24",
        &[
            "sh",
            "-c",
            r#"echo "in-guest state=$(systemctl is-system-running) init=$(cat /proc/1/comm) root=$(findmnt -no SOURCE /)"
               ping -c 2 -W 3 192.0.2.1 >/dev/null; echo "in-guest ping=$?"
               iperf3 --version >/dev/null; echo "in-guest iperf3=$?"
               echo from-the-guest > /root/netvmm-marker; sync; exit 7"#,
        ],
    );
    assert_eq!(status, 7, "{dump}");
    assert!(
        console.contains("netvmm-guest: command exited with status 7"),
        "{dump}"
    );
    // Booted by the rootfs's systemd, from the disk, to a finished boot.
    let guest = |key: &str| field(&console, "in-guest state=", key);
    assert_eq!(guest("init").as_deref(), Some("systemd"), "{dump}");
    assert_eq!(guest("root").as_deref(), Some("/dev/vda"), "{dump}");
    assert_eq!(guest("state").as_deref(), Some("running"), "{dump}");
    assert_eq!(
        field(&console, "netvmm-guest: ready", "state").as_deref(),
        Some("running"),
        "{dump}"
    );
    assert_eq!(
        field(&console, "in-guest ping=", "ping").as_deref(),
        Some("0"),
        "{dump}"
    );
    assert_eq!(
        field(&console, "in-guest iperf3=", "iperf3").as_deref(),
        Some("0"),
        "{dump}"
    );
    // The write reached the host's file.
    let marker = Command::new("debugfs")
        .args(["-c", "-R", "cat /root/netvmm-marker"])
        .arg(&disk)
        .output()
        .expect("debugfs runs");
    assert_eq!(
        String::from_utf8_lossy(&marker.stdout),
        "from-the-guest\n",
        "{dump}"
    );

    // systemd's own power-off (ACPI) is a clean 0; the command never got to report.
    let (status, console, dump) = lab_boot(
        &disk,
        &[],
        "quiet root=/dev/vda",
        &["sh", "-c", "poweroff; sleep 600"],
    );
    assert_eq!(status, 0, "{dump}");
    assert!(console.contains("netvmm-guest: ready"), "{dump}");
    assert!(!console.contains("command exited"), "{dump}");
    let _ = std::fs::remove_dir_all(&dir);
}
