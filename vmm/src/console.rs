//! The host side of COM1: guest output to stdout (and a log file), host stdin to the guest,
//! the terminal in raw mode while the VM runs, and two markers watched in the output.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use devices::bus::lock;
use devices::exit::{ExitSignal, VmExit};
use devices::legacy::SerialConsole;

/// What a kernel prints when it panics; seen on the console, it ends the VM as a panic even
/// when the guest has no pvpanic driver loaded.
pub const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// The guest image's ready line (resources/guest-init.sh); its time goes into the boot report.
pub const READY_MARKER: &[u8] = b"netvmm-guest: ready";

/// Matches a fixed byte string in a stream, one byte at a time.
#[derive(Debug)]
pub struct MarkerWatch {
    marker: &'static [u8],
    matched: usize,
}

impl MarkerWatch {
    pub fn new(marker: &'static [u8]) -> Self {
        Self { marker, matched: 0 }
    }

    /// Feeds one byte; true when it completes the marker.
    pub fn feed(&mut self, b: u8) -> bool {
        if self.marker.get(self.matched) == Some(&b) {
            self.matched += 1;
        } else {
            // Neither marker repeats its first byte inside itself, so restarting is exact.
            self.matched = usize::from(self.marker.first() == Some(&b));
        }
        if self.matched == self.marker.len() {
            self.matched = 0;
            return true;
        }
        false
    }
}

/// Guest console output sink: stdout, an optional log, and the marker watches.
pub struct ConsoleSink {
    stdout: std::io::Stdout,
    log: Option<File>,
    panic: MarkerWatch,
    ready: MarkerWatch,
    ready_at: Arc<OnceLock<Instant>>,
    exit: ExitSignal,
    mid_line: bool,
}

impl ConsoleSink {
    /// Whether the guest's last output left the cursor mid-line: the VMM's own closing
    /// message then starts on a fresh line.
    pub fn mid_line(&self) -> bool {
        self.mid_line
    }

    pub fn new(log: Option<File>, exit: ExitSignal, ready_at: Arc<OnceLock<Instant>>) -> Self {
        Self {
            stdout: std::io::stdout(),
            log,
            panic: MarkerWatch::new(PANIC_MARKER),
            ready: MarkerWatch::new(READY_MARKER),
            ready_at,
            exit,
            mid_line: false,
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if self.panic.feed(b) {
                self.exit.signal(VmExit::GuestPanic);
            }
            if self.ready.feed(b) {
                let _ = self.ready_at.set(Instant::now());
            }
        }
        if let Some(&last) = buf.last() {
            self.mid_line = last != b'\n';
        }
        // A closed stdout (reader went away) must not take the log or the guest down.
        let _ = self.stdout.write_all(buf).and_then(|_| self.stdout.flush());
        if let Some(log) = self.log.as_mut() {
            log.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Puts stdin's terminal into raw mode and restores it when dropped or asked to.
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    /// Raw mode when stdin is a terminal; a no-op guard otherwise.
    pub fn enter() -> Self {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return Self { saved: None };
        }
        // SAFETY: termios is plain data; tcgetattr fills it and we check its result.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and a valid pointer to a termios we own.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Self { saved: None };
        }
        let mut raw = saved;
        // SAFETY: raw is a valid termios copied from the terminal's settings.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: valid fd and termios; failure leaves the terminal as it was.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Self { saved: None };
        }
        Self { saved: Some(saved) }
    }

    pub fn is_raw(&self) -> bool {
        self.saved.is_some()
    }

    pub fn restore(&mut self) {
        if let Some(saved) = self.saved.take() {
            // SAFETY: restores settings previously read from the same terminal.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Ctrl-A then `x` leaves the VM from a raw terminal, as in QEMU.
const ESCAPE: u8 = 0x01;
const ESCAPE_QUIT: u8 = b'x';

/// Forwards stdin to the guest's serial port on a thread of its own, confined to the
/// console's sandbox from its start. In a raw terminal, Ctrl-A x asks the VMM to stop
/// (reported as SIGINT would be).
pub fn spawn_stdin_forwarder<W: Write + Send + 'static>(
    serial: Arc<Mutex<SerialConsole<W>>>,
    escape_enabled: bool,
    sandbox: &crate::sandbox::Sandbox,
) -> Result<(), crate::sandbox::SandboxError> {
    sandbox.spawn(
        "netvmm-stdin".into(),
        crate::sandbox::ThreadKind::Console,
        move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 256];
            let mut escape_pending = false;
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut input = Vec::with_capacity(n);
                for &b in &buf[..n] {
                    if escape_enabled && escape_pending {
                        escape_pending = false;
                        if b == ESCAPE_QUIT {
                            crate::signals::request_stop(libc::SIGINT);
                            return;
                        }
                        input.push(ESCAPE);
                    }
                    if escape_enabled && b == ESCAPE {
                        escape_pending = true;
                        continue;
                    }
                    input.push(b);
                }
                let mut rest = input.as_slice();
                while !rest.is_empty() {
                    let taken = lock(&serial).enqueue(rest);
                    rest = &rest[taken..];
                    if taken == 0 {
                        // The guest has not drained its receive FIFO yet.
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_found_across_writes_and_after_false_starts() {
        let mut w = MarkerWatch::new(PANIC_MARKER);
        let text = b"[ 1.0] KKernel panic - not syncing: VFS";
        let hits = text.iter().filter(|b| w.feed(**b)).count();
        assert_eq!(hits, 1);
        let mut w = MarkerWatch::new(READY_MARKER);
        assert!(!b"netvmm-guest: read".iter().any(|b| w.feed(*b)));
        assert!(w.feed(b'y'));
    }

    #[test]
    fn sink_reports_panic_and_logs() {
        let (sig, rx) = ExitSignal::new();
        let path = std::env::temp_dir().join(format!("netvmm-sink-{}", std::process::id()));
        let log = File::create(&path).unwrap();
        let ready = Arc::new(OnceLock::new());
        let mut sink = ConsoleSink::new(Some(log), sig, ready.clone());
        sink.write_all(b"netvmm-guest: ready uptime=1\n").unwrap();
        assert!(ready.get().is_some());
        assert!(rx.try_recv().is_err());
        sink.write_all(b"Kernel panic - not syncing: Attempted to kill init!\n")
            .unwrap();
        assert_eq!(rx.try_recv().unwrap(), VmExit::GuestPanic);
        let logged = std::fs::read_to_string(&path).unwrap();
        assert!(logged.contains("Attempted to kill init"));
        std::fs::remove_file(&path).unwrap();
    }
}
