//! Where a hung lab host's CPUs are, asked of QEMU's human monitor (a unix socket) before the
//! lab host is stopped. A hang inside the emulated nested SVM leaves nothing else behind: a
//! lab host whose CPUs are all stuck cannot print a thing, and one that still can prints
//! only what its kernel notices. The lab kernel runs with `nokaslr`, so a RIP in its text can
//! be looked up in that kernel's symbols (Debian's `-dbg` package of the same release).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the monitor gets to answer: the emulation is busy, but a register dump is quick.
const ANSWER_TIME: Duration = Duration::from_secs(3);
/// What the human monitor prints when it waits for the next command.
const PROMPT: &str = "(qemu)";

/// One line per CPU (`CPU#1 RIP=ffffffff81123456 CPL=0 HLT=0`), or why there is none.
pub fn cpu_states(socket: &Path) -> Result<Vec<String>, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"info registers -a\n")
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut text = Vec::new();
    let mut buf = [0u8; 8192];
    let start = Instant::now();
    let mut states = Vec::new();
    while start.elapsed() < ANSWER_TIME {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
        // The dump is complete when the monitor's prompt follows it.
        let so_far = String::from_utf8_lossy(&text);
        states = parse(&so_far);
        if !states.is_empty() && so_far.trim_end().ends_with(PROMPT) {
            break;
        }
    }
    if states.is_empty() {
        return Err("the monitor gave no register dump".into());
    }
    Ok(states)
}

/// The CPU number, RIP, privilege level and halt state of each CPU in an `info registers -a`
/// answer.
fn parse(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cpu = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("CPU#") {
            cpu = Some(n.trim().to_string());
        }
        let Some(rest) = line.strip_prefix("RIP=") else {
            continue;
        };
        let field = |key: &str| {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .unwrap_or("?")
                .to_string()
        };
        let rip = rest.split_whitespace().next().unwrap_or("?");
        let n = cpu.take().unwrap_or_else(|| "?".into());
        out.push(format!(
            "CPU#{n} RIP={rip} CPL={} HLT={}",
            field("CPL="),
            field("HLT=")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_register_dump_gives_one_line_per_cpu() {
        let dump = "QEMU 7.2.22 monitor - type 'help' for more information\r\n(qemu) info registers -a\r\n\r\nCPU#0\r\nRAX=0000000000000000 RBX=ffff888003a1c000\r\nRIP=ffffffff81e5a8e2 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\r\nES =0000 0000000000000000 00000000 00000000\r\n\r\nCPU#1\r\nRIP=00007f1c2a3b4c5d RFL=00000202 [-------] CPL=3 II=0 A20=1 SMM=0 HLT=0\r\n(qemu) ";
        assert_eq!(
            parse(dump),
            vec![
                "CPU#0 RIP=ffffffff81e5a8e2 CPL=0 HLT=1".to_string(),
                "CPU#1 RIP=00007f1c2a3b4c5d CPL=3 HLT=0".to_string(),
            ]
        );
        assert!(parse("(qemu) ").is_empty());
    }

    #[test]
    fn no_monitor_is_a_reason_not_a_panic() {
        let err = cpu_states(Path::new("/nonexistent/monitor")).unwrap_err();
        assert!(err.contains("/nonexistent/monitor"), "{err}");
    }
}
