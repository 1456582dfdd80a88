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
