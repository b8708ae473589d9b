//! The Segment Routing Header (RFC 8754): a zero-copy view, [`Srh`], that validates once in
//! [`Srh::new_checked`], and an owned [`SrhRepr`] with `parse`, `emit` and `buffer_len`.

use std::net::Ipv6Addr;

use crate::hmac::{HmacKey, HMAC_LEN};
use crate::sid::{SegmentList, Sid, MAX_SEGMENTS};
use crate::Error;

/// Routing Type of the SRH.
//= https://www.rfc-editor.org/rfc/rfc8754#section-2
//# Routing Type: 4.
pub const ROUTING_TYPE_SRH: u8 = 4;
/// IPv6 Next Header value of a routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// TLV type of Pad1.
pub const TLV_PAD1: u8 = 0;
/// TLV type of PadN.
pub const TLV_PADN: u8 = 4;
/// TLV type of HMAC.
pub const TLV_HMAC: u8 = 5;
/// Flag Linux sets when an SRH carries an HMAC TLV (`SR6_FLAG1_HMAC`). RFC 8754 leaves the
/// bit unused, but the kernel only looks for the HMAC TLV when it is set, and the flags
/// byte is part of the HMAC text, so cpclink sets it whenever it emits an HMAC TLV.
pub const FLAG_HMAC_LINUX: u8 = 0x08;
/// Length of the fixed part of the SRH.
pub const FIXED_LEN: usize = 8;
/// Longest SRH: (255 + 1) 8-octet units.
pub const MAX_LEN: usize = 2048;
/// Length of the HMAC TLV cpclink emits (2 + 2 + 4 + 32), the only length Linux accepts.
pub const HMAC_TLV_LEN: usize = 8 + HMAC_LEN;

mod field {
    pub const NEXT_HEADER: usize = 0;
    pub const HDR_EXT_LEN: usize = 1;
    pub const ROUTING_TYPE: usize = 2;
    pub const SEGMENTS_LEFT: usize = 3;
    pub const LAST_ENTRY: usize = 4;
    pub const FLAGS: usize = 5;
    pub const TAG: usize = 6;
}

/// A read-only view of an SRH at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Srh<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Srh<T> {
    /// Wraps a buffer without checking it; accessors then return zeros rather than panic.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer and validates lengths, Segments Left, Last Entry and every TLV.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let srh = Self::new_unchecked(buffer);
        srh.check()?;
        Ok(srh)
    }

    /// Validates the header; `new_checked` calls this.
    pub fn check(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < FIXED_LEN {
            return Err(Error::Truncated {
                what: "SRH",
                needed: FIXED_LEN,
                got: b.len(),
            });
        }
        if self.routing_type() != ROUTING_TYPE_SRH {
            return Err(Error::NotSrh(self.routing_type()));
        }
        let len = self.header_len();
        if b.len() < len {
            return Err(Error::Truncated {
                what: "SRH",
                needed: len,
                got: b.len(),
            });
        }
        //= https://www.rfc-editor.org/rfc/rfc8754#section-2
        //# Last Entry: contains the index (zero based), in the Segment List, of the last
        //# element of the Segment List.
        let needed = (usize::from(self.last_entry()) + 1) * 16;
        if needed > len - FIXED_LEN {
            return Err(Error::LastEntryOverflow {
                last_entry: self.last_entry(),
                needed,
                room: len - FIXED_LEN,
            });
        }
        //= https://www.rfc-editor.org/rfc/rfc8754#section-4.3.1.1
        //# If Segments Left is greater than (Last Entry+1) then send an ICMP Parameter Problem
        //# message [...] and discard the packet.
        if usize::from(self.segments_left()) > usize::from(self.last_entry()) + 1 {
            return Err(Error::SegmentsLeftOutOfRange {
                segments_left: self.segments_left(),
                last_entry: self.last_entry(),
            });
        }
        let mut off = self.tlv_offset();
        while off < len {
            let t = b[off];
            if t == TLV_PAD1 {
                off += 1;
                continue;
            }
            if off + 2 > len || off + 2 + usize::from(b[off + 1]) > len {
                return Err(Error::TlvOverrun { offset: off, len });
            }
            let l = b[off + 1];
            //= https://www.rfc-editor.org/rfc/rfc8754#section-2.1.2
            //# HMAC: Keyed HMAC, in multiples of 8 octets, at most 32 octets.
            if t == TLV_HMAC && (!(6 + 8..=6 + 32).contains(&l) || (l - 6) % 8 != 0) {
                return Err(Error::BadHmacTlv(l));
            }
            off += 2 + usize::from(l);
        }
        Ok(())
    }

    fn byte(&self, i: usize) -> u8 {
        self.buffer.as_ref().get(i).copied().unwrap_or(0)
    }

    /// Next Header.
    pub fn next_header(&self) -> u8 {
        self.byte(field::NEXT_HEADER)
    }
    /// Hdr Ext Len: length in 8-octet units, not counting the first 8 octets.
    pub fn hdr_ext_len(&self) -> u8 {
        self.byte(field::HDR_EXT_LEN)
    }
    /// Routing Type (4 for an SRH).
    pub fn routing_type(&self) -> u8 {
        self.byte(field::ROUTING_TYPE)
    }
    /// Segments Left.
    pub fn segments_left(&self) -> u8 {
        self.byte(field::SEGMENTS_LEFT)
    }
    /// Last Entry (Linux: `first_segment`).
    pub fn last_entry(&self) -> u8 {
        self.byte(field::LAST_ENTRY)
    }
    /// Flags.
    pub fn flags(&self) -> u8 {
        self.byte(field::FLAGS)
    }
    /// Tag.
    pub fn tag(&self) -> u16 {
        u16::from_be_bytes([self.byte(field::TAG), self.byte(field::TAG + 1)])
    }
    /// Whole header length in bytes.
    pub fn header_len(&self) -> usize {
        (usize::from(self.hdr_ext_len()) + 1) * 8
    }
    /// Number of segments in the list (Last Entry + 1).
    pub fn segment_count(&self) -> usize {
        usize::from(self.last_entry()) + 1
    }
    fn tlv_offset(&self) -> usize {
        FIXED_LEN + self.segment_count() * 16
    }
    /// The raw Segment List bytes (empty if the buffer is too short).
    pub fn segment_bytes(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(FIXED_LEN..self.tlv_offset())
            .unwrap_or(&[])
    }
    /// Segment List\[i\] (wire order: index 0 is the last segment visited).
    pub fn segment(&self, i: usize) -> Option<Ipv6Addr> {
        let b = self.segment_bytes().get(i * 16..i * 16 + 16)?;
        let a: [u8; 16] = b.try_into().ok()?;
        Some(Ipv6Addr::from(a))
    }
    /// The Segment List in wire order.
    pub fn segments(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.segment_bytes()
            .chunks_exact(16)
            .filter_map(|c| <[u8; 16]>::try_from(c).ok().map(Ipv6Addr::from))
    }
    /// The TLV area.
    pub fn tlv_bytes(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(self.tlv_offset()..self.header_len().min(b.len()))
            .unwrap_or(&[])
    }
    /// The TLVs; stops at the first malformed one (none after `new_checked`).
    pub fn tlvs(&self) -> Tlvs<'_> {
        Tlvs {
            rest: self.tlv_bytes(),
        }
    }
    /// The HMAC TLV, if present.
    pub fn hmac(&self) -> Option<HmacTlv<'_>> {
        self.tlvs().find_map(|t| match t {
            Tlv::Hmac(h) => Some(h),
            _ => None,
        })
    }

    /// Verifies the HMAC TLV against `key` for a packet from `source`. False when there is no
    /// HMAC TLV or the key id differs.
    pub fn verify_hmac(&self, source: Ipv6Addr, key: &HmacKey) -> bool {
        match self.hmac() {
            Some(h) if h.key_id == key.key_id => key.verify(
                source,
                self.last_entry(),
                self.flags(),
                self.segment_bytes(),
                h.hmac,
            ),
            _ => false,
        }
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// A TLV as it appears in an SRH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tlv<'a> {
    /// One byte of padding.
    Pad1,
    /// N bytes of padding (value length).
    PadN(u8),
    /// HMAC.
    Hmac(HmacTlv<'a>),
    /// Any other type, kept opaque.
    Other {
        /// TLV type.
        tlv_type: u8,
        /// Value bytes.
        value: &'a [u8],
    },
}

/// The fields of an HMAC TLV.
//= https://www.rfc-editor.org/rfc/rfc8754#section-2.1.2
//# Type (8) | Length (8) | D (1) | RESERVED (15) | HMAC Key ID (32) | HMAC (variable)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HmacTlv<'a> {
    /// D flag: destination address verification disabled.
    pub d_flag: bool,
    /// HMAC Key ID.
    pub key_id: u32,
    /// The HMAC field.
    pub hmac: &'a [u8],
}

/// Iterator over the TLVs of an SRH.
#[derive(Debug, Clone)]
pub struct Tlvs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Tlv<'a>;
    fn next(&mut self) -> Option<Tlv<'a>> {
        let (&t, after) = self.rest.split_first()?;
        if t == TLV_PAD1 {
            self.rest = after;
            return Some(Tlv::Pad1);
        }
        let (&l, after) = after.split_first()?;
        let value = after.get(..usize::from(l))?;
        self.rest = &after[usize::from(l)..];
        Some(match t {
            TLV_PADN => Tlv::PadN(l),
            TLV_HMAC if value.len() >= 6 => Tlv::Hmac(HmacTlv {
                d_flag: value[0] & 0x80 != 0,
                key_id: u32::from_be_bytes([value[2], value[3], value[4], value[5]]),
                hmac: &value[6..],
            }),
            _ => Tlv::Other { tlv_type: t, value },
        })
    }
}

/// An owned TLV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlvRepr {
    /// One byte of padding.
    Pad1,
    /// PadN with this many zero value bytes (0 to 5 per RFC 8754, up to 255 accepted).
    PadN(u8),
    /// HMAC; `hmac` is filled by [`SrhRepr::sign`].
    Hmac {
        /// D flag.
        d_flag: bool,
        /// Key id.
        key_id: u32,
        /// HMAC field, 8 to 32 bytes in multiples of 8.
        hmac: Vec<u8>,
    },
    /// Any other TLV.
    Other {
        /// TLV type (not 0, 4 or 5).
        tlv_type: u8,
        /// Value.
        value: Vec<u8>,
    },
}

impl TlvRepr {
    fn wire_len(&self) -> usize {
        match self {
            TlvRepr::Pad1 => 1,
            TlvRepr::PadN(n) => 2 + usize::from(*n),
            TlvRepr::Hmac { hmac, .. } => 8 + hmac.len(),
            TlvRepr::Other { value, .. } => 2 + value.len(),
        }
    }
}

/// An owned SRH: what [`Srh`] parses into and [`SrhRepr::emit`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrhRepr {
    /// Next Header after the SRH (41 for an encapsulated IPv6 packet, 4 for IPv4).
    pub next_header: u8,
    /// Segments Left.
    pub segments_left: u8,
    /// Flags.
    pub flags: u8,
    /// Tag.
    pub tag: u16,
    /// Segment List in wire order (index 0 is the last segment visited).
    pub segments: Vec<Ipv6Addr>,
    /// TLVs in order; `emit` pads the header to 8 octets itself.
    pub tlvs: Vec<TlvRepr>,
}

impl SrhRepr {
    /// An SRH that sends a packet along `list`: segments reversed into wire order,
    /// Segments Left = Last Entry = n - 1.
    //= https://www.rfc-editor.org/rfc/rfc8754#section-2
    //# The Segment List is encoded starting from the last segment of the SR Policy. That is,
    //# the first element of the Segment List (Segment List[0]) contains the last segment.
    pub fn from_segment_list(list: &SegmentList, next_header: u8) -> Self {
        let segments: Vec<Ipv6Addr> = list.sids().iter().rev().map(|s| s.0).collect();
        Self {
            next_header,
            segments_left: (segments.len() - 1) as u8,
            flags: 0,
            tag: 0,
            segments,
            tlvs: Vec::new(),
        }
    }

    /// Parses a validated view into an owned SRH.
    pub fn parse<T: AsRef<[u8]>>(srh: &Srh<T>) -> Result<Self, Error> {
        srh.check()?;
        let tlvs = srh
            .tlvs()
            .map(|t| match t {
                Tlv::Pad1 => TlvRepr::Pad1,
                Tlv::PadN(n) => TlvRepr::PadN(n),
                Tlv::Hmac(h) => TlvRepr::Hmac {
                    d_flag: h.d_flag,
                    key_id: h.key_id,
                    hmac: h.hmac.to_vec(),
                },
                Tlv::Other { tlv_type, value } => TlvRepr::Other {
                    tlv_type,
                    value: value.to_vec(),
                },
            })
            .collect();
        Ok(Self {
            next_header: srh.next_header(),
            segments_left: srh.segments_left(),
            flags: srh.flags(),
            tag: srh.tag(),
            segments: srh.segments().collect(),
            tlvs,
        })
    }

    /// Adds an HMAC TLV for `key` (the last TLV, where Linux looks for it) and sets the flag
    /// Linux requires; call [`SrhRepr::sign`] once the source address is known.
    pub fn with_hmac(mut self, key_id: u32) -> Self {
        self.tlvs.retain(|t| !matches!(t, TlvRepr::Hmac { .. }));
        self.tlvs.push(TlvRepr::Hmac {
            d_flag: false,
            key_id,
            hmac: vec![0; HMAC_LEN],
        });
        self.flags |= FLAG_HMAC_LINUX;
        self
    }

    /// Fills the HMAC field for a packet from `source`, adding the HMAC TLV if missing.
    pub fn sign(&mut self, source: Ipv6Addr, key: &HmacKey) -> Result<(), Error> {
        if !self.tlvs.iter().any(|t| matches!(t, TlvRepr::Hmac { .. })) {
            *self = std::mem::replace(self, Self::empty()).with_hmac(key.key_id);
        }
        self.check_segments()?;
        let segs: Vec<u8> = self.segments.iter().flat_map(|s| s.octets()).collect();
        let last_entry = (self.segments.len() - 1) as u8;
        let digest = key.compute(source, last_entry, self.flags, &segs);
        for t in &mut self.tlvs {
            if let TlvRepr::Hmac { key_id, hmac, .. } = t {
                *key_id = key.key_id;
                *hmac = digest.to_vec();
            }
        }
        Ok(())
    }

    fn empty() -> Self {
        Self {
            next_header: 0,
            segments_left: 0,
            flags: 0,
            tag: 0,
            segments: Vec::new(),
            tlvs: Vec::new(),
        }
    }

    fn check_segments(&self) -> Result<(), Error> {
        if self.segments.is_empty() {
            return Err(Error::EmptySegmentList);
        }
        if self.segments.len() > MAX_SEGMENTS {
            return Err(Error::SrhTooLong {
                len: FIXED_LEN + 16 * self.segments.len(),
            });
        }
        if usize::from(self.segments_left) > self.segments.len() {
            return Err(Error::SegmentsLeftOutOfRange {
                segments_left: self.segments_left,
                last_entry: (self.segments.len() - 1) as u8,
            });
        }
        Ok(())
    }

    fn unpadded_len(&self) -> usize {
        FIXED_LEN
            + 16 * self.segments.len()
            + self.tlvs.iter().map(TlvRepr::wire_len).sum::<usize>()
    }

    /// Bytes [`SrhRepr::emit`] writes: the fields plus padding to a multiple of 8.
    pub fn buffer_len(&self) -> usize {
        self.unpadded_len().div_ceil(8) * 8
    }

    /// Writes the SRH to the start of `buf` and returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        self.check_segments()?;
        let len = self.buffer_len();
        if len > MAX_LEN {
            return Err(Error::SrhTooLong { len });
        }
        if buf.len() < len {
            return Err(Error::BufferTooSmall {
                needed: len,
                got: buf.len(),
            });
        }
        for t in &self.tlvs {
            match t {
                TlvRepr::Hmac { hmac, .. }
                    if hmac.len() < 8 || hmac.len() > 32 || hmac.len() % 8 != 0 =>
                {
                    return Err(Error::BadTlv("HMAC field must be 8, 16, 24 or 32 bytes"))
                }
                TlvRepr::Other { tlv_type, .. }
                    if matches!(*tlv_type, TLV_PAD1 | TLV_PADN | TLV_HMAC) =>
                {
                    return Err(Error::BadTlv("use Pad1, PadN or Hmac for types 0, 4 and 5"))
                }
                TlvRepr::Other { value, .. } if value.len() > 255 => {
                    return Err(Error::BadTlv("TLV value longer than 255 bytes"))
                }
                _ => {}
            }
        }
        let buf = &mut buf[..len];
        buf.fill(0);
        buf[field::NEXT_HEADER] = self.next_header;
        buf[field::HDR_EXT_LEN] = (len / 8 - 1) as u8;
        buf[field::ROUTING_TYPE] = ROUTING_TYPE_SRH;
        buf[field::SEGMENTS_LEFT] = self.segments_left;
        buf[field::LAST_ENTRY] = (self.segments.len() - 1) as u8;
        buf[field::FLAGS] = self.flags;
        buf[field::TAG..field::TAG + 2].copy_from_slice(&self.tag.to_be_bytes());
        let mut off = FIXED_LEN;
        for s in &self.segments {
            buf[off..off + 16].copy_from_slice(&s.octets());
            off += 16;
        }
        // Padding goes before an HMAC TLV so that the HMAC stays the last 40 bytes, where
        // Linux (seg6_get_tlv_hmac) expects it.
        let pad = len - self.unpadded_len();
        let hmac_at = self
            .tlvs
            .iter()
            .position(|t| matches!(t, TlvRepr::Hmac { .. }))
            .unwrap_or(self.tlvs.len());
        for (i, t) in self.tlvs.iter().enumerate() {
            if i == hmac_at {
                off = emit_padding(buf, off, pad);
            }
            off = emit_tlv(buf, off, t);
        }
        if hmac_at == self.tlvs.len() {
            emit_padding(buf, off, pad);
        }
        Ok(len)
    }

    /// The SRH as a byte vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut v = vec![0; self.buffer_len()];
        self.emit(&mut v)?;
        Ok(v)
    }
}

//= https://www.rfc-editor.org/rfc/rfc8754#section-2.1.1
//# The Pad1 TLV is used to insert one octet of padding [...] The PadN TLV is used to insert
//# two or more octets of padding.
fn emit_padding(buf: &mut [u8], off: usize, pad: usize) -> usize {
    match pad {
        0 => off,
        1 => {
            buf[off] = TLV_PAD1;
            off + 1
        }
        n => {
            buf[off] = TLV_PADN;
            buf[off + 1] = (n - 2) as u8;
            off + n
        }
    }
}

fn emit_tlv(buf: &mut [u8], off: usize, t: &TlvRepr) -> usize {
    match t {
        TlvRepr::Pad1 => buf[off] = TLV_PAD1,
        TlvRepr::PadN(n) => {
            buf[off] = TLV_PADN;
            buf[off + 1] = *n;
        }
        TlvRepr::Hmac {
            d_flag,
            key_id,
            hmac,
        } => {
            buf[off] = TLV_HMAC;
            buf[off + 1] = (6 + hmac.len()) as u8;
            buf[off + 2] = if *d_flag { 0x80 } else { 0 };
            buf[off + 4..off + 8].copy_from_slice(&key_id.to_be_bytes());
            buf[off + 8..off + 8 + hmac.len()].copy_from_slice(hmac);
        }
        TlvRepr::Other { tlv_type, value } => {
            buf[off] = *tlv_type;
            buf[off + 1] = value.len() as u8;
            buf[off + 2..off + 2 + value.len()].copy_from_slice(value);
        }
    }
    off + t.wire_len()
}

/// The segments of a parsed SRH in visiting order.
pub fn visiting_order(repr: &SrhRepr) -> Result<SegmentList, Error> {
    SegmentList::new(repr.segments.iter().rev().map(|a| Sid(*a)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list() -> SegmentList {
        SegmentList::parse("fd00:100:1::1,fd00:200:1::6").unwrap()
    }

    #[test]
    fn emits_the_rfc_layout() {
        let repr = SrhRepr::from_segment_list(&list(), 41);
        let b = repr.to_bytes().unwrap();
        assert_eq!(b.len(), 40);
        assert_eq!(&b[..8], &[41, 4, 4, 1, 1, 0, 0, 0]);
        // Segment List[0] is the last segment visited.
        assert_eq!(
            &b[8..24],
            &"fd00:200:1::6".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(
            &b[24..40],
            &"fd00:100:1::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        let srh = Srh::new_checked(&b[..]).unwrap();
        assert_eq!(SrhRepr::parse(&srh).unwrap(), repr);
        assert_eq!(visiting_order(&repr).unwrap(), list());
    }

    #[test]
    fn round_trips_with_tlvs_and_pads_to_eight() {
        let mut repr = SrhRepr::from_segment_list(&list(), 41);
        repr.tag = 0xbeef;
        repr.tlvs.push(TlvRepr::Other {
            tlv_type: 7,
            value: vec![1, 2, 3],
        });
        let key = HmacKey::new(3, b"k".to_vec()).unwrap();
        repr.sign("fd00:a::1".parse().unwrap(), &key).unwrap();
        let b = repr.to_bytes().unwrap();
        assert_eq!(b.len() % 8, 0);
        assert_eq!(b.len(), 8 + 32 + 5 + 3 + 40);
        let srh = Srh::new_checked(&b[..]).unwrap();
        assert_eq!(srh.tag(), 0xbeef);
        assert_eq!(srh.flags() & FLAG_HMAC_LINUX, FLAG_HMAC_LINUX);
        // HMAC TLV is the last 40 bytes, as Linux requires.
        assert_eq!(b[b.len() - 40], TLV_HMAC);
        assert_eq!(b[b.len() - 39], 38);
        let parsed = SrhRepr::parse(&srh).unwrap();
        assert_eq!(parsed.tlvs[0], repr.tlvs[0]);
        assert_eq!(parsed.tlvs[1], TlvRepr::PadN(1));
        assert_eq!(parsed.tlvs[2], repr.tlvs[1]);
        // Re-emitting the parsed form (padding now explicit) gives identical bytes.
        assert_eq!(parsed.to_bytes().unwrap(), b);
        assert!(srh.verify_hmac("fd00:a::1".parse().unwrap(), &key));
        assert!(!srh.verify_hmac("fd00:a::2".parse().unwrap(), &key));
        assert!(!srh.verify_hmac(
            "fd00:a::1".parse().unwrap(),
            &HmacKey::new(3, b"x".to_vec()).unwrap()
        ));
        assert!(!srh.verify_hmac(
            "fd00:a::1".parse().unwrap(),
            &HmacKey::new(4, b"k".to_vec()).unwrap()
        ));
    }

    #[test]
    fn single_pad_byte_uses_pad1() {
        let mut repr = SrhRepr::from_segment_list(&list(), 41);
        repr.tlvs.push(TlvRepr::Other {
            tlv_type: 9,
            value: vec![0; 5],
        });
        let b = repr.to_bytes().unwrap();
        assert_eq!(b.len(), 48);
        assert_eq!(b[47], TLV_PAD1);
        let srh = Srh::new_checked(&b[..]).unwrap();
        assert_eq!(srh.tlvs().last(), Some(Tlv::Pad1));
    }

    #[test]
    fn rejects_malformed_headers() {
        let good = SrhRepr::from_segment_list(&list(), 41).to_bytes().unwrap();
        assert!(matches!(
            Srh::new_checked(&good[..7]),
            Err(Error::Truncated { needed: 8, .. })
        ));
        assert!(matches!(
            Srh::new_checked(&good[..39]),
            Err(Error::Truncated {
                needed: 40,
                got: 39,
                ..
            })
        ));
        let mut b = good.clone();
        b[2] = 0;
        assert!(matches!(Srh::new_checked(&b[..]), Err(Error::NotSrh(0))));
        let mut b = good.clone();
        b[4] = 2; // three segments claimed, room for two
        assert!(matches!(
            Srh::new_checked(&b[..]),
            Err(Error::LastEntryOverflow {
                last_entry: 2,
                needed: 48,
                room: 32
            })
        ));
        let mut b = good.clone();
        b[3] = 3; // segments left 3 > last entry 1 + 1
        assert!(matches!(
            Srh::new_checked(&b[..]),
            Err(Error::SegmentsLeftOutOfRange {
                segments_left: 3,
                last_entry: 1
            })
        ));
        b[3] = 2; // reduced SRH: allowed
        assert!(Srh::new_checked(&b[..]).is_ok());
        // A TLV whose length runs past the header.
        let mut b = good.clone();
        b[1] = 5;
        b.extend_from_slice(&[7, 7, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            Srh::new_checked(&b[..]),
            Err(Error::TlvOverrun {
                offset: 40,
                len: 48
            })
        ));
        // An HMAC TLV with a length RFC 8754 does not allow.
        let mut b = good.clone();
        b[1] = 5;
        b.extend_from_slice(&[TLV_HMAC, 6, 0, 0, 0, 0, 0, 1]);
        assert!(matches!(
            Srh::new_checked(&b[..]),
            Err(Error::BadHmacTlv(6))
        ));
    }

    #[test]
    fn emit_refuses_what_cannot_be_encoded() {
        let mut repr = SrhRepr::from_segment_list(&list(), 41);
        repr.segments_left = 3;
        assert!(matches!(
            repr.emit(&mut [0; 64]),
            Err(Error::SegmentsLeftOutOfRange { .. })
        ));
        let repr = SrhRepr::from_segment_list(&list(), 41);
        assert!(matches!(
            repr.emit(&mut [0; 39]),
            Err(Error::BufferTooSmall {
                needed: 40,
                got: 39
            })
        ));
        let mut r = repr.clone();
        r.tlvs.push(TlvRepr::Other {
            tlv_type: TLV_HMAC,
            value: vec![],
        });
        assert!(matches!(r.to_bytes(), Err(Error::BadTlv(_))));
        let mut r = repr.clone();
        r.segments = vec![Ipv6Addr::LOCALHOST; 127];
        r.tlvs.push(TlvRepr::Other {
            tlv_type: 9,
            value: vec![0; 30],
        });
        assert!(matches!(r.to_bytes(), Err(Error::SrhTooLong { .. })));
        let mut r = repr;
        r.segments.clear();
        assert!(matches!(r.to_bytes(), Err(Error::EmptySegmentList)));
    }

    #[test]
    fn unchecked_view_of_garbage_never_panics() {
        let v = Srh::new_unchecked(&[0xffu8; 3][..]);
        assert_eq!(v.header_len(), 2048);
        assert_eq!(v.segments().count(), 0);
        assert_eq!(v.tlvs().count(), 0);
        assert!(v.segment(0).is_none());
        assert!(v.hmac().is_none());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(srh) = Srh::new_checked(&bytes[..]) {
                let repr = SrhRepr::parse(&srh).unwrap();
                // Whatever parses re-emits to a header of the same length that parses to the
                // same fields (padding contents and reserved bits are normalised to zero).
                let out = repr.to_bytes().unwrap();
                prop_assert_eq!(out.len(), srh.header_len());
                let again = SrhRepr::parse(&Srh::new_checked(&out[..]).unwrap()).unwrap();
                prop_assert_eq!(again, repr);
            }
            let v = Srh::new_unchecked(&bytes[..]);
            let _ = (v.segments().count(), v.tlvs().count(), v.hmac(), v.tag());
        }

        #[test]
        fn plausible_headers_never_panic(
            nh in any::<u8>(), hel in 0u8..12, sl in any::<u8>(), le in 0u8..8,
            rest in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut b = vec![nh, hel, 4, sl, le, 0, 0, 0];
            b.extend_from_slice(&rest);
            if let Ok(srh) = Srh::new_checked(&b[..]) {
                prop_assert!(usize::from(srh.segments_left()) <= srh.segment_count());
                prop_assert_eq!(srh.segments().count(), srh.segment_count());
                let repr = SrhRepr::parse(&srh).unwrap();
                prop_assert_eq!(repr.to_bytes().unwrap().len(), srh.header_len());
            }
        }

        #[test]
        fn segment_lists_round_trip(n in 1usize..20, seed in any::<u128>(), key_id in 1u32..) {
            let sids = (0..n).map(|i| Sid(Ipv6Addr::from(seed.wrapping_add(i as u128)))).collect();
            let list = SegmentList::new(sids).unwrap();
            let mut repr = SrhRepr::from_segment_list(&list, 41);
            let key = HmacKey::new(key_id, seed.to_be_bytes().to_vec()).unwrap();
            repr.sign(Ipv6Addr::LOCALHOST, &key).unwrap();
            let b = repr.to_bytes().unwrap();
            let srh = Srh::new_checked(&b[..]).unwrap();
            prop_assert!(srh.verify_hmac(Ipv6Addr::LOCALHOST, &key));
            prop_assert_eq!(visiting_order(&SrhRepr::parse(&srh).unwrap()).unwrap(), list);
        }
    }
}
