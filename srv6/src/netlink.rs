//! A small netlink client over `netlink-sys` sockets: messages and attributes built by hand,
//! because the rtnetlink crates do not cover seg6 encap, seg6local and the SEG6 generic
//! netlink family. Constants are from include/uapi/linux/{netlink,rtnetlink,lwtunnel,
//! seg6_iptunnel,seg6_local,seg6_genl,genetlink}.h.

use std::io;

use netlink_sys::{protocols, Socket, SocketAddr};

use crate::Error;

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_REPLACE: u16 = 0x100;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
const NLA_TYPE_MASK: u16 = 0x3fff;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const HDR_LEN: usize = 16;

/// A netlink socket for one protocol, with request/response handling.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

/// A reply message: its type and payload (after the 16-byte header).
#[derive(Debug, Clone)]
pub struct Reply {
    /// nlmsg_type.
    pub msg_type: u16,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn route() -> Result<Self, Error> {
        Self::open(protocols::NETLINK_ROUTE)
    }

    /// Opens a NETLINK_GENERIC socket in the calling thread's network namespace.
    pub fn generic() -> Result<Self, Error> {
        Self::open(protocols::NETLINK_GENERIC)
    }

    fn open(protocol: isize) -> Result<Self, Error> {
        let io = |source| Error::Io {
            context: "opening a netlink socket".into(),
            source,
        };
        let mut socket = Socket::new(protocol).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        // Acks carry only the header of the failed request, not all of it.
        let _ = socket.set_cap_ack(true);
        Ok(Self { socket, seq: 1 })
    }

    /// Sends one request and collects the replies: data messages until the ack (or, for
    /// dumps, until NLMSG_DONE). A negative ack becomes [`Error::Netlink`].
    pub fn request(
        &mut self,
        msg_type: u16,
        flags: u16,
        payload: &[u8],
        op: &str,
    ) -> Result<Vec<Reply>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        // Every non-dump request asks for an ack: it is what ends the reply.
        let flags = if dump { flags } else { flags | NLM_F_ACK };
        let len = HDR_LEN + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&msg_type.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        let fail = |source: io::Error| Error::Netlink {
            op: op.to_string(),
            source,
        };
        self.socket.send(&msg, 0).map_err(fail)?;
        let mut replies = Vec::new();
        loop {
            let (buf, _) = self.socket.recv_from_full().map_err(fail)?;
            let mut off = 0;
            while off + HDR_LEN <= buf.len() {
                let h = &buf[off..off + HDR_LEN];
                let mlen = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let mtype = u16::from_ne_bytes([h[4], h[5]]);
                let mseq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
                if mlen < HDR_LEN || off + mlen > buf.len() {
                    return Err(Error::NetlinkReply {
                        op: op.into(),
                        reason: "message length out of bounds",
                    });
                }
                let body = &buf[off + HDR_LEN..off + mlen];
                off += align(mlen);
                if mseq != seq {
                    continue;
                }
                match mtype {
                    NLMSG_ERROR => {
                        let code = body
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or(Error::NetlinkReply {
                                op: op.into(),
                                reason: "short error message",
                            })?;
                        if code != 0 {
                            return Err(fail(io::Error::from_raw_os_error(-code)));
                        }
                        return Ok(replies);
                    }
                    NLMSG_DONE if dump => return Ok(replies),
                    _ => replies.push(Reply {
                        msg_type: mtype,
                        payload: body.to_vec(),
                    }),
                }
            }
        }
    }
}

pub(crate) fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds a message body: a fixed header then attributes.
#[derive(Debug, Default)]
pub struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    /// Starts with a fixed header (rtmsg, ifinfomsg, genlmsghdr...).
    pub fn new(fixed: &[u8]) -> Self {
        Self {
            buf: fixed.to_vec(),
        }
    }

    /// Appends an attribute.
    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    /// Appends a u32 attribute (host order).
    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// Opens a nested attribute; close it with [`MessageBuilder::end_nest`].
    pub fn begin_nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    /// Closes a nested attribute.
    pub fn end_nest(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// The finished body.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Iterates the attributes in `buf`: (type without flags, value). Stops at the first
/// malformed one.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = rest.get(align(len)..).unwrap_or(&[]);
        Some((ty, value))
    })
}

pub(crate) fn get_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

pub(crate) fn get_addr(v: &[u8]) -> Option<std::net::Ipv6Addr> {
    let a: [u8; 16] = v.get(..16)?.try_into().ok()?;
    Some(std::net::Ipv6Addr::from(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_alignment_and_nesting() {
        let mut b = MessageBuilder::new(&[1, 2, 3, 4]);
        b.attr(1, &[9, 9, 9]);
        let n = b.begin_nest(22);
        b.u32(1, 7);
        b.end_nest(n);
        let body = b.finish();
        assert_eq!(body.len(), 4 + 8 + 4 + 8);
        let got: Vec<(u16, Vec<u8>)> = attrs(&body[4..]).map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(got[0], (1, vec![9, 9, 9]));
        assert_eq!(got[1].0, 22, "nested flag is masked off");
        let inner: Vec<_> = attrs(&got[1].1).collect();
        assert_eq!(inner, vec![(1, &7u32.to_ne_bytes()[..])]);
        // Truncated input stops cleanly.
        assert_eq!(attrs(&body[4..10]).count(), 0);
    }
}
