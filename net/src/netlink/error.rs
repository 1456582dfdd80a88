//! Errors that name the action and the object, and the raw error of a request before it
//! gets them.

use std::io;

use super::LinkRef;

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// What went wrong, always naming the action and the object it was attempted on.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a NETLINK_ROUTE socket: {0}")]
    Socket(#[source] io::Error),
    /// `name` is the interface's name, or "ifindex N" when it was named by index.
    #[error("cannot {action}: {}", no_interface(.name))]
    NoSuchDevice { action: String, name: String },
    #[error(
        "cannot {action}: '{}' is not a valid interface name (1 to 15 bytes, \
         no '/', ':', whitespace or control characters)", crate::names::printable(.name)
    )]
    BadName { action: String, name: String },
    #[error("cannot {action}: {reason}")]
    BadArgument { action: String, reason: String },
    #[error("cannot {action}: {source}{}", kernel_says(.extack))]
    Kernel {
        action: String,
        #[source]
        source: io::Error,
        /// The kernel's extended-ack message, when it gave one.
        extack: Option<String>,
    },
    #[error("cannot {action}: {master} is a {kind}, which cannot take ports (bridges can)")]
    NotAMaster {
        action: String,
        master: String,
        kind: String,
    },
    #[error(
        "cannot {action}: {parent} already carries {users}; a passthru macvtap/macvlan \
         takes its parent for itself alone"
    )]
    PassthruBusy {
        action: String,
        parent: String,
        users: String,
    },
    #[error("cannot {action}: {parent} cannot carry a macvtap/macvlan: {reason}")]
    ParentUnfit {
        action: String,
        parent: String,
        reason: String,
    },
    #[error("cannot {action}: every name from the template {template} is taken")]
    NoFreeName { action: String, template: String },
    #[error("cannot {action}: unexpected netlink reply: {reason}")]
    Protocol { action: String, reason: String },
}

fn no_interface(name: &str) -> String {
    // Interface names hold no whitespace, so "ifindex N" can only be an index.
    if name.starts_with("ifindex ") {
        format!("no interface with {name}")
    } else {
        format!("no interface named {name}")
    }
}

fn kernel_says(extack: &Option<String>) -> String {
    match extack {
        Some(m) => format!(" (kernel: {m})"),
        None => String::new(),
    }
}

impl NetlinkError {
    /// The errno behind this error, if the kernel (or a socket call) returned one.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            Self::Socket(e) | Self::Kernel { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the object acted on does not exist.
    pub fn is_no_such_device(&self) -> bool {
        matches!(self, Self::NoSuchDevice { .. }) || self.os_error() == Some(libc::ENODEV)
    }

    /// Whether the caller lacks CAP_NET_ADMIN (in the namespace's owning user namespace).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self.os_error(), Some(libc::EPERM) | Some(libc::EACCES))
    }
}

/// A failed request, before it is given its action text.
#[derive(Debug)]
pub(super) enum ReqError {
    Os(io::Error, Option<String>),
    Protocol(String),
}

impl ReqError {
    pub(super) fn errno(&self) -> Option<i32> {
        match self {
            ReqError::Os(e, _) => e.raw_os_error(),
            ReqError::Protocol(_) => None,
        }
    }

    /// The error for `action`; ENODEV becomes "no interface named `dev`".
    pub(super) fn into_error(self, action: &str, dev: Option<LinkRef>) -> NetlinkError {
        match self {
            ReqError::Os(e, _) if e.raw_os_error() == Some(libc::ENODEV) && dev.is_some() => {
                NetlinkError::NoSuchDevice {
                    action: action.to_string(),
                    name: dev.map(|d| d.to_string()).unwrap_or_default(),
                }
            }
            ReqError::Os(source, extack) => NetlinkError::Kernel {
                action: action.to_string(),
                source,
                extack,
            },
            ReqError::Protocol(reason) => NetlinkError::Protocol {
                action: action.to_string(),
                reason,
            },
        }
    }
}
