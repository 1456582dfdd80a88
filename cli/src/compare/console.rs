//! What the scenario prints, as it comes: `cmp-result` lines are kept (should the lab die,
//! the figures of the backends that finished are not lost), the heartbeat is only noted,
//! everything else (progress, and whatever goes wrong) goes to stderr. A console that
//! forwards (a compare inside the lab host, whose caller reads its console) passes every
//! line on. A watchdog stops the run, the way Ctrl-C does, when the scenario falls silent.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::scenario::{HEARTBEAT, RESULT};

pub struct Console {
    since: Instant,
    /// When the last line came, in milliseconds since `since`.
    last_ms: AtomicU64,
    kept: Mutex<String>,
    forward: bool,
}

impl Console {
    pub fn new() -> Arc<Self> {
        Self::with_forwarding(false)
    }

    /// A console that also passes result lines and the heartbeat on to stderr.
    pub fn with_forwarding(forward: bool) -> Arc<Self> {
        Arc::new(Self {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
            kept: Mutex::new(String::new()),
            forward,
        })
    }

    /// One line of the scenario's output, without its line end.
    pub fn line(&self, line: &str) {
        self.last_ms
            .store(self.since.elapsed().as_millis() as u64, Ordering::SeqCst);
        let line = line.trim_end_matches(['\n', '\r']);
        let result = line.starts_with(RESULT);
        if result {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.push_str(line);
            kept.push('\n');
        }
        if self.forward || (!result && line != HEARTBEAT) {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }

    /// The result lines so far.
    pub fn kept(&self) -> String {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How long since the scenario's last line.
    pub fn silent_for(&self) -> Duration {
        self.since
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::SeqCst)))
    }

    /// Feeds `r` to this console, a line at a time, until its end.
    pub fn read_from(self: &Arc<Self>, r: impl std::io::Read + Send + 'static) -> JoinHandle<()> {
        let me = self.clone();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => me.line(&String::from_utf8_lossy(&buf)),
                }
            }
        })
    }
}

/// Asks the run to stop (as Ctrl-C would: the lab runner then stops QEMU) when its console
/// stays silent for longer than a limit.
pub struct Watchdog {
    done: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(console: Arc<Console>, limit: Duration) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let (d, s) = (done.clone(), stalled.clone());
        let thread = std::thread::spawn(move || {
            while !d.load(Ordering::SeqCst) {
                if console.silent_for() > limit {
                    s.store(true, Ordering::SeqCst);
                    crate::signals::request_stop(libc::SIGALRM);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self {
            done,
            stalled,
            thread: Some(thread),
        }
    }

    /// Ends the watch; whether it stopped the run. Its stop request is withdrawn, so that
    /// what comes next does not take it for the user's.
    pub fn finish(mut self) -> bool {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let stalled = self.stalled.load(Ordering::SeqCst);
        if stalled {
            crate::signals::request_stop(0);
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_silent_console_trips_the_watchdog() {
        let console = Console::new();
        let dog = Watchdog::start(console.clone(), Duration::from_millis(300));
        let end = Instant::now() + Duration::from_secs(5);
        while crate::signals::pending().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(crate::signals::pending(), Some(libc::SIGALRM));
        assert!(dog.finish());
        assert_eq!(
            crate::signals::pending(),
            None,
            "the watchdog's stop is withdrawn"
        );
    }

    #[test]
    fn a_child_output_is_split_into_results_and_progress() {
        let console = Console::new();
        let mut child = Command::new("sh")
            .args([
                "-c",
                "echo 'cmp-result {}\r'; echo cmp-alive; echo progress; printf 'cmp-result x'",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let reader = console.read_from(child.stdout.take().unwrap());
        assert!(child.wait().unwrap().success());
        reader.join().unwrap();
        assert_eq!(console.kept(), "cmp-result {}\ncmp-result x\n");
    }
}
