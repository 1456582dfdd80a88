//! Test support: helpers for tests that must not touch the host's interfaces. Built for
//! the crate's own tests, and for other crates' tests and benches through the
//! `test-support` feature; not part of the API.

use std::io;

/// Runs `f` on a new thread inside a new, empty network namespace of its own (only that
/// thread moves), for tests that must not touch the host's interfaces. `Err` only when the
/// namespace cannot be made; a panic inside `f` is re-raised here, so tests fail loudly.
pub fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    crate::netns::NetNs::new()?.run(f)
}

/// Runs `f` in a fresh network namespace; skips (returns None) only when no namespace can
/// be made here. A panic in `f` fails the test: it is caught on the namespace thread and
/// resumed here (`in_new_netns` alone would turn it into an `Err`, i.e. a skip).
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let caught = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    match in_new_netns(caught) {
        Ok(Ok(v)) => Some(v),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => {
            eprintln!("skipping: cannot create a network namespace here: {e}");
            None
        }
    }
}

/// A new tap marked as this process's own, and its index: what netvmm makes for a NIC.
pub fn owned_tap() -> (crate::tap::Tap, u32) {
    let tap = crate::tap::Tap::open(None, None).unwrap();
    crate::netlink::set_alias(tap.name(), &crate::owned::owner_alias()).unwrap();
    let index = crate::netlink::link_index(tap.name()).unwrap().unwrap();
    (tap, index)
}
