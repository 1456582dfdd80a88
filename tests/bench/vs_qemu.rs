//! netvmm against QEMU (prints numbers; asserts nothing about speed): iperf3 throughput
//! guest->host ("up") and host->guest ("down") over a tap, and the guest's ping RTT, for the
//! same guest kernel and initrd with `-smp 1 -m 512` under
//!
//! - netvmm (virtio-net on virtio-mmio, and on virtio-pci with MSI-X: `--transport pci`),
//! - QEMU `-M pc` with virtio-net-pci (`vhost=off`, `romfile=`),
//! - QEMU `-M microvm` with virtio-net-device (virtio-mmio, `vhost=off`): the same transport
//!   as netvmm and the guest image exactly as it is,
//! - and the kernel data path: netvmm `--net tap,vhost=on` against QEMU pc's
//!   virtio-net-pci on a `vhost=on` netdev,
//! - and multiqueue: `--cpus 2` guests with two queue pairs and `iperf3 -P 2` (netvmm
//!   `queues=2` on both paths, QEMU pc `queues=2,vhost=on` with `mq=on`),
//! - and vhost=on with 2 vCPUs and one queue (`-P 2`) on virtio-mmio, netvmm against QEMU
//!   microvm: the same transport and its one interrupt line for both.
//!
//! All in one boot of the emulated lab host, which gets the host's own qemu-system-x86_64,
//! its shared libraries and the few firmware files it loads. Each round boots each VMM once,
//! odd rounds in the table's order and even rounds in reverse, so that the lab's drift over
//! a round does not always favour the rows booted first; each boot runs
//! `iperf3 -t 5` up, then down. The table shows medians over the rounds. The figures are
//! bounded by the lab's emulation: only the ratios between VMMs mean anything. A lab host
//! that hangs or crashes (a known fault of the emulation) costs only its round: the rounds
//! it finished are kept and the rest run in a second lab host, and the table says so.
//!
//! The guest image loads virtio_pci as well as virtio_mmio, so every VMM boots the image
//! exactly as it is.
//!
//! `cargo bench -p netvmm --bench vs_qemu` (NETVMM_BENCH_RUNS sets the rounds, default 3).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lab::runner::parse_ldd;
use lab::{Console, Images, LabContext, LabError, LabRun};

/// Seconds of each iperf3 measurement.
const IPERF_SECONDS: u32 = 5;
/// Lab RAM: the carried QEMU (~50 MiB), the guest image and one 512 MiB guest at a time.
const LAB_MEMORY_MIB: u64 = 3072;
/// Firmware and option ROMs QEMU 7.2 loads for `-M pc` and `-M microvm` with `-kernel`
/// (seen with strace; `romfile=` keeps the NIC's ROM out).
const QEMU_FIRMWARE: &[&str] = &[
    "bios-256k.bin",
    "kvmvapic.bin",
    "linuxboot_dma.bin",
    "bios-microvm.bin",
];
/// The VMMs, in the order each round boots them: (key in the results, label in the table).
const VMMS: &[(&str, &str)] = &[
    ("netvmm", "netvmm (virtio-mmio)"),
    ("netvmm-pci", "netvmm (virtio-pci)"),
    ("qemu-pc", "QEMU pc, virtio-net-pci"),
    ("qemu-microvm", "QEMU microvm, virtio-mmio"),
    ("netvmm-vhost", "netvmm vhost=on"),
    ("netvmm-pci-vhost", "netvmm pci vhost=on"),
    ("qemu-pc-vhost", "QEMU pc, vhost=on"),
    ("netvmm-mq", "netvmm queues=2"),
    ("netvmm-vhost-mq", "netvmm vhost=on queues=2"),
    ("netvmm-pci-vhost-mq", "netvmm pci vhost queues=2"),
    ("qemu-pc-vhost-mq", "QEMU pc, vhost=on queues=2"),
    ("netvmm-vhost-2cpu", "netvmm vhost 2 vCPUs"),
    ("qemu-microvm-vhost-2cpu", "QEMU microvm vhost 2 vCPUs"),
];

/// What starts a result line on the lab console.
const RESULT: &str = "vs_qemu-result: ";

/// Lab hosts one bench may boot: the emulated lab host has been seen to hang or crash in
/// about one of 30 guest boots, and a bench boots 8 per round; after such a fault the
/// finished rounds are kept and the rest run in a new lab host, once.
const LAB_BOOTS: u32 = 2;

/// The multiqueue rows (2 vCPUs, 2 queue pairs, -P 2), both with vhost-net.
const MQ_PAIR: (&str, &str) = ("netvmm-vhost-mq", "qemu-pc-vhost-mq");

/// Two vCPUs, one queue, -P 2, vhost=on, both on virtio-mmio (one interrupt line).
const VHOST_2CPU_PAIR: (&str, &str) = ("netvmm-vhost-2cpu", "qemu-microvm-vhost-2cpu");

/// The vhost rows: netvmm's against QEMU's, both with the kernel's vhost-net.
const VHOST_PAIR: (&str, &str) = ("netvmm-vhost", "qemu-pc-vhost");

/// The same transport as QEMU pc (virtio-pci, MSI-X): userspace, vhost, vhost with two
/// queues and two vCPUs.
const PCI_PAIRS: [((&str, &str), &str); 3] = [
    (("netvmm-pci", "qemu-pc"), "pc; netvmm on PCI"),
    (
        ("netvmm-pci-vhost", "qemu-pc-vhost"),
        "pc, vhost=on; netvmm PCI",
    ),
    (
        ("netvmm-pci-vhost-mq", "qemu-pc-vhost-mq"),
        "pc, vhost, 2q; netvmm PCI",
    ),
];

/// What the lab host runs; `FIRST` and `RUNS` (the rounds) and `T` (iperf3 seconds) come from
/// the environment. A guest prints `feat:`, `rtt:`, `up:` and `down:` lines (its virtio
/// features, busybox ping's summary, iperf3's receiver lines); the scenario tags them with
/// the VMM and round and collects them, and each VMM's exit status, in /tmp/results and on
/// the console (after [`RESULT`]).
const SCENARIO: &str = r#"
export PATH=/lab/files:$PATH
chmod 755 /lab/files/netvmm /lab/files/qemu-system-x86_64
IP=/sbin/ip
K=$NETVMM_GUEST_KERNEL
iperf3 -s -D >/dev/null 2>&1
# netvmm's exit report (its NIC's counters and ring state) lands in its stderr, which a
# boot that fails shows: what a stalled network is diagnosed from.
export NETVMM_BOOT_REPORT=1
$IP tuntap add mode tap vnet_hdr name bt1
$IP addr add 198.51.100.1/24 dev bt1
$IP link set bt1 up
# QEMU's multiqueue netdev needs a tap made multi-queue.
$IP tuntap add mode tap vnet_hdr multi_queue name bt2
$IP addr add 203.0.113.1/24 dev bt2
$IP link set bt2 up
: > /tmp/results

# The guest's command; no `$` in it, so the guest init's eval leaves it alone. The lab's
# iperf3 server can still be winding down the previous guest's test ("the server is busy"):
# each run is tried up to six times, 2 s apart.
gcmd() {
  echo "cat /sys/bus/virtio/devices/virtio*/features | sed s/^/feat:/;" \
    "ping -c 10 -i 0.2 -W 3 $1 | grep round-trip | sed s/^/rtt:/;" \
    "for i in 1 2 3 4 5 6; do iperf3 -c $1 -t $T -f m > /tmp/up 2>&1 && break; sleep 2; done;" \
    "grep receiver /tmp/up | sed s/^/up:/;" \
    "for i in 1 2 3 4 5 6; do iperf3 -c $1 -t $T -f m -R > /tmp/down 2>&1 && break; sleep 2; done;" \
    "grep receiver /tmp/down | sed s/^/down:/"
}
# The same with two streams (-P 2), keeping iperf3's [SUM] receiver lines.
gcmd_mq() {
  echo "cat /sys/bus/virtio/devices/virtio*/features | sed s/^/feat:/;" \
    "ping -c 10 -i 0.2 -W 3 $1 | grep round-trip | sed s/^/rtt:/;" \
    "for i in 1 2 3 4 5 6; do iperf3 -c $1 -t $T -P 2 -f m > /tmp/up 2>&1 && break; sleep 2; done;" \
    "grep receiver /tmp/up | grep SUM | sed s/^/up:/;" \
    "for i in 1 2 3 4 5 6; do iperf3 -c $1 -t $T -P 2 -f m -R > /tmp/down 2>&1 && break; sleep 2; done;" \
    "grep receiver /tmp/down | grep SUM | sed s/^/down:/"
}
# collect VMM ROUND STATUS LOG ERR
# Each result line also goes to the console, tagged: a lab host that dies keeps them.
collect() {
  [ -f "$4" ] || : > "$4"
  { tr -d '\r' < "$4" | grep -E '^(feat|rtt|up|down):' | sed "s/^/vmm=$1 round=$2 /"
    echo "vmm=$1 round=$2 status=$3"; } | tee -a /tmp/results | sed 's/^/vs_qemu-result: /'
  if [ "$3" != 0 ] || ! grep -q '^down:' "$4"; then
    echo "vs_qemu: $1 round $2 exited with status $3; its console and stderr:"
    tail -n 30 "$4"; tail -n 20 "$5"
  fi
}
# nv KEY WHAT CPUS GCMD NETVMM-ARGS...: boots netvmm for row KEY (WHAT in the progress
# line), its guest running GCMD (gcmd or gcmd_mq) on the host's bt0, and collects its
# figures.
nv() {
  key=$1; what=$2; cpus=$3; g=$4; shift 4
  echo "vs_qemu: round $r of $RUNS: $what"
  rm -f /tmp/n.log
  netvmm run --kernel $K --initrd $NETVMM_GUEST_INITRD --memory 512 --cpus $cpus --timeout 180 \
    --serial-log /tmp/n.log "$@" \
    --cmdline "quiet netvmm.ip=192.0.2.2/24 netvmm.run=\"$($g 192.0.2.1)\"" >/dev/null 2>/tmp/n.err
  collect $key $r $? /tmp/n.log /tmp/n.err
}
# qv KEY WHAT CPUS GCMD TAP NET NETDEV-OPTIONS QEMU-ARGS...: the same for QEMU, its netdev
# on the host's TAP (whose address is NET.1; the guest's NET.2) with NETDEV-OPTIONS.
qv() {
  key=$1; what=$2; cpus=$3; g=$4; tap=$5; net=$6; nd=$7; shift 7
  echo "vs_qemu: round $r of $RUNS: $what"
  rm -f /tmp/q.log
  timeout 180 qemu-system-x86_64 -L /lab/qemu-share -accel kvm -cpu host -m 512 -smp $cpus \
    -nodefaults -no-user-config -display none -no-reboot -serial file:/tmp/q.log \
    -netdev tap,id=n0,ifname=$tap,script=no,downscript=no,$nd -kernel $K \
    -initrd $NETVMM_GUEST_INITRD "$@" \
    -append "console=ttyS0 quiet panic=1 netvmm.ip=$net.2/24 netvmm.run=\"$($g $net.1)\"" \
    >/tmp/q.err 2>&1
  collect $key $r $? /tmp/q.log /tmp/q.err
}
PC="-M pc -device virtio-net-pci,netdev=n0,romfile="
MICROVM="-M microvm -device virtio-net-device,netdev=n0"
TAP=tap=bt0,host-ip=192.0.2.1/24

# row KEY ROUND: boots the VMM of row KEY (a key of the bench's VMMS) and collects its
# figures for round ROUND.
row() {
  r=$2
  case $1 in
  netvmm) nv $1 "netvmm" 1 gcmd --net $TAP ;;
  netvmm-pci) nv $1 "netvmm --transport pci" 1 gcmd --transport pci --net $TAP ;;
  qemu-pc) qv $1 "QEMU pc (virtio-net-pci)" 1 gcmd bt1 198.51.100 vhost=off $PC ;;
  qemu-microvm) qv $1 "QEMU microvm (virtio-mmio)" 1 gcmd bt1 198.51.100 vhost=off $MICROVM ;;
  netvmm-vhost) nv $1 "netvmm vhost=on" 1 gcmd --net $TAP,vhost=on ;;
  netvmm-pci-vhost)
    nv $1 "netvmm --transport pci, vhost=on" 1 gcmd --transport pci --net $TAP,vhost=on ;;
  qemu-pc-vhost) qv $1 "QEMU pc (virtio-net-pci), vhost=on" 1 gcmd bt1 198.51.100 vhost=on $PC ;;
  netvmm-mq)
    nv $1 "netvmm queues=2, 2 vCPUs, vhost=off" 2 gcmd_mq --net $TAP,queues=2,vhost=off ;;
  netvmm-vhost-mq)
    nv $1 "netvmm queues=2, 2 vCPUs, vhost=on" 2 gcmd_mq --net $TAP,queues=2,vhost=on ;;
  netvmm-pci-vhost-mq)
    nv $1 "netvmm --transport pci, queues=2, 2 vCPUs, vhost=on" 2 gcmd_mq \
      --transport pci --net $TAP,queues=2,vhost=on ;;
  qemu-pc-vhost-mq)
    qv $1 "QEMU pc (virtio-net-pci), vhost=on, queues=2, 2 vCPUs" 2 gcmd_mq bt2 203.0.113 \
      vhost=on,queues=2 $PC,mq=on,vectors=6 ;;
  # vhost with 2 vCPUs and one queue, on the one-interrupt transport both VMMs share
  # (virtio-mmio): what is netvmm's and what is the transport's.
  netvmm-vhost-2cpu) nv $1 "netvmm vhost=on, 2 vCPUs, 1 queue" 2 gcmd_mq --net $TAP,vhost=on ;;
  qemu-microvm-vhost-2cpu)
    qv $1 "QEMU microvm (virtio-mmio), vhost=on, 2 vCPUs" 2 gcmd_mq bt1 198.51.100 vhost=on \
      $MICROVM ;;
  *) echo "vs_qemu: no row $1"; return 1 ;;
  esac
}

for r in $(seq $FIRST $RUNS); do
  # Even rounds boot the rows in reverse: the lab's speed drifts over a round, and a fixed
  # order would hand the same rows the same share of it.
  order=$ROWS
  if [ $((r % 2)) = 0 ]; then
    order=""
    for k in $ROWS; do order="$k $order"; done
  fi
  for k in $order; do row $k $r; done
done
"#;

/// A private temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("netvmm-vs-qemu-{}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create a temporary directory");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The absolute path of `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Where QEMU looks for firmware (`-L help`), in its order.
fn qemu_data_dirs(qemu: &Path) -> Vec<PathBuf> {
    Command::new(qemu)
        .args(["-L", "help"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| PathBuf::from(l.trim()))
                .collect()
        })
        .unwrap_or_default()
}

/// Everything the lab needs to run the host's QEMU: the binary, its libraries (each at its
/// own path) and the firmware files (in /lab/qemu-share, for `-L`).
fn qemu_files() -> Result<Vec<(PathBuf, String)>, String> {
    let qemu = which("qemu-system-x86_64")
        .ok_or("qemu-system-x86_64 is not on PATH (Debian: qemu-system-x86)")?;
    let mut files = vec![(qemu.clone(), "/lab/files/qemu-system-x86_64".to_string())];
    let ldd = Command::new("ldd")
        .arg(&qemu)
        .output()
        .map_err(|e| format!("cannot run ldd on {}: {e}", qemu.display()))?;
    // LabRun already carries this program's own libraries, executable (which the dynamic
    // loader must be); carrying them again would overwrite them with mode 0644.
    let own: Vec<PathBuf> = std::env::current_exe()
        .ok()
        .and_then(|exe| Command::new("ldd").arg(exe).output().ok())
        .map(|o| parse_ldd(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    for lib in parse_ldd(&String::from_utf8_lossy(&ldd.stdout)) {
        if !own.contains(&lib) {
            let at = lib.to_string_lossy().into_owned();
            files.push((lib, at));
        }
    }
    let dirs = qemu_data_dirs(&qemu);
    for name in QEMU_FIRMWARE {
        let Some(path) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) else {
            return Err(format!("QEMU's {name} is in none of {dirs:?}"));
        };
        files.push((path, format!("/lab/qemu-share/{name}")));
    }
    Ok(files)
}

/// One figure from the results file: (vmm, round, kind, value).
type Sample = (String, u32, &'static str, f64);

/// What came back from the lab.
#[derive(Default)]
struct Results {
    samples: Vec<Sample>,
    /// (vmm, round, exit status of the VMM)
    statuses: Vec<(String, u32, i32)>,
    /// (vmm, the guest's /sys/bus/virtio/devices/*/features), first round only.
    features: Vec<(String, String)>,
}

/// The round a result line is of.
fn round_of(line: &str) -> Option<u32> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("round="))
        .and_then(|r| r.parse().ok())
}

/// Parses the scenario's result lines: `vmm=V round=R status=N` or `vmm=V round=R KIND:...`.
fn parse_results(text: &str) -> Results {
    let mut r = Results::default();
    for line in text.lines() {
        let mut words = line.splitn(3, ' ');
        let vmm = words.next().and_then(|w| w.strip_prefix("vmm="));
        let round = words
            .next()
            .and_then(|w| w.strip_prefix("round="))
            .and_then(|w| w.parse::<u32>().ok());
        let (Some(vmm), Some(round), Some(rest)) = (vmm, round, words.next()) else {
            continue;
        };
        let vmm = vmm.to_string();
        if let Some(s) = rest.strip_prefix("status=") {
            r.statuses
                .push((vmm, round, s.trim().parse().unwrap_or(-1)));
            continue;
        }
        let Some((kind, body)) = rest.split_once(':') else {
            continue;
        };
        let (kind, value) = match kind {
            "feat" => {
                if !r.features.iter().any(|(v, _)| *v == vmm) {
                    r.features.push((vmm, body.trim().to_string()));
                }
                continue;
            }
            // "round-trip min/avg/max = 0.311/0.452/0.800 ms"
            "rtt" => (
                "rtt",
                body.split_once('=')
                    .and_then(|(_, v)| v.trim().split('/').nth(1))
                    .and_then(|v| v.parse().ok()),
            ),
            // "[  5]   0.00-5.00   sec   168 MBytes   282 Mbits/sec                  receiver"
            "up" | "down" => {
                let words: Vec<&str> = body.split_whitespace().collect();
                let mbps = words
                    .iter()
                    .position(|w| *w == "Mbits/sec")
                    .and_then(|i| words.get(i.checked_sub(1)?))
                    .and_then(|v| v.parse().ok());
                (if kind == "up" { "up" } else { "down" }, mbps)
            }
            _ => continue,
        };
        if let Some(v) = value {
            r.samples.push((vmm, round, kind, v));
        }
    }
    r
}

/// Names of the virtio-net feature bits set in a sysfs `features` string ('0'/'1' per bit,
/// bit 0 first).
fn feature_names(bits: &str) -> String {
    const NAMES: &[(usize, &str)] = &[
        (0, "CSUM"),
        (1, "GUEST_CSUM"),
        (2, "CTRL_GUEST_OFFLOADS"),
        (3, "MTU"),
        (5, "MAC"),
        (6, "GSO"),
        (7, "GUEST_TSO4"),
        (8, "GUEST_TSO6"),
        (9, "GUEST_ECN"),
        (10, "GUEST_UFO"),
        (11, "HOST_TSO4"),
        (12, "HOST_TSO6"),
        (13, "HOST_ECN"),
        (14, "HOST_UFO"),
        (15, "MRG_RXBUF"),
        (16, "STATUS"),
        (17, "CTRL_VQ"),
        (18, "CTRL_RX"),
        (19, "CTRL_VLAN"),
        (20, "CTRL_RX_EXTRA"),
        (21, "GUEST_ANNOUNCE"),
        (22, "MQ"),
        (23, "CTRL_MAC_ADDR"),
        (24, "NOTIFY_ON_EMPTY"),
        (27, "ANY_LAYOUT"),
        (28, "INDIRECT_DESC"),
        (29, "EVENT_IDX"),
        (32, "VERSION_1"),
        (33, "ACCESS_PLATFORM"),
        (34, "RING_PACKED"),
        (35, "IN_ORDER"),
        (40, "RING_RESET"),
    ];
    bits.bytes()
        .enumerate()
        .filter(|(_, b)| *b == b'1')
        .map(|(i, _)| {
            NAMES
                .iter()
                .find(|(n, _)| *n == i)
                .map(|(_, name)| name.to_string())
                .unwrap_or_else(|| format!("bit{i}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn values(samples: &[Sample], vmm: &str, kind: &str) -> Vec<f64> {
    let mut v: Vec<f64> = samples
        .iter()
        .filter(|(m, _, k, _)| m == vmm && *k == kind)
        .map(|s| s.3)
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// The median (the mean of the middle two for an even count).
fn median(v: &[f64]) -> Option<f64> {
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn main() {
    if let Err(e) = bench() {
        eprintln!("vs_qemu: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<(), String> {
    let started = Instant::now();
    let runs: u32 = std::env::var("NETVMM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    // The lab's settings from the environment, its progress on stderr, as netvmm's own.
    let context = LabContext::from_vars(
        |k| std::env::var_os(k),
        std::sync::Arc::new(|p| eprintln!("netvmm-lab: {p}")),
    )
    .map_err(|e| e.to_string())?;
    // Builds the images now if they are missing, before QEMU's files are gathered.
    Images::all(&context.images).map_err(|e| e.to_string())?;
    let tmp = TempDir::new();

    let mut files = vec![(
        PathBuf::from(env!("CARGO_BIN_EXE_netvmm")),
        "/lab/files/netvmm".to_string(),
    )];
    let qemu = qemu_files()?;
    let carried: u64 = qemu
        .iter()
        .filter_map(|(p, _)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    files.extend(qemu.iter().cloned());

    eprintln!(
        "vs_qemu: carrying qemu-system-x86_64, {} of its libraries (the rest come with netvmm) and {} firmware files ({:.1} MiB) into the lab",
        qemu.len() - 1 - QEMU_FIRMWARE.len(),
        QEMU_FIRMWARE.len(),
        carried as f64 / (1024.0 * 1024.0)
    );
    let mut first = 1;
    let mut text = String::new();
    let mut faults = Vec::new();
    // The fault that ended the last lab host before every round was run.
    let mut lost = None;
    let row_keys = VMMS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(" ");
    for boot in 1..=LAB_BOOTS {
        let console = Arc::new(Mutex::new(String::new()));
        let mut run = LabRun::new(SCENARIO, context.clone());
        run.files = files.clone();
        run.env = vec![
            ("FIRST".into(), first.to_string()),
            ("RUNS".into(), runs.to_string()),
            ("T".into(), IPERF_SECONDS.to_string()),
            ("ROWS".into(), row_keys.clone()),
        ];
        let results = tmp.0.join("results");
        run.outputs = vec![("/tmp/results".into(), results.clone())];
        run.memory_mib = LAB_MEMORY_MIB;
        let rounds = u64::from(runs + 1 - first);
        run.timeout = Duration::from_secs(300 + rounds * VMMS.len() as u64 * 200);
        let seen = console.clone();
        run.console = Console::Lines(Arc::new(move |line: &str| match line.find(RESULT) {
            Some(at) => {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.push_str(&line[at + RESULT.len()..]);
                seen.push('\n');
            }
            None => println!("{line}"),
        }));
        match run.run() {
            Ok(status) => {
                let file = std::fs::read_to_string(&results).unwrap_or_default();
                text.push_str(&file);
                if status != 0 {
                    eprintln!(
                        "vs_qemu: the lab scenario ended with status {status}; results:\n{file}"
                    );
                }
                break;
            }
            Err(e @ (LabError::HostFailed(_) | LabError::HostCrashed(_))) if boot < LAB_BOOTS => {
                // The rounds whose last boot reported its status are whole; the round the
                // lab host died in runs again from its start.
                let seen = console.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let done = last_whole_round(&parse_results(&seen).statuses, first);
                text.extend(
                    seen.lines()
                        .filter(|l| round_of(l).is_some_and(|r| r <= done))
                        .map(|l| format!("{l}\n")),
                );
                first = done + 1;
                if first > runs {
                    // It died after the last round had reported: nothing is left to run.
                    faults.push(format!("{e} (after the last round)"));
                    break;
                }
                faults.push(format!(
                    "{e} (in round {first}, which ran again in a new lab host)"
                ));
                eprintln!(
                    "vs_qemu: {e}; rounds before {first} are kept, rounds {first}-{runs} run in a new lab host"
                );
            }
            Err(e @ (LabError::HostFailed(_) | LabError::HostCrashed(_))) => {
                // No lab host is left to run the round again: the boots that reported their
                // status before the fault are still figures, and are shown as such.
                let seen = console.lock().unwrap_or_else(|e| e.into_inner()).clone();
                text.push_str(&reported_boots(&seen));
                lost = Some(format!(
                    "{e} (in round {first} or later, in each of {LAB_BOOTS} lab hosts)"
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    if let Some(f) = &lost {
        faults.push(f.clone());
    }
    let Results {
        samples,
        statuses,
        features,
    } = parse_results(&text);
    if samples.is_empty() {
        return Err(match faults.last() {
            Some(f) => format!("no figures came back from the lab: {f}"),
            None => "no figures came back from the lab".into(),
        });
    }
    let failed: Vec<String> = statuses
        .iter()
        .filter(|s| s.2 != 0)
        .map(|(v, r, s)| format!("{v} round {r}: status {s}"))
        .collect();

    println!();
    println!(
        "iperf3 over a tap, guest -smp 1 -m 512 (queues=2 rows: -smp 2, -P 2), same kernel and initrd, vhost where the row says so; {runs} round(s) of -t {IPERF_SECONDS} each way"
    );
    println!("(emulated lab host: absolute figures are emulation-bound; compare the ratios)");
    println!();
    println!(
        "{:<28} {:>22} {:>22} {:>14}",
        "VMM", "up g->h Mbit/s", "down h->g Mbit/s", "ping avg ms"
    );
    println!(
        "{:<28} {:>22} {:>22} {:>14}",
        "", "median [min-max]", "median [min-max]", "median"
    );
    let cell = |v: &[f64]| {
        format!(
            "{} [{}-{}]",
            fmt(median(v), 0),
            fmt(v.first().copied(), 0),
            fmt(v.last().copied(), 0)
        )
    };
    for (key, label) in VMMS {
        println!(
            "{label:<28} {:>22} {:>22} {:>14}",
            cell(&values(&samples, key, "up")),
            cell(&values(&samples, key, "down")),
            fmt(median(&values(&samples, key, "rtt")), 3)
        );
    }
    println!();
    println!(
        "{:<8} {:<26} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "backend", "QEMU machine", "netvmm up", "down", "QEMU up", "down", "ratio up", "down"
    );
    let nv = |kind| median(&values(&samples, "netvmm", kind));
    for (key, label) in VMMS[1..]
        .iter()
        .filter(|(k, _)| k.starts_with("qemu") && !k.contains("vhost"))
    {
        let q = |kind| median(&values(&samples, key, kind));
        let ratio = |kind| Some(nv(kind)? / q(kind)?);
        println!(
            "{:<8} {:<26} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "tap",
            label.trim_start_matches("QEMU "),
            fmt(nv("up"), 0),
            fmt(nv("down"), 0),
            fmt(q("up"), 0),
            fmt(q("down"), 0),
            fmt(ratio("up"), 2),
            fmt(ratio("down"), 2)
        );
    }
    for ((ours, theirs), what) in [
        (VHOST_PAIR, "pc, both vhost=on"),
        (MQ_PAIR, "pc, vhost=on, 2 queues"),
        (VHOST_2CPU_PAIR, "microvm, vhost=on, 2 vCPUs"),
    ]
    .into_iter()
    .chain(PCI_PAIRS)
    {
        let m = |key, kind| median(&values(&samples, key, kind));
        let ratio = |kind| Some(m(ours, kind)? / m(theirs, kind)?);
        println!(
            "{:<8} {:<26} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "tap",
            what,
            fmt(m(ours, "up"), 0),
            fmt(m(ours, "down"), 0),
            fmt(m(theirs, "up"), 0),
            fmt(m(theirs, "down"), 0),
            fmt(ratio("up"), 2),
            fmt(ratio("down"), 2)
        );
    }
    println!("(ratio = netvmm / QEMU; > 1 means netvmm is faster)");
    println!();
    println!("per round, up/down Mbit/s (odd rounds boot the rows left to right, even rounds right to left):");
    print!("{:<6}", "round");
    for (_, label) in VMMS {
        print!(" {label:>28}");
    }
    println!();
    for round in 1..=runs {
        print!("{round:<6}");
        for (key, _) in VMMS {
            let get = |kind| {
                samples
                    .iter()
                    .find(|(v, r, k, _)| v == key && *r == round && *k == kind)
                    .map(|s| s.3)
            };
            print!(
                " {:>28}",
                format!("{}/{}", fmt(get("up"), 0), fmt(get("down"), 0))
            );
        }
        println!();
    }
    println!();
    println!("virtio-net features the guest negotiated:");
    for (key, label) in VMMS {
        if let Some((_, bits)) = features.iter().find(|(v, _)| v == key) {
            println!("  {label:<28} {}", feature_names(bits));
        }
    }
    if !failed.is_empty() {
        println!("boots that did not end cleanly: {}", failed.join("; "));
    }
    for f in &faults {
        println!("lab host fault: {f}");
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    match lost {
        Some(f) => Err(format!("the rounds were not all run: {f}")),
        None => Ok(()),
    }
}

/// The last round, counting up from `first`, whose every row reported its exit status
/// (`first - 1` if none did). Rounds run in turn, and an even round boots the rows in
/// reverse, so no single row's status marks a round's end.
fn last_whole_round(statuses: &[(String, u32, i32)], first: u32) -> u32 {
    let whole = |round: u32| {
        VMMS.iter()
            .all(|(key, _)| statuses.iter().any(|(v, r, _)| v == key && *r == round))
    };
    (first..)
        .take_while(|&r| whole(r))
        .last()
        .unwrap_or(first - 1)
}

/// The result lines of one lab host's console `seen` whose boot reported its exit status:
/// those boots ran to their end, whatever happened to the lab host after them.
fn reported_boots(seen: &str) -> String {
    let done = parse_results(seen).statuses;
    seen.lines()
        .filter(|l| {
            let vmm = l.split(' ').next().and_then(|w| w.strip_prefix("vmm="));
            let round = round_of(l);
            done.iter()
                .any(|(v, r, _)| Some(v.as_str()) == vmm && Some(*r) == round)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}
