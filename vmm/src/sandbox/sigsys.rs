//! What a filtered thread's forbidden syscall turns into: the filters answer SECCOMP_RET_TRAP,
//! the kernel raises SIGSYS in that thread, and this handler writes one line naming the
//! thread and the syscall, then ends the process with status 1. It runs under the thread's
//! filter, so it uses only write(2) and exit_group(2), which every list allows, and touches
//! only the stack and a thread-local set before the filter went on.

use std::cell::Cell;

/// Room for a thread name (the kernel keeps 15 bytes of it).
const NAME_LEN: usize = 16;

thread_local! {
    // const-initialised and without a destructor: reading it is a plain TLS load, safe in
    // a signal handler.
    static THREAD_NAME: Cell<[u8; NAME_LEN]> = const { Cell::new([0; NAME_LEN]) };
}

/// Remembers the calling thread's name for the message.
pub fn remember_thread_name() {
    let mut name = [0u8; NAME_LEN];
    let current = std::thread::current();
    let given = current.name().unwrap_or("netvmm").as_bytes();
    let n = given.len().min(NAME_LEN);
    name[..n].copy_from_slice(&given[..n]);
    THREAD_NAME.set(name);
}

/// Offset of `si_syscall` in a SIGSYS siginfo_t on x86_64: three ints and padding, then
/// the union, whose SIGSYS member starts with an 8-byte `si_call_addr`.
const SI_SYSCALL_OFFSET: usize = 24;

struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == 0 || self.len == self.buf.len() {
                return;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn push_number(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The message for `syscall` made on thread `name`.
fn message(name: &[u8], syscall: u32) -> Line {
    let mut line = Line {
        buf: [0; 192],
        len: 0,
    };
    line.push(b"netvmm: seccomp: thread ");
    line.push(name);
    line.push(b" made syscall ");
    line.push_number(syscall);
    line.push(
        b", which its filter does not allow; stopping (--seccomp=off runs without filters)\n",
    );
    line
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; for a seccomp
    // SIGSYS it holds the syscall number at this offset (an aligned i32).
    let syscall = unsafe { *(info as *const u8).add(SI_SYSCALL_OFFSET).cast::<i32>() };
    let line = message(&THREAD_NAME.get(), syscall as u32);
    // SAFETY: write(2) from a live stack buffer and _exit(2) are async-signal-safe; the
    // process ends here, so nothing after the handler runs.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(1);
    }
}

/// Installs the SIGSYS handler for the whole process.
pub fn install_handler() -> std::io::Result<()> {
    // SAFETY: `on_sigsys` only does what is async-signal-safe (see above); the sigaction
    // struct is zeroed, then fully set.
    let rc = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_thread_and_syscall() {
        let mut name = [0u8; NAME_LEN];
        name[..12].copy_from_slice(b"netvmm-vcpu0");
        let line = message(&name, 41);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert_eq!(
            text,
            "netvmm: seccomp: thread netvmm-vcpu0 made syscall 41, which its filter does not allow; stopping (--seccomp=off runs without filters)\n"
        );
        let line = message(b"x", 0);
        assert!(std::str::from_utf8(&line.buf[..line.len])
            .unwrap()
            .contains("syscall 0,"));
    }
}
