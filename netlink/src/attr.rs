//! Netlink attributes for families the packet crates do not model: a writer that builds a
//! message body (fixed header, then attributes, nests closed in order) and readers over
//! `netlink-packet-core`'s attribute iterator.

use std::net::Ipv6Addr;

use netlink_packet_core::{NlasIterator, NLA_F_NESTED, NLA_HEADER_SIZE};

/// A message body under construction: a fixed family header then attributes, each padded
/// to 4 bytes.
#[derive(Debug, Default, Clone)]
pub struct AttrWriter {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl AttrWriter {
    /// Starts with a fixed header (`rtmsg`, `ifinfomsg`, `genlmsghdr`, or nothing).
    pub fn new(fixed: &[u8]) -> Self {
        Self {
            buf: fixed.to_vec(),
            nests: Vec::new(),
        }
    }

    /// Appends one attribute.
    pub fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = NLA_HEADER_SIZE + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// Appends a u32 attribute in host order.
    pub fn u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// Appends a u16 attribute in host order.
    pub fn u16(&mut self, kind: u16, v: u16) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// Appends a u8 attribute.
    pub fn u8(&mut self, kind: u16, v: u8) -> &mut Self {
        self.attr(kind, &[v])
    }

    /// Appends a flag (an attribute with no payload).
    pub fn flag(&mut self, kind: u16) -> &mut Self {
        self.attr(kind, &[])
    }

    /// Appends a NUL-terminated string attribute.
    pub fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(kind, &v)
    }

    /// Opens a nested attribute (marked `NLA_F_NESTED`, which strictly validating families
    /// such as ethtool require); close it with [`AttrWriter::end`].
    pub fn begin(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Closes the innermost open nest; does nothing when none is open.
    pub fn end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// The body so far (nests still open are left with length zero).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The finished body.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn pad(&mut self) {
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }
}

/// Walks the attributes in `buf`: (type without the nested and byte-order flags, payload).
/// Stops at the first malformed one.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    NlasIterator::new(buf)
        .map_while(Result::ok)
        .map(|nla| (nla.kind(), nla.into_inner()))
        .map(|(kind, raw)| {
            let len = usize::from(u16::from_ne_bytes([raw[0], raw[1]]));
            (kind, raw.get(NLA_HEADER_SIZE..len).unwrap_or_default())
        })
}

/// The payload of the first attribute of `kind`.
pub fn find(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

/// A u32 payload in host order.
pub fn as_u32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?))
}

/// A u16 payload in host order.
pub fn as_u16(payload: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(payload.get(..2)?.try_into().ok()?))
}

/// A u8 payload.
pub fn as_u8(payload: &[u8]) -> Option<u8> {
    payload.first().copied()
}

/// A NUL-terminated (or unterminated) string payload.
pub fn as_str(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

/// A 16-byte IPv6 address payload.
pub fn as_ipv6(payload: &[u8]) -> Option<Ipv6Addr> {
    let a: [u8; 16] = payload.get(..16)?.try_into().ok()?;
    Some(Ipv6Addr::from(a))
}

/// The u32 attribute `kind` in `buf`.
pub fn get_u32(buf: &[u8], kind: u16) -> Option<u32> {
    find(buf, kind).and_then(as_u32)
}

/// The u8 attribute `kind` in `buf`.
pub fn get_u8(buf: &[u8], kind: u16) -> Option<u8> {
    find(buf, kind).and_then(as_u8)
}

/// The string attribute `kind` in `buf`.
pub fn get_str(buf: &[u8], kind: u16) -> Option<String> {
    find(buf, kind).map(as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding_and_nesting() {
        let mut w = AttrWriter::new(&[1, 2, 3, 4]);
        w.attr(1, &[9, 9, 9]);
        w.begin(22).str(2, "eth0").end().u32(6, 1024);
        let body = w.finish();
        // 4 fixed + (4+3 → 8) + nest (4 + "eth0\0" 9 → 12) = 16 + 8 for the u32.
        assert_eq!(body.len(), 4 + 8 + 16 + 8);
        assert_eq!(
            u16::from_ne_bytes([body[14], body[15]]),
            22 | NLA_F_NESTED,
            "nests carry NLA_F_NESTED on the wire"
        );
        let all: Vec<(u16, &[u8])> = attrs(&body[4..]).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], (1, &[9u8, 9, 9][..]));
        assert_eq!(all[1].0, 22, "flags are masked off the type");
        assert_eq!(get_str(all[1].1, 2).as_deref(), Some("eth0"));
        assert_eq!(get_u32(&body[4..], 6), Some(1024));
    }

    #[test]
    fn walk_stops_at_truncation() {
        let mut w = AttrWriter::new(&[]);
        w.u32(1, 5).u32(2, 6);
        let body = w.finish();
        assert_eq!(attrs(&body[..body.len() - 2]).count(), 1);
        assert_eq!(attrs(&body[..6]).count(), 0);
    }
}
