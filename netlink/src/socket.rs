//! One netlink socket and the request/answer exchange: `netlink-packet-core` frames the
//! request and decodes the answers (data, `NLMSG_DONE`, acks and errors with the kernel's
//! extended-ack message); `netlink-sys` carries them.

use std::io;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{protocols, Socket as SysSocket, SocketAddr};

use crate::attr;
use crate::Error;

/// `NLMSGERR_ATTR_MSG`: the extended-ack text (include/uapi/linux/netlink.h).
const NLMSGERR_ATTR_MSG: u16 = 1;
/// With `NETLINK_CAP_ACK` an error echoes only the request's 16-byte header.
const ECHOED_HEADER_LEN: usize = 16;

/// A netlink socket of one protocol, in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Socket {
    socket: SysSocket,
    seq: u32,
}

/// One data message of an answer: its type and what follows the 16-byte header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `nlmsg_type`.
    pub msg_type: u16,
    /// The payload: the family's fixed header, then attributes.
    pub payload: Vec<u8>,
}

/// A message whose body is built or read by the caller; the packet crate does the framing.
#[derive(Debug, Clone)]
struct RawMessage {
    msg_type: u16,
    body: Vec<u8>,
}

impl NetlinkSerializable for RawMessage {
    fn message_type(&self) -> u16 {
        self.msg_type
    }

    fn buffer_len(&self) -> usize {
        self.body.len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer[..self.body.len()].copy_from_slice(&self.body);
    }
}

impl NetlinkDeserializable for RawMessage {
    type Error = std::convert::Infallible;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        Ok(Self {
            msg_type: header.message_type,
            body: payload.to_vec(),
        })
    }
}

impl Socket {
    /// Opens a `NETLINK_ROUTE` socket.
    pub fn route() -> Result<Self, Error> {
        Self::open(protocols::NETLINK_ROUTE)
    }

    /// Opens a `NETLINK_GENERIC` socket.
    pub fn generic() -> Result<Self, Error> {
        Self::open(protocols::NETLINK_GENERIC)
    }

    fn open(protocol: isize) -> Result<Self, Error> {
        let mut socket = SysSocket::new(protocol).map_err(Error::Open)?;
        socket.bind_auto().map_err(Error::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(Error::Open)?;
        // Best effort: kernels without them still answer, only less precisely. CAP_ACK keeps
        // an error from echoing the whole request; EXT_ACK adds the kernel's reason.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request of `msg_type` with `body` (family header and attributes) and
    /// collects the data messages of the answer. Every request that is not a dump asks for
    /// an ack, which ends the answer; a dump ends at `NLMSG_DONE`. An error ack becomes
    /// [`Error::Refused`] naming `op`.
    pub fn request(
        &mut self,
        msg_type: u16,
        flags: u16,
        body: &[u8],
        op: &str,
    ) -> Result<Vec<Reply>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RawMessage {
                msg_type,
                body: body.to_vec(),
            }),
        );
        msg.finalize();
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut bytes);
        let transport = |source: io::Error| Error::Transport {
            op: op.to_owned(),
            source,
        };
        self.socket.send(&bytes, 0).map_err(transport)?;
        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(transport)?;
            if take_answer(&datagram, seq, op, &mut replies)? {
                return Ok(replies);
            }
        }
    }
}

/// Adds the data messages of `datagram` that answer request `seq` to `replies`; true once
/// the answer is complete (ack or `NLMSG_DONE`), an error when the kernel refused.
fn take_answer(
    datagram: &[u8],
    seq: u32,
    op: &str,
    replies: &mut Vec<Reply>,
) -> Result<bool, Error> {
    let mut rest = datagram;
    while !rest.is_empty() {
        let len = NetlinkBuffer::new_checked(rest)
            .map_err(|e| Error::malformed(op, e.to_string()))?
            .length() as usize;
        let one = rest
            .get(..len)
            .ok_or_else(|| Error::malformed(op, "message length out of bounds"))?;
        let msg = NetlinkMessage::<RawMessage>::deserialize(one)
            .map_err(|e| Error::malformed(op, e.to_string()))?;
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        if msg.header.sequence_number != seq {
            continue;
        }
        match msg.payload {
            NetlinkPayload::Error(e) if e.code.is_none() => return Ok(true),
            NetlinkPayload::Error(e) => {
                let detail = if msg.header.flags & NLM_F_ACK_TLVS != 0 {
                    e.header
                        .get(ECHOED_HEADER_LEN..)
                        .and_then(|tlvs| attr::get_str(tlvs, NLMSGERR_ATTR_MSG))
                } else {
                    None
                };
                return Err(Error::Refused {
                    op: op.to_owned(),
                    source: e.to_io(),
                    detail,
                });
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::InnerMessage(m) => replies.push(Reply {
                msg_type: m.msg_type,
                payload: m.body,
            }),
            _ => {}
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::AttrWriter;

    fn frame(msg_type: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let len = 16 + body.len();
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&msg_type.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(body);
        b.resize(b.len().next_multiple_of(4), 0);
        b
    }

    #[test]
    fn data_then_ack_completes_and_other_sequences_are_ignored() {
        let mut d = frame(24, 0, 7, &[1, 2, 3, 4]);
        d.extend(frame(24, 0, 6, &[9; 4]));
        let mut replies = Vec::new();
        assert!(!take_answer(&d, 7, "dump", &mut replies).unwrap());
        let ack = frame(2, 0, 7, &[0u8; 20]);
        assert!(take_answer(&ack, 7, "dump", &mut replies).unwrap());
        assert_eq!(
            replies,
            vec![Reply {
                msg_type: 24,
                payload: vec![1, 2, 3, 4]
            }]
        );
    }

    #[test]
    fn error_answer_carries_errno_and_extended_ack_message() {
        let mut body = (-22i32).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0u8; 16]);
        let mut tlv = AttrWriter::new(&[]);
        tlv.str(NLMSGERR_ATTR_MSG, "requested ring size exceeds maximum");
        body.extend_from_slice(tlv.as_bytes());
        let d = frame(2, NLM_F_ACK_TLVS, 3, &body);
        let e = take_answer(&d, 3, "RINGS_SET", &mut Vec::new()).unwrap_err();
        assert_eq!(e.errno(), Some(22));
        assert!(e
            .kernel_message()
            .ends_with(": requested ring size exceeds maximum"));
        assert!(
            e.to_string().starts_with("netlink RINGS_SET failed: "),
            "{e}"
        );
    }

    #[test]
    fn truncated_datagram_is_malformed_not_a_panic() {
        let d = frame(24, 0, 1, &[0u8; 8]);
        let e = take_answer(&d[..20], 1, "x", &mut Vec::new()).unwrap_err();
        assert!(matches!(e, Error::Malformed { .. }), "{e}");
    }
}
