//! Netlink messages by hand: building requests and walking attributes (pure), plus the
//! request/answer exchange over a `netlink-sys` socket.

use netlink_sys::{protocols, Socket, SocketAddr};

use crate::error::{HwError, Result};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Marks an attribute as a nest (required by strictly validating families such as ethtool).
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// A netlink request under construction.
#[derive(Debug)]
pub(crate) struct Request {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Request {
    /// A message of `kind` with room for the 16-byte header.
    pub(crate) fn new(kind: u16) -> Self {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        Self {
            buf,
            nests: Vec::new(),
        }
    }

    /// A generic-netlink message: header plus `cmd` and version 1.
    pub(crate) fn genl(family: u16, cmd: u8) -> Self {
        let mut r = Self::new(family);
        r.buf.extend_from_slice(&[cmd, 1, 0, 0]);
        r
    }

    /// Appends raw bytes (a fixed family header such as `ifinfomsg`).
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// Appends one attribute, padded to 4 bytes.
    pub(crate) fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    pub(crate) fn u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    pub(crate) fn u8(&mut self, kind: u16, v: u8) -> &mut Self {
        self.attr(kind, &[v])
    }

    pub(crate) fn flag(&mut self, kind: u16) -> &mut Self {
        self.attr(kind, &[])
    }

    /// A NUL-terminated string attribute.
    pub(crate) fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(kind, &v)
    }

    /// Opens a nested attribute; close it with [`Request::end`].
    pub(crate) fn begin(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Closes the innermost nest.
    pub(crate) fn end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// The finished bytes with length, flags (request + ack) and sequence number.
    pub(crate) fn finish(&self, seq: u32) -> Vec<u8> {
        let mut b = self.buf.clone();
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        b[8..12].copy_from_slice(&seq.to_ne_bytes());
        b
    }
}

/// Walks the attributes in `buf`, yielding (type without flags, payload); stops at the
/// first malformed one.
pub(crate) fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        let next = (len + 3) & !3;
        rest = rest.get(next..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

/// The payload of the first attribute of `kind`.
pub(crate) fn find(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

pub(crate) fn get_u32(buf: &[u8], kind: u16) -> Option<u32> {
    find(buf, kind)
        .and_then(|p| p.get(..4))
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

pub(crate) fn get_u8(buf: &[u8], kind: u16) -> Option<u8> {
    find(buf, kind).and_then(|p| p.first().copied())
}

pub(crate) fn get_str(buf: &[u8], kind: u16) -> Option<String> {
    find(buf, kind).map(|p| {
        String::from_utf8_lossy(p.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
    })
}

/// Splits a datagram into (type, payload after the 16-byte header) messages.
fn messages(buf: &[u8]) -> Vec<(u16, &[u8], u16)> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let flags = u16::from_ne_bytes([rest[6], rest[7]]);
        if len < 16 || len > rest.len() {
            break;
        }
        out.push((kind, &rest[16..len], flags));
        rest = rest.get(((len + 3) & !3)..).unwrap_or(&[]);
    }
    out
}

/// Decodes an NLMSG_ERROR payload: errno (0 = ack) and the extended-ack message.
fn decode_error(payload: &[u8], flags: u16) -> (i32, Option<String>) {
    let errno = payload
        .get(..4)
        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let msg = if flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK the echoed request is only its 16-byte header.
        payload
            .get(20..)
            .and_then(|tlvs| get_str(tlvs, NLMSGERR_ATTR_MSG))
    } else {
        None
    };
    (-errno, msg)
}

/// A netlink socket of one protocol.
#[derive(Debug)]
pub(crate) struct Channel {
    socket: Socket,
    seq: u32,
}

impl Channel {
    pub(crate) fn open(protocol: isize) -> Result<Self> {
        let err = |e: std::io::Error| HwError::Netlink {
            request: "socket",
            dev: String::new(),
            message: e.to_string(),
        };
        let mut socket = Socket::new(protocol).map_err(err)?;
        socket.bind_auto().map_err(err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(err)?;
        // Best effort: older kernels lack these and still answer, just less precisely.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Self { socket, seq: 0 })
    }

    pub(crate) fn generic() -> Result<Self> {
        Self::open(protocols::NETLINK_GENERIC)
    }

    pub(crate) fn route() -> Result<Self> {
        Self::open(protocols::NETLINK_ROUTE)
    }

    /// Sends `req` and returns the payloads of the answers; an error answer becomes
    /// `Err` with errno (positive) and the kernel's message.
    pub(crate) fn exchange(
        &mut self,
        req: &Request,
    ) -> std::result::Result<Vec<Vec<u8>>, (i32, String)> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = req.finish(self.seq);
        self.socket
            .send(&bytes, 0)
            .map_err(|e| (e.raw_os_error().unwrap_or(0), e.to_string()))?;
        let mut answers = Vec::new();
        loop {
            let (buf, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| (e.raw_os_error().unwrap_or(0), e.to_string()))?;
            for (kind, payload, flags) in messages(&buf) {
                match kind {
                    NLMSG_ERROR => {
                        let (errno, msg) = decode_error(payload, flags);
                        if errno == 0 {
                            return Ok(answers);
                        }
                        let os = std::io::Error::from_raw_os_error(errno).to_string();
                        return Err((errno, msg.map_or(os.clone(), |m| format!("{os}: {m}"))));
                    }
                    NLMSG_DONE => return Ok(answers),
                    _ => answers.push(payload.to_vec()),
                }
            }
        }
    }

    /// Resolves a generic-netlink family name to its id.
    pub(crate) fn family(&mut self, name: &str) -> Result<u16> {
        let mut req = Request::genl(GENL_ID_CTRL, CTRL_CMD_GETFAMILY);
        req.str(CTRL_ATTR_FAMILY_NAME, name);
        let answers = self.exchange(&req).map_err(|(_, m)| HwError::Netlink {
            request: "CTRL_GETFAMILY",
            dev: String::new(),
            message: format!("family {name:?}: {m}"),
        })?;
        answers
            .iter()
            .filter_map(|a| a.get(4..))
            .find_map(|attrs| find(attrs, CTRL_ATTR_FAMILY_ID))
            .and_then(|p| p.get(..2))
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or_else(|| HwError::NetlinkDecode(format!("no id for family {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_request_has_lengths_padding_and_flags() {
        let mut r = Request::genl(0x20, 15);
        r.begin(1).str(2, "eth0").end().u32(6, 1024);
        let b = r.finish(7);
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), 0x20);
        assert_eq!(
            u16::from_ne_bytes(b[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_ACK
        );
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
        assert_eq!(&b[16..20], &[15, 1, 0, 0]);
        let body = &b[20..];
        let all: Vec<(u16, &[u8])> = attrs(body).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, 1);
        assert_eq!(
            u16::from_ne_bytes(body[2..4].try_into().unwrap()),
            1 | NLA_F_NESTED
        );
        // "eth0\0" is 5 bytes: attr 9, padded to 12; the nest is 4 + 12 = 16.
        assert_eq!(all[0].1.len(), 12);
        assert_eq!(get_str(all[0].1, 2).as_deref(), Some("eth0"));
        assert_eq!(get_u32(body, 6), Some(1024));
    }

    #[test]
    fn attribute_walk_stops_at_truncation() {
        let mut r = Request::new(0);
        r.u32(1, 5).u32(2, 6);
        let b = r.finish(1);
        let body = &b[16..b.len() - 2];
        assert_eq!(attrs(body).count(), 1);
    }

    #[test]
    fn error_answer_carries_extended_ack_message() {
        let mut payload = (-22i32).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0u8; 16]);
        let mut tlv = Request::new(0);
        tlv.str(NLMSGERR_ATTR_MSG, "requested ring size exceeds maximum");
        payload.extend_from_slice(&tlv.finish(0)[16..]);
        let (errno, msg) = decode_error(&payload, NLM_F_ACK_TLVS);
        assert_eq!(errno, 22);
        assert_eq!(msg.as_deref(), Some("requested ring size exceeds maximum"));
    }
}
