//! Inner IPv4/IPv6 packets: just enough to find the flow a packet belongs to.

use std::net::{IpAddr, Ipv4Addr};

use crate::error::{Error, Result};

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// The 5-tuple of an inner packet, used to keep a flow on one core and one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol.
    pub protocol: u8,
    /// Source port, 0 for protocols without ports or for non-first fragments.
    pub src_port: u16,
    /// Destination port, 0 for protocols without ports or for non-first fragments.
    pub dst_port: u16,
}

/// A checked view of an inner IPv4 or IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> InnerPacket<T> {
    /// Checks the version and that the fixed header fits.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let data = buffer.as_ref();
        let Some(first) = data.first() else {
            return Err(Error::Truncated { needed: 1, got: 0 });
        };
        let needed = match first >> 4 {
            4 => {
                let ihl = usize::from(first & 0x0f) * 4;
                if ihl < 20 {
                    return Err(Error::BadInnerPacket("IPv4 header length below 20 bytes"));
                }
                ihl
            }
            6 => 40,
            _ => return Err(Error::BadInnerPacket("IP version is neither 4 nor 6")),
        };
        if data.len() < needed {
            return Err(Error::Truncated {
                needed,
                got: data.len(),
            });
        }
        Ok(Self { buffer })
    }

    /// The IP version, 4 or 6.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// The PSP next-header value that carries this packet in tunnel mode.
    pub fn psp_next_header(&self) -> u8 {
        if self.version() == 4 {
            4
        } else {
            41
        }
    }

    /// Total length from the header, or the buffer length when it disagrees.
    pub fn total_len(&self) -> usize {
        let data = self.buffer.as_ref();
        let claimed = if self.version() == 4 {
            usize::from(u16::from_be_bytes([data[2], data[3]]))
        } else {
            40 + usize::from(u16::from_be_bytes([data[4], data[5]]))
        };
        claimed.min(data.len())
    }

    /// The destination address: what the route table is asked about.
    #[inline]
    pub fn destination(&self) -> IpAddr {
        let data = self.buffer.as_ref();
        if self.version() == 4 {
            IpAddr::V4(Ipv4Addr::new(data[16], data[17], data[18], data[19]))
        } else {
            let mut d = [0u8; 16];
            d.copy_from_slice(&data[24..40]);
            IpAddr::V6(d.into())
        }
    }

    /// A stable 64-bit hash of the packet's flow, the same on every appliance and every
    /// run: both addresses, the protocol and, for TCP and UDP, both ports. Every IPv4
    /// fragment (the first too: the others carry no ports) hashes without ports, so a
    /// fragmented packet never splits. Read as 64-bit words from the header, each folded in
    /// with one multiply: it runs for every packet to a service.
    #[inline]
    pub fn flow_hash(&self) -> u64 {
        let p = self.buffer.as_ref();
        // The view was checked: the fixed header is there (IPv4: ihl bytes, IPv6: 40).
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&p[at..at + 8]);
            u64::from_be_bytes(w)
        };
        let ports = |protocol: u8, l4: Option<usize>| -> u64 {
            let tuple = match (protocol, l4.and_then(|at| p.get(at..at + 4))) {
                (PROTO_TCP | PROTO_UDP, Some(b)) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                _ => 0,
            };
            (u64::from(protocol) << 32) | u64::from(tuple)
        };
        let fold = |h: u64, w: u64| (h ^ w).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(31);
        let seed = 0x9e37_79b9_7f4a_7c15;
        if self.version() == 4 {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let fragment = u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0;
            fold(
                fold(seed, word(12)),
                ports(p[9], (!fragment).then_some(ihl)),
            )
        } else {
            let h = [word(8), word(16), word(24), word(32)]
                .into_iter()
                .fold(seed, fold);
            fold(h, ports(p[6], Some(40)))
        }
    }

    /// The flow this packet belongs to. Extension headers of IPv6 are not walked: a packet
    /// with one is keyed by addresses and next header alone, which keeps it on one flow.
    pub fn flow_key(&self) -> FlowKey {
        let data = self.buffer.as_ref();
        let (src, dst, protocol, l4) = if self.version() == 4 {
            let ihl = usize::from(data[0] & 0x0f) * 4;
            let src = Ipv4Addr::new(data[12], data[13], data[14], data[15]);
            let dst = Ipv4Addr::new(data[16], data[17], data[18], data[19]);
            // Non-first fragments carry no ports.
            let fragment_offset = u16::from_be_bytes([data[6], data[7]]) & 0x1fff;
            let l4 = (fragment_offset == 0).then(|| &data[ihl..]);
            (IpAddr::V4(src), IpAddr::V4(dst), data[9], l4)
        } else {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&data[8..24]);
            d.copy_from_slice(&data[24..40]);
            (
                IpAddr::V6(s.into()),
                IpAddr::V6(d.into()),
                data[6],
                Some(&data[40..]),
            )
        };
        let (src_port, dst_port) = match l4 {
            Some(l4) if matches!(protocol, PROTO_TCP | PROTO_UDP) && l4.len() >= 4 => (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            ),
            _ => (0, 0),
        };
        FlowKey {
            src,
            dst,
            protocol,
            src_port,
            dst_port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp(sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn ipv4_flow_key_has_the_five_tuple() {
        let p = ipv4_udp(1234, 80);
        let key = InnerPacket::new_checked(&p[..]).unwrap().flow_key();
        assert_eq!(key.src, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(key.dst, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(
            (key.protocol, key.src_port, key.dst_port),
            (PROTO_UDP, 1234, 80)
        );
        let other = InnerPacket::new_checked(&ipv4_udp(1235, 80)[..])
            .unwrap()
            .flow_key();
        assert_ne!(
            InnerPacket::new_checked(&p[..]).unwrap().flow_hash(),
            InnerPacket::new_checked(&ipv4_udp(1235, 80)[..])
                .unwrap()
                .flow_hash()
        );
        assert_eq!(other.src_port, 1235);
    }

    #[test]
    fn ipv4_non_first_fragment_has_no_ports() {
        let mut p = ipv4_udp(1234, 80);
        p[7] = 10;
        let key = InnerPacket::new_checked(&p[..]).unwrap().flow_key();
        assert_eq!((key.src_port, key.dst_port), (0, 0));
    }

    #[test]
    fn ipv6_flow_key_has_the_five_tuple() {
        let mut p = [0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[6] = PROTO_TCP;
        p[23] = 1;
        p[39] = 2;
        p[40..42].copy_from_slice(&443u16.to_be_bytes());
        p[42..44].copy_from_slice(&5555u16.to_be_bytes());
        let view = InnerPacket::new_checked(&p[..]).unwrap();
        assert_eq!(view.psp_next_header(), 41);
        assert_eq!(view.total_len(), 48);
        let key = view.flow_key();
        assert_eq!(key.dst, "::2".parse::<IpAddr>().unwrap());
        assert_eq!(
            (key.protocol, key.src_port, key.dst_port),
            (PROTO_TCP, 443, 5555)
        );
    }

    #[test]
    fn malformed_inner_packets_are_rejected() {
        assert!(InnerPacket::new_checked(&[][..]).is_err());
        assert!(InnerPacket::new_checked(&[0x45, 0][..]).is_err());
        assert!(InnerPacket::new_checked(&[0x44; 40][..]).is_err());
        assert!(InnerPacket::new_checked(&[0x20; 40][..]).is_err());
        assert!(InnerPacket::new_checked(&[0x60; 39][..]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            if let Ok(view) = InnerPacket::new_checked(&data[..]) {
                let _ = (view.flow_key(), view.flow_hash(), view.total_len());
            }
        }
    }
}
