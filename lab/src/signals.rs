//! SIGINT/SIGTERM become a flag that the loops waiting on child processes (the lab host's
//! QEMU, compare's guests) poll, so that every exit path runs the same cleanup (children
//! stopped, the topology removed) instead of dying mid-way.

use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signo: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    RECEIVED.store(signo, Ordering::SeqCst);
}

/// Installs the handlers for SIGINT, SIGTERM and SIGHUP.
pub fn install() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` is an `extern "C"` function that only performs an atomic
        // store, which is async-signal-safe; the sigaction struct is fully initialised.
        let rc = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signal that asked us to stop, if any.
pub fn pending() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Lets the console's escape sequence request a stop like a signal would.
pub fn request_stop(signo: i32) {
    RECEIVED.store(signo, Ordering::SeqCst);
}
