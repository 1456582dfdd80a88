//! The host side of COM1: guest output to stdout (and a log file), host stdin to the guest,
//! the terminal in raw mode while the VM runs, and two markers watched in the output.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events};
use vmm_sys_util::eventfd::EventFd;

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

    /// Ends the guest's unfinished line on stdout (not in the log: it is not the guest's).
    pub fn end_line(&mut self) {
        // A closed stdout has no line to end.
        let _ = self
            .stdout
            .write_all(b"\n")
            .and_then(|_| self.stdout.flush());
        self.mid_line = false;
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
/// How much stdin is read at once; the guest's receive FIFO holds 64 bytes.
const STDIN_CHUNK: usize = 256;

/// The console's escape sequence: Ctrl-A x quits, Ctrl-A anything else passes both bytes.
#[derive(Debug, Default)]
pub struct Escape {
    after_ctrl_a: bool,
}

impl Escape {
    /// Appends to `out` what of `input` goes to the guest; true when the user asked to quit
    /// (the rest of `input` is then dropped).
    pub fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.after_ctrl_a {
                self.after_ctrl_a = false;
                if b == ESCAPE_QUIT {
                    return true;
                }
                out.push(ESCAPE);
            }
            if b == ESCAPE {
                self.after_ctrl_a = true;
                continue;
            }
            out.push(b);
        }
        false
    }
}

/// This process's stdin as a file of its own, None when there is none. A duplicate of fd
/// 0: std's Stdin buffers, and what sits in its buffer epoll no longer sees.
pub fn stdin_file() -> Option<File> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    Some(File::from(fd))
}

/// Host stdin to the guest's serial port, driven by the VMM's event loop: stdin is read
/// when it is readable and while the guest has room; the rest waits until the guest has
/// emptied its receive FIFO (the serial port's drained eventfd). A stdin epoll cannot watch
/// (a regular file, /dev/null) is read a chunk each time the guest has drained the last.
pub struct StdinFeed<W: Write + Send> {
    input: File,
    /// Whether epoll can watch stdin; set by [`StdinFeed::init`].
    pollable: bool,
    /// Whether stdin is registered right now (not while input waits for the guest).
    watching: bool,
    ended: bool,
    pending: Vec<u8>,
    escape: Option<Escape>,
    serial: Arc<Mutex<SerialConsole<W>>>,
    drained: EventFd,
}

impl<W: Write + Send> StdinFeed<W> {
    /// Feeds `input` (see [`stdin_file`]) to `serial`, whose drained eventfd is
    /// `drained`. `escape_enabled`: Ctrl-A x quits (a raw terminal; piped input passes
    /// every byte).
    pub fn new(
        input: File,
        serial: Arc<Mutex<SerialConsole<W>>>,
        drained: EventFd,
        escape_enabled: bool,
    ) -> Self {
        Self {
            input,
            pollable: false,
            watching: false,
            ended: false,
            pending: Vec::new(),
            escape: escape_enabled.then(Escape::default),
            serial,
            drained,
        }
    }

    /// Whether stdin has ended (EOF or an error): nothing more will be read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Registers the drained eventfd and, where epoll can, stdin. Returns true when the
    /// user asked to quit (a first chunk of unpollable stdin may hold Ctrl-A x).
    pub fn init(&mut self, ops: &mut EventOps) -> Result<bool, event_manager::Error> {
        ops.add(Events::new(&self.drained, EventSet::IN))?;
        match ops.add(Events::new(&self.input, EventSet::IN)) {
            Ok(()) => {
                self.pollable = true;
                self.watching = true;
                Ok(false)
            }
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EPERM => {
                Ok(self.read_chunk())
            }
            Err(e) => Err(e),
        }
    }

    pub fn owns(&self, fd: RawFd) -> bool {
        fd == self.drained.as_raw_fd() || fd == self.input.as_raw_fd()
    }

    /// Handles readiness of one of its fds. Returns true when the user asked to quit.
    pub fn process(&mut self, fd: RawFd, ops: &mut EventOps) -> bool {
        let mut quit = false;
        if fd == self.drained.as_raw_fd() {
            // Non-blocking; nothing to count.
            let _ = self.drained.read();
            self.push();
            if self.pending.is_empty() && !self.pollable {
                quit = self.read_chunk();
            }
        } else {
            quit = self.read_chunk();
        }
        if self.pollable {
            let want = !self.ended && self.pending.is_empty();
            let stdin = Events::new(&self.input, EventSet::IN);
            let changed = if want && !self.watching {
                ops.add(stdin)
            } else if !want && self.watching {
                ops.remove(stdin)
            } else {
                Ok(())
            };
            // A refused change leaves stdin as it was: at worst input stops flowing.
            if changed.is_ok() {
                self.watching = want;
            }
        }
        quit
    }

    /// Reads one chunk and offers it to the guest. True when it held Ctrl-A x.
    fn read_chunk(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let mut buf = [0u8; STDIN_CHUNK];
        let n = match self.input.read(&mut buf) {
            Ok(0) | Err(_) => {
                self.ended = true;
                return false;
            }
            Ok(n) => n,
        };
        let quit = match &mut self.escape {
            Some(esc) => esc.filter(&buf[..n], &mut self.pending),
            None => {
                self.pending.extend_from_slice(&buf[..n]);
                false
            }
        };
        self.push();
        quit
    }

    /// Moves what fits into the guest's receive FIFO.
    fn push(&mut self) {
        let taken = lock(&self.serial).enqueue(&self.pending);
        self.pending.drain(..taken);
    }
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
        let (sig, rx) = ExitSignal::new().unwrap();
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

    #[test]
    fn ctrl_a_x_quits_and_other_ctrl_a_pairs_pass() {
        let mut esc = Escape::default();
        let mut out = Vec::new();
        assert!(!esc.filter(b"ab\x01", &mut out));
        assert_eq!(out, b"ab", "a lone Ctrl-A waits for the next byte");
        assert!(!esc.filter(b"y\x01\x01", &mut out));
        assert_eq!(out, b"ab\x01y\x01");
        assert!(esc.filter(b"x then more", &mut out));
        assert_eq!(
            out, b"ab\x01y\x01",
            "nothing after the quit reaches the guest"
        );
    }

    /// Runs a StdinFeed in an event loop as the VMM does.
    struct Harness {
        feed: StdinFeed<Vec<u8>>,
        quit: bool,
    }

    impl event_manager::MutEventSubscriber for Harness {
        fn init(&mut self, ops: &mut EventOps) {
            self.quit = self.feed.init(ops).unwrap();
        }
        fn process(&mut self, events: Events, ops: &mut EventOps) {
            self.quit |= self.feed.process(events.fd(), ops);
        }
    }

    /// Feeds `input` to a serial port, the guest reading its FIFO whenever it is full or
    /// the input has stopped; returns what the guest read.
    fn guest_reads(input: File, escape: bool) -> (Vec<u8>, bool) {
        use devices::bus::BusDevice;
        use devices::legacy::IrqTrigger;
        use event_manager::{EventManager, SubscriberOps};
        let irq = IrqTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(SerialConsole::with_input_drained(
            irq,
            drained.try_clone().unwrap(),
            Vec::new(),
        )));
        let harness = Arc::new(Mutex::new(Harness {
            feed: StdinFeed::new(input, serial.clone(), drained, escape),
            quit: false,
        }));
        let mut em = EventManager::<Arc<Mutex<Harness>>>::new().unwrap();
        em.add_subscriber(harness.clone());
        let mut read = Vec::new();
        for _ in 0..100 {
            em.run_with_timeout(50).unwrap();
            // The guest's driver: read while the line status says data is ready.
            let mut com = lock(&serial);
            let mut lsr = [0u8];
            loop {
                com.read(5, &mut lsr);
                if lsr[0] & 1 == 0 {
                    break;
                }
                let mut b = [0u8];
                com.read(0, &mut b);
                read.push(b[0]);
            }
            drop(com);
            if lock(&harness).quit {
                break;
            }
            if lock(&harness).feed.ended() && em.run_with_timeout(0).unwrap() == 0 {
                break;
            }
        }
        let quit = lock(&harness).quit;
        (read, quit)
    }

    #[test]
    fn piped_input_reaches_the_guest_whole_and_in_order_through_a_small_fifo() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let text: Vec<u8> = (0..700u32).map(|i| b'a' + (i % 26) as u8).collect();
        writer.write_all(&text).unwrap();
        drop(writer);
        let (read, quit) = guest_reads(File::from(std::os::fd::OwnedFd::from(reader)), false);
        assert!(!quit);
        assert_eq!(read, text);
    }

    #[test]
    fn a_regular_file_as_stdin_is_fed_too_and_ctrl_a_x_in_it_quits() {
        let dir = std::env::temp_dir().join(format!("netvmm-stdin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("input");
        let text: Vec<u8> = (0..300u32).map(|i| b'0' + (i % 10) as u8).collect();
        std::fs::write(&path, &text).unwrap();
        let (read, quit) = guest_reads(File::open(&path).unwrap(), false);
        assert_eq!((read.as_slice(), quit), (text.as_slice(), false));
        std::fs::write(&path, b"ls\n\x01xreboot\n").unwrap();
        let (read, quit) = guest_reads(File::open(&path).unwrap(), true);
        assert!(quit);
        assert_eq!(read, b"ls\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
