//! Whole IPv6 packets with an SRH: decoding for `cpclink srv6 decode` and encapsulation for
//! a data plane that attaches the SRH itself.

use std::net::Ipv6Addr;

use serde::Serialize;

use crate::hmac::HmacKey;
use crate::sid::SegmentList;
use crate::srh::{Srh, SrhRepr, Tlv, IPPROTO_ROUTING, ROUTING_TYPE_SRH};
use crate::Error;

const IPV6_HEADER_LEN: usize = 40;
/// Next Header of an IPv6-in-IPv6 payload.
pub const IPPROTO_IPV6: u8 = 41;

/// What `cpclink srv6 decode` prints.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DecodedPacket {
    /// IPv6 source address.
    pub source: Ipv6Addr,
    /// IPv6 destination address.
    pub destination: Ipv6Addr,
    /// Next Header after the SRH.
    pub next_header: u8,
    /// Segments Left.
    pub segments_left: u8,
    /// Last Entry.
    pub last_entry: u8,
    /// Flags.
    pub flags: u8,
    /// Tag.
    pub tag: u16,
    /// Segment List in wire order (index 0 is the last segment).
    pub segments: Vec<Ipv6Addr>,
    /// TLVs.
    pub tlvs: Vec<DecodedTlv>,
    /// HMAC check, when the SRH carries an HMAC TLV.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hmac: Option<HmacCheck>,
}

/// One TLV, as printed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum DecodedTlv {
    /// Pad1.
    Pad1,
    /// PadN.
    Padn {
        /// Value length.
        len: u8,
    },
    /// HMAC.
    Hmac {
        /// Key id.
        key_id: u32,
        /// D flag.
        d_flag: bool,
        /// HMAC field in hex.
        hmac: String,
    },
    /// Anything else.
    Other {
        /// TLV type.
        tlv_type: u8,
        /// Value in hex.
        value: String,
    },
}

/// Result of checking the HMAC TLV.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HmacCheck {
    /// Key id in the TLV.
    pub key_id: u32,
    /// Whether it verified with the given key; absent when no key was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    /// Why it did not verify.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// Finds the SRH in an IPv6 packet (walking extension headers) and decodes it; verifies
/// the HMAC when `key` is given.
pub fn decode_packet(packet: &[u8], key: Option<&HmacKey>) -> Result<DecodedPacket, Error> {
    let (source, destination, off) = find_srh(packet)?;
    let srh = Srh::new_checked(&packet[off..])?;
    let tlvs = srh
        .tlvs()
        .map(|t| match t {
            Tlv::Pad1 => DecodedTlv::Pad1,
            Tlv::PadN(len) => DecodedTlv::Padn { len },
            Tlv::Hmac(h) => DecodedTlv::Hmac {
                key_id: h.key_id,
                d_flag: h.d_flag,
                hmac: hex::encode(h.hmac),
            },
            Tlv::Other { tlv_type, value } => DecodedTlv::Other {
                tlv_type,
                value: hex::encode(value),
            },
        })
        .collect();
    let hmac = srh.hmac().map(|h| match key {
        None => HmacCheck {
            key_id: h.key_id,
            valid: None,
            reason: None,
        },
        Some(k) if k.key_id != h.key_id => HmacCheck {
            key_id: h.key_id,
            valid: Some(false),
            reason: Some("key id differs from the given key"),
        },
        Some(k) => {
            let ok = srh.verify_hmac(source, k);
            HmacCheck {
                key_id: h.key_id,
                valid: Some(ok),
                reason: (!ok).then_some("digest does not match"),
            }
        }
    });
    Ok(DecodedPacket {
        source,
        destination,
        next_header: srh.next_header(),
        segments_left: srh.segments_left(),
        last_entry: srh.last_entry(),
        flags: srh.flags(),
        tag: srh.tag(),
        segments: srh.segments().collect(),
        tlvs,
        hmac,
    })
}

/// Returns (source, destination, offset of the SRH).
fn find_srh(p: &[u8]) -> Result<(Ipv6Addr, Ipv6Addr, usize), Error> {
    if p.len() < IPV6_HEADER_LEN {
        return Err(Error::Truncated {
            what: "IPv6 header",
            needed: IPV6_HEADER_LEN,
            got: p.len(),
        });
    }
    if p[0] >> 4 != 6 {
        return Err(Error::BadPacket(format!(
            "version {} (expected 6; the packet must start at the IPv6 header)",
            p[0] >> 4
        )));
    }
    let addr = |at: usize| -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&p[at..at + 16]);
        Ipv6Addr::from(a)
    };
    let (src, dst) = (addr(8), addr(24));
    let mut nh = p[6];
    let mut off = IPV6_HEADER_LEN;
    loop {
        let hdr = p.get(off..off + 2).ok_or(Error::Truncated {
            what: "IPv6 extension header",
            needed: off + 2,
            got: p.len(),
        })?;
        let len = match nh {
            IPPROTO_ROUTING if p.get(off + 2) == Some(&ROUTING_TYPE_SRH) => {
                return Ok((src, dst, off))
            }
            0 | IPPROTO_ROUTING | 60 => (usize::from(hdr[1]) + 1) * 8,
            44 => 8,
            51 => (usize::from(hdr[1]) + 2) * 4,
            other => {
                return Err(Error::BadPacket(format!(
                    "no Segment Routing Header (reached next header {other} at offset {off})"
                )))
            }
        };
        nh = hdr[0];
        off += len;
    }
}

/// Encapsulates an inner packet (H.Encaps, RFC 8986 §5.1): outer IPv6 from `source` to the
/// first segment, the SRH for `list`, signed with `key` when given.
//= https://www.rfc-editor.org/rfc/rfc8986#section-5.1
//# push an IPv6 header with its own SRH; set the outer IPv6 SA to the node's source
//# address; set the outer IPv6 DA to the first SID of the segment list; set the outer
//# Payload Length, Traffic Class, Flow Label, Hop Limit and Next Header fields.
pub fn encapsulate(
    source: Ipv6Addr,
    list: &SegmentList,
    key: Option<&HmacKey>,
    inner_next_header: u8,
    inner: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut srh = SrhRepr::from_segment_list(list, inner_next_header);
    if let Some(k) = key {
        srh.sign(source, k)?;
    }
    let srh_len = srh.buffer_len();
    let payload_len = u16::try_from(srh_len + inner.len()).map_err(|_| {
        Error::BadPacket(format!(
            "payload of {} bytes exceeds 65535",
            srh_len + inner.len()
        ))
    })?;
    let mut out = vec![0u8; IPV6_HEADER_LEN + srh_len + inner.len()];
    out[0] = 0x60;
    out[4..6].copy_from_slice(&payload_len.to_be_bytes());
    out[6] = IPPROTO_ROUTING;
    out[7] = 64;
    out[8..24].copy_from_slice(&source.octets());
    out[24..40].copy_from_slice(&list.first().0.octets());
    srh.emit(&mut out[IPV6_HEADER_LEN..])?;
    out[IPV6_HEADER_LEN + srh_len..].copy_from_slice(inner);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_random_packets_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..400), ext in any::<bool>()) {
            if bytes.len() > 42 && ext {
                // Make it look like IPv6 with a routing header so the SRH parser is reached.
                bytes[0] = 0x60;
                bytes[6] = IPPROTO_ROUTING;
                bytes[42] = ROUTING_TYPE_SRH;
            }
            let key = HmacKey::new(1, vec![1]).unwrap();
            let _ = decode_packet(&bytes, Some(&key));
        }
    }

    #[test]
    fn encapsulated_packet_decodes_and_verifies() {
        let list = SegmentList::parse("fd00:100:1::1,fd00:200:1::6").unwrap();
        let key = HmacKey::new(7, b"secret".to_vec()).unwrap();
        let pkt = encapsulate(
            "fd00:a::1".parse().unwrap(),
            &list,
            Some(&key),
            41,
            &[0x60; 48],
        )
        .unwrap();
        let d = decode_packet(&pkt, Some(&key)).unwrap();
        assert_eq!(d.destination.to_string(), "fd00:100:1::1");
        assert_eq!((d.segments_left, d.last_entry, d.next_header), (1, 1, 41));
        assert_eq!(d.segments[0].to_string(), "fd00:200:1::6");
        assert_eq!(
            d.hmac,
            Some(HmacCheck {
                key_id: 7,
                valid: Some(true),
                reason: None
            })
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["hmac"]["valid"], true);
        assert_eq!(json["tlvs"][0]["type"], "hmac");
        let wrong = HmacKey::new(7, b"other".to_vec()).unwrap();
        assert_eq!(
            decode_packet(&pkt, Some(&wrong))
                .unwrap()
                .hmac
                .unwrap()
                .valid,
            Some(false)
        );
        let no_key = decode_packet(&pkt, None).unwrap();
        assert_eq!(
            serde_json::to_value(&no_key).unwrap()["hmac"],
            serde_json::json!({"key_id": 7})
        );
    }

    #[test]
    fn walks_extension_headers_and_reports_missing_srh() {
        let list = SegmentList::parse("fd00::1").unwrap();
        let pkt = encapsulate("fd00::2".parse().unwrap(), &list, None, 59, &[]).unwrap();
        // Insert an 8-byte destination options header before the SRH.
        let mut with_opts = pkt[..40].to_vec();
        with_opts[6] = 60;
        with_opts.extend_from_slice(&[IPPROTO_ROUTING, 0, 1, 4, 0, 0, 0, 0]);
        with_opts.extend_from_slice(&pkt[40..]);
        assert_eq!(decode_packet(&with_opts, None).unwrap().segments.len(), 1);
        let mut no_srh = pkt.clone();
        no_srh[6] = 17;
        assert!(matches!(
            decode_packet(&no_srh, None),
            Err(Error::BadPacket(_))
        ));
        assert!(matches!(
            decode_packet(&pkt[..30], None),
            Err(Error::Truncated { .. })
        ));
        let mut v4 = pkt;
        v4[0] = 0x45;
        assert!(matches!(decode_packet(&v4, None), Err(Error::BadPacket(_))));
    }
}
