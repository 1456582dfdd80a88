//! The guests of a comparison: `netvmm run` child processes, their consoles (files) read
//! back as data, and what the measured guest runs inside (its own pings).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::observed::{Dir, NetUp};
use super::traffic::ping_reply_ms;
use crate::args::Transport;

/// The guest image, how long a guest may run and how it reaches its NIC.
#[derive(Debug, Clone)]
pub struct Image {
    pub netvmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub timeout_s: u64,
    pub transport: Transport,
}

impl Image {
    /// `netvmm run` of this image on its transport; the caller adds the rest.
    pub fn run_command(&self) -> Command {
        let mut cmd = Command::new(&self.netvmm);
        cmd.arg("run")
            .arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.initrd)
            .args(["--transport", self.transport.name()]);
        cmd
    }
}

/// What a guest is started with.
pub struct Spec<'a> {
    pub memory_mib: u32,
    pub net: &'a str,
    /// The kernel command line: netvmm.ip=, netvmm.gw=, netvmm.run=.
    pub cmdline: String,
    pub log: PathBuf,
    pub err: PathBuf,
    /// NETVMM_BOOT_REPORT: the exit report holds total_to_ready_ms.
    pub boot_report: bool,
}

/// A running `netvmm run`, stopped when dropped.
pub struct Guest {
    child: Child,
    pub log: PathBuf,
    pub err: PathBuf,
    ended: Option<i32>,
}

impl Guest {
    pub fn start(image: &Image, spec: Spec) -> std::io::Result<Guest> {
        let _ = std::fs::remove_file(&spec.log);
        let err = std::fs::File::create(&spec.err)?;
        let mut cmd = image.run_command();
        cmd.args(["--timeout", &image.timeout_s.to_string()])
            .args(["--memory", &spec.memory_mib.to_string()])
            .args(["--net", spec.net])
            .arg("--serial-log")
            .arg(&spec.log)
            .arg("--cmdline")
            .arg(&spec.cmdline)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        if spec.boot_report {
            cmd.env("NETVMM_BOOT_REPORT", "1");
        }
        Ok(Guest {
            child: cmd.spawn()?,
            log: spec.log,
            err: spec.err,
            ended: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether its netvmm still runs.
    pub fn alive(&mut self) -> bool {
        if self.ended.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(st)) => {
                self.ended = Some(st.code().unwrap_or(128));
                false
            }
            Err(_) => false,
        }
    }

    /// Waits up to `limit` for a console line that `seen` accepts; false when the guest
    /// ended first (and never printed it) or the time ran out.
    pub fn wait_for(&mut self, seen: impl Fn(&str) -> bool, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let printed = |log: &Path| console_lines(log).iter().any(|l| seen(l));
        while Instant::now() < end {
            if printed(&self.log) {
                return true;
            }
            if !self.alive() {
                return printed(&self.log);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }

    /// SIGTERM (netvmm removes its interfaces), then its end; SIGKILL after 15 s.
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        // SAFETY: signalling our own child, which try_wait has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(15);
        while self.alive() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Why its netvmm ended (it has): status, last error line, the console's last lines.
    pub fn ended_why(&mut self) -> String {
        let status = match self.ended {
            Some(s) => s,
            None => self
                .child
                .wait()
                .map(|s| s.code().unwrap_or(128))
                .unwrap_or(-1),
        };
        self.ended = Some(status);
        format!(
            "its netvmm ended with status {status}: {}; the guest's console ended: {}",
            last_err(&self.err),
            console_tail(&self.log)
        )
    }

    /// The CPU time of its netvmm and of the kernel's vhost-net workers serving it.
    pub fn cpu_ticks(&self) -> Option<CpuTicks> {
        CpuTicks::read(Path::new("/proc"), self.pid())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A file's lines without carriage returns (a console's lines end in \r\n).
pub fn console_lines(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

/// The last line netvmm wrote on stderr, its exit figures aside.
pub fn last_err(err: &Path) -> String {
    console_lines(err)
        .into_iter()
        .rev()
        .find(|l| !l.starts_with("netvmm-report:") && !l.starts_with("netvmm-nic-report:"))
        .unwrap_or_default()
}

/// The last three non-empty lines of a console, on one line.
pub fn console_tail(log: &Path) -> String {
    let lines: Vec<String> = console_lines(log)
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect();
    let from = lines.len().saturating_sub(3);
    lines[from..].iter().map(|l| format!("{l}|")).collect()
}

/// utime + stime, in ticks, from the contents of /proc/<pid>/stat.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The command name (field 2) from the contents of a /proc stat file.
fn stat_comm(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

/// One netvmm's CPU time, in ticks, split by who spent it: the column `vmm_cpu_ms_per_gb`
/// counts all of netvmm (its vCPU threads' time includes the guest's own), which hides what
/// the data path costs netvmm itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTicks {
    /// All of netvmm's threads.
    pub total: u64,
    /// netvmm's threads other than its vCPUs (`netvmm-vcpuN`): the device thread that
    /// copies frames on the userspace path, the main thread, the console.
    pub device: u64,
    /// The kernel's vhost-net workers for this netvmm (`vhost-<pid>`: kernel threads of
    /// their own before Linux 6.4, threads of netvmm's process since).
    pub vhost: u64,
}

impl CpuTicks {
    /// Reads the figures of netvmm `pid` from the proc file system at `proc`.
    pub fn read(proc: &Path, pid: u32) -> Option<Self> {
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        let total = stat_cpu_ticks(&read(proc.join(format!("{pid}/stat")))?)?;
        let worker = format!("vhost-{pid}");
        let (mut vcpus, mut vhost) = (0, 0);
        let tasks = std::fs::read_dir(proc.join(format!("{pid}/task"))).ok()?;
        for stat in tasks.flatten().filter_map(|t| read(t.path().join("stat"))) {
            match (stat_comm(&stat), stat_cpu_ticks(&stat)) {
                (Some(c), Some(t)) if c.starts_with("netvmm-vcpu") => vcpus += t,
                (Some(c), Some(t)) if c == worker => vhost += t,
                _ => {}
            }
        }
        // Before 6.4 the workers are kernel threads, each a process of its own.
        let kernel_workers = std::fs::read_dir(proc)
            .ok()?
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .filter_map(|e| read(e.path().join("stat")))
            .filter(|stat| stat_comm(stat) == Some(worker.as_str()))
            .filter_map(|stat| stat_cpu_ticks(&stat));
        let kernel_workers: u64 = kernel_workers.sum();
        Some(Self {
            total,
            device: total.saturating_sub(vcpus + vhost),
            vhost: vhost + kernel_workers,
        })
    }

    /// Adds what `other` spent.
    pub fn add(&mut self, other: Self) {
        self.total += other.total;
        self.device += other.device;
        self.vhost += other.vhost;
    }

    /// What was spent from `before` to `self`.
    pub fn since(self, before: Self) -> Self {
        Self {
            total: self.total.saturating_sub(before.total),
            device: self.device.saturating_sub(before.device),
            vhost: self.vhost.saturating_sub(before.vhost),
        }
    }
}

/// `key=value` from a line of `key=value` words.
pub fn word_value(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

const DONE: &str = "cmp-guest-done";
/// Where the LAN peer's iperf3 server listens for a guest that opens the connection itself
/// (`LanClient`): the guest sends to the first, and receives (-R) from the second.
pub const GUEST_SENDS_PORT: u16 = 5202;
pub const GUEST_RECEIVES_PORT: u16 = 5203;
const NETUP: &str = "cmp-netup=";
/// The tag of the guest client's iperf3 receiver summary (`LanClient`, -R).
const RECEIVED: &str = "cmp-iperf-received:";
const PING: &str = "cmp-ping-";

/// Whether the measured guest finished its pings (anchored: the guest's command line, should
/// a kernel print it, holds these words too).
pub fn pings_done(line: &str) -> bool {
    line.starts_with(DONE)
}

/// The receiver summaries of the guest's own iperf3 -R runs, in order. The console has
/// been seen to break such a line in two: a tagged line without its "receiver" word takes
/// the next line (or two) after it.
pub fn guest_received(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(first) = l.strip_prefix(RECEIVED) else {
            continue;
        };
        let mut line = first.to_string();
        for next in lines.iter().skip(i + 1).take(2) {
            if line.trim_end().ends_with("receiver") || next.starts_with("cmp-") {
                break;
            }
            line.push_str(next);
        }
        out.push(line);
    }
    out
}

pub fn ready(line: &str) -> bool {
    line.contains("netvmm-guest: ready")
}

/// The measured guest's command. It pings the LAN peer until the first reply (boot to a
/// working network), starts an iperf3 server, then pings the host and the LAN peer 20 times
/// each (after a warm-up ping, so that ARP is not among the samples) and the other guest 3
/// times, every line tagged; then it waits. The guest's init evaluates its command line
/// once, so every `$` meant for the guest's own shell is written `\$`.
///
/// A guest the LAN cannot open connections to (NAT) opens them itself instead, with
/// `lan_client` the length of a run: it keeps trying the LAN peer's two iperf3 ports, and a
/// try succeeds once the scenario starts that port's server.
pub fn measured_command(
    host: Ipv4Addr,
    lan: Ipv4Addr,
    peer: Option<Ipv4Addr>,
    lan_client: Option<u32>,
) -> String {
    let tagged = |n: u32, to: Ipv4Addr, dir: Dir| {
        format!(
            " ping -c {n} -i 0.2 -W 2 {to} 2>&1 | sed s/^/{PING}{}:/;",
            dir.name()
        )
    };
    let mut c = format!(
        "n=0; ok=0; while [ \\$n -lt 30 ]; do if ping -c 1 -W 1 {lan} >/dev/null 2>&1; then ok=1; break; fi; n=\\$((n+1)); done;\
         read u r < /proc/uptime; echo {NETUP}\\$ok:\\$u; iperf3 -s -D >/dev/null 2>&1;\
         ping -c 1 -W 1 {host} >/dev/null 2>&1;{}\
         ping -c 1 -W 1 {lan} >/dev/null 2>&1;{}",
        tagged(20, host, Dir::GuestToHost),
        tagged(20, lan, Dir::GuestToLan),
    );
    if let Some(p) = peer {
        c.push_str(&tagged(3, p, Dir::GuestToGuest));
    }
    c.push_str(&format!(" echo {DONE};"));
    match lan_client {
        Some(t) => c.push_str(&format!(
            " while :; do iperf3 -c {lan} -p {GUEST_SENDS_PORT} -t {t} >/dev/null 2>&1;\
             iperf3 -c {lan} -p {GUEST_RECEIVES_PORT} -t {t} -R -f m 2>&1 | grep receiver | tr -s ' ' | sed s/^/{RECEIVED}/;\
             sleep 0.5; done"
        )),
        None => c.push_str(" sleep 100000"),
    }
    c
}

/// What the measured guest's console says: its ready line's uptime, its first reply from
/// the LAN peer, and its pings' reply times per direction.
#[derive(Debug, Default, PartialEq)]
pub struct ConsoleFacts {
    pub ready_uptime_s: Option<f64>,
    pub netup: Option<NetUp>,
    pub pings: BTreeMap<Dir, Vec<f64>>,
}

pub fn console_facts(lines: &[String]) -> ConsoleFacts {
    let mut f = ConsoleFacts::default();
    for l in lines {
        if f.ready_uptime_s.is_none() && ready(l) {
            f.ready_uptime_s = word_value(l, "uptime");
        } else if let Some(v) = l.strip_prefix(NETUP) {
            f.netup = v.trim().split_once(':').and_then(|(ok, up)| {
                Some(NetUp {
                    ok: ok == "1",
                    uptime_s: up.trim().parse().ok()?,
                })
            });
        } else if let Some(rest) = l.strip_prefix(PING) {
            let Some((dir, line)) = rest.split_once(':') else {
                continue;
            };
            let Ok(dir) = serde_json::from_value::<Dir>(serde_json::Value::from(dir)) else {
                continue;
            };
            let v = f.pings.entry(dir).or_default();
            v.extend(ping_reply_ms(line));
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "412 (netvmm) S 1 412 1 0 -1 4194560 2000 0 0 0 150 50 0 0 20 0 4 0 900 1 1 18446744073709551615";

    #[test]
    fn stat_fields_after_the_command_name() {
        assert_eq!(stat_cpu_ticks(STAT), Some(200));
        assert_eq!(
            stat_cpu_ticks("7 (a b) c) R 1 2 3 4 5 6 7 8 9 10 5 6 rest"),
            Some(11)
        );
        assert_eq!(stat_cpu_ticks("garbage"), None);
        assert_eq!(stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    /// A proc file system of netvmm 412 (main thread, device thread, two vCPUs, a vhost
    /// worker thread of its own) and kernel threads: netvmm 412's worker, another's.
    fn fake_proc(dir: &Path) {
        let stat = |pid: u32, comm: &str, utime: u64, stime: u64| {
            format!("{pid} ({comm}) S 1 412 1 0 -1 4194560 2000 0 0 0 {utime} {stime} 0 0 20 0 4 0 900 1 1 1")
        };
        let put = |rel: String, text: String| {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put("412/stat".into(), stat(412, "netvmm", 700, 300));
        for (tid, comm, u, s) in [
            (412, "netvmm", 10, 5),
            (413, "netvmm-net", 100, 85),
            (414, "netvmm-vcpu0", 300, 100),
            (415, "netvmm-vcpu1", 200, 100),
            (416, "vhost-412", 0, 100),
        ] {
            put(format!("412/task/{tid}/stat"), stat(tid, comm, u, s));
        }
        put("90/stat".into(), stat(90, "vhost-412", 0, 40));
        put("91/stat".into(), stat(91, "vhost-4120", 0, 999));
        put("self/stat".into(), stat(5, "vhost-412", 0, 999));
    }

    #[test]
    fn cpu_ticks_split_vcpus_device_threads_and_vhost_workers() {
        let dir = std::env::temp_dir().join(format!("netvmm-cpuproc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        fake_proc(&dir);
        let got = CpuTicks::read(&dir, 412);
        let _ = std::fs::remove_dir_all(&dir);
        // total 1000; vCPUs 700 and the worker thread 100 are not the device's: 200 left.
        // vhost: the worker thread (100) and netvmm 412's kernel thread (40), not 4120's,
        // and not /proc/self's (not a pid directory).
        assert_eq!(
            got,
            Some(CpuTicks {
                total: 1000,
                device: 200,
                vhost: 140
            })
        );
        assert_eq!(CpuTicks::read(&dir, 412), None, "no such process");
        let before = CpuTicks {
            total: 10,
            device: 5,
            vhost: 1,
        };
        assert_eq!(
            got.unwrap().since(before),
            CpuTicks {
                total: 990,
                device: 195,
                vhost: 139
            }
        );
    }

    #[test]
    fn the_guest_command_escapes_every_dollar() {
        let c = measured_command(
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(203, 0, 113, 1),
            Some(Ipv4Addr::new(192, 0, 2, 18)),
            None,
        );
        for (i, _) in c.match_indices('$') {
            assert!(c[..i].ends_with('\\'), "unescaped $ at {i} in {c}");
        }
        assert!(
            !c.contains('"'),
            "the command sits inside netvmm.run=\"...\""
        );
        assert!(c.contains(
            "ping -c 3 -i 0.2 -W 2 192.0.2.18 2>&1 | sed s/^/cmp-ping-guest_to_guest:/;"
        ));
        assert!(c.ends_with("echo cmp-guest-done; sleep 100000"));
        let alone = measured_command(
            Ipv4Addr::new(203, 0, 113, 10),
            Ipv4Addr::new(203, 0, 113, 1),
            None,
            None,
        );
        assert!(!alone.contains("guest_to_guest"));
        let client = measured_command(
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(203, 0, 113, 1),
            None,
            Some(4),
        );
        assert!(
            client.contains("echo cmp-guest-done; while :; do iperf3 -c 203.0.113.1 -p 5202 -t 4 ")
        );
        assert!(client.contains(
            "iperf3 -c 203.0.113.1 -p 5203 -t 4 -R -f m 2>&1 | grep receiver | tr -s ' ' | sed s/^/cmp-iperf-received:/;"
        ));
        let lines = [
            "cmp-iperf-received:[  5] 0.00-1.00 sec 1 MBytes 8 Mbits/sec receiver",
            "x",
        ]
        .map(String::from);
        assert_eq!(
            guest_received(&lines),
            ["[  5] 0.00-1.00 sec 1 MBytes 8 Mbits/sec receiver"]
        );
        // A summary the console broke in two is joined again.
        let broken = [
            "cmp-iperf-received:[ 5] 0.00-3.01 ",
            "sec 108 MBytes 301 Mbits/sec receiver",
            "cmp-iperf-received:[ 5] 0.00-3.00 sec 9 MBytes 25 Mbits/sec receiver",
        ]
        .map(String::from);
        let got = guest_received(&broken);
        assert_eq!(
            got[0],
            "[ 5] 0.00-3.01 sec 108 MBytes 301 Mbits/sec receiver"
        );
        assert_eq!(got[1], "[ 5] 0.00-3.00 sec 9 MBytes 25 Mbits/sec receiver");
        assert!(crate::compare::traffic::receiver_line(&got[0]).is_some());
        for (i, _) in client.match_indices('$') {
            assert!(
                client[..i].ends_with('\\'),
                "unescaped $ at {i} in {client}"
            );
        }
        assert!(!client.contains('"'));
        // The kernel keeps 2048 bytes of command line (x86), netvmm.ip= and the rest included.
        let longest = measured_command(
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(203, 0, 113, 1),
            Some(Ipv4Addr::new(192, 0, 2, 6)),
            Some(600),
        );
        assert!(longest.len() < 1500, "{}", longest.len());
    }

    #[test]
    fn the_console_gives_ready_netup_and_ping_times() {
        let lines: Vec<String> = [
            "[    0.5] netvmm: booting",
            "netvmm-guest: ready uptime=1.50 cpus=1 mem_kb=1",
            "cmp-netup=1:1.75",
            "cmp-ping-guest_to_host:PING 192.0.2.1 (192.0.2.1): 56 data bytes",
            "cmp-ping-guest_to_host:64 bytes from 192.0.2.1: seq=0 ttl=64 time=0.500 ms",
            "cmp-ping-guest_to_host:64 bytes from 192.0.2.1: seq=1 ttl=64 time=0.700 ms",
            "cmp-ping-guest_to_lan:3 packets transmitted, 0 packets received, 100% packet loss",
            "cmp-ping-sideways:64 bytes from x: time=1 ms",
            "cmp-guest-done",
        ]
        .map(String::from)
        .to_vec();
        let f = console_facts(&lines);
        assert_eq!(f.ready_uptime_s, Some(1.5));
        assert_eq!(
            f.netup,
            Some(NetUp {
                ok: true,
                uptime_s: 1.75
            })
        );
        assert_eq!(f.pings[&Dir::GuestToHost], [0.5, 0.7]);
        assert_eq!(
            f.pings[&Dir::GuestToLan],
            Vec::<f64>::new(),
            "ran, no reply"
        );
        assert!(!f.pings.contains_key(&Dir::GuestToGuest));
        assert_eq!(f.pings.len(), 2, "an unknown direction is ignored");
        assert!(lines.iter().any(|l| pings_done(l)));
        assert!(!pings_done("netvmm.run=\"... echo cmp-guest-done\""));
    }

    #[test]
    fn a_guest_that_never_reached_the_lan_says_so() {
        let f = console_facts(&["cmp-netup=0:31.2".to_string()]);
        assert_eq!(
            f.netup,
            Some(NetUp {
                ok: false,
                uptime_s: 31.2
            })
        );
        assert_eq!(console_facts(&["cmp-netup=1:".to_string()]).netup, None);
    }

    #[test]
    fn tails_and_last_errors_of_files() {
        let dir = std::env::temp_dir().join(format!("netvmm-guest-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = dir.join("err");
        std::fs::write(
            &err,
            "netvmm: cannot open /dev/kvm\nnetvmm-report: x=1\nnetvmm-nic-report: y\n",
        )
        .unwrap();
        assert_eq!(last_err(&err), "netvmm: cannot open /dev/kvm");
        let log = dir.join("log");
        std::fs::write(&log, "a\r\n\r\nb\r\nc\r\nd\r\n").unwrap();
        assert_eq!(console_tail(&log), "b|c|d|");
        assert_eq!(console_tail(&dir.join("none")), "");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
