//! The scenario behind `netvmm compare`, in Rust: it builds the topology (`topology`), and
//! for each backend boots the guests (`guest`), sends the traffic (`traffic`) and prints
//! what it saw as one `cmp-result <JSON>` line (`observed::Observed`). It runs as the hidden
//! `netvmm __compare-scenario`, which `compare` starts inside a fresh network and mount
//! namespace (natively, or natively inside the emulated lab host).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use net::netns::NetNs;

use super::backend::{Backend, Datapath, Row};
use super::guest::{self, Guest, Image, Spec};
use super::lan_watch::EchoWatch;
use super::observed::{Dir, Flow, Observed, SecondGuest};
use super::topology::{self, Addressing, Topology, LAN_PEER};
use super::traffic;
use crate::args::Transport;

const VHOST_NET: &str = "/dev/vhost-net";

/// The prefix of a result line; the rest is an `Observed` as JSON.
pub const RESULT: &str = "cmp-result ";
/// The scenario's heartbeat line (every 15 s): a caller that sees none for long has a hung
/// scenario (or lab host).
pub const HEARTBEAT: &str = "cmp-alive";

/// The hidden subcommand's arguments.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct ScenarioArgs {
    /// What to measure: backends, each with `+vhost` for the kernel's data path.
    #[arg(long, value_delimiter = ',', required = true)]
    pub rows: Vec<Row>,
    #[arg(long)]
    pub duration: u32,
    #[arg(long)]
    pub work: PathBuf,
    #[arg(long)]
    pub kernel: PathBuf,
    #[arg(long)]
    pub initrd: PathBuf,
    #[arg(long, value_enum, default_value_t = Transport::Mmio)]
    pub transport: Transport,
}

/// What the measured guest may take at most: its boot and pings (the scenario waits 180 s
/// for them), then four iperf3 runs, each tried at most twice, of at most `iperf_seconds` +
/// 30 s (and a second's pause) each.
pub fn guest_timeout(iperf_seconds: u32) -> Duration {
    Duration::from_secs(240 + 8 * (u64::from(iperf_seconds) + 31))
}

/// How long the whole scenario may take for `n` backends: every wait in it at its limit (two
/// tries of the second guest, 120 s each, a lost first try of the measured guest and a
/// replacement for one lost mid-run, 180 s each, and the measured guest), plus the
/// topology. A last resort: a hang is noticed sooner, by the missing heartbeat.
pub fn scenario_timeout(n: usize, iperf_seconds: u32) -> Duration {
    Duration::from_secs(120)
        + (Duration::from_secs(240 + 2 * 180) + guest_timeout(iperf_seconds)) * n.max(1) as u32
}

fn say(msg: &str) {
    println!("netvmm compare: {msg}");
}

/// Prints a backend's result line.
fn emit(o: &Observed) {
    // Typed facts of strings, numbers and maps with string keys: cannot fail.
    let line = serde_json::to_string(o).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{RESULT}{line}");
    let _ = out.flush();
}

/// Runs the scenario: the topology, then every backend. Returns the exit status.
pub fn run(args: ScenarioArgs) -> i32 {
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_secs(15));
        println!("{HEARTBEAT}");
    });
    if let Err(e) = std::fs::create_dir_all(&args.work) {
        eprintln!("netvmm compare: cannot create {}: {e}", args.work.display());
        return 1;
    }
    let netvmm = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("netvmm compare: cannot locate the netvmm binary: {e}");
            return 1;
        }
    };
    let image = Image {
        netvmm,
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        timeout_s: guest_timeout(args.duration).as_secs(),
        transport: args.transport,
    };
    say(&format!(
        "building the topology: NIC lanA, its wire to the LAN host (switch sw0, peer {LAN_PEER})"
    ));
    let topo = match Topology::build() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("netvmm compare: cannot build the topology: {e}");
            return 1;
        }
    };
    // For the tests: `<backend>:<direction>` sets the measured guest's host-side interfaces
    // down before that iperf3 run, as the nested lab has been seen to cut a guest off.
    let cut = std::env::var("NETVMM_COMPARE_CUT").unwrap_or_default();
    for row in &args.rows {
        let b = &row.backend;
        let mut addr = topology::addressing(*b);
        if row.datapath == Datapath::Vhost {
            for net in [&mut addr.net_a, &mut addr.net_b] {
                net.push_str(",vhost=on");
            }
        }
        let mut obs = Observed::new(*b);
        obs.datapath = row.datapath;
        let mut m = Measure {
            b: *b,
            row: *row,
            topo: &topo,
            image: &image,
            work: &args.work,
            duration: args.duration,
            cut: cut.clone(),
            addr,
            obs,
        };
        m.run();
        emit(&m.obs);
    }
    0
}

/// Once per backend a new measured guest replaces one lost mid-run (on the record: the
/// nested lab has been seen to lose a guest); after that, or when the replacement does not
/// come up, the runs left have no guest.
#[derive(Debug, Default, PartialEq)]
pub struct Replacement {
    revived: bool,
    /// Why there is no measured guest, once that is final.
    lost: Option<String>,
}

/// What to do about a measured guest that is gone.
#[derive(Debug, PartialEq)]
pub enum Gone {
    /// Boot a replacement.
    Replace,
    /// No more guests: why.
    GiveUp(String),
}

impl Replacement {
    /// The measured guest is gone, for `why`.
    pub fn gone(&mut self, why: &str) -> Gone {
        if let Some(l) = &self.lost {
            return Gone::GiveUp(l.clone());
        }
        let lost = format!("the measured guest is gone: {why}");
        self.lost = Some(lost.clone());
        if self.revived {
            return Gone::GiveUp(lost);
        }
        self.revived = true;
        Gone::Replace
    }

    /// How the replacement went (`Err`: why it did not come up).
    pub fn replaced(&mut self, r: Result<(), String>) {
        self.lost = match r {
            Ok(()) => None,
            Err(why) => Some(format!(
                "the measured guest is gone, and its replacement did not come up: {why}"
            )),
        };
    }

    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }
}

/// Where a throughput direction's iperf3 client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// On this host (`Dir::HostToGuest`) or the LAN peer (`Dir::LanToGuest`), against the
    /// guest's server; `reverse`: the guest sends (-R).
    Outside { at: Dir, reverse: bool },
    /// In the guest, against a server the LAN peer starts for it (a guest behind NAT,
    /// which the LAN cannot open connections to).
    Guest,
}

/// Where each direction's client runs (`lan_opens`: the LAN can open connections to the
/// guest), and which ping says there is a path for it.
fn client_of(d: Dir, lan_opens: bool) -> (Client, Dir) {
    let outside = |at, reverse| (Client::Outside { at, reverse }, at);
    match d {
        Dir::LanToGuest | Dir::GuestToLan if !lan_opens => (Client::Guest, Dir::GuestToLan),
        Dir::LanToGuest => outside(Dir::LanToGuest, false),
        Dir::GuestToLan => outside(Dir::LanToGuest, true),
        Dir::HostToGuest => outside(Dir::HostToGuest, false),
        _ => outside(Dir::HostToGuest, true),
    }
}

struct Measure<'a> {
    b: Backend,
    row: Row,
    topo: &'a Topology,
    image: &'a Image,
    work: &'a Path,
    duration: u32,
    cut: String,
    addr: Addressing,
    obs: Observed,
}

impl Measure<'_> {
    fn say(&self, msg: &str) {
        say(&format!("{}: {msg}", self.row));
    }

    fn note(&mut self, msg: String) {
        self.obs.notes.push(msg);
    }

    fn file(&self, name: &str) -> PathBuf {
        self.work.join(format!("{}-{name}", self.row))
    }

    fn cmdline(ip: &str, gw: Option<Ipv4Addr>, run: &str) -> String {
        let gw = gw.map(|g| format!(" netvmm.gw={g}")).unwrap_or_default();
        format!("quiet netvmm.ip={ip}{gw} netvmm.run=\"{run}\"")
    }

    fn run(&mut self) {
        let missing = if self.b == Backend::TapNat && super::which("nft").is_none() {
            Some("nft (nftables) is not installed: netvmm's NAT rules go in through it")
        } else if self.row.datapath == Datapath::Vhost && !Path::new(VHOST_NET).exists() {
            Some("this host has no /dev/vhost-net (modprobe vhost_net)")
        } else {
            None
        };
        if let Some(why) = missing {
            self.say(&format!("skipped: {why}"));
            self.obs.skipped = Some(why.into());
            return;
        }
        self.say("setting up");
        for step in topology::setup(self.b) {
            if let Err(e) = self.topo.apply(step) {
                self.obs.skipped = Some(format!("cannot set up the topology: {e}"));
                self.say(&format!("skipped: cannot set up the topology: {e}"));
                self.teardown();
                return;
            }
        }
        self.topo.forget_neighbours();
        let before = Leftovers::read();
        self.measure();
        self.obs.left_behind = Leftovers::read().new_since(&before);
        for what in &self.obs.left_behind {
            self.say(&format!("left behind: {what}"));
        }
        self.teardown();
        self.say("done");
    }

    fn teardown(&mut self) {
        for step in topology::teardown(self.b) {
            if let Err(e) = self.topo.apply(step) {
                self.note(format!("teardown: {e}"));
            }
        }
    }

    fn second_guest(&mut self) -> Option<Guest> {
        for attempt in 1..=2 {
            self.say("booting the second guest (it answers the guest_to_guest ping)");
            let spec = Spec {
                memory_mib: 256,
                net: &self.addr.net_b,
                cmdline: Self::cmdline(&self.addr.ip_b, self.addr.gw_b, "sleep 100000"),
                log: self.file("B.log"),
                err: self.file("B.err"),
                boot_report: false,
            };
            let why = match Guest::start(self.image, spec) {
                Ok(mut g) => {
                    if g.wait_for(guest::ready, Duration::from_secs(120)) {
                        return Some(g);
                    }
                    if g.alive() {
                        "its guest printed no ready line within 120 s".to_string()
                    } else {
                        format!("its netvmm ended: {}", guest::last_err(&g.err))
                    }
                }
                Err(e) => format!("cannot run netvmm: {e}"),
            };
            self.say(&format!("the second guest did not come up ({why})"));
            self.note(format!(
                "the second guest did not come up (attempt {attempt}): {why}"
            ));
        }
        None
    }

    /// Boots measured guest number `gen` and waits until it has done its pings.
    fn boot_measured(&self, gen: u32, peer: Option<Ipv4Addr>) -> Result<Guest, String> {
        self.say(&format!(
            "booting the measured guest; it pings the host, the LAN peer{}",
            if peer.is_some() {
                " and the other guest"
            } else {
                ""
            }
        ));
        let lan_client = (!self.addr.lan_opens).then_some(self.duration);
        let run = guest::measured_command(self.addr.host_target, LAN_PEER, peer, lan_client);
        let spec = Spec {
            memory_mib: 384,
            net: &self.addr.net_a,
            cmdline: Self::cmdline(&self.addr.ip_a, self.addr.gw_a, &run),
            log: self.file(&format!("A{gen}.log")),
            err: self.file(&format!("A{gen}.err")),
            boot_report: true,
        };
        let mut g =
            Guest::start(self.image, spec).map_err(|e| format!("cannot run netvmm: {e}"))?;
        if g.wait_for(guest::pings_done, Duration::from_secs(180)) {
            return Ok(g);
        }
        if g.alive() {
            g.stop();
            return Err(format!(
                "the guest did not finish its pings within 180 s; the guest's console ended: {}",
                guest::console_tail(&g.log)
            ));
        }
        Err(g.ended_why())
    }

    fn measure(&mut self) {
        let second = if self.b.has_sibling() {
            self.second_guest()
        } else {
            None
        };
        let peer = second.as_ref().map(|_| self.addr.addr_b);
        // What the LAN peer sees as the source of the measured guest's pings.
        let watch = match EchoWatch::open(self.topo.lan(), LAN_PEER) {
            Ok(w) => Some(w),
            Err(e) => {
                self.note(format!("cannot watch the LAN peer's echo requests: {e}"));
                None
            }
        };
        // Two tries: the nested lab has been seen to lose a guest now and then; a lost
        // first try is on the record.
        let mut gen = 1;
        let mut guest = loop {
            match self.boot_measured(gen, peer) {
                Ok(g) => break g,
                Err(why) if gen >= 2 => {
                    self.say(&format!("skipped: {why}"));
                    self.obs.skipped = Some(why);
                    return;
                }
                Err(why) => {
                    self.say(&format!(
                        "the measured guest did not come up ({why}); once more"
                    ));
                    self.note(format!(
                        "the measured guest did not come up (attempt {gen}): {why}"
                    ));
                    gen += 1;
                }
            }
        };
        // The guest whose boot and pings are the figures; a replacement only carries iperf3.
        let (first_log, first_err) = (guest.log.clone(), guest.err.clone());
        self.obs.lan_peer_saw = watch.map(|w| w.sources().into_iter().collect());
        // The guest's own pings, now: they say whether the runs the guest opens have a path.
        let facts = guest::console_facts(&guest::console_lines(&first_log));
        self.obs.pings.extend(facts.pings);
        drop(second);
        if self.b == Backend::MacvtapPassthru {
            self.try_second_passthru_guest();
        }

        self.say("the host and the LAN peer ping the guest");
        self.topo.forget_neighbours();
        let a = self.addr.addr_a;
        self.obs
            .pings
            .insert(Dir::HostToGuest, traffic::ping(None, a, 3));
        let lan_replies = traffic::ping(Some(self.topo.lan()), a, 3);
        self.obs.pings.insert(Dir::LanToGuest, lan_replies);

        let mut replacement = Replacement::default();
        for d in [
            Dir::LanToGuest,
            Dir::GuestToLan,
            Dir::HostToGuest,
            Dir::GuestToHost,
        ] {
            let flow = self.flow(d, &mut guest, &mut gen, peer, &mut replacement);
            self.obs.flows.insert(d, flow);
        }
        guest.stop();
        drop(guest);
        self.finish(&first_log, &first_err);
    }

    fn try_second_passthru_guest(&mut self) {
        self.say("trying a second guest on the same NIC");
        let err = self.file("B.err");
        let mut cmd = self.image.run_command();
        cmd.args(["--timeout", "120", "--net", &self.addr.net_a])
            .args(["--cmdline", "quiet netvmm.run=true"]);
        let second = match traffic::run_limited(cmd, Duration::from_secs(180)) {
            Ok(r) => {
                let _ = std::fs::write(&err, &r.out);
                SecondGuest {
                    status: r.status.unwrap_or(128),
                    message: guest::last_err(&err),
                }
            }
            Err(e) => SecondGuest {
                status: 127,
                message: format!("cannot run netvmm: {e}"),
            },
        };
        self.obs.second_guest = Some(second);
    }

    /// The measured guest runs: a lost one is replaced once (see `Replacement`).
    fn ensure_guest(
        &mut self,
        guest: &mut Guest,
        gen: &mut u32,
        peer: Option<Ipv4Addr>,
        r: &mut Replacement,
    ) -> bool {
        if guest.alive() {
            return true;
        }
        if r.lost().is_some() {
            return false;
        }
        let why = guest.ended_why();
        if let Gone::GiveUp(lost) = r.gone(&why) {
            // The replacement is gone too: its netvmm's status and console go on the record.
            self.note(lost);
            return false;
        }
        self.say(&format!(
            "the measured guest was lost ({why}); a new one takes its place"
        ));
        self.note(format!("the measured guest was lost mid-run: {why}; a new one took its place for the iperf3 runs left"));
        *gen += 1;
        match self.boot_measured(*gen, peer) {
            Ok(g) => {
                *guest = g;
                r.replaced(Ok(()));
                true
            }
            Err(why) => {
                r.replaced(Err(why));
                false
            }
        }
    }

    fn flow(
        &mut self,
        d: Dir,
        guest: &mut Guest,
        gen: &mut u32,
        peer: Option<Ipv4Addr>,
        r: &mut Replacement,
    ) -> Flow {
        let (client, gate) = client_of(d, self.addr.lan_opens);
        if !self.obs.replied(gate) {
            return Flow::NotRun {
                why: format!("no path: the {} ping got no reply", gate.name()),
            };
        }
        // Where a ping tells whether the guest still answers (not from a LAN it is hidden
        // from).
        let ns: Option<&NetNs> = match client {
            Client::Outside { at, .. } => (at == Dir::LanToGuest).then(|| self.topo.lan()),
            Client::Guest => None,
        };
        self.say(&format!("iperf3 {}, {} s", d.name(), self.duration));
        let mut last = None;
        for attempt in 1..=2 {
            if !self.ensure_guest(guest, gen, peer, r) {
                break;
            }
            if attempt == 1 && self.cut == format!("{}:{}", self.row, d.name()) {
                cut_off(guest.pid());
            }
            let before = guest.cpu_ticks();
            let (status, got) = match client {
                Client::Outside { reverse, .. } => {
                    traffic::iperf(ns, self.addr.addr_a, self.duration, reverse)
                }
                Client::Guest => self.guest_opened(d, guest),
            };
            let after = guest.cpu_ticks();
            // A summary from a guest that died under it is no measurement.
            let got = if guest.alive() {
                got
            } else {
                Err("the measured guest ended during the run".to_string())
            };
            match got {
                Ok(m) => {
                    return Flow::Moved {
                        mbps: m.mbps,
                        bytes: m.bytes,
                        cpu: before.zip(after).map(|(x, y)| y.since(x)),
                    };
                }
                Err(why) => {
                    let st = status.map_or("killed".to_string(), |s| s.to_string());
                    // Once more, on the record: the nested lab has been seen to lose a run.
                    self.note(format!(
                        "iperf3 {} attempt {attempt} failed (status {st}): {why}",
                        d.name()
                    ));
                    if attempt == 1 {
                        self.diagnose(d, guest, ns);
                    }
                    last = Some(why);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        match last {
            Some(why) => Flow::Failed { why },
            None => Flow::NotRun {
                why: r.lost().unwrap_or("no measured guest").to_string(),
            },
        }
    }

    /// One run whose connection the guest opens (see `guest::measured_command`): the LAN
    /// peer's one-off server on the port for direction `d`, and the receiver's figures (the
    /// server's when the guest sends, the guest's own summary line when it receives).
    fn guest_opened(&self, d: Dir, guest: &Guest) -> (Option<i32>, Result<traffic::Moved, String>) {
        let received = || guest::guest_received(&guest::console_lines(&guest.log));
        let (port, earlier) = match d {
            Dir::GuestToLan => (guest::GUEST_SENDS_PORT, 0),
            _ => (guest::GUEST_RECEIVES_PORT, received().len()),
        };
        let (status, got) = traffic::iperf_server(
            self.topo.lan(),
            port,
            self.duration,
            Duration::from_secs(20),
        );
        if d == Dir::GuestToLan {
            return (status, got);
        }
        if status != Some(0) {
            // The server, as the sender, has no receiver summary: only its error counts.
            let why = got
                .err()
                .unwrap_or_else(|| "the LAN peer's iperf3 server failed".into());
            return (status, Err(why));
        }
        // The guest prints its summary as its run ends, just after the server's. The console
        // file may hold the line half written: only a whole one (ending in "receiver") is
        // its summary, a part is waited on.
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let line = received().get(earlier).cloned();
            let whole = line.as_deref().is_some_and(traffic::is_receiver_line);
            if whole || std::time::Instant::now() > end {
                let got = match line {
                    Some(line) => traffic::receiver_line(&line).ok_or_else(|| {
                        format!("the guest's iperf3 summary says no data arrived: {line}")
                    }),
                    None => Err("the guest printed no iperf3 receiver summary within 10 s".into()),
                };
                return (status, got);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// After a failed run: what the guest's console and the host saw; a guest cut off from
    /// the network (the nested lab has been seen to do that mid-run) is stopped, so that a
    /// replacement takes the runs left.
    fn diagnose(&mut self, d: Dir, guest: &mut Guest, ns: Option<&NetNs>) {
        self.note(format!(
            "the guest's last console lines: {}",
            guest::console_tail(&guest.log)
        ));
        self.note(format!(
            "the host's view of the guest: {}",
            self.host_view()
        ));
        if guest.alive() && traffic::ping(ns, self.addr.addr_a, 2).is_empty() {
            self.note(format!(
                "the measured guest no longer answers a ping from the {} client; it is replaced",
                d.name()
            ));
            guest.stop();
        }
    }

    /// The host's neighbour entry for the measured guest, and the state of netvmm's links.
    fn host_view(&self) -> String {
        let mut s = String::new();
        for n in net::netlink::neighbours().unwrap_or_default() {
            if n.addr == self.addr.addr_a {
                s.push_str(&format!("{} ifindex {} {}; ", n.addr, n.ifindex, n.state));
            }
        }
        for l in net::netlink::list_links().unwrap_or_default() {
            if l.name.starts_with("nv") {
                let state = if l.oper_up {
                    "running"
                } else if l.admin_up {
                    "up"
                } else {
                    "down"
                };
                s.push_str(&format!("{} {state}; ", l.name));
            }
        }
        s
    }

    /// The figures of the first measured guest, and what is left behind.
    fn finish(&mut self, first_log: &Path, first_err: &Path) {
        self.obs.total_to_ready_ms = guest::console_lines(first_err)
            .iter()
            .rev()
            .find(|l| l.starts_with("netvmm-report:"))
            .and_then(|l| guest::word_value(l, "total_to_ready_ms"));
        let troubled = self
            .obs
            .notes
            .iter()
            .any(|n| n.starts_with("iperf3 ") || n.starts_with("the measured guest was lost"));
        if troubled {
            let mut counters = String::new();
            for gen in 1..=3 {
                for l in guest::console_lines(&self.file(&format!("A{gen}.err"))) {
                    if l.starts_with("netvmm-nic-report:") {
                        counters.push_str(&l);
                        counters.push(' ');
                    }
                }
            }
            self.note(format!("the measured guests' device counters: {counters}"));
        }
        // The data path and transport the measured guest's NIC really ran on (its exit
        // report says).
        let want = [
            ("datapath", self.row.datapath.name()),
            ("transport", self.image.transport.name()),
        ];
        for l in guest::console_lines(first_err) {
            if l.starts_with("netvmm-nic-report:") {
                for m in report_mismatches(&l, &want) {
                    self.note(format!("the measured guest's NIC reported {m}"));
                }
            }
        }
        let facts = guest::console_facts(&guest::console_lines(first_log));
        self.obs.ready_uptime_s = facts.ready_uptime_s;
        self.obs.netup = facts.netup;
        self.obs.pings.extend(facts.pings);
    }
}

/// Where a NIC exit report line (`netvmm-nic-report: eth0 datapath=user transport=mmio
/// ...`) disagrees with what was asked for, `want`'s (key, value) pairs: `key=got, not
/// value` for each, `(none)` for a key the line lacks.
fn report_mismatches(line: &str, want: &[(&str, &str)]) -> Vec<String> {
    want.iter()
        .filter_map(|&(key, value)| {
            let got = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or("(none)");
            (got != value).then(|| format!("{key}={got}, not {value}"))
        })
        .collect()
}

/// What netvmm may leave behind in the scenario's namespace once its guests have ended:
/// host-access shims, NAT tables, ingress qdiscs on the NIC and the containers' veths, and
/// the NIC's forwarding switch.
#[derive(Debug, Default, PartialEq)]
struct Leftovers {
    shims: Vec<String>,
    nat_tables: Vec<String>,
    ingress: Vec<String>,
    nic_forwarding: Option<bool>,
}

impl Leftovers {
    fn read() -> Self {
        let links = net::netlink::list_links().unwrap_or_default();
        let ingress = links
            .iter()
            .filter(|l| {
                l.name == topology::NIC || topology::CONTAINERS.iter().any(|(c, _)| *c == l.name)
            })
            .filter(|l| matches!(net::netlink::ingress_qdisc(l.index), Ok(Some(_))))
            .map(|l| l.name.clone())
            .collect();
        Self {
            shims: links
                .iter()
                .filter(|l| l.name.starts_with("nvshim"))
                .map(|l| l.name.clone())
                .collect(),
            nat_tables: net::nat::tables()
                .unwrap_or_default()
                .iter()
                .map(|t| t.name())
                .collect(),
            ingress,
            nic_forwarding: net::nat::forwarding(topology::NIC).ok(),
        }
    }

    /// What is here now that was not in `before`, one phrase each.
    fn new_since(&self, before: &Leftovers) -> Vec<String> {
        let fresh = |now: &[String], then: &[String]| -> Vec<String> {
            now.iter().filter(|x| !then.contains(x)).cloned().collect()
        };
        let mut v = Vec::new();
        for s in fresh(&self.shims, &before.shims) {
            v.push(format!("host-access shim {s}"));
        }
        for t in fresh(&self.nat_tables, &before.nat_tables) {
            v.push(format!("nftables table {t}"));
        }
        for i in fresh(&self.ingress, &before.ingress) {
            v.push(format!("an ingress qdisc on {i}"));
        }
        if let (Some(now), Some(then)) = (self.nic_forwarding, before.nic_forwarding) {
            if now != then {
                v.push(format!(
                    "{}'s forwarding switch turned {}",
                    topology::NIC,
                    if now { "on" } else { "off" }
                ));
            }
        }
        v
    }
}

/// Sets down every interface netvmm `pid` created (it marks them "netvmm pid=PID:...").
fn cut_off(pid: u32) {
    let mark = format!("netvmm pid={pid}:");
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let alias = std::fs::read_to_string(e.path().join("ifalias")).unwrap_or_default();
        if alias.starts_with(&mark) {
            let _ = net::netlink::set_down(e.file_name().to_string_lossy().as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_that_ran_another_path_or_transport_is_said() {
        let line = "netvmm-nic-report: eth0 datapath=user transport=mmio queues=1 rx_frames=3";
        let ok = [("datapath", "user"), ("transport", "mmio")];
        assert!(report_mismatches(line, &ok).is_empty());
        let asked = [("datapath", "vhost"), ("transport", "pci")];
        assert_eq!(
            report_mismatches(line, &asked),
            ["datapath=user, not vhost", "transport=mmio, not pci"]
        );
        // A key the line lacks, and one that only starts like it (transport_x=).
        let old = "netvmm-nic-report: eth0 datapath=user transport_x=pci";
        assert_eq!(
            report_mismatches(old, &[("transport", "pci")]),
            ["transport=(none), not pci"]
        );
    }

    #[test]
    fn a_lost_guest_is_replaced_once() {
        let mut r = Replacement::default();
        assert_eq!(r.gone("status 1"), Gone::Replace);
        r.replaced(Ok(()));
        assert_eq!(r.lost(), None);
        match r.gone("status 2") {
            Gone::GiveUp(why) => assert_eq!(why, "the measured guest is gone: status 2"),
            other => panic!("{other:?}"),
        }
        // Final: the runs left give the same reason.
        assert_eq!(
            r.gone("again"),
            Gone::GiveUp("the measured guest is gone: status 2".into())
        );
    }

    #[test]
    fn a_replacement_that_does_not_come_up_is_the_reason_for_the_runs_left() {
        let mut r = Replacement::default();
        assert_eq!(r.gone("x"), Gone::Replace);
        r.replaced(Err("no ready line".into()));
        let why = r.lost().unwrap().to_string();
        assert_eq!(
            why,
            "the measured guest is gone, and its replacement did not come up: no ready line"
        );
        assert_eq!(r.gone("y"), Gone::GiveUp(why));
    }

    #[test]
    fn each_direction_runs_its_client_where_its_path_was_pinged() {
        let out = |at, reverse| Client::Outside { at, reverse };
        for lan_opens in [true, false] {
            assert_eq!(
                client_of(Dir::HostToGuest, lan_opens),
                (out(Dir::HostToGuest, false), Dir::HostToGuest)
            );
            assert_eq!(
                client_of(Dir::GuestToHost, lan_opens),
                (out(Dir::HostToGuest, true), Dir::HostToGuest)
            );
        }
        assert_eq!(
            client_of(Dir::LanToGuest, true),
            (out(Dir::LanToGuest, false), Dir::LanToGuest)
        );
        assert_eq!(
            client_of(Dir::GuestToLan, true),
            (out(Dir::LanToGuest, true), Dir::LanToGuest)
        );
        // Behind NAT the guest opens both LAN connections, once it has reached the LAN.
        for d in [Dir::LanToGuest, Dir::GuestToLan] {
            assert_eq!(client_of(d, false), (Client::Guest, Dir::GuestToLan));
        }
    }

    #[test]
    fn only_what_is_new_is_left_behind() {
        let before = Leftovers {
            shims: vec!["nvshim0".into()],
            nat_tables: vec![],
            ingress: vec![],
            nic_forwarding: Some(false),
        };
        assert!(before.new_since(&before).is_empty());
        let after = Leftovers {
            shims: vec!["nvshim0".into(), "nvshim1".into()],
            nat_tables: vec!["netvmm-nat,x".into()],
            ingress: vec!["ctrA".into()],
            nic_forwarding: Some(true),
        };
        assert_eq!(
            after.new_since(&before),
            [
                "host-access shim nvshim1",
                "nftables table netvmm-nat,x",
                "an ingress qdisc on ctrA",
                "lanA's forwarding switch turned on"
            ]
        );
    }

    #[test]
    fn guest_command_lines_carry_address_gateway_and_command() {
        assert_eq!(
            Measure::cmdline("192.0.2.2/28", Some(Ipv4Addr::new(192, 0, 2, 1)), "true"),
            "quiet netvmm.ip=192.0.2.2/28 netvmm.gw=192.0.2.1 netvmm.run=\"true\""
        );
        assert_eq!(
            Measure::cmdline("203.0.113.3/24", None, "sleep 1"),
            "quiet netvmm.ip=203.0.113.3/24 netvmm.run=\"sleep 1\""
        );
    }

    #[test]
    fn timeouts_cover_every_wait() {
        assert_eq!(guest_timeout(3).as_secs(), 512);
        assert!(scenario_timeout(6, 3) > guest_timeout(3) * 6);
    }
}
