//! Segmentation of the super-packets a TUN device with offloads hands over (virtio-net
//! header with TSO/USO and partial checksums), into packets of the tunnel MTU before they
//! are sealed. Sans-IO: bytes in, bytes out.

use crate::error::{Error, Result};

/// Length of the virtio-net header in front of every packet on a TUN with `IFF_VNET_HDR`.
pub const VNET_HDR_LEN: usize = 10;

const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// The virtio-net header (legacy layout, native byte order as TUN uses on little-endian hosts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Bytes of headers (informational; recomputed from the packet).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

impl VnetHeader {
    /// Reads the header at the front of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        if buf.len() < VNET_HDR_LEN {
            return Err(Error::Truncated {
                needed: VNET_HDR_LEN,
                got: buf.len(),
            });
        }
        let u16_at = |i: usize| u16::from_ne_bytes([buf[i], buf[i + 1]]);
        Ok(Self {
            flags: buf[0],
            gso_type: buf[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Whole,
    Tcp,
    Udp,
}

/// The segments of one packet from TUN.
#[derive(Debug)]
pub struct Segmenter<'a> {
    packet: &'a [u8],
    header: VnetHeader,
    kind: Kind,
    ip_len: usize,
    headers: usize,
    mss: usize,
    count: usize,
}

/// The ones'-complement sum of `data` added to `acc`, not yet folded.
///
/// The data is summed 64 bits at a time in the machine's byte order, which the compiler
/// turns into vector adds; a ones'-complement sum taken in the other byte order is the
/// byte-swapped sum (RFC 1071, section 2(B)), so one swap of the folded result gives the
/// network-order sum.
fn sum(data: &[u8], acc: u64) -> u64 {
    let mut native = 0u64;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        native += (w & 0xffff_ffff) + (w >> 32);
    }
    let rest = words.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    let w = u64::from_ne_bytes(tail);
    native += (w & 0xffff_ffff) + (w >> 32);
    acc + u64::from(u16::from_be(fold(native)))
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

impl<'a> Segmenter<'a> {
    /// Plans the segments of `packet` (the bytes after the virtio-net header).
    pub fn new(header: VnetHeader, packet: &'a [u8]) -> Result<Self> {
        let bad = Error::BadInnerPacket;
        let first = *packet.first().ok_or(bad("empty packet from TUN"))?;
        let (ip_len, proto) = match first >> 4 {
            // An IHL under 5 is no IPv4 header: the fields segmenting rewrites lie past it.
            4 if packet.len() >= 20 && first & 0x0f >= 5 => {
                (usize::from(first & 0x0f) * 4, packet[9])
            }
            6 if packet.len() >= 40 => (40, packet[6]),
            _ => return Err(bad("TUN packet is neither IPv4 nor IPv6")),
        };
        let gso = header.gso_type & !GSO_ECN;
        let kind = match gso {
            GSO_NONE => Kind::Whole,
            GSO_TCPV4 | GSO_TCPV6 if proto == PROTO_TCP => Kind::Tcp,
            GSO_UDP_L4 if proto == PROTO_UDP => Kind::Udp,
            _ => return Err(bad("unsupported GSO type or transport")),
        };
        let l4_len = match kind {
            Kind::Whole => 0,
            Kind::Udp => 8,
            Kind::Tcp => {
                let off = packet.get(ip_len + 12).ok_or(bad("truncated TCP header"))?;
                usize::from(off >> 4) * 4
            }
        };
        let headers = ip_len + l4_len;
        // A TCP header is at least 20 bytes (its checksum lies at 16): a shorter data offset
        // would make each segment's header rewrite run past it.
        let l4_min = if kind == Kind::Tcp { 20 } else { 8 };
        if headers > packet.len() || (kind != Kind::Whole && l4_len < l4_min) {
            return Err(bad("truncated transport header"));
        }
        let mss = usize::from(header.gso_size);
        let count = match kind {
            Kind::Whole => 1,
            _ if mss == 0 => return Err(bad("GSO packet with segment size 0")),
            _ => (packet.len() - headers).div_ceil(mss).max(1),
        };
        Ok(Self {
            packet,
            header,
            kind,
            ip_len,
            headers,
            mss,
            count,
        })
    }

    /// Segments to send.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Where the inner destination address lies (for routing): the whole first header.
    pub fn first_header(&self) -> &[u8] {
        self.packet
    }

    fn payload_range(&self, i: usize) -> (usize, usize) {
        let start = self.headers + i * self.mss;
        (start, (start + self.mss).min(self.packet.len()))
    }

    /// Length of segment `i`.
    pub fn len(&self, i: usize) -> usize {
        match self.kind {
            Kind::Whole => self.packet.len(),
            _ => {
                let (start, end) = self.payload_range(i);
                self.headers + end - start
            }
        }
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes segment `i` into `out` (exactly [`len`](Self::len) bytes), headers fixed and
    /// checksums complete.
    pub fn write(&self, i: usize, out: &mut [u8]) {
        let p = self.packet;
        if self.kind == Kind::Whole {
            out.copy_from_slice(p);
            let start = usize::from(self.header.csum_start);
            let at = start + usize::from(self.header.csum_offset);
            if self.header.flags & F_NEEDS_CSUM != 0 && at + 2 <= out.len() {
                // The field holds the pseudo-header sum; summing over it completes it.
                let c = !fold(sum(&out[start..], 0));
                out[at..at + 2].copy_from_slice(&c.to_be_bytes());
            }
            return;
        }
        let (start, end) = self.payload_range(i);
        let total = self.headers + end - start;
        let (ip_len, headers) = (self.ip_len, self.headers);
        out[..headers].copy_from_slice(&p[..headers]);
        out[headers..total].copy_from_slice(&p[start..end]);
        let l4_total = total - ip_len;
        let v4 = p[0] >> 4 == 4;
        if v4 {
            out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            let id = u16::from_be_bytes([p[4], p[5]]).wrapping_add(i as u16);
            out[4..6].copy_from_slice(&id.to_be_bytes());
            out[10..12].copy_from_slice(&[0, 0]);
            let c = !fold(sum(&out[..ip_len], 0));
            out[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            out[4..6].copy_from_slice(&(l4_total as u16).to_be_bytes());
        }
        let last = i + 1 == self.count;
        let proto = if self.kind == Kind::Tcp {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        let csum_at = match self.kind {
            Kind::Tcp => {
                let seq = u32::from_be_bytes([
                    p[ip_len + 4],
                    p[ip_len + 5],
                    p[ip_len + 6],
                    p[ip_len + 7],
                ])
                .wrapping_add((i * self.mss) as u32);
                out[ip_len + 4..ip_len + 8].copy_from_slice(&seq.to_be_bytes());
                let mut flags = p[ip_len + 13];
                if !last {
                    flags &= !0x09; // FIN and PSH only on the last segment
                }
                if i > 0 {
                    flags &= !0x80; // CWR only on the first
                }
                out[ip_len + 13] = flags;
                ip_len + 16
            }
            _ => {
                out[ip_len + 4..ip_len + 6].copy_from_slice(&(l4_total as u16).to_be_bytes());
                ip_len + 6
            }
        };
        out[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
        let mut acc = if v4 {
            sum(&out[12..20], 0)
        } else {
            sum(&out[8..40], 0)
        };
        acc += u64::from(proto) + l4_total as u64;
        let mut c = !fold(sum(&out[ip_len..total], acc));
        if proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        out[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// What [`Coalescer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Added to the super-packet being built.
    Merged,
    /// Does not continue the super-packet: take that one first, then push again.
    TakeFirst,
    /// Cannot be coalesced at all: take what is held, then write this one as it is.
    Alone,
}

/// Rebuilds super-packets from the in-order segments of one flow, so the TUN device gets
/// one write (and the stack one packet) per 64 KiB instead of one per segment: the
/// receive-side twin of TSO and USO, written with a virtio-net GSO header. TCP segments
/// become a TSO packet; UDP datagrams of one flow and one size (the last may be shorter)
/// become a USO packet (`GSO_UDP_L4`) where the device takes those.
#[derive(Debug)]
pub struct Coalescer {
    buf: Vec<u8>,
    len: usize,
    proto: u8,
    ip_len: usize,
    headers: usize,
    mss: usize,
    segments: usize,
    next_seq: u32,
    closed: bool,
    udp: bool,
}

impl Default for Coalescer {
    /// A coalescer of TCP segments only (for a device without USO).
    fn default() -> Self {
        Self::new(false)
    }
}

/// A packet that may be coalesced: which transport, its header lengths and payload.
#[derive(Debug, Clone, Copy)]
struct Coalescable {
    proto: u8,
    ip_len: usize,
    l4_len: usize,
    payload: usize,
}

/// The IP header length of an unfragmented, option-free packet of transport `proto` whose
/// length fields agree with `p`.
fn plain_ip(p: &[u8], proto: u8) -> Option<usize> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 && p[0] & 0x0f == 5 && p[9] == proto => {
            // DF may be set; MF and the offset must be clear.
            if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
                return None;
            }
            (usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len()).then_some(20)
        }
        6 if p.len() >= 40 && p[6] == proto => {
            (40 + usize::from(u16::from_be_bytes([p[4], p[5]])) == p.len()).then_some(40)
        }
        _ => None,
    }
}

/// A plain in-order TCP data segment (ACK with or without PSH only) or a UDP datagram
/// with a payload, either without IP options or fragments.
fn coalescable(p: &[u8], udp: bool) -> Option<Coalescable> {
    if let Some(ip_len) = plain_ip(p, PROTO_TCP) {
        let tcp_len = usize::from(*p.get(ip_len + 12)? >> 4) * 4;
        if tcp_len < 20 || ip_len + tcp_len >= p.len() {
            return None;
        }
        if p[ip_len + 13] & !0x08 != 0x10 {
            return None;
        }
        return Some(Coalescable {
            proto: PROTO_TCP,
            ip_len,
            l4_len: tcp_len,
            payload: p.len() - ip_len - tcp_len,
        });
    }
    let ip_len = plain_ip(p, PROTO_UDP).filter(|_| udp)?;
    let udp_len = usize::from(u16::from_be_bytes([*p.get(ip_len + 4)?, p[ip_len + 5]]));
    if udp_len != p.len() - ip_len || udp_len <= 8 {
        return None;
    }
    Some(Coalescable {
        proto: PROTO_UDP,
        ip_len,
        l4_len: 8,
        payload: udp_len - 8,
    })
}

impl Coalescer {
    /// A coalescer of TCP segments, and of UDP datagrams too when `udp` (the device was
    /// given `TUN_F_USO4 | TUN_F_USO6`).
    pub fn new(udp: bool) -> Self {
        Self {
            buf: vec![0u8; VNET_HDR_LEN + 65_535],
            len: 0,
            proto: 0,
            ip_len: 0,
            headers: 0,
            mss: 0,
            segments: 0,
            next_seq: 0,
            closed: false,
            udp,
        }
    }

    /// Whether a super-packet is being built.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offers the next inner packet.
    pub fn push(&mut self, p: &[u8]) -> Push {
        let Some(c) = coalescable(p, self.udp) else {
            return Push::Alone;
        };
        let ip_len = c.ip_len;
        let headers = ip_len + c.l4_len;
        let tcp = c.proto == PROTO_TCP;
        // For TCP the sequence number; for UDP over IPv4 the IP ID (consecutive unless DF).
        let seq = if tcp {
            u32::from_be_bytes([p[ip_len + 4], p[ip_len + 5], p[ip_len + 6], p[ip_len + 7]])
        } else if ip_len == 20 {
            u32::from(u16::from_be_bytes([p[4], p[5]]))
        } else {
            0
        };
        let payload = c.payload;
        if self.len == 0 {
            let out = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + p.len()];
            out.copy_from_slice(p);
            (self.len, self.proto, self.ip_len, self.headers, self.mss) =
                (p.len(), c.proto, ip_len, headers, payload);
            self.segments = 1;
            self.next_seq = if tcp {
                seq.wrapping_add(payload as u32)
            } else {
                (seq + 1) & 0xffff
            };
            self.closed = tcp && p[ip_len + 13] & 0x08 != 0;
            return Push::Merged;
        }
        let held = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.headers];
        let same_flow = c.proto == self.proto
            && headers == self.headers
            && ip_len == self.ip_len
            // Addresses, ports; (IPv4) TOS, TTL and DF; (IPv6) class, label, hop limit.
            && (if ip_len == 20 {
                held[12..20] == p[12..20] && held[1] == p[1] && held[8] == p[8]
                    && held[6] & 0x40 == p[6] & 0x40
            } else {
                held[8..40] == p[8..40] && held[..4] == p[..4] && held[7] == p[7]
            })
            && held[ip_len..ip_len + 4] == p[ip_len..ip_len + 4]
            // TCP: ACK number, window and options all equal.
            && (!tcp
                || (held[ip_len + 8..ip_len + 12] == p[ip_len + 8..ip_len + 12]
                    && held[ip_len + 14..ip_len + 16] == p[ip_len + 14..ip_len + 16]
                    && held[ip_len + 20..headers] == p[ip_len + 20..headers]));
        // The kernel numbers the IPv4 IDs of the segments it cuts consecutively, so only
        // datagrams numbered that way (or with DF, whose ID means nothing) are rebuilt.
        let in_order = if tcp {
            seq == self.next_seq
        } else {
            ip_len != 20 || p[6] & 0x40 != 0 || seq == self.next_seq
        };
        if self.closed
            || !same_flow
            || !in_order
            || payload > self.mss
            || self.len + payload > 65_535
            || self.segments >= 64
        {
            return Push::TakeFirst;
        }
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + payload].copy_from_slice(&p[headers..]);
        self.len += payload;
        self.segments += 1;
        self.next_seq = if tcp {
            seq.wrapping_add(payload as u32)
        } else {
            (seq + 1) & 0xffff
        };
        // A short segment or PSH ends a burst, as on the sender.
        let psh = tcp && p[ip_len + 13] & 0x08 != 0;
        if payload < self.mss || psh {
            self.closed = true;
            if psh {
                self.buf[VNET_HDR_LEN + ip_len + 13] |= 0x08;
            }
        }
        Push::Merged
    }

    /// The held packet with its virtio-net header, ready to write; empties the coalescer.
    /// A single segment goes as it came; several go as one GSO packet with a partial checksum.
    pub fn take(&mut self) -> Option<&[u8]> {
        if self.len == 0 {
            return None;
        }
        let (len, ip_len) = (self.len, self.ip_len);
        self.len = 0;
        let (vnet, p) = self.buf.split_at_mut(VNET_HDR_LEN);
        let p = &mut p[..len];
        vnet.fill(0);
        if self.segments == 1 {
            return Some(&self.buf[..VNET_HDR_LEN + len]);
        }
        let v4 = ip_len == 20;
        let l4_len = len - ip_len;
        if v4 {
            p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let c = !fold(sum(&p[..20], 0));
            p[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            p[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        let (gso_type, csum_offset) = if self.proto == PROTO_UDP {
            // The UDP length covers the whole super-packet; the kernel rewrites it (and
            // adjusts the partial checksum by the difference) in every datagram it cuts.
            p[ip_len + 4..ip_len + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            (GSO_UDP_L4, 6u16)
        } else if v4 {
            (GSO_TCPV4, 16)
        } else {
            (GSO_TCPV6, 16)
        };
        // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum; the kernel (or
        // whoever forwards the packet on) completes it over the segment it builds.
        let pseudo = if v4 {
            sum(&p[12..20], 0)
        } else {
            sum(&p[8..40], 0)
        };
        let partial = fold(pseudo + u64::from(self.proto) + l4_len as u64);
        let at = ip_len + usize::from(csum_offset);
        p[at..at + 2].copy_from_slice(&partial.to_be_bytes());
        vnet[0] = F_NEEDS_CSUM;
        vnet[1] = gso_type;
        vnet[2..4].copy_from_slice(&(self.headers as u16).to_ne_bytes());
        vnet[4..6].copy_from_slice(&(self.mss as u16).to_ne_bytes());
        vnet[6..8].copy_from_slice(&(ip_len as u16).to_ne_bytes());
        vnet[8..10].copy_from_slice(&csum_offset.to_ne_bytes());
        Some(&self.buf[..VNET_HDR_LEN + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sum by its definition: 16-bit words in network order, an odd byte padded.
    fn sum_by_definition(data: &[u8], acc: u64) -> u64 {
        data.chunks(2)
            .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .fold(acc, |a, w| a + w)
    }

    #[test]
    fn the_wide_checksum_equals_the_word_by_word_one_at_every_length() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut data = vec![0u8; 1600];
        for byte in &mut data {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        for len in (0..64).chain([1399, 1400, 1441, 1600]) {
            for acc in [0, 6 + 1420, 0xffff_ffff] {
                assert_eq!(
                    fold(sum(&data[..len], acc)),
                    fold(sum_by_definition(&data[..len], acc)),
                    "length {len}, starting sum {acc:#x}"
                );
            }
        }
        let ones = [0xffu8; 64];
        assert_eq!(fold(sum(&ones, 0)), fold(sum_by_definition(&ones, 0)));
    }

    /// Verifies an IPv4 TCP/UDP packet's IP and transport checksums.
    fn checksums_ok(p: &[u8]) -> bool {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        if fold(sum(&p[..ihl], 0)) != 0xffff {
            return false;
        }
        let acc = sum(&p[12..20], 0) + u64::from(p[9]) + (p.len() - ihl) as u64;
        fold(sum(&p[ihl..], acc)) == 0xffff
    }

    fn tcp_super_packet(payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1000u16.to_be_bytes());
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 200, 0, 1]);
        p[16..20].copy_from_slice(&[10, 200, 0, 2]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x18 | 0x01; // PSH, ACK, FIN
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        p
    }

    #[test]
    fn tso_super_packets_become_mss_sized_segments_with_valid_checksums() {
        let p = tcp_super_packet(3000);
        let header = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1400,
            csum_start: 20,
            csum_offset: 16,
        };
        let s = Segmenter::new(header, &p).unwrap();
        assert_eq!(s.count(), 3);
        let mut payload = Vec::new();
        for i in 0..3 {
            let mut out = vec![0u8; s.len(i)];
            s.write(i, &mut out);
            assert!(checksums_ok(&out), "segment {i}");
            assert_eq!(usize::from(u16::from_be_bytes([out[2], out[3]])), out.len());
            let seq = u32::from_be_bytes([out[24], out[25], out[26], out[27]]);
            assert_eq!(
                seq,
                0xffff_fff0u32.wrapping_add(1400 * i as u32),
                "sequence wraps"
            );
            assert_eq!(out[33] & 0x09 != 0, i == 2, "FIN/PSH only on the last");
            payload.extend_from_slice(&out[40..]);
        }
        assert_eq!(s.len(2), 40 + 200);
        assert_eq!(payload, &p[40..]);
    }

    /// Found by the `tun_segment_coalesce` fuzz target: a TSO packet whose TCP data offset
    /// says 8 bytes made the segment writer index past the segment; an IPv4 IHL under 5
    /// would too. Both are refused, not segmented.
    #[test]
    fn short_tcp_headers_and_ipv4_ihl_under_5_are_refused() {
        let crash = hex::decode(concat!(
            "0101ffff112e14001000",                     // virtio-net header: TSO over IPv4
            "45000fc812344000400604f70ae2e2e2e2e20111", // IPv4
            "2e140010d6d7d8d9daaeafb02db25c",           // TCP, data offset 2 (8 bytes)
        ))
        .unwrap();
        let header = VnetHeader::parse(&crash).unwrap();
        assert!(Segmenter::new(header, &crash[VNET_HDR_LEN..]).is_err());
        let tso = VnetHeader {
            gso_type: GSO_TCPV4,
            gso_size: 4,
            ..VnetHeader::default()
        };
        for (ihl, offset) in [(5u8, 3u8), (5, 4), (4, 5), (0, 5)] {
            let mut p = vec![0u8; 80];
            p[0] = 0x40 | ihl;
            p[9] = PROTO_TCP;
            let l4 = usize::from(ihl.max(5)) * 4;
            p[l4 + 12] = offset << 4;
            assert!(
                Segmenter::new(tso, &p).is_err(),
                "IHL {ihl}, TCP data offset {offset}"
            );
        }
        // The smallest valid headers still segment.
        let mut p = vec![0u8; 80];
        p[0] = 0x45;
        p[9] = PROTO_TCP;
        p[32] = 5 << 4;
        let s = Segmenter::new(tso, &p).unwrap();
        for i in 0..s.count() {
            let mut out = vec![0u8; s.len(i)];
            s.write(i, &mut out);
        }
    }

    #[test]
    fn segments_coalesce_back_into_the_super_packet_they_came_from() {
        let mut p = tcp_super_packet(3000);
        p[33] = 0x18; // PSH, ACK: a data burst
        let header = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            gso_size: 1400,
            ..VnetHeader::default()
        };
        let s = Segmenter::new(header, &p).unwrap();
        let mut c = Coalescer::default();
        for i in 0..s.count() {
            let mut out = vec![0u8; s.len(i)];
            s.write(i, &mut out);
            assert_eq!(c.push(&out), Push::Merged, "segment {i}");
        }
        let mut other = vec![0u8; s.len(0)];
        s.write(0, &mut other);
        assert_eq!(c.push(&other), Push::TakeFirst, "the burst ended with PSH");
        let taken = c.take().unwrap().to_vec();
        let vnet = VnetHeader::parse(&taken).unwrap();
        assert_eq!(
            (vnet.gso_type, vnet.gso_size, vnet.csum_start),
            (GSO_TCPV4, 1400, 20)
        );
        let rebuilt = &taken[VNET_HDR_LEN..];
        assert_eq!(rebuilt.len(), p.len());
        assert_eq!(&rebuilt[40..], &p[40..], "payload in order");
        assert_eq!(fold(sum(&rebuilt[..20], 0)), 0xffff, "IPv4 header checksum");
        // Completing the partial checksum as the kernel would yields a valid packet.
        let resegmented = Segmenter::new(vnet, rebuilt).unwrap();
        let mut first = vec![0u8; resegmented.len(0)];
        resegmented.write(0, &mut first);
        assert!(checksums_ok(&first));
        assert!(c.is_empty());
        let mut syn = tcp_super_packet(10);
        syn[33] = 0x02;
        assert_eq!(c.push(&syn), Push::Alone);
    }

    #[test]
    fn a_partial_checksum_is_completed_and_bad_input_is_refused() {
        let mut p = tcp_super_packet(100);
        let ip = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&ip.to_be_bytes());
        // What the kernel leaves: the pseudo-header sum in the TCP checksum field.
        let pseudo = fold(sum(&p[12..20], 0) + 6 + 120);
        p[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let header = VnetHeader {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHeader::default()
        };
        let s = Segmenter::new(header, &p).unwrap();
        let mut out = vec![0u8; s.len(0)];
        s.write(0, &mut out);
        assert!(checksums_ok(&out));
        let gso = VnetHeader {
            gso_type: GSO_UDP_L4,
            gso_size: 100,
            ..VnetHeader::default()
        };
        assert!(Segmenter::new(gso, &p).is_err(), "UDP GSO on a TCP packet");
        assert!(Segmenter::new(VnetHeader::default(), &[0x20; 40]).is_err());
        assert!(VnetHeader::parse(&[0; 9]).is_err());
    }

    /// A UDP datagram of `payload` bytes, IPv4 (ID `id`, with or without DF) or IPv6,
    /// from source port `sport`, with both checksums complete.
    fn udp_datagram(v6: bool, sport: u16, payload: usize, id: u16, df: bool) -> Vec<u8> {
        let ip_len = if v6 { 40 } else { 20 };
        let mut p = vec![0u8; ip_len + 8 + payload];
        let l4_len = 8 + payload;
        if v6 {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            p[6] = PROTO_UDP;
            p[7] = 64;
            p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            p[0] = 0x45;
            let total = p.len() as u16;
            p[2..4].copy_from_slice(&total.to_be_bytes());
            p[4..6].copy_from_slice(&id.to_be_bytes());
            p[6] = if df { 0x40 } else { 0 };
            p[8] = 64;
            p[9] = PROTO_UDP;
            p[12..16].copy_from_slice(&[10, 200, 0, 1]);
            p[16..20].copy_from_slice(&[10, 200, 0, 2]);
            let c = !fold(sum(&p[..20], 0));
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        p[ip_len..ip_len + 2].copy_from_slice(&sport.to_be_bytes());
        p[ip_len + 2..ip_len + 4].copy_from_slice(&9u16.to_be_bytes());
        p[ip_len + 4..ip_len + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        for (i, b) in p[ip_len + 8..].iter_mut().enumerate() {
            *b = (i * 13 + usize::from(id)) as u8;
        }
        let pseudo = if v6 {
            sum(&p[8..40], 0)
        } else {
            sum(&p[12..20], 0)
        };
        let mut c = !fold(sum(
            &p[ip_len..],
            pseudo + u64::from(PROTO_UDP) + l4_len as u64,
        ));
        if c == 0 {
            c = 0xffff;
        }
        p[ip_len + 6..ip_len + 8].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// Cuts a USO super-packet (with its virtio-net header) as the kernel's UDP GSO does:
    /// each datagram gets its length, the partial checksum adjusted by the length
    /// difference and then completed, and (IPv4) a consecutive ID and a new header checksum.
    fn kernel_uso(buf: &[u8]) -> Vec<Vec<u8>> {
        let vnet = VnetHeader::parse(buf).unwrap();
        let p = &buf[VNET_HDR_LEN..];
        let ip_len = usize::from(vnet.csum_start);
        assert_eq!(
            (vnet.flags, vnet.gso_type, vnet.csum_offset),
            (F_NEEDS_CSUM, GSO_UDP_L4, 6)
        );
        assert_eq!(usize::from(vnet.hdr_len), ip_len + 8);
        let super_len = u16::from_be_bytes([p[ip_len + 4], p[ip_len + 5]]);
        assert_eq!(
            usize::from(super_len),
            p.len() - ip_len,
            "UDP length of the whole"
        );
        let partial = u16::from_be_bytes([p[ip_len + 6], p[ip_len + 7]]);
        let mut out = Vec::new();
        for (i, chunk) in p[ip_len + 8..]
            .chunks(usize::from(vnet.gso_size))
            .enumerate()
        {
            let mut seg = p[..ip_len + 8].to_vec();
            seg.extend_from_slice(chunk);
            let l4_len = (8 + chunk.len()) as u16;
            seg[ip_len + 4..ip_len + 6].copy_from_slice(&l4_len.to_be_bytes());
            let check = fold(u64::from(partial) + u64::from(!super_len) + u64::from(l4_len));
            seg[ip_len + 6..ip_len + 8].copy_from_slice(&check.to_be_bytes());
            let mut c = !fold(sum(&seg[ip_len..], 0));
            if c == 0 {
                c = 0xffff;
            }
            seg[ip_len + 6..ip_len + 8].copy_from_slice(&c.to_be_bytes());
            if ip_len == 20 {
                let total = seg.len() as u16;
                seg[2..4].copy_from_slice(&total.to_be_bytes());
                let id = u16::from_be_bytes([p[4], p[5]]).wrapping_add(i as u16);
                seg[4..6].copy_from_slice(&id.to_be_bytes());
                seg[10..12].copy_from_slice(&[0, 0]);
                let c = !fold(sum(&seg[..20], 0));
                seg[10..12].copy_from_slice(&c.to_be_bytes());
            } else {
                seg[4..6].copy_from_slice(&l4_len.to_be_bytes());
            }
            out.push(seg);
        }
        out
    }

    #[test]
    fn udp_datagrams_of_one_flow_coalesce_into_a_uso_packet_the_kernel_cuts_back() {
        for v6 in [false, true] {
            // Five full datagrams and a short last one, IDs consecutive from 0xfffe (wrapping).
            let sizes = [1000, 1000, 1000, 1000, 1000, 300];
            let datagrams: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| udp_datagram(v6, 4000, n, 0xfffe_u16.wrapping_add(i as u16), false))
                .collect();
            let mut c = Coalescer::new(true);
            for (i, d) in datagrams.iter().enumerate() {
                assert_eq!(c.push(d), Push::Merged, "v6 {v6}: datagram {i}");
                assert!(checksums_ok(d) || v6);
            }
            assert_eq!(
                c.push(&datagrams[0]),
                Push::TakeFirst,
                "the short one ended it"
            );
            let taken = c.take().unwrap().to_vec();
            let vnet = VnetHeader::parse(&taken).unwrap();
            assert_eq!((vnet.gso_type, vnet.gso_size), (GSO_UDP_L4, 1000));
            assert_eq!(
                taken.len(),
                VNET_HDR_LEN + if v6 { 40 } else { 20 } + 8 + 5300
            );
            if !v6 {
                assert_eq!(fold(sum(&taken[VNET_HDR_LEN..][..20], 0)), 0xffff);
            }
            assert_eq!(
                kernel_uso(&taken),
                datagrams,
                "v6 {v6}: cut back byte for byte"
            );
            assert!(c.is_empty());
        }
    }

    #[test]
    fn udp_coalescing_stops_at_another_flow_a_larger_size_a_short_one_or_an_id_gap() {
        let d = |sport, n, id| udp_datagram(false, sport, n, id, false);
        let mut c = Coalescer::new(true);
        assert_eq!(c.push(&d(4000, 1000, 1)), Push::Merged);
        assert_eq!(c.push(&d(4001, 1000, 2)), Push::TakeFirst, "another flow");
        assert_eq!(c.push(&d(4000, 1200, 2)), Push::TakeFirst, "larger");
        assert_eq!(
            c.push(&d(4000, 1000, 7)),
            Push::TakeFirst,
            "ID gap without DF"
        );
        assert_eq!(c.push(&d(4000, 400, 2)), Push::Merged, "short: the last");
        assert_eq!(c.push(&d(4000, 1000, 3)), Push::TakeFirst, "closed");
        let two = kernel_uso(c.take().unwrap());
        assert_eq!(two, [d(4000, 1000, 1), d(4000, 400, 2)]);
        // With DF the IDs mean nothing (a sender leaves them 0): they do not stop it.
        let df = |id| udp_datagram(false, 4000, 500, id, true);
        assert_eq!(c.push(&df(0)), Push::Merged);
        assert_eq!(c.push(&df(0)), Push::Merged);
        assert_eq!(c.push(&df(0)), Push::Merged);
        let cut = kernel_uso(c.take().unwrap());
        assert_eq!(cut.len(), 3);
        assert!(cut
            .iter()
            .all(|s| checksums_ok(s) && s[28..] == df(0)[28..]));
        // One datagram goes as it came, with an empty virtio-net header.
        assert_eq!(c.push(&d(4000, 100, 1)), Push::Merged);
        let one = c.take().unwrap();
        assert_eq!(&one[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&one[VNET_HDR_LEN..], &d(4000, 100, 1)[..]);
        // A TCP segment after UDP datagrams starts over; an empty datagram is never merged.
        assert_eq!(c.push(&d(4000, 100, 1)), Push::Merged);
        let mut tcp = tcp_super_packet(100);
        tcp[33] = 0x10;
        assert_eq!(c.push(&tcp), Push::TakeFirst);
        c.take();
        assert_eq!(c.push(&d(4000, 0, 1)), Push::Alone);
        // Without USO on the device, UDP goes one datagram at a time.
        assert_eq!(Coalescer::default().push(&d(4000, 1000, 1)), Push::Alone);
    }
}
