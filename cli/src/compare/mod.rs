//! `netvmm compare`: tap, bridge and macvtap side by side, same guest, same device, only the
//! backend changing; measured, not assumed.
//!
//! One scenario (`scenario`, the hidden `netvmm __compare-scenario`) builds an isolated
//! topology through netlink (`topology`): a "NIC" (veth lanA) whose wire leads to a LAN
//! host (a network namespace: switch sw0 and a LAN peer); for each backend it boots the
//! guest (and a second one for guest<->guest) as `netvmm run` children (`guest`), runs
//! ping and `iperf3 --json` in every direction (`traffic`), and reads the VMM's CPU time
//! around the transfers. It always runs natively, inside a fresh network and mount
//! namespace netvmm makes for it: the host's own interfaces are never touched, and
//! everything created dies with the namespace, also on Ctrl-C. On hosts whose KVM cannot
//! boot a stock kernel, the emulated lab host (QEMU TCG with nested KVM) runs that same
//! native compare inside itself. The scenario prints one `cmp-result` JSON line of typed
//! facts per backend (`observed`), which become the outcomes (`report`), the table
//! (`table`), the JSON (`report`, with serde), the chart (`chart`) and the explanation
//! (`explain`).

mod backend;
mod chart;
mod console;
mod error;
mod explain;
mod guest;
mod lan_watch;
mod observed;
mod report;
#[cfg(test)]
mod report_tests;
mod scenario;
mod table;
mod topology;
mod traffic;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::args::Transport;
use net::private_fs::PrivateDir;
use vmm::kvm_kind::{self, KvmKind};

use backend::Row;
pub use backend::{Backend, DatapathChoice};
use console::{Console, Watchdog};
pub use error::CompareError;
use observed::Observed;
pub use scenario::ScenarioArgs;

type Result<T> = std::result::Result<T, CompareError>;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
/// Where the compare inside the emulated lab host leaves its result lines.
const LAB_RESULTS: &str = "/tmp/cmp-results";
/// The scenario prints a heartbeat every 15 s; a lab host (or, natively, a scenario)
/// silent this long has hung.
const LAB_STALL: Duration = Duration::from_secs(120);

#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct CompareArgs {
    /// Backends to compare, comma separated (all by default; passthru always runs last).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = Backend::ALL,
        value_name = "LIST"
    )]
    pub backends: Vec<Backend>,
    /// The data path of the guests' NICs: netvmm's userspace copy (vhost=off), the
    /// kernel's vhost-net (vhost=on), or both, each backend measured through each.
    #[arg(long, value_enum, default_value_t = DatapathChoice::User)]
    pub datapath: DatapathChoice,
    /// How every guest reaches its NIC, as `netvmm run --transport`: virtio-mmio (one
    /// interrupt line) or virtio-pci (an MSI-X vector per queue).
    #[arg(long, value_enum, value_name = "mmio|pci", default_value_t = Transport::Mmio)]
    pub transport: Transport,
    /// Where to run: natively in a private network namespace (needs a KVM that boots stock
    /// kernels, CAP_NET_ADMIN and CAP_SYS_ADMIN), in the emulated lab host, or whichever
    /// this host allows.
    #[arg(long, value_enum, default_value_t = LabChoice::Auto)]
    pub lab: LabChoice,
    /// Seconds of each iperf3 run (four per backend).
    #[arg(long, value_name = "SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=600))]
    pub duration: u32,
    /// Print the results as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write an SVG chart of throughput and latency per backend.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// Explain, per backend, the path a frame takes and why the facts are what they are.
    #[arg(long)]
    pub explain: bool,
    /// For a compare inside the emulated lab host: pass the scenario's every line (results
    /// and heartbeat too) on to stderr, and write the result lines to FILE at the end.
    #[arg(long, value_name = "FILE", hide = true)]
    pub results_to: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabChoice {
    Auto,
    Native,
    Emulated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lab {
    Native,
    Emulated,
}

impl Lab {
    pub fn name(self) -> &'static str {
        match self {
            Lab::Native => "native",
            Lab::Emulated => "emulated",
        }
    }

    /// The line that says which lab ran and what its figures are good for.
    pub fn line(self) -> &'static str {
        match self {
            Lab::Native => "lab: native (this host's KVM, in a private network namespace netvmm created): real figures for this machine.",
            Lab::Emulated => "lab: emulated (QEMU TCG lab host with nested KVM): figures are bounded by emulation; compare them only with each other, never with bare metal.",
        }
    }
}

/// What decides where the comparison can run.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub kvm: KvmKind,
    pub net_admin: bool,
    pub sys_admin: bool,
    /// Tools the native scenario needs that are not on PATH.
    pub missing_tools: Vec<String>,
}

impl HostFacts {
    fn detect() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Self {
            kvm: kvm_kind::detect(),
            net_admin: crate::doctor::has_capability(&status, CAP_NET_ADMIN),
            sys_admin: crate::doctor::has_capability(&status, CAP_SYS_ADMIN),
            missing_tools: ["iperf3", "ping"]
                .into_iter()
                .filter(|t| which(t).is_none())
                .map(String::from)
                .collect(),
        }
    }

    /// Why the native lab cannot run here; empty when it can.
    fn native_blockers(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.kvm.boots_stock_kernels() {
            v.push(self.kvm.describe());
        }
        if !self.net_admin {
            v.push("no CAP_NET_ADMIN (interfaces cannot be created)".into());
        }
        if !self.sys_admin {
            v.push("no CAP_SYS_ADMIN (no private network and mount namespace)".into());
        }
        if !self.missing_tools.is_empty() {
            v.push(format!("not on PATH: {}", self.missing_tools.join(", ")));
        }
        v
    }
}

/// The lab to use and why, or why the requested one cannot run.
pub fn decide_lab(choice: LabChoice, facts: &HostFacts) -> Result<(Lab, String)> {
    let blockers = facts.native_blockers();
    match choice {
        LabChoice::Emulated => Ok((Lab::Emulated, "asked for with --lab emulated".into())),
        LabChoice::Native if blockers.is_empty() => {
            Ok((Lab::Native, "asked for with --lab native".into()))
        }
        LabChoice::Native => Err(CompareError::NativeUnavailable(blockers.join("; "))),
        LabChoice::Auto if blockers.is_empty() => Ok((
            Lab::Native,
            format!("{}, and netvmm has the privileges", facts.kvm.describe()),
        )),
        LabChoice::Auto => Ok((Lab::Emulated, blockers.join("; "))),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn say(msg: &str) {
    eprintln!("netvmm compare: {msg}");
}

pub fn run(args: CompareArgs) -> Result<i32> {
    let started = Instant::now();
    let backends = backend::run_order(&args.backends);
    let rows = backend::rows(&backends, args.datapath.paths());
    if let Some(chart) = &args.chart {
        // Fail now rather than after minutes of measuring.
        let dir = chart
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(CompareError::ChartDir {
                chart: chart.clone(),
                dir: dir.to_path_buf(),
            });
        }
    }
    let (lab, why) = decide_lab(args.lab, &HostFacts::detect())?;
    // Inside the emulated lab host (--results-to), these lines reach the user among the
    // outer compare's: say where they come from.
    let inside = if args.results_to.is_some() {
        " inside the emulated lab host"
    } else {
        ""
    };
    say(&format!("lab: {}{inside} ({why})", lab.name()));
    say(&format!(
        "rows: {}; iperf3 {} s per direction; NICs on virtio-{}",
        rows.iter()
            .map(|r| r.label())
            .collect::<Vec<_>>()
            .join(", "),
        args.duration,
        args.transport.name()
    ));
    let got = match lab {
        Lab::Emulated => run_emulated(&rows, args.duration, args.transport)?,
        Lab::Native => run_native(
            &rows,
            args.duration,
            args.transport,
            args.results_to.is_some(),
        )?,
    };
    if let Some(path) = &args.results_to {
        let lines: String = got.seen.iter().map(result_line).collect();
        std::fs::write(path, lines).map_err(CompareError::file("write the results", path))?;
    }
    let status = got.status;
    if got.seen.is_empty() {
        return Err(CompareError::NoResults {
            lab: lab.name(),
            why: got.unfinished,
        });
    }
    let outcomes = observed::outcomes(&got.seen, &rows, &got.unfinished);

    let mut report = table::table(&outcomes);
    report.push('\n');
    report.push_str(&table::legend(lab.line(), args.transport.name()));
    let notes = table::notes(&outcomes);
    if !notes.is_empty() {
        report.push_str("\nNot measured, and why:\n");
        report.push_str(&notes);
    }
    if args.explain {
        report.push_str(&explain::explain(&outcomes));
    }
    if args.json {
        eprint!("\n{report}");
        println!(
            "{}",
            report::Report::new(lab.name(), args.transport.name(), outcomes.clone()).to_json()
        );
    } else {
        print!("\n{report}");
    }
    if let Some(path) = &args.chart {
        std::fs::write(path, chart::svg(lab.line(), &outcomes))
            .map_err(CompareError::file("write the chart", path))?;
        say(&format!("chart written to {}", path.display()));
    }
    say(&format!(
        "total time {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    if status != 0 {
        say(&format!("the scenario ended with status {status}"));
        return Ok(1);
    }
    Ok(0)
}

/// The hidden `netvmm __compare-scenario`: the scenario itself (see `scenario`).
pub fn run_scenario(args: ScenarioArgs) -> i32 {
    scenario::run(args)
}

/// One backend's result line, as the scenario prints it.
fn result_line(o: &Observed) -> String {
    format!(
        "{}{}\n",
        scenario::RESULT,
        serde_json::to_string(o).unwrap_or_default()
    )
}

/// The observations in result lines; a line that does not parse (a console that garbled
/// it) counts as missing, so its backend is reported unfinished rather than wrong.
fn parse_results(text: &str) -> Vec<Observed> {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(scenario::RESULT))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect()
}

/// The run's files, in a directory nobody else can have prepared or enter (see
/// `net::private_fs`), removed when dropped.
struct TempDir(PrivateDir);

impl TempDir {
    fn new() -> Result<Self> {
        let d = PrivateDir::new("netvmm-compare-").map_err(CompareError::file(
            "create",
            std::env::temp_dir().join("netvmm-compare-XXXXXX"),
        ))?;
        Ok(Self(d))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// What running the scenario gave back.
struct Got {
    /// The scenario's exit status (non-zero also when it was stopped).
    status: i32,
    /// What it observed, per backend that finished.
    seen: Vec<Observed>,
    /// Why a backend without results did not finish.
    unfinished: String,
}

/// The same native compare inside the emulated lab host. Should the lab host die (the
/// emulated machine under nested KVM has, rarely, crashed under load), the backends it did
/// not finish run once more in a fresh one; what finished is kept.
fn run_emulated(rows: &[Row], duration: u32, transport: Transport) -> Result<Got> {
    let mut seen: Vec<Observed> = Vec::new();
    let mut pending = rows.to_vec();
    for attempt in 1..=2 {
        let (outcome, got, stalled) = lab_once(&pending, duration, transport)?;
        // A rerun that covers more rows than were left (tap, but only tap+vhost left)
        // keeps what finished first.
        seen.extend(got.into_iter().filter(|o| pending.contains(&o.row())));
        pending.retain(|r| !seen.iter().any(|o| o.row() == *r));
        let unfinished = match outcome {
            Ok(status) => {
                return Ok(Got {
                    status,
                    seen,
                    unfinished: format!(
                        "the scenario ended (status {status}) before this backend finished; its output is above"
                    ),
                })
            }
            Err(e @ (lab::LabError::HostFailed(_) | lab::LabError::HostCrashed(_))) => {
                format!("{e} before this backend finished")
            }
            Err(lab::LabError::Signalled(_)) if stalled => format!(
                "the lab host hung (no output for {} s) before this backend finished; it was stopped",
                LAB_STALL.as_secs()
            ),
            Err(e @ lab::LabError::Timeout(_)) => format!("{e} before this backend finished"),
            Err(e) => return Err(CompareError::Lab(e)),
        };
        if pending.is_empty() || attempt == 2 {
            return Ok(Got {
                // Every backend finished before the lab went down: nothing is missing.
                status: if pending.is_empty() { 0 } else { 1 },
                seen,
                unfinished,
            });
        }
        let names: Vec<String> = pending.iter().map(|r| r.label()).collect();
        say(&format!(
            "{unfinished}; running {} once more in a fresh lab host",
            names.join(", ")
        ));
    }
    unreachable!("the loop returns on its last attempt")
}

/// The command the lab host runs: the native compare of (at least) `rows`, its every line
/// on the console.
fn lab_command(rows: &[Row], duration: u32, transport: Transport) -> String {
    let mut names: Vec<&str> = rows.iter().map(|r| r.backend.name()).collect();
    names.dedup();
    let paths: Vec<_> = rows.iter().map(|r| r.datapath).collect();
    format!(
        "netvmm compare --lab native --backends {} --datapath {} --transport {} --duration {duration} --results-to {LAB_RESULTS} >/dev/null\n",
        names.join(","),
        DatapathChoice::covering(&paths).name(),
        transport.name()
    )
}

/// One boot of the lab host for `backends`: its outcome, the observations (from the
/// results file when the lab finished, else as they came on its console), and whether the
/// watchdog stopped it.
fn lab_once(
    rows: &[Row],
    duration: u32,
    transport: Transport,
) -> Result<(std::result::Result<i32, lab::LabError>, Vec<Observed>, bool)> {
    let tmp = TempDir::new()?;
    let results = tmp.path().join("results");
    let context = crate::lab_cmd::lab_context()?;
    let mut run = lab::LabRun::new(lab_command(rows, duration, transport), context);
    run.outputs = vec![(LAB_RESULTS.to_string(), results.clone())];
    // The compare inside stops its own scenario at this limit; the lab host gets a margin.
    run.timeout = scenario::scenario_timeout(rows.len(), duration) + Duration::from_secs(120);
    // Our stdout belongs to the table or the JSON: the lab's console comes to us instead.
    let console = Console::new();
    let sink = console.clone();
    run.console = lab::Console::Lines(std::sync::Arc::new(move |l: &str| sink.line(l)));
    let dog = Watchdog::start(console.clone(), LAB_STALL);
    let outcome = run.run();
    let stalled = dog.finish();
    let from_file = parse_results(&std::fs::read_to_string(&results).unwrap_or_default());
    let seen = if outcome.is_ok() && !from_file.is_empty() {
        from_file
    } else {
        parse_results(&console.kept())
    };
    Ok((outcome, seen, stalled))
}

/// The guest image for the native lab: the one `NETVMM_GUEST_KERNEL` and
/// `NETVMM_GUEST_INITRD` name when both are set (as inside the emulated lab host, which
/// cannot build images), else the cached one, built if needed.
fn guest_image() -> Result<(PathBuf, PathBuf)> {
    let given = |k: &str| std::env::var_os(k).map(PathBuf::from);
    if let (Some(k), Some(i)) = (given("NETVMM_GUEST_KERNEL"), given("NETVMM_GUEST_INITRD")) {
        for p in [&k, &i] {
            if !p.is_file() {
                return Err(CompareError::File {
                    what: "use the guest image file",
                    path: p.clone(),
                    source: std::io::ErrorKind::NotFound.into(),
                });
            }
        }
        return Ok((k, i));
    }
    let images = lab::Images::guest(&crate::lab_cmd::image_store()?)?;
    Ok((images.guest_kernel, images.guest_initrd))
}

/// Moves the (forked, single-threaded) scenario process into a new network and mount
/// namespace, its mounts private, with a sysfs of the new network namespace (so that
/// /sys/class/net shows its interfaces, not the host's). Only async-signal-safe calls.
fn enter_private_namespaces() -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: unshare and mount with NUL-terminated literals; they change only this
    // process's namespaces and its private mount table.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) != 0 {
            return Err(err());
        }
        let none = std::ptr::null();
        if libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            none.cast(),
        ) != 0
        {
            return Err(err());
        }
        let sysfs = c"sysfs".as_ptr();
        if libc::mount(sysfs, c"/sys".as_ptr(), sysfs, 0, none.cast()) != 0 {
            return Err(err());
        }
    }
    Ok(())
}

/// The scenario on this host, inside a fresh network and mount namespace.
fn run_native(rows: &[Row], duration: u32, transport: Transport, forward: bool) -> Result<Got> {
    let (kernel, initrd) = guest_image()?;
    let tmp = TempDir::new()?;
    let work = tmp.path().join("work");
    let exe = std::env::current_exe().map_err(CompareError::os("locate the netvmm binary"))?;
    let names: Vec<String> = rows.iter().map(|r| r.label()).collect();
    let mut cmd = Command::new(&exe);
    cmd.arg("__compare-scenario")
        .args(["--rows", &names.join(",")])
        .args(["--duration", &duration.to_string()])
        .args(["--transport", transport.name()])
        .arg("--work")
        .arg(&work)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // SAFETY: enter_private_namespaces makes only async-signal-safe system calls.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, enter_private_namespaces);
    }
    // Its own process group: on Ctrl-C netvmm stops the whole scenario (every guest's
    // netvmm removes its interfaces; the namespaces go with the last process).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    crate::signals::install().map_err(CompareError::os("install signal handlers"))?;
    let mut child = cmd.spawn().map_err(CompareError::os(
        "start the scenario in a private network namespace",
    ))?;
    let console = Console::with_forwarding(forward);
    let reader = console.read_from(child.stdout.take().expect("piped stdout"));
    let limit = scenario::scenario_timeout(rows.len(), duration);
    let start = Instant::now();
    let stop = |child: &mut std::process::Child| {
        let pgid = child.id() as i32;
        // SAFETY: signalling the process group we created; the result does not matter.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
    };
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .map_err(CompareError::os("wait for the scenario"))?
        {
            break st.code().unwrap_or(128);
        }
        if let Some(sig) = crate::signals::pending() {
            stop(&mut child);
            return Err(CompareError::Interrupted(sig));
        }
        if start.elapsed() > limit {
            stop(&mut child);
            return Err(CompareError::NativeTimeout(limit));
        }
        let silent = console.silent_for();
        if silent > LAB_STALL {
            stop(&mut child);
            return Err(CompareError::NativeStalled(silent));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = reader.join();
    Ok(Got {
        status,
        seen: parse_results(&console.kept()),
        unfinished: format!(
            "the scenario ended (status {status}) before this backend finished; its output is above"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_prepared_predictable_temp_dir_is_not_used() {
        let planted = std::env::temp_dir().join(format!("netvmm-compare-{}", std::process::id()));
        std::fs::create_dir_all(&planted).unwrap();
        let t = TempDir::new().unwrap();
        let at = t.path().to_path_buf();
        drop(t);
        let _ = std::fs::remove_dir_all(&planted);
        assert_ne!(at, planted);
        assert!(!at.exists(), "removed when dropped");
    }

    #[test]
    fn result_lines_round_trip_and_garbled_ones_are_missing() {
        let mut o = Observed::new(Backend::Tap);
        o.notes.push("a note".into());
        let mut text = result_line(&o);
        text.push_str("netvmm compare: progress\n");
        text.push_str("cmp-result {\"backend\":\"bridge\",\"skipp\n");
        text.push_str(&result_line(&Observed::new(Backend::MacvtapVepa)).replace('\n', "\r\n"));
        let seen = parse_results(&text);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], o);
        assert_eq!(seen[1].backend, Backend::MacvtapVepa);
    }

    #[test]
    fn the_lab_host_runs_the_native_compare_for_the_backends_left() {
        let rows = backend::rows(
            &[Backend::MacvtapBridgeHost, Backend::MacvtapPassthru],
            DatapathChoice::User.paths(),
        );
        let c = lab_command(&rows, 3, Transport::Pci);
        assert_eq!(
            c,
            "netvmm compare --lab native --backends macvtap-bridge+host,macvtap-passthru --datapath user --transport pci --duration 3 --results-to /tmp/cmp-results >/dev/null\n"
        );
        // A vhost row left alone of its backend: the rerun covers it.
        let left = [Row {
            backend: Backend::Tap,
            datapath: backend::Datapath::Vhost,
        }];
        assert!(lab_command(&left, 3, Transport::Mmio)
            .contains("--backends tap --datapath vhost --transport mmio "));
        let both = backend::rows(
            &[Backend::Tap, Backend::Bridge],
            DatapathChoice::Both.paths(),
        );
        assert!(lab_command(&both, 3, Transport::Mmio)
            .contains("--backends tap,bridge --datapath both "));
        // What it says parses back into the same arguments.
        let words: Vec<&str> = c.split_whitespace().take(14).collect();
        let cli = <crate::args::Cli as clap::Parser>::try_parse_from(words).unwrap();
        match cli.command {
            crate::args::Command::Compare(a) => {
                assert_eq!(
                    a.backends,
                    [Backend::MacvtapBridgeHost, Backend::MacvtapPassthru]
                );
                assert_eq!(a.lab, LabChoice::Native);
                assert_eq!(a.datapath, DatapathChoice::User);
                assert_eq!(a.transport, Transport::Pci);
                assert_eq!(a.results_to, Some(PathBuf::from(LAB_RESULTS)));
            }
            other => panic!("{other:?}"),
        }
    }

    fn facts(kvm: KvmKind, caps: bool, missing: &[&str]) -> HostFacts {
        HostFacts {
            kvm,
            net_admin: caps,
            sys_admin: caps,
            missing_tools: missing.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn lab_choice_follows_kvm_privileges_and_tools() {
        let hw = KvmKind::Hardware("kvm_amd");
        let (lab, why) = decide_lab(LabChoice::Auto, &facts(hw.clone(), true, &[])).unwrap();
        assert_eq!(lab, Lab::Native);
        assert!(why.contains("kvm_amd"), "{why}");
        let (lab, why) = decide_lab(LabChoice::Auto, &facts(KvmKind::Pvm, true, &[])).unwrap();
        assert_eq!(lab, Lab::Emulated);
        assert!(why.contains("PVM"), "{why}");
        let (lab, why) = decide_lab(LabChoice::Auto, &facts(hw.clone(), false, &[])).unwrap();
        assert_eq!(lab, Lab::Emulated);
        assert!(
            why.contains("CAP_NET_ADMIN") && why.contains("CAP_SYS_ADMIN"),
            "{why}"
        );
        let e = decide_lab(LabChoice::Native, &facts(hw.clone(), true, &["iperf3"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--lab native") && e.contains("iperf3"), "{e}");
        let e = decide_lab(LabChoice::Native, &facts(KvmKind::Pvm, true, &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PVM"), "{e}");
        let (lab, _) = decide_lab(LabChoice::Emulated, &facts(hw, true, &[])).unwrap();
        assert_eq!(lab, Lab::Emulated);
    }

    #[test]
    fn arguments_parse_with_defaults() {
        let parse = |args: &[&str]| {
            let mut v = vec!["netvmm", "compare"];
            v.extend_from_slice(args);
            crate::args::Cli::try_parse_from(v).map(|c| match c.command {
                crate::args::Command::Compare(a) => a,
                other => panic!("{other:?}"),
            })
        };
        let a = parse(&[]).unwrap();
        assert_eq!(a.backends, Backend::ALL);
        assert_eq!(
            (a.lab, a.duration, a.json, a.explain),
            (LabChoice::Auto, 5, false, false)
        );
        assert_eq!(a.datapath, DatapathChoice::User);
        assert_eq!(
            parse(&["--datapath", "both"]).unwrap().datapath,
            DatapathChoice::Both
        );
        assert!(parse(&["--datapath", "kernel"]).is_err());
        assert_eq!(a.transport, Transport::Mmio);
        let pci = parse(&["--transport", "pci"]).unwrap().transport;
        assert_eq!(pci, Transport::Pci);
        assert!(parse(&["--transport", "isa"]).is_err());
        let a = parse(&[
            "--backends",
            "macvtap-vepa,tap",
            "--lab",
            "emulated",
            "--duration",
            "2",
            "--json",
            "--chart",
            "/tmp/c.svg",
            "--explain",
        ])
        .unwrap();
        assert_eq!(a.backends, [Backend::MacvtapVepa, Backend::Tap]);
        assert_eq!(a.lab, LabChoice::Emulated);
        assert_eq!(a.duration, 2);
        assert!(a.json && a.explain);
        assert_eq!(a.chart, Some(PathBuf::from("/tmp/c.svg")));
        assert!(parse(&["--backends", "vde"]).is_err());
        assert!(parse(&["--duration", "0"]).is_err());
        assert!(parse(&["--lab", "cloud"]).is_err());
    }
}
