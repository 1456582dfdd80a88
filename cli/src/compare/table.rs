//! The terminal table: backends as rows, figures as columns, reachability as check marks.

use super::report::{Outcome, Rtt};

/// The longest row name, "macvtap-bridge+host+vhost", and a space.
const ROW_NAME: usize = 26;

/// Column widths and headers (second header row); the first row names groups of columns.
const COLUMNS: [(&str, usize); 16] = [
    ("backend", ROW_NAME),
    ("ms", 6),
    ("avg", 6),
    ("p99", 6),
    ("avg", 6),
    ("p99", 6),
    ("g>LAN", 6),
    ("LAN>g", 6),
    ("g>host", 6),
    ("host>g", 6),
    ("ms/GB", 8),
    ("g>h", 3),
    ("h>g", 3),
    ("g>L", 3),
    ("L>g", 3),
    ("g>g", 3),
];
/// (label, first column, number of columns)
const GROUPS: [(&str, usize, usize); 6] = [
    ("boot", 1, 1),
    ("RTT g>host", 2, 2),
    ("RTT g>LAN", 4, 2),
    ("throughput Mbit/s", 6, 4),
    ("VMM CPU", 10, 1),
    ("reachability", 11, 5),
];

pub const YES: &str = "✓";
pub const NO: &str = "✗";
const NONE: &str = "-";

fn num(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| NONE.into())
}

pub fn mark(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => YES,
        Some(false) => NO,
        None => NONE,
    }
}

fn rtt_cells(r: &Option<Rtt>) -> [String; 2] {
    let d = |x: f64| if x < 10.0 { 2 } else { 1 };
    match r {
        Some(r) => [num(Some(r.avg), d(r.avg)), num(Some(r.p99), d(r.p99))],
        None => [NONE.into(), NONE.into()],
    }
}

fn row(cells: &[String]) -> String {
    let mut s = String::new();
    for (i, (c, (_, w))) in cells.iter().zip(COLUMNS).enumerate() {
        if i == 0 {
            s.push_str(&format!("{c:<w$}"));
        } else {
            if i >= 11 {
                // Check marks sit centred under their three-letter headers.
                let w = w + 1;
                s.push_str(&format!(" {c:^w$}"));
            } else {
                s.push_str(&format!(" {c:>w$}"));
            }
        }
    }
    s.trim_end().to_string()
}

fn group_row() -> String {
    let widths: Vec<usize> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (_, w))| if i >= 11 { w + 2 } else { w + 1 })
        .collect();
    let mut s = " ".repeat(COLUMNS[0].1);
    for (label, first, n) in GROUPS {
        let span: usize = widths[first..first + n].iter().sum();
        s.push_str(&format!("{:>span$}", label));
    }
    s.trim_end().to_string()
}

/// The table, one line per backend (a skipped one says why instead of figures).
pub fn table(outcomes: &[Outcome]) -> String {
    let mut lines = vec![group_row(), row(&COLUMNS.map(|(h, _)| h.to_string()))];
    for o in outcomes {
        if let Some(why) = &o.skipped {
            lines.push(format!("{:<ROW_NAME$} skipped: {why}", o.label()));
            continue;
        }
        let [ha, hp] = rtt_cells(&o.rtt_ms.guest_to_host);
        let [la, lp] = rtt_cells(&o.rtt_ms.guest_to_lan);
        let mut cells = vec![o.label().to_string(), num(o.boot_ms, 0), ha, hp, la, lp];
        cells.extend(o.throughput_mbps.values().map(|t| num(t, 0)));
        cells.push(num(o.vmm_cpu_ms_per_gb, 0));
        cells.extend(o.reachability.values().map(|r| mark(r).to_string()));
        lines.push(row(&cells));
    }
    lines.join("\n") + "\n"
}

/// What the columns mean, and which lab the figures come from.
pub fn legend(lab_line: &str, transport: &str) -> String {
    let nic = format!(
        "NIC: virtio-net on virtio-{transport} in every guest (--transport), the same for every row."
    );
    [
        lab_line,
        &nic,
        "boot: from netvmm's start to the guest's first ping reply from the LAN peer.",
        "RTT: 20 pings, 0.2 s apart, after a warm-up ping; p99 is the nearest-rank 99th percentile, which for 20 samples is the largest.",
        "throughput: iperf3 TCP, one stream; g = the guest, h = the host, L = the LAN peer (another host, behind the NIC).",
        "VMM CPU: user+system time of the measured guest's netvmm process (all threads, vCPUs included) during the iperf3 runs, per 10^9 bytes moved.",
        "reachability: ✓ a ping got replies, ✗ it got none, - not observed.",
    ]
    .join("\n")
        + "\n"
}

/// The reasons behind every missing figure and other facts, per backend.
pub fn notes(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    for o in outcomes.iter().filter(|o| !o.notes.is_empty()) {
        s.push_str(&format!("{}:\n", o.label()));
        for n in &o.notes {
            s.push_str(&format!("  {n}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::backend::Backend;

    #[test]
    fn rows_line_up_with_marks_and_dashes() {
        let mut a = Outcome::new(Backend::Tap);
        a.boot_ms = Some(2250.4);
        a.rtt_ms.guest_to_host = Some(Rtt {
            avg: 0.456,
            p99: 12.5,
        });
        a.throughput_mbps = [Some(300.4), None, Some(1234.0), Some(99.0)].into();
        a.vmm_cpu_ms_per_gb = Some(8765.4);
        a.reachability = [Some(true), Some(false), Some(true), None, Some(true)].into();
        let mut b = Outcome::new(Backend::MacvtapBridgeHost);
        b.datapath = crate::compare::backend::Datapath::Vhost;
        b.skipped = Some("lanA is busy".into());
        let t = table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[0].contains("boot") && lines[0].contains("reachability"),
            "{t}"
        );
        assert!(lines[1].starts_with("backend"), "{t}");
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "tap", "2250", "0.46", "12.5", "-", "-", "300", "-", "1234", "99", "8765", YES, NO,
                YES, "-", YES
            ],
            "{t}"
        );
        assert_eq!(lines[3], "macvtap-bridge+host+vhost  skipped: lanA is busy");
        // Every figure ends where its header ends.
        let width = |s: &str| s.chars().count();
        // The last mark sits under the '>' of "g>g".
        let gt = lines[1][..lines[1].rfind("g>g").unwrap() + 1]
            .chars()
            .count();
        let m = lines[2][..lines[2].rfind(YES).unwrap()].chars().count();
        assert_eq!(gt, m, "{t}");
        assert_eq!(width(lines[1]), width(lines[2]) + 1, "{t}");
        let header_end = lines[1].find("ms/GB").unwrap() + "ms/GB".len();
        let value_end = lines[2].find("8765").unwrap() + 4;
        assert_eq!(
            lines[1][..header_end].chars().count(),
            lines[2][..value_end].chars().count(),
            "{t}"
        );
    }

    #[test]
    fn notes_are_listed_per_backend() {
        let mut a = Outcome::new(Backend::MacvtapBridge);
        a.notes.push("throughput guest_to_host: no path".into());
        let b = Outcome::new(Backend::Bridge);
        assert_eq!(
            notes(&[a, b]),
            "macvtap-bridge:\n  throughput guest_to_host: no path\n"
        );
        let l = legend("lab: emulated", "pci");
        assert!(
            l.starts_with("lab: emulated\nNIC: virtio-net on virtio-pci "),
            "{l}"
        );
    }
}
