//! One request/response NETLINK_ROUTE socket: send a request, collect its replies up to
//! the ACK (or NLMSG_DONE), with the kernel's extended-ack text on errors.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK, NLM_F_ACK_TLVS,
    NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::error::{NetlinkError, ReqError, Result};

/// `NLMSGERR_ATTR_MSG` from <linux/netlink.h>: the extended-ack text attribute.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Length of a `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

/// One request/response NETLINK_ROUTE socket, in the calling thread's namespace.
pub(super) struct Conn {
    sock: Socket,
    seq: u32,
    port: u32,
}

impl Conn {
    pub(super) fn open() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        let addr = sock.bind_auto().map_err(NetlinkError::Socket)?;
        // Both are best effort: older kernels lack them, and errors still come back.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(Conn {
            sock,
            seq: 0,
            port: addr.port_number(),
        })
    }

    /// Sends `msg` and collects the replies: for a dump, every message up to NLMSG_DONE;
    /// otherwise whatever comes before the ACK.
    pub(super) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<Vec<RouteNetlinkMessage>, ReqError> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock
            .send_to(&buf, &SocketAddr::new(0, 0), 0)
            .map_err(|e| ReqError::Os(e, None))?;

        let mut replies = Vec::new();
        loop {
            let (data, _) = self
                .sock
                .recv_from_full()
                .map_err(|e| ReqError::Os(e, None))?;
            let (chunks, truncated) = split_datagram(&data);
            for chunk in chunks {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(chunk)
                    .map_err(|e| ReqError::Protocol(e.to_string()))?;
                if reply.header.sequence_number != self.seq
                    || (reply.header.port_number != self.port && reply.header.port_number != 0)
                {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(ReqError::Os(
                                e.to_io(),
                                extack_message(reply.header.flags, &e.header),
                            )),
                        };
                    }
                    NetlinkPayload::Noop => {}
                    NetlinkPayload::Overrun(_) => {
                        return Err(ReqError::Protocol("overrun".into()));
                    }
                    _ => {}
                }
            }
            if let Some(why) = truncated {
                return Err(ReqError::Protocol(why));
            }
        }
    }
}

/// The text of the kernel's extended ack (NLMSGERR_ATTR_MSG), if the error carries one.
fn extack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < NLMSG_HDRLEN {
        return None;
    }
    // The payload is the request's nlmsghdr (and, when not capped, the whole request),
    // then the TLVs.
    let orig_len = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32::from_ne_bytes(payload[0..4].try_into().ok()?) as usize
    };
    let start = (orig_len + 3) & !3;
    let tlvs = payload.get(start..)?;
    NlasIterator::new(tlvs)
        .filter_map(|n| n.ok())
        .find(|n| n.kind() == NLMSGERR_ATTR_MSG)
        .map(|n| {
            let v = n.value();
            let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            String::from_utf8_lossy(&v[..end]).trim().to_string()
        })
        .filter(|s| !s.is_empty())
}

/// The netlink messages in one datagram (each header's length, 4-byte aligned, leads to the
/// next), and why the rest could not be read when a length runs short or past the end.
pub(super) fn split_datagram(data: &[u8]) -> (Vec<&[u8]>, Option<String>) {
    let mut out = Vec::new();
    let mut off = 0;
    while let Some(&[a, b, c, d]) = data.get(off..off + 4) {
        if off + NLMSG_HDRLEN > data.len() {
            break;
        }
        let len = u32::from_ne_bytes([a, b, c, d]) as usize;
        if len < NLMSG_HDRLEN || len > data.len() - off {
            let why = format!(
                "truncated message ({len} bytes at offset {off} of {})",
                data.len()
            );
            return (out, Some(why));
        }
        out.push(&data[off..off + len]);
        off += (len + 3) & !3;
    }
    (out, None)
}
