//! The Debian root filesystem image (`netvmm image path rootfs`, built on first use: about
//! a minute with mmdebstrap): a clean ext4 filesystem holding systemd as /sbin/init, the
//! tools the tests use, and netvmm's unit and programs. No VM: debugfs reads the image.

mod common;

use std::process::Command;

fn rootfs() -> String {
    let out = common::netvmm(&["image", "path", "rootfs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// debugfs's answer to one request (read-only: -c opens the image in catastrophic mode,
/// without its bitmaps, which is all a read needs).
fn debugfs(image: &str, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-c", "-R", request, image])
        .output()
        .expect("debugfs (e2fsprogs) runs");
    assert!(out.status.success(), "debugfs -R {request:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rootfs_image_is_clean_ext4_with_systemd_and_netvmms_unit() {
    let image = rootfs();
    let fsck = Command::new("e2fsck")
        .args(["-fn", &image])
        .output()
        .expect("e2fsck runs");
    assert!(fsck.status.success(), "e2fsck -fn {image}: {fsck:?}");

    // /sbin is /usr/sbin on Debian 12 (merged /usr); init is systemd.
    assert_eq!(
        debugfs(&image, "cat /usr/sbin/init"),
        "",
        "a symlink reads as nothing"
    );
    let init = debugfs(&image, "stat /usr/sbin/init");
    assert!(init.contains("Type: symlink"), "{init}");
    assert!(init.contains("/lib/systemd/systemd"), "{init}");
    for path in [
        "/usr/lib/systemd/systemd",
        "/usr/bin/iperf3",
        "/usr/bin/ping",
        "/usr/bin/ip",
        "/usr/local/sbin/netvmm-guest",
        "/usr/local/sbin/netvmm-exit",
    ] {
        let st = debugfs(&image, &format!("stat {path}"));
        assert!(st.contains("Type: regular"), "{path}: {st}");
        assert!(st.contains("User:     0"), "{path} not root's: {st}");
    }

    let unit = debugfs(&image, "cat /etc/systemd/system/netvmm-run.service");
    assert!(
        unit.contains("ExecStart=/usr/local/sbin/netvmm-guest"),
        "{unit}"
    );
    let wants = debugfs(&image, "ls /etc/systemd/system/multi-user.target.wants");
    assert!(wants.contains("netvmm-run.service"), "{wants}");
    let default = debugfs(&image, "stat /etc/systemd/system/default.target");
    assert!(default.contains("multi-user.target"), "{default}");
    // Masked: it needs autofs4, which the rootfs has no module for.
    let binfmt = debugfs(
        &image,
        "stat /etc/systemd/system/proc-sys-fs-binfmt_misc.automount",
    );
    assert!(binfmt.contains("/dev/null"), "{binfmt}");
    // The console login: root has no password.
    let shadow = debugfs(&image, "cat /etc/shadow");
    assert!(shadow.lines().any(|l| l.starts_with("root::")), "{shadow}");
}

/// The rootfs's netvmm-guest reads the kernel command line as guest-init does: the words
/// `netvmm run -- CMD` writes (netvmm.run64=) come out as the same command. Checked on this
/// host, with the script taken out of the image and a command line from a file.
#[test]
fn rootfs_guest_script_decodes_netvmm_run64_like_guest_init() {
    let image = rootfs();
    let dir = std::env::temp_dir().join(format!("netvmm-rootfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("netvmm-guest");
    debugfs(
        &image,
        &format!("dump /usr/local/sbin/netvmm-guest {}", script.display()),
    );
    // What `netvmm run --cmdline "..." -- sh -c 'echo "two words"; exit 5'` gives the kernel.
    let argv: Vec<String> = ["sh", "-c", r#"echo "two words" $HOME; exit 5"#]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cmdline = format!(
        "console=ttyS0 root=/dev/vda netvmm.ip=192.0.2.2/24 netvmm.gw=192.0.2.1 netvmm.iface=eth1 {}",
        netvmm_cmdline_tail(&argv)
    );
    let cmdline_file = dir.join("cmdline");
    std::fs::write(&cmdline_file, &cmdline).unwrap();
    let out = Command::new("sh")
        .arg(&script)
        .env("NETVMM_GUEST_CMDLINE", &cmdline_file)
        .env("NETVMM_GUEST_PRINT_ONLY", "1")
        .output()
        .expect("sh runs");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("ip=192.0.2.2/24 iface=eth1 gw=192.0.2.1 hostname= exit=poweroff"),
        "{text}"
    );
    let run = text
        .split_once("run=")
        .map(|(_, r)| r.trim_end())
        .unwrap_or("");
    // Each word single-quoted, so `$HOME` reaches the guest's sh -c untouched.
    assert_eq!(
        run, r#"'sh' '-c' 'echo "two words" $HOME; exit 5'"#,
        "{text}"
    );
    // And that command, run the way the script runs it, gives the words and the status.
    let ran = Command::new("sh")
        .args(["-c", run])
        .env("HOME", "/root")
        .output()
        .expect("sh runs");
    assert_eq!(ran.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "two words /root\n");
}

/// The `netvmm.run64=` word netvmm writes for `argv` (cli/src/guest_command.rs: the
/// words quoted with the lab's shell_quote, base64).
fn netvmm_cmdline_tail(argv: &[String]) -> String {
    use base64::Engine;
    let words: Vec<String> = argv.iter().map(|a| lab::runner::shell_quote(a)).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(words.join(" "));
    format!("netvmm.run64={encoded}")
}
