//! Bad input ends with status 1 and exactly one line on stderr naming the cause; never a
//! panic. These run on the host itself (no lab needed).

mod common;

use common::netvmm;

fn one_line_error(args: &[&str], must_contain: &[&str]) {
    let out = netvmm(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("netvmm: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for m in must_contain {
        assert!(stderr.contains(m), "{args:?}: {stderr:?} lacks {m:?}");
    }
}

#[test]
fn missing_kernel_is_one_line() {
    one_line_error(
        &["run", "--kernel", "/nonexistent/vmlinuz"],
        &["/nonexistent/vmlinuz", "does not exist"],
    );
}

#[test]
fn missing_initrd_is_one_line() {
    one_line_error(
        &[
            "run",
            "--kernel",
            "/proc/self/exe",
            "--initrd",
            "/no/initrd",
        ],
        &["/no/initrd"],
    );
}

#[test]
fn a_kernel_or_initrd_that_is_no_file_is_named_so() {
    one_line_error(&["run", "--kernel", "/"], &["kernel / is a directory"]);
    one_line_error(
        &["run", "--kernel", "/dev/null"],
        &["kernel /dev/null is not a regular file"],
    );
    one_line_error(
        &["run", "--kernel", "/proc/self/exe", "--initrd", "/"],
        &["initrd / is a directory"],
    );
}

#[test]
fn a_mac_no_nic_may_have_is_refused() {
    let net = |mac: &'static str| ["run", "--kernel", "/k", "--net", mac];
    one_line_error(&net("tap,mac=00:00:00:00:00:00"), &["all zeros"]);
    one_line_error(
        &net("tap,mac=+2:+4:00:00:00:01"),
        &["+2:+4:00:00:00:01", "malformed"],
    );
    one_line_error(&net("tap,mac=ff:ff:ff:ff:ff:ff"), &["multicast"]);
}

#[test]
fn an_interface_name_with_a_control_character_is_refused() {
    one_line_error(
        &["run", "--kernel", "/k", "--net", "tap=a\u{1}b"],
        &["contains a control character", "a\\u{1}b"],
    );
    // A newline in the name still gives one line.
    one_line_error(
        &["run", "--kernel", "/k", "--net", "bridge=br\n0"],
        &["control character"],
    );
}

#[test]
fn a_missing_subcommand_shows_the_subcommands() {
    for (args, subcommands) in [
        (
            &[][..],
            &["run", "doctor", "cleanup", "image", "lab", "compare"][..],
        ),
        (&["image"][..], &["build", "path"][..]),
        (&["lab"][..], &["run", "exec", "build"][..]),
    ] {
        let out = netvmm(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("Usage:"), "{args:?}: {stderr}");
        for s in subcommands {
            assert!(
                stderr.lines().any(|l| l.trim_start().starts_with(s)),
                "{args:?}: {stderr} lacks the subcommand {s}"
            );
        }
        // compare's internal scenario subcommand is not offered.
        assert!(!stderr.contains("__compare"), "{args:?}: {stderr}");
    }
}

#[test]
fn bad_values_name_their_flag() {
    one_line_error(
        &["run", "--kernel", "/k", "--memory", "-5"],
        &["--memory", "-5"],
    );
    one_line_error(
        &["run", "--kernel", "/k", "--timeout", "1e-12"],
        &["--timeout", "shortest timeout"],
    );
}

#[test]
fn bad_arguments_are_one_line() {
    one_line_error(&["run"], &["--kernel"]);
    one_line_error(
        &["run", "--kernel", "/k", "--memory", "lots"],
        &["--memory"],
    );
    one_line_error(
        &["run", "--kernel", "/k", "--memory", "1"],
        &["--memory 1 MiB"],
    );
    one_line_error(&["run", "--kernel", "/k", "--cpus", "0"], &["--cpus 0"]);
    one_line_error(
        &["run", "--kernel", "/k", "--timeout", "soon"],
        &["--timeout"],
    );
    one_line_error(&["frobnicate"], &["frobnicate"]);
}

#[test]
fn one_fd_for_two_nics_is_one_line() {
    let run = ["run", "--kernel", "/proc/self/exe"];
    let args = |extra: &[&'static str]| [&run[..], extra].concat();
    one_line_error(
        &args(&["--net", "fd=9", "--net", "fd=9"]),
        &["fd=9 is given twice"],
    );
    // The lowest descriptor this process has not open is not open in the child either
    // (which may inherit more than 0-2, say a CI runner's lock file): it would be the tap
    // netvmm opens for `--net tap`.
    let free = (3..)
        .find(|fd| !std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists())
        .unwrap();
    let fd = format!("fd={free}");
    one_line_error(
        &[
            "run",
            "--kernel",
            "/proc/self/exe",
            "--net",
            "tap",
            "--net",
            &fd,
        ],
        &[&fd, "no such open file descriptor"],
    );
    one_line_error(&args(&["--net", "fd=0"]), &["fd=0 is netvmm's stdin"]);
}

#[test]
fn unbootable_kvm_or_kernel_is_one_line() {
    // On a PVM host this is the PVM refusal; on a hardware host, a file that is no kernel.
    let dir = std::env::temp_dir().join(format!("netvmm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("not-a-kernel");
    std::fs::write(&fake, vec![0u8; 4096]).unwrap();
    let out = netvmm(&["run", "--kernel", fake.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    if pvm {
        assert!(stderr.contains("PVM") && stderr.contains("lab"), "{stderr}");
    } else {
        assert!(
            stderr.contains("not-a-kernel") || stderr.contains("/dev/kvm"),
            "{stderr}"
        );
    }
}

#[test]
fn doctor_names_the_kvm_kind() {
    let out = netvmm(&["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    let kvm = stdout.lines().find(|l| l.starts_with("kvm:")).unwrap();
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(kvm.contains("PVM"), "{kvm}");
    }
    assert!(stdout.contains("verdict:"));
    // The tun module is never "not found" while /dev/net/tun works.
    let tun = stdout.lines().find(|l| l.starts_with("tun:")).unwrap();
    let module = stdout
        .lines()
        .find(|l| l.contains("module:     tun "))
        .unwrap();
    if tun.ends_with("usable") {
        assert!(!module.contains("not found"), "{tun} but {module}");
    }
}

/// A guest command too long for the kernel's command line is refused, never cut short.
/// It gets as far as writing the command line, which needs a /dev/kvm (PVM is enough:
/// nothing runs) and the guest kernel.
#[test]
fn a_guest_command_too_long_for_the_kernel_is_refused() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipping: no /dev/kvm here");
        return;
    }
    let kernel = netvmm(&["image", "path", "kernel"]);
    assert!(kernel.status.success(), "{kernel:?}");
    let kernel = String::from_utf8_lossy(&kernel.stdout).trim().to_string();
    let long = format!("echo {}", "x".repeat(1600));
    let out = std::process::Command::new(common::NETVMM)
        .args(["run", "--kernel", &kernel, "--", "sh", "-c", &long])
        .env("NETVMM_ALLOW_PVM", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("keeps at most 2047"), "{stderr}");
    assert!(stderr.contains("cut short"), "{stderr}");
}
