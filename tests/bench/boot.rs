//! Boot benchmark (prints numbers; asserts nothing about speed): netvmm start to the guest's
//! ready line, split into VMM setup (until the first KVM_RUN) and guest boot, plus the
//! VMM's own resident memory beside the guest RAM. Runs in the emulated lab host, so the
//! guest-boot figures are emulation-bound; the setup CPU time and RSS are the VMM's own.
//!
//! `cargo bench -p netvmm --bench boot` (NETVMM_BENCH_RUNS sets the number of boots, default 5).

use std::process::Command;

fn main() {
    let runs: usize = std::env::var("NETVMM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let script = format!(
        "export NETVMM_BOOT_REPORT=1\nfor i in $(seq {runs}); do\n  netvmm run --kernel $NETVMM_GUEST_KERNEL --initrd $NETVMM_GUEST_INITRD --memory 256 --timeout 300 --cmdline 'quiet netvmm.run=true' >/dev/null\ndone\n"
    );
    let dir = std::env::temp_dir().join(format!("netvmm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bench.sh");
    std::fs::write(&path, script).expect("write scenario");
    let out = Command::new(env!("CARGO_BIN_EXE_netvmm"))
        .args(["lab", "exec", "--timeout", "1800"])
        .arg(&path)
        .output()
        .expect("netvmm lab exec");
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let reports: Vec<Vec<(String, f64)>> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("netvmm-report:"))
        .map(|r| {
            r.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect()
        })
        .collect();
    if reports.is_empty() {
        eprintln!("no boot reports came back; lab output:\n{text}");
        std::process::exit(1);
    }
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
    println!(
        "netvmm boot benchmark: {} boots in the emulated lab host",
        reports.len()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "figure", "min", "median", "max"
    );
    for key in [
        "setup_ms",
        "setup_cpu_ms",
        "guest_boot_ms",
        "total_to_ready_ms",
        "vmm_rss_kib",
        "guest_ram_mib",
    ] {
        let (lo, mid, hi) = stat(key);
        let f = |x: Option<f64>| x.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
        println!("{key:<22} {:>10} {:>10} {:>10}", f(lo), f(mid), f(hi));
    }
    println!("(Firecracker's published targets: 8 ms VMM start-up CPU time, < 5 MiB VMM memory overhead)");
}
