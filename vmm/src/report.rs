//! Figures for the boot benchmark: when the VMM first entered the guest, how much CPU it had
//! spent by then, and how much memory the VMM itself holds beside the guest's RAM.

use std::sync::OnceLock;
use std::time::Duration;

/// Set this variable to have `netvmm run` print one `netvmm-report:` line on stderr at exit
/// (after a `netvmm-nic-report:` line per NIC).
pub const REPORT_ENV: &str = "NETVMM_BOOT_REPORT";

static SETUP_CPU: OnceLock<Duration> = OnceLock::new();

/// CPU time (user + system) this process has used so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: rusage is plain data that getrusage fills; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Called by the boot vCPU right before its first KVM_RUN.
pub fn mark_first_run() {
    let _ = SETUP_CPU.set(process_cpu_time());
}

/// CPU time spent before the first KVM_RUN, if it happened.
pub fn setup_cpu_time() -> Option<Duration> {
    SETUP_CPU.get().copied()
}

/// Resident memory of this process outside the given host ranges (the guest RAM mappings),
/// in KiB, from /proc/self/smaps.
pub fn vmm_rss_kib(guest_ranges: &[(usize, usize)]) -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(rss_outside(&smaps, guest_ranges))
}

/// Sums the `Rss:` of every mapping in `smaps` that is not inside one of `excluded`.
pub fn rss_outside(smaps: &str, excluded: &[(usize, usize)]) -> u64 {
    let mut total = 0;
    let mut skip = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _)) = first.split_once('-') {
            if let Ok(start) = usize::from_str_radix(start, 16) {
                skip = excluded
                    .iter()
                    .any(|(base, len)| start >= *base && start < base + len);
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("Rss:") {
            if !skip {
                total += rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_mappings_are_excluded_from_vmm_rss() {
        let smaps = "\
1000-2000 r-xp 00000000 00:00 0 /bin/netvmm
Rss:                 100 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Rss:               65536 kB
7f0020000000-7f0020001000 rw-p 00000000 00:00 0
Rss:                   4 kB
";
        assert_eq!(rss_outside(smaps, &[]), 65640);
        assert_eq!(rss_outside(smaps, &[(0x7f00_0000_0000, 0x1000_0000)]), 104);
    }

    #[test]
    fn cpu_time_moves_forward() {
        let a = process_cpu_time();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(process_cpu_time() >= a);
    }
}
