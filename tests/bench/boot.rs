//! Boot benchmark (prints numbers; asserts nothing about speed): netvmm start to the guest's
//! ready line, split into VMM setup (until the first KVM_RUN) and guest boot, plus the
//! VMM's own resident memory beside the guest RAM. Runs in the emulated lab host, so the
//! guest-boot figures are emulation-bound; the setup CPU time and RSS are the VMM's own.
//!
//! A second lab run boots the Debian rootfs (`netvmm image path rootfs`, `--disk` and
//! `root=/dev/vda`): its ready line comes from netvmm-run.service once systemd has finished
//! booting, so its total_to_ready_ms is the time to multi-user.target.
//!
//! `cargo bench -p netvmm --bench boot` (NETVMM_BENCH_RUNS sets the number of boots, default 5).

use std::process::Command;

/// Parses `netvmm-report:` lines into (key, value) lists.
fn reports(text: &str) -> Vec<Vec<(String, f64)>> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("netvmm-report:"))
        .map(|r| {
            r.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect()
        })
        .collect()
}

fn print_table(title: &str, reports: &[Vec<(String, f64)>], keys: &[&str]) {
    let stat = |key: &str| {
        let mut v: Vec<f64> = reports
            .iter()
            .filter_map(|r| r.iter().find(|(k, _)| k == key).map(|(_, v)| *v))
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        (
            v.first().copied(),
            v.get(v.len() / 2).copied(),
            v.last().copied(),
        )
    };
    println!("{title}");
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "figure", "min", "median", "max"
    );
    for key in keys {
        let (lo, mid, hi) = stat(key);
        let f = |x: Option<f64>| x.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
        println!("{key:<22} {:>10} {:>10} {:>10}", f(lo), f(mid), f(hi));
    }
}

/// VMM set-up on this host's own /dev/kvm, up to the first KVM_RUN. On a PVM host the guest
/// then cannot boot (the run is cut short by --timeout), but everything netvmm does before
/// entering the guest is measured natively.
fn native_setup(runs: usize) {
    let Ok(kernel) = Command::new(env!("CARGO_BIN_EXE_netvmm"))
        .args(["image", "path", "kernel"])
        .output()
    else {
        return;
    };
    let initrd = Command::new(env!("CARGO_BIN_EXE_netvmm"))
        .args(["image", "path", "initrd"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let kernel = String::from_utf8_lossy(&kernel.stdout).trim().to_string();
    let mut text = String::new();
    for _ in 0..runs {
        let Ok(out) = Command::new(env!("CARGO_BIN_EXE_netvmm"))
            .args([
                "run",
                "--kernel",
                &kernel,
                "--initrd",
                &initrd,
                "--timeout",
                "0.5",
            ])
            .env("NETVMM_BOOT_REPORT", "1")
            .env("NETVMM_ALLOW_PVM", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .output()
        else {
            return;
        };
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let r = reports(&text);
    if r.is_empty() {
        println!("native set-up: no report (no usable /dev/kvm here?)\n{text}");
        return;
    }
    print_table(
        &format!(
            "netvmm set-up on this host's /dev/kvm, {} runs (until the first KVM_RUN)",
            r.len()
        ),
        &r,
        &["setup_ms", "setup_cpu_ms", "vmm_rss_kib", "guest_ram_mib"],
    );
    println!();
}

/// Runs `script` in the lab host with `files` carried in; the boot reports it printed.
fn lab_reports(script: &str, files: &[&str]) -> Vec<Vec<(String, f64)>> {
    let dir = std::env::temp_dir().join(format!("netvmm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bench.sh");
    std::fs::write(&path, script).expect("write scenario");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netvmm"));
    cmd.args(["lab", "exec", "--timeout", "1800"]);
    for f in files {
        cmd.args(["--file", f]);
    }
    let out = cmd.arg(&path).output().expect("netvmm lab exec");
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let reports = reports(&text);
    if reports.is_empty() {
        eprintln!("no boot reports came back; lab output:\n{text}");
        std::process::exit(1);
    }
    reports
}

/// The Debian rootfs guest, booted from its disk: time to multi-user.target.
fn rootfs_boot(runs: usize) {
    let netvmm = env!("CARGO_BIN_EXE_netvmm");
    let help = Command::new(netvmm)
        .args(["run", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !help.contains("--disk") {
        println!("rootfs guest: skipped (this netvmm has no --disk)");
        return;
    }
    let image = match Command::new(netvmm)
        .args(["image", "path", "rootfs"])
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => {
            println!("rootfs guest: skipped (netvmm image path rootfs failed)");
            return;
        }
    };
    let script = format!(
        "export NETVMM_BOOT_REPORT=1\nfor i in $(seq {runs}); do\n  netvmm run --kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD --disk /lab/files/rootfs.ext4 --memory 512 --timeout 600 --cmdline 'quiet root=/dev/vda' -- true >/dev/null\ndone\n"
    );
    let reports = lab_reports(&script, &[&image]);
    print_table(
        &format!(
            "Debian rootfs guest (systemd) in the emulated lab host, {} boots: ready = multi-user.target reached",
            reports.len()
        ),
        &reports,
        &["setup_ms", "guest_boot_ms", "total_to_ready_ms", "vmm_rss_kib"],
    );
    println!();
}

fn main() {
    let runs: usize = std::env::var("NETVMM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    native_setup(runs * 2);
    let script = format!(
        "export NETVMM_BOOT_REPORT=1\nfor i in $(seq {runs}); do\n  netvmm run --kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD --memory 256 --timeout 300 --cmdline 'quiet netvmm.run=true' >/dev/null\ndone\n"
    );
    let reports = lab_reports(&script, &[]);
    print_table(
        &format!(
            "netvmm boot in the emulated lab host, {} boots (guest figures are emulation-bound)",
            reports.len()
        ),
        &reports,
        &[
            "setup_ms",
            "setup_cpu_ms",
            "guest_boot_ms",
            "total_to_ready_ms",
            "vmm_rss_kib",
            "guest_ram_mib",
        ],
    );
    println!();
    rootfs_boot(runs);
    println!("(Firecracker's published targets: 8 ms VMM start-up CPU time, < 5 MiB VMM memory overhead)");
}
