//! What the host sees of a guest NIC: the backend fd (a tap today) and the interface it
//! belongs to. Nothing here knows about virtqueues or descriptors; the device side only
//! sees [`devices::virtio::net::NetBackend`].

pub mod backends;
pub mod bridge_watch;
pub mod given;
pub mod iface;
pub mod leftovers;
pub mod mac;
pub mod names;
pub mod nat;
pub mod netlink;
pub mod netns;
pub mod owned;
pub mod private_fs;
pub mod shim;
pub mod spec;
pub mod tap;
pub mod tc_redirect;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod test_support;

pub use mac::MacAddr;
pub use spec::{BackendSpec, NetSpec, SpecError, VhostMode};
pub use tap::{Tap, TapError};

#[cfg(test)]
mod kernel_semantics_tests;
