//! The two nf_tables requests netvmm makes over NETLINK_NETFILTER itself: list the tables
//! of a family, and delete one table (with its chains and rules) in a batch of its own.
//!
//! netvmm writes its NAT rules with nft(8)'s JSON interface (see `crate::nat`), but the
//! main thread removes them at exit inside its seccomp sandbox, which allows netlink
//! sockets and no fork or exec: so deleting, and finding what to delete, go straight to
//! the kernel. No crate with a compatible licence does this (rustables is GPL-3.0, nftnl
//! binds the C libnftnl), and these two messages are a few dozen bytes.

use netlink_packet_core::{NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::conn::split_datagram;
use super::error::{NetlinkError, Result};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFTA_TABLE_NAME: u16 = 1;
/// The nf_tables family of IPv4 tables (`ip`).
pub const NFPROTO_IPV4: u8 = 2;

/// One message: nlmsghdr, nfgenmsg, then a NUL-terminated name attribute if any.
pub fn message(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    name: Option<&str>,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(family);
    b.push(0); // NFNETLINK_V0
    b.extend_from_slice(&res_id.to_be_bytes());
    if let Some(n) = name {
        let len = 4 + n.len() + 1;
        b.extend_from_slice(&(len as u16).to_ne_bytes());
        b.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
        b.extend_from_slice(n.as_bytes());
        b.push(0);
        while b.len() % 4 != 0 {
            b.push(0);
        }
    }
    let total = b.len() as u32;
    b[0..4].copy_from_slice(&total.to_ne_bytes());
    b
}

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// The table name in a NEWTABLE message (header included), if it has one.
pub fn table_name(msg: &[u8]) -> Option<String> {
    let mut attrs = msg.get(20..)?;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NFTA_TABLE_NAME {
            let v = &attrs[4..len];
            let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            return String::from_utf8(v[..end].to_vec()).ok();
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

/// The errno in an NLMSG_ERROR message (0 for an ACK).
fn error_code(msg: &[u8]) -> Option<i32> {
    let b = msg.get(16..20)?;
    Some(-i32::from_ne_bytes(b.try_into().ok()?))
}

fn kind_of(msg: &[u8]) -> u16 {
    u16::from_ne_bytes([msg[4], msg[5]])
}

fn seq_of(msg: &[u8]) -> u32 {
    u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]])
}

struct NfConn {
    sock: Socket,
}

impl NfConn {
    fn open(action: &str) -> Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| kernel(action, e))?;
        sock.bind_auto().map_err(|e| kernel(action, e))?;
        Ok(NfConn { sock })
    }

    fn send(&self, action: &str, buf: &[u8]) -> Result<()> {
        self.sock
            .send_to(buf, &SocketAddr::new(0, 0), 0)
            .map(|_| ())
            .map_err(|e| kernel(action, e))
    }

    /// Reads replies and hands each message to `each` until it says stop.
    fn replies(
        &self,
        action: &str,
        mut each: impl FnMut(&[u8]) -> Option<Result<()>>,
    ) -> Result<()> {
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(|e| kernel(action, e))?;
            let (chunks, truncated) = split_datagram(&data);
            for c in chunks {
                if let Some(done) = each(c) {
                    return done;
                }
            }
            if let Some(reason) = truncated {
                return Err(NetlinkError::Protocol {
                    action: action.to_string(),
                    reason,
                });
            }
        }
    }
}

fn kernel(action: &str, source: std::io::Error) -> NetlinkError {
    NetlinkError::Kernel {
        action: action.to_string(),
        source,
        extack: None,
    }
}

fn errno(action: &str, code: i32) -> NetlinkError {
    kernel(action, std::io::Error::from_raw_os_error(code))
}

/// The names of the nf_tables tables of `family`.
pub fn list_tables(family: u8) -> Result<Vec<String>> {
    let action = "list the nftables tables";
    let conn = NfConn::open(action)?;
    conn.send(
        action,
        &message(
            nft_type(NFT_MSG_GETTABLE),
            NLM_F_REQUEST | NLM_F_DUMP,
            1,
            family,
            0,
            None,
        ),
    )?;
    let mut names = Vec::new();
    conn.replies(action, |m| match kind_of(m) {
        NLMSG_DONE => Some(Ok(())),
        NLMSG_ERROR => Some(match error_code(m) {
            Some(0) | None => Ok(()),
            Some(c) => Err(errno(action, c)),
        }),
        k if k == nft_type(NFT_MSG_NEWTABLE) => {
            names.extend(table_name(m));
            None
        }
        _ => None,
    })?;
    Ok(names)
}

/// The batch that deletes table `name` of `family`.
pub fn delete_batch(family: u8, name: &str) -> Vec<u8> {
    let mut b = message(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        1,
        0,
        NFNL_SUBSYS_NFTABLES,
        None,
    );
    b.extend(message(
        nft_type(NFT_MSG_DELTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        2,
        family,
        0,
        Some(name),
    ));
    b.extend(message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        3,
        0,
        NFNL_SUBSYS_NFTABLES,
        None,
    ));
    b
}

/// Deletes table `name` of `family` with everything in it. `Ok(false)`: it did not exist.
pub fn delete_table(family: u8, name: &str) -> Result<bool> {
    let action = format!("delete the nftables table '{name}'");
    let conn = NfConn::open(&action)?;
    conn.send(&action, &delete_batch(family, name))?;
    let mut existed = true;
    conn.replies(&action, |m| {
        if kind_of(m) != NLMSG_ERROR {
            return None;
        }
        match error_code(m) {
            Some(0) if seq_of(m) == 2 => Some(Ok(())),
            Some(0) => None,
            Some(libc::ENOENT) => {
                existed = false;
                Some(Ok(()))
            }
            Some(c) => Some(Err(errno(&action, c))),
            None => None,
        }
    })?;
    Ok(existed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_batch_is_begin_delete_end_with_the_name_padded() {
        let b = delete_batch(NFPROTO_IPV4, "abc");
        let (chunks, rest) = split_datagram(&b);
        assert!(rest.is_none());
        assert_eq!(chunks.len(), 3);
        assert_eq!(kind_of(chunks[0]), NFNL_MSG_BATCH_BEGIN);
        // res_id is the subsystem, big-endian.
        assert_eq!(&chunks[0][18..20], &[0, 10]);
        assert_eq!(kind_of(chunks[1]), (10 << 8) | 2);
        assert_eq!(chunks[1][16], NFPROTO_IPV4);
        assert_eq!(chunks[1].len(), 20 + 8, "4-byte attribute header, abc\\0");
        assert_eq!(table_name(chunks[1]).as_deref(), Some("abc"));
        assert_eq!(kind_of(chunks[2]), NFNL_MSG_BATCH_END);
        assert_eq!(seq_of(chunks[1]), 2);
    }

    #[test]
    fn table_names_are_read_defensively() {
        let m = message(nft_type(NFT_MSG_NEWTABLE), 0, 1, 2, 0, Some("netvmm-x"));
        assert_eq!(table_name(&m).as_deref(), Some("netvmm-x"));
        let mut bad = m.clone();
        bad[20] = 200; // attribute longer than the message
        assert_eq!(table_name(&bad), None);
        assert_eq!(table_name(&m[..19]), None);
    }
}
