//! Running one scenario in the emulated lab host and bringing its output and status back.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cpio::CpioWriter;
use crate::images::{ImageError, ImageStore, Images};
use crate::progress::{Progress, ProgressSink};
use net::private_fs::PrivateDir;

/// The lab's init writes this to its second serial port when the scenario ends.
const EXIT_PREFIX: &str = "netvmm-lab-exit=";
/// Kernel arguments for the lab host: console on the first serial port, and quiet, so that
/// what reaches our stdout is the scenario's own output.
/// `nokaslr`: a hung lab host's RIPs (see monitor.rs) can then be looked up in its symbols.
const LAB_CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1 nokaslr";
/// Lab host RAM when the caller does not say: room for two 256 MiB guests and the images.
pub const DEFAULT_LAB_MEMORY_MIB: u64 = 2048;
/// How long a lab run may take when the scenario has no timeout of its own.
pub const DEFAULT_LAB_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// What the lab host itself needs on top of the scenario's time (its boot, the images).
const LAB_BOOT_ALLOWANCE: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot find qemu-system-x86_64 (install Debian's qemu-system-x86): {0}")]
    NoQemu(std::io::Error),
    #[error("cannot {what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot list the libraries of {exe} with ldd: {reason}")]
    Ldd { exe: PathBuf, reason: String },
    #[error("the lab host did not finish within {0:?}; it was stopped")]
    Timeout(Duration),
    #[error("interrupted by signal {0}; the lab host was stopped")]
    Signalled(i32),
    /// The lab host's own kernel hung (nested-virtualization emulation has been seen to
    /// soft-lock it): nothing the scenario did after that can be trusted.
    #[error("the lab host's kernel hung (\"{0}\"); it was stopped")]
    HostFailed(String),
    /// QEMU ended without the scenario's status: the lab host's kernel panicked (seen:
    /// "corrupted stack end detected inside scheduler" in a netvmm vCPU thread) or the
    /// emulated machine reset without a word (seen under the same emulation; lab-init never
    /// reboots). The text is the panic line, or says that there was none.
    #[error("the lab host's kernel crashed ({0})")]
    HostCrashed(String),
}

/// What the lab console said about the lab host's own kernel.
#[derive(Debug, Default, Clone)]
struct ConsoleMarks {
    /// The first report of a hang in a netvmm task.
    hang: Option<String>,
    /// The last kernel panic line. A guest's panic reaches this console too, so it only
    /// names the cause when the lab host then ended without a status.
    panic: Option<String>,
}

/// Why a lab host ended without a status when its console showed no panic.
const NO_PANIC_LINE: &str =
    "it reset with no kernel message: a triple fault, or a reboot, which lab-init never asks for";

fn kernel_panic(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    text.contains("Kernel panic - not syncing")
        .then(|| text.trim().to_string())
}

/// The lab host's kernel reports a CPU stuck in a netvmm task: a vCPU inside KVM_RUN that
/// the emulated nested SVM never lets out (`watchdog: BUG: soft lockup - CPU#0 stuck for 45s!
/// [netvmm-vcpu0:196]`), or a process's main thread (`[netvmm:190]`, seen in CI: a guest's
/// VMM or compare itself). A guest's own messages also reach this console, but no guest task
/// is called netvmm. (A lab kernel that crashes outright ends QEMU: see `kernel_panic`.)
fn host_failure(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let netvmm_task = text.contains("[netvmm-") || text.contains("[netvmm:");
    (text.contains("soft lockup") && netvmm_task).then(|| text.trim().to_string())
}

/// lab-init writes a line to the third serial port every few seconds; a lab host silent
/// there for this long (or that never beats: it hung while booting) has stopped as a whole
/// (both CPUs stuck, which no watchdog inside it can report). [`LabContext::silence_limit`]
/// changes it.
pub const HOST_SILENCE_LIMIT: Duration = Duration::from_secs(120);
/// The variable, in seconds, that programs read into [`LabContext::silence_limit`] (the
/// CLI does; the tests shorten it).
pub const SILENCE_ENV: &str = "NETVMM_LAB_SILENCE_S";

/// What a lab run takes from its caller's surroundings, which this library does not read
/// itself: where the images are, where its progress goes, how long the lab host may fall
/// silent.
#[derive(Clone)]
pub struct LabContext {
    pub images: ImageStore,
    pub progress: ProgressSink,
    pub silence_limit: Duration,
}

impl LabContext {
    /// Images from `images`, progress to `progress`, the default silence limit.
    pub fn new(images: ImageStore, progress: ProgressSink) -> Self {
        Self {
            images,
            progress,
            silence_limit: HOST_SILENCE_LIMIT,
        }
    }

    /// The context netvmm's settings name, which `var` looks up by name (the CLI passes
    /// `std::env::var_os`): the images of [`ImageStore::from_vars`], and [`SILENCE_ENV`]
    /// (whole seconds) as the silence limit when it is set and a number.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
        progress: ProgressSink,
    ) -> Result<Self, ImageError> {
        let mut context = Self::new(ImageStore::from_vars(&var)?, progress);
        let silence = var(SILENCE_ENV).and_then(|v| v.to_str()?.parse().ok());
        if let Some(s) = silence {
            context.silence_limit = Duration::from_secs(s);
        }
        Ok(context)
    }
}

impl std::fmt::Debug for LabContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabContext")
            .field("images", &self.images)
            .field("silence_limit", &self.silence_limit)
            .finish_non_exhaustive()
    }
}

/// The lab host's heartbeat: a file that grows while the host lives.
struct Heartbeat {
    path: PathBuf,
    len: u64,
    /// When the file last grew, or when QEMU started: a lab host boots in seconds, and one
    /// that hangs while booting (seen in CI: no output at all) is as hung as any.
    grew: Instant,
}

impl Heartbeat {
    fn new(path: PathBuf, started: Instant) -> Self {
        Self {
            path,
            len: 0,
            grew: started,
        }
    }

    /// How long the host has been silent, given the heartbeat file's length now.
    fn silent_for(&mut self, len: u64, now: Instant) -> Duration {
        if len > self.len {
            self.len = len;
            self.grew = now;
        }
        now.saturating_duration_since(self.grew)
    }

    fn check(&mut self) -> Duration {
        let len = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        self.silent_for(len, Instant::now())
    }
}

/// How long a lab host whose kernel reported a hang keeps running before it is stopped: long
/// enough for lab-init's kernel-log watcher to copy the report's backtrace to the console.
const HANG_REPORT_GRACE: Duration = Duration::from_secs(5);

/// Where the lab console goes.
#[derive(Clone, Default)]
pub enum Console {
    /// To our stdout as it comes, byte for byte, so that an interactive guest's prompt shows.
    #[default]
    Stdout,
    /// To a handler, a line at a time (without its line end), for a caller whose stdout is
    /// not for the lab's chatter.
    Lines(std::sync::Arc<dyn Fn(&str) + Send + Sync>),
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Console::Stdout => "Console::Stdout",
            Console::Lines(_) => "Console::Lines",
        })
    }
}

/// Sends the lab console where `to` says, and notes the first line that says the lab
/// host's kernel failed.
fn watch_console(
    mut console: impl std::io::Read + Send + 'static,
    to: Console,
    marks: std::sync::Arc<std::sync::Mutex<ConsoleMarks>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut line = Vec::new();
        let end_of_line = |line: &[u8]| {
            let (hang, panic) = (host_failure(line), kernel_panic(line));
            if hang.is_some() || panic.is_some() {
                let mut m = marks.lock().unwrap_or_else(|p| p.into_inner());
                if m.hang.is_none() {
                    m.hang = hang;
                }
                if panic.is_some() {
                    m.panic = panic;
                }
            }
            if let Console::Lines(handler) = &to {
                let text = String::from_utf8_lossy(line);
                handler(text.trim_end_matches('\r'));
            }
        };
        loop {
            let n = match console.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Console::Stdout = to {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
            }
            for &b in &buf[..n] {
                if b == b'\n' {
                    end_of_line(&line);
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            end_of_line(&line);
        }
    })
}

fn file_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LabError + 'a {
    move |source| LabError::File {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A host disk image handed to the lab host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabDisk {
    pub host: PathBuf,
    pub readonly: bool,
}

impl LabDisk {
    /// The lab host's name for disk `index`.
    pub fn lab_path(index: usize) -> String {
        format!("/dev/vd{}", char::from(b'a' + (index % 26) as u8))
    }

    /// QEMU's arguments for it as disk `index` (a comma in a QEMU option value is doubled).
    fn qemu_args(&self, index: usize) -> [String; 4] {
        let file = self.host.display().to_string().replace(',', ",,");
        let ro = if self.readonly { "on" } else { "off" };
        [
            "-drive".into(),
            format!("file={file},format=raw,if=none,id=netvmm-disk{index},readonly={ro},cache=writeback"),
            "-device".into(),
            format!("virtio-blk-pci,drive=netvmm-disk{index},serial=netvmm-disk{index}"),
        ]
    }
}

/// The most disks a lab host takes (vda to vdz).
pub const MAX_LAB_DISKS: usize = 26;

/// One scenario for the lab host.
#[derive(Debug, Clone)]
pub struct LabRun {
    /// Shell commands run by the lab's /bin/sh with netvmm on PATH, the guest image in
    /// /lab/guest, and `$NETVMM_GUEST_KERNEL`, `$NETVMM_GUEST_VMLINUX`, `$NETVMM_GUEST_INITRD` set.
    pub script: String,
    /// Host files copied into the lab at the given absolute paths.
    pub files: Vec<(PathBuf, String)>,
    /// Environment variables exported to the scenario.
    pub env: Vec<(String, String)>,
    /// Files the scenario leaves in the lab (lab path) to copy back to the host (host path).
    pub outputs: Vec<(String, PathBuf)>,
    /// Host disk images given to the lab host as virtio disks, in order: /dev/vda, /dev/vdb,
    /// ... in there. QEMU reads and writes the host file itself, so what a guest writes is
    /// in it when the run ends, with no copy in or out (and QEMU's image lock holds it).
    pub disks: Vec<LabDisk>,
    pub memory_mib: u64,
    pub timeout: Duration,
    pub console: Console,
    pub context: LabContext,
}

impl LabRun {
    pub fn new(script: impl Into<String>, context: LabContext) -> Self {
        Self {
            script: script.into(),
            files: Vec::new(),
            env: Vec::new(),
            outputs: Vec::new(),
            disks: Vec::new(),
            memory_mib: DEFAULT_LAB_MEMORY_MIB,
            timeout: DEFAULT_LAB_TIMEOUT,
            console: Console::Stdout,
            context,
        }
    }

    /// Boots the lab host, runs the scenario, returns the scenario's exit status.
    pub fn run(&self) -> Result<i32, LabError> {
        let images = Images::all(&self.context.images)?;
        let work = WorkDir::create()?;
        let (initrd, initrd_file) = work.create_file("lab-initrd")?;
        self.write_initrd(&images, initrd_file, &initrd)?;
        let (status_path, _) = work.create_file("status")?;
        let alive_path = work.path().join("alive");
        let monitor_path = work.path().join("monitor");

        (self.context.progress)(Progress::Booting);
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-smp", "2"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-nodefaults", "-no-reboot", "-display", "none"])
            .args(["-serial", "stdio"])
            .arg("-serial")
            .arg(format!("file:{}", status_path.display()))
            .arg("-serial")
            .arg(format!("file:{}", alive_path.display()))
            .arg("-monitor")
            .arg(format!(
                "unix:{},server=on,wait=off",
                monitor_path.display()
            ))
            .arg("-kernel")
            .arg(&images.lab_kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", LAB_CMDLINE])
            .args(
                self.disks
                    .iter()
                    .enumerate()
                    .flat_map(|(i, d)| d.qemu_args(i)),
            )
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(LabError::NoQemu)?;
        let marks = std::sync::Arc::new(std::sync::Mutex::new(ConsoleMarks::default()));
        let console = child
            .stdout
            .take()
            .map(|c| watch_console(c, self.console.clone(), marks.clone()));
        let limit = self.timeout + LAB_BOOT_ALLOWANCE;
        let mut heartbeat = Heartbeat::new(alive_path, Instant::now());
        let waited = wait_or_kill(
            &mut child,
            limit,
            &marks,
            &mut heartbeat,
            &monitor_path,
            &self.context,
        );
        if let Some(c) = console {
            let _ = c.join();
        }
        waited?;
        let status =
            std::fs::read_to_string(&status_path).map_err(file_err("read", &status_path))?;
        for (idx, (_, host)) in self.outputs.iter().enumerate() {
            if let Some(data) = parse_output(&status, idx) {
                std::fs::write(host, data).map_err(file_err("write", host))?;
            }
        }
        parse_status(&status).ok_or_else(|| {
            let m = marks.lock().unwrap_or_else(|p| p.into_inner());
            LabError::HostCrashed(
                m.panic
                    .as_ref()
                    .map_or_else(|| NO_PANIC_LINE.to_string(), |line| format!("\"{line}\"")),
            )
        })
    }

    fn write_initrd(&self, images: &Images, f: File, out: &Path) -> Result<(), LabError> {
        let mut base =
            std::fs::read(&images.lab_initrd).map_err(file_err("read", &images.lab_initrd))?;
        // The kernel looks for a following archive only at a 4-byte boundary; zeros between
        // archives are skipped.
        base.resize(base.len().next_multiple_of(512), 0);

        let mut c = CpioWriter::new();
        let exe = std::env::current_exe().map_err(file_err("locate", Path::new("netvmm")))?;
        add_host_file(&mut c, &exe, "/lab/bin/netvmm", 0o755)?;
        for lib in shared_libraries(&exe)? {
            let at = lib.to_string_lossy().into_owned();
            add_host_file(&mut c, &lib, &at, 0o755)?;
        }
        add_host_file(&mut c, &images.guest_kernel, "/lab/guest/vmlinuz", 0o644)?;
        add_host_file(&mut c, &images.guest_vmlinux, "/lab/guest/vmlinux", 0o644)?;
        add_host_file(
            &mut c,
            &images.guest_initrd,
            "/lab/guest/initrd.cpio.gz",
            0o644,
        )?;
        for (host, at) in &self.files {
            add_host_file(&mut c, host, at, 0o644)?;
        }
        c.add_file("/lab/scenario", 0o755, self.scenario().as_bytes())
            .map_err(file_err("archive", Path::new("/lab/scenario")))?;

        let mut w = BufWriter::new(f);
        w.write_all(&base).map_err(file_err("write", out))?;
        c.finish(&mut w).map_err(file_err("write", out))?;
        w.flush().map_err(file_err("write", out))
    }

    /// The scenario file: environment first, then the caller's commands.
    pub fn scenario(&self) -> String {
        let mut s = String::from("#!/bin/sh\nexport PATH=/lab/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
        s.push_str("export NETVMM_GUEST_KERNEL=/lab/guest/vmlinuz NETVMM_GUEST_VMLINUX=/lab/guest/vmlinux NETVMM_GUEST_INITRD=/lab/guest/initrd.cpio.gz\n");
        for (k, v) in &self.env {
            s.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
        // A subshell, so that an `exit` in the script still lets the outputs go back.
        s.push_str("(\n");
        s.push_str(&self.script);
        s.push_str("\n)\nnetvmm_status=$?\n");
        for (idx, (lab_path, _)) in self.outputs.iter().enumerate() {
            let p = shell_quote(lab_path);
            s.push_str(&format!(
                "if [ -f {p} ]; then {{ echo {OUTPUT_BEGIN}{idx}; base64 {p}; echo {OUTPUT_END}; }} > /dev/ttyS1; fi\n"
            ));
        }
        s.push_str("exit $netvmm_status\n");
        s
    }
}

fn add_host_file(c: &mut CpioWriter, host: &Path, at: &str, mode: u32) -> Result<(), LabError> {
    let data = std::fs::read(host).map_err(file_err("read", host))?;
    c.add_file(at, mode, &data)
        .map_err(file_err("archive", host))
}

/// The shared libraries (and loader) a dynamically linked binary needs, from ldd.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>, LabError> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|e| LabError::Ldd {
            exe: exe.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// Paths from ldd's output lines (`name => /path (addr)` or `/path (addr)`).
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Single-quotes a string for /bin/sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'\''"#))
}

/// Output files travel back on the status port as base64 between these lines.
const OUTPUT_BEGIN: &str = "netvmm-lab-file=";
const OUTPUT_END: &str = "netvmm-lab-file-end";

/// The bytes of output file number `idx` in the status port's text.
pub fn parse_output(text: &str, idx: usize) -> Option<Vec<u8>> {
    let begin = format!("{OUTPUT_BEGIN}{idx}");
    let mut lines = text.lines().skip_while(|l| l.trim() != begin).skip(1);
    let mut b64 = String::new();
    for l in lines.by_ref() {
        if l.trim() == OUTPUT_END {
            return base64_decode(&b64);
        }
        b64.push_str(l.trim());
    }
    None
}

/// Standard base64 (busybox `base64` output), padding optional.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// Reads `netvmm-lab-exit=N` from the lab's status port.
pub fn parse_status(text: &str) -> Option<i32> {
    text.lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix(EXIT_PREFIX))
        .find_map(|n| n.trim().parse().ok())
}

fn wait_or_kill(
    child: &mut Child,
    limit: Duration,
    marks: &std::sync::Mutex<ConsoleMarks>,
    heartbeat: &mut Heartbeat,
    monitor: &Path,
    context: &LabContext,
) -> Result<(), LabError> {
    let stop = |child: &mut Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    // A hung host: first where its CPUs are, then stop it.
    let stop_hung = |child: &mut Child, why: String| {
        (context.progress)(match crate::monitor::cpu_states(monitor) {
            Ok(cpus) => Progress::HungCpus(cpus),
            Err(e) => Progress::HungCpusUnknown(e),
        });
        stop(child);
        LabError::HostFailed(why)
    };
    let silence_limit = context.silence_limit;
    crate::signals::install()
        .map_err(file_err("install signal handlers for", Path::new("qemu")))?;
    let start = Instant::now();
    let mut hang_seen: Option<Instant> = None;
    loop {
        let exited = child
            .try_wait()
            .map_err(file_err("wait for", Path::new("qemu-system-x86_64")))?
            .is_some();
        let broken = marks.lock().unwrap_or_else(|p| p.into_inner()).hang.clone();
        if exited {
            // A scenario that finished after its host hung is still not to be trusted.
            return broken.map_or(Ok(()), |line| Err(LabError::HostFailed(line)));
        }
        if let Some(sig) = crate::signals::pending() {
            stop(child);
            return Err(LabError::Signalled(sig));
        }
        if start.elapsed() > limit {
            stop(child);
            return Err(LabError::Timeout(limit));
        }
        let silent = heartbeat.check();
        if silent > silence_limit {
            let why = format!(
                "no sign of life from the lab host for {} s",
                silent.as_secs()
            );
            return Err(stop_hung(child, why));
        }
        if let Some(line) = broken {
            let seen = *hang_seen.get_or_insert_with(Instant::now);
            if seen.elapsed() >= HANG_REPORT_GRACE {
                return Err(stop_hung(child, line));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lab run's files (initrd, status, heartbeat, monitor socket): in a directory of its
/// own that nobody else can have prepared or enter (see `net::private_fs`), removed when
/// dropped.
struct WorkDir(PrivateDir);

impl WorkDir {
    fn create() -> Result<Self, LabError> {
        let dir = PrivateDir::new("netvmm-lab-").map_err(file_err(
            "create",
            &std::env::temp_dir().join("netvmm-lab-XXXXXX"),
        ))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// A new file in the work directory, never one that exists or a symlink.
    fn create_file(&self, name: &str) -> Result<(PathBuf, File), LabError> {
        let path = self.path().join(name);
        let f = self
            .0
            .create_file(name)
            .map_err(file_err("create", &path))?;
        Ok((path, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context for runs that are only built here, never booted.
    fn context() -> LabContext {
        let images = ImageStore {
            cache: PathBuf::from("/nonexistent-cache"),
            resources: PathBuf::from("/nonexistent-resources"),
        };
        LabContext::new(images, crate::progress::ignore())
    }

    #[test]
    fn a_lockup_in_a_netvmm_task_is_a_host_failure_and_a_guests_is_not() {
        let lab = b"[   72.431780] watchdog: BUG: soft lockup - CPU#0 stuck for 45s! [netvmm-vcpu0:196]\r";
        assert_eq!(
            host_failure(lab).as_deref(),
            Some("[   72.431780] watchdog: BUG: soft lockup - CPU#0 stuck for 45s! [netvmm-vcpu0:196]")
        );
        let main_thread =
            b"[   52.504991] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [netvmm:190]";
        assert!(host_failure(main_thread).is_some());
        let guest = b"[   30.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [iperf3:88]";
        assert_eq!(host_failure(guest), None);
        assert_eq!(
            host_failure(b"[    3.4] Kernel panic - not syncing: sysrq"),
            None
        );
        assert_eq!(host_failure(b"netvmm-guest: ready uptime=2.30"), None);
    }

    #[test]
    fn a_kernel_panic_line_is_recognised_with_its_reason() {
        let line = b"[  158.762318] Kernel panic - not syncing: corrupted stack end detected inside scheduler\r";
        assert_eq!(
            kernel_panic(line).as_deref(),
            Some("[  158.762318] Kernel panic - not syncing: corrupted stack end detected inside scheduler")
        );
        assert_eq!(kernel_panic(b"[  158.763727]  <TASK>"), None);
    }

    #[test]
    fn the_silence_limit_is_the_setting_when_it_is_a_number() {
        use crate::images::tests::vars;
        let limit = |pairs: &[(&str, &str)]| {
            LabContext::from_vars(vars(pairs), crate::progress::ignore())
                .unwrap()
                .silence_limit
        };
        let home = ("HOME", "/home/u");
        assert_eq!(limit(&[home]), HOST_SILENCE_LIMIT);
        assert_eq!(limit(&[home, (SILENCE_ENV, "15")]), Duration::from_secs(15));
        assert_eq!(limit(&[home, (SILENCE_ENV, "soon")]), HOST_SILENCE_LIMIT);
        let c = LabContext::from_vars(vars(&[home]), crate::progress::ignore()).unwrap();
        assert_eq!(c.images.cache, Path::new("/home/u/.cache/netvmm"));
    }

    #[test]
    fn a_heartbeat_counts_silence_from_its_last_beat_or_the_start() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(PathBuf::from("/nonexistent"), t0);
        let at = |s| t0 + Duration::from_secs(s);
        // A host that never beats is silent from the start (it hung while booting).
        assert_eq!(hb.silent_for(0, at(3)), Duration::from_secs(3));
        assert_eq!(hb.silent_for(2, at(4)), Duration::ZERO);
        assert_eq!(hb.silent_for(2, at(34)), Duration::from_secs(30));
        assert_eq!(hb.silent_for(4, at(35)), Duration::ZERO);
        assert_eq!(hb.silent_for(4, at(163)), Duration::from_secs(128));
    }

    #[test]
    fn the_console_is_forwarded_and_a_lockup_and_the_last_panic_noted() {
        let marks = std::sync::Arc::new(std::sync::Mutex::new(ConsoleMarks::default()));
        let text: &[u8] = b"netvmm-lab: booting\nwatchdog: BUG: soft lockup - CPU#1 stuck for 45s! [netvmm-net:7]\nKernel panic - not syncing: one\nlater\nKernel panic - not syncing: two\n";
        watch_console(text, Console::Stdout, marks.clone())
            .join()
            .unwrap();
        let got = marks.lock().unwrap().clone();
        assert_eq!(
            got.hang.as_deref(),
            Some("watchdog: BUG: soft lockup - CPU#1 stuck for 45s! [netvmm-net:7]")
        );
        assert_eq!(
            got.panic.as_deref(),
            Some("Kernel panic - not syncing: two")
        );
    }

    #[test]
    fn a_line_handler_gets_whole_lines_without_their_ends() {
        let marks = std::sync::Arc::new(std::sync::Mutex::new(ConsoleMarks::default()));
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = got.clone();
        let to = Console::Lines(std::sync::Arc::new(move |l: &str| {
            sink.lock().unwrap().push(l.to_string())
        }));
        // Lines split across reads are whole for the handler; the last needs no newline.
        let text = std::io::Read::chain(&b"cmp tap do"[..], &b"ne\r\n\nprogress\nlast"[..]);
        watch_console(text, to, marks.clone()).join().unwrap();
        assert_eq!(
            *got.lock().unwrap(),
            ["cmp tap done", "", "progress", "last"]
        );
        let m = marks.lock().unwrap();
        assert_eq!((m.hang.as_deref(), m.panic.as_deref()), (None, None));
    }

    #[test]
    fn ldd_output_yields_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        let libs = parse_ldd(text);
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn status_line_is_found_and_garbage_is_not_a_status() {
        assert_eq!(parse_status("noise\nnetvmm-lab-exit=7\n"), Some(7));
        assert_eq!(parse_status("netvmm-lab-exit=x\n"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn scenario_quotes_environment() {
        let mut r = LabRun::new("netvmm doctor", context());
        r.env.push(("A".into(), "it's".into()));
        let s = r.scenario();
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("export A='it'\\''s'\n"));
        assert!(s.contains("(\nnetvmm doctor\n)\n"));
        assert!(s.ends_with("exit $netvmm_status\n"));
    }

    #[test]
    fn outputs_come_back_decoded() {
        assert_eq!(base64_decode("aGVsbG8gd29ybGQK").unwrap(), b"hello world\n");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("a*b").is_none());
        let text = "netvmm-lab-file=1\naGk=\nnetvmm-lab-file-end\nnetvmm-lab-exit=0\n";
        assert_eq!(parse_output(text, 1).unwrap(), b"hi");
        assert!(parse_output(text, 0).is_none());
        let mut r = LabRun::new("true", context());
        r.outputs.push(("/tmp/a b".into(), PathBuf::from("/x")));
        assert!(r.scenario().contains("base64 '/tmp/a b'"));
    }
}

#[cfg(test)]
mod workdir_tests {
    use super::*;

    #[test]
    fn a_prepared_predictable_work_dir_is_not_used_and_nothing_outside_is_touched() {
        let tmp = std::env::temp_dir();
        let victim = tmp.join(format!("netvmm-test-victim-{}", std::process::id()));
        std::fs::write(&victim, b"precious").unwrap();
        let planted: Vec<PathBuf> = (0..8)
            .map(|n| tmp.join(format!("netvmm-lab-{}-{n}", std::process::id())))
            .collect();
        for p in &planted {
            std::fs::create_dir_all(p).unwrap();
            let _ = std::os::unix::fs::symlink(&victim, p.join("status"));
        }
        let work = WorkDir::create().unwrap();
        let made = work.create_file("status");
        let intact = std::fs::read(&victim).unwrap();
        let path = work.path().to_path_buf();
        drop(work);
        for p in &planted {
            let _ = std::fs::remove_dir_all(p);
        }
        let _ = std::fs::remove_file(&victim);
        assert_eq!(
            intact, b"precious",
            "the file a planted symlink named was written"
        );
        assert!(made.is_ok());
        assert!(!planted.contains(&path), "{} was planted", path.display());
    }
}
