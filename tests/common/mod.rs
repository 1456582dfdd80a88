//! Shared helpers for the end-to-end tests: running netvmm, and running scenarios in the
//! emulated lab host one at a time (one lab host keeps both cores busy).

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::Mutex;

pub const NETVMM: &str = env!("CARGO_BIN_EXE_netvmm");

static LAB: Mutex<()> = Mutex::new(());

/// Runs netvmm with `args`, no stdin.
pub fn netvmm(args: &[&str]) -> Output {
    Command::new(NETVMM)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("netvmm binary runs")
}

/// The path `netvmm image path ARGS...` prints (building the image if needed).
pub fn image_path(args: &[&str]) -> std::path::PathBuf {
    let mut all = vec!["image", "path"];
    all.extend_from_slice(args);
    let out = netvmm(&all);
    assert!(
        out.status.success(),
        "netvmm {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// What a lab scenario printed and its exit status.
pub struct LabOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl LabOutput {
    /// Value of `key=` on the scenario line that starts with `case=<case>`.
    pub fn field(&self, case: &str, key: &str) -> Option<String> {
        let line = self
            .stdout
            .lines()
            .find_map(|l| l.find(&format!("case={case} ")).map(|at| &l[at..]))?;
        // A guest's last console line may lack its newline, so the case can start mid-line.
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    }

    /// Says and keeps (`record_rerun`) each case the scenario ran once more after a fault
    /// of the emulated lab: the lines `rerun=CASE why=WHY ...` (`lab_try` in prelude.sh).
    pub fn record_reruns(&self, test: &str) {
        for rerun in self.stdout.lines().filter(|l| l.starts_with("rerun=")) {
            let why = rerun.split(' ').find_map(|w| w.strip_prefix("why="));
            let why = why.unwrap_or("no reason given");
            record_rerun(&format!("{test}: {why}"), rerun);
        }
    }

    pub fn dump(&self) -> String {
        format!(
            "lab status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// What `netvmm lab ...` says when the lab host's own kernel hung (see lab::LabError).
pub const LAB_HOST_HUNG: &str = "the lab host's kernel hung";
/// What it says when the lab host's own kernel panicked.
pub const LAB_HOST_CRASHED: &str = "the lab host's kernel crashed";

/// Where the harness keeps what a lab host printed before its kernel hung or crashed: the
/// rerun's success would otherwise hide it, and it is the only record of where that was.
/// `.ci/run` prints this file at its end.
pub fn hang_log() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("lab-host-hangs.log")
}

/// How many times a test runs a lab host whose kernel hung or crashed, in all.
const LAB_TRIES: usize = 3;

/// Runs `f` again (up to `LAB_TRIES` in all) when the lab host's kernel hung or crashed
/// under it: that is the emulated nested virtualization failing, not netvmm (a captured
/// report showed QEMU delivering a timer interrupt to the lab kernel with interrupts
/// disabled). Each such try's output goes to `hang_log()`.
fn with_reruns_on_host_failure(f: impl Fn() -> Output) -> Output {
    let mut out = f();
    for _ in 1..LAB_TRIES {
        // compare reruns its own unfinished backends after a hang and may still succeed.
        if out.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let failed = |l: &&str| l.contains(LAB_HOST_HUNG) || l.contains(LAB_HOST_CRASHED);
        let Some(line) = stderr.lines().find(failed) else {
            break;
        };
        eprintln!("test harness: {line}; running the lab once more");
        let what = format!(
            "{}: {line}",
            std::thread::current().name().unwrap_or("a test")
        );
        let detail = format!(
            "--- stdout ---\n{}\n--- stderr ---\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        append_to_hang_log(&what, &detail);
        out = f();
    }
    out
}

/// Says that a scenario ran a case again after a fault of the emulated lab (`what`), and
/// keeps `detail` (what the first try printed) in `hang_log()`.
pub fn record_rerun(what: &str, detail: &str) {
    eprintln!("test harness: {what}; that case ran once more: {detail}");
    append_to_hang_log(what, detail);
}

fn append_to_hang_log(what: &str, detail: &str) {
    use std::io::Write;
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(hang_log())
        .and_then(|mut f| writeln!(f, "=== {what}\n{detail}"));
    if let Err(e) = appended {
        eprintln!("test harness: cannot write {}: {e}", hang_log().display());
    }
}

/// Runs netvmm with `args` that boot a lab host (`netvmm lab run ...`, `netvmm compare`),
/// one lab at a time.
pub fn netvmm_in_lab(args: &[&str]) -> Output {
    let _guard = LAB.lock().unwrap_or_else(|p| p.into_inner());
    with_reruns_on_host_failure(|| netvmm(args))
}

/// Runs `cmd` (which boots lab hosts through netvmm, like examples/ci-boot-test.sh), one
/// lab at a time, again if the lab host's kernel hung or crashed.
pub fn command_in_lab(cmd: impl Fn() -> Output) -> Output {
    let _guard = LAB.lock().unwrap_or_else(|p| p.into_inner());
    with_reruns_on_host_failure(cmd)
}

/// Runs `script` inside the lab host with `netvmm lab exec`, one lab at a time, again if
/// the lab host's kernel hung or crashed.
pub fn lab(script: &str, timeout_s: u32) -> LabOutput {
    let _guard = LAB.lock().unwrap_or_else(|p| p.into_inner());
    with_scenario_file(script, |path| {
        with_reruns_on_host_failure(|| lab_exec(path, timeout_s, &[], &[]))
    })
}

/// Runs `script` inside the lab host once, whatever happens to the lab host, with `env`
/// set for netvmm.
pub fn lab_once(script: &str, timeout_s: u32, env: &[(&str, &str)]) -> LabOutput {
    let _guard = LAB.lock().unwrap_or_else(|p| p.into_inner());
    with_scenario_file(script, |path| lab_exec(path, timeout_s, env, &[]))
}

/// Runs `script` inside the lab host with these host files carried in as
/// /lab/files/<name>, one lab at a time, again if the lab host's kernel hung or crashed.
pub fn lab_with_files(script: &str, timeout_s: u32, files: &[&std::path::Path]) -> LabOutput {
    let _guard = LAB.lock().unwrap_or_else(|p| p.into_inner());
    with_scenario_file(script, |path| {
        with_reruns_on_host_failure(|| lab_exec(path, timeout_s, &[], files))
    })
}

fn lab_exec(
    scenario: &std::path::Path,
    timeout_s: u32,
    env: &[(&str, &str)],
    files: &[&std::path::Path],
) -> Output {
    let mut cmd = Command::new(NETVMM);
    cmd.args(["lab", "exec", "--timeout", &timeout_s.to_string()]);
    for f in files {
        cmd.arg("--file").arg(f);
    }
    cmd.arg(scenario)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("netvmm lab exec runs")
}

/// The shell functions every scenario may use (`v`, `nic`, `lab_fault`, `lab_try`), put
/// before it.
pub const PRELUDE: &str = include_str!("prelude.sh");

fn with_scenario_file(script: &str, run: impl FnOnce(&std::path::Path) -> Output) -> LabOutput {
    let dir = std::env::temp_dir().join(format!("netvmm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("scenario.sh");
    std::fs::write(&path, format!("{PRELUDE}\n{script}")).unwrap();
    let out = run(&path);
    let _ = std::fs::remove_dir_all(&dir);
    LabOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
