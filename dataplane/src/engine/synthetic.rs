//! Synthetic traffic: a generator of numbered inner IPv4/UDP packets over many flows and a
//! sink that checks every byte and each flow's order. The benchmark and demo path.
//!
//! A packet of flow `f`, number `n`, of `len` bytes is a 20-byte IPv4 header
//! (10.77.0.1 → 10.77.0.2, protocol UDP), an 8-byte UDP header (source port 10000 + f,
//! destination port 9), then `f` (u32), `n` (u64), a 32-bit tag mixed from both and
//! `len − 44` bytes cut from a fixed pseudo-random pattern at an offset mixed from both. The sink rebuilds the
//! whole packet from (`f`, `n`, `len`) and compares.

/// Smallest synthetic packet: headers, flow, number and tag.
pub const MIN_PACKET: usize = HEADER_LEN;
/// Largest synthetic packet.
pub const MAX_PACKET: usize = 16_384;

const IP_UDP_LEN: usize = 28;
const HEADER_LEN: usize = IP_UDP_LEN + 16;
const PATTERN_OFFSETS: usize = 4096;

/// What the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficSpec {
    /// Flows in all, numbered 0..flows and shared out over the workers (flow % workers).
    pub flows: u32,
    /// Inner packet length in bytes ([`MIN_PACKET`]..=[`MAX_PACKET`]).
    pub packet_len: usize,
}

fn pattern() -> Vec<u8> {
    // xorshift64: cheap, and any bug that shifts or swaps bytes shows up as a mismatch.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..PATTERN_OFFSETS + MAX_PACKET)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A 64-bit mix of (flow, number) (SplitMix64's finaliser): every input bit moves the
/// pattern offset and the tag, so a corrupted flow or number field cannot pass as another.
fn mix(flow: u32, number: u64) -> u64 {
    let mut z = number ^ (u64::from(flow) << 40) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pattern_offset(flow: u32, number: u64) -> usize {
    (mix(flow, number) % PATTERN_OFFSETS as u64) as usize
}

/// Writes the 44 header bytes of packet (`flow`, `number`) of `len` bytes into `out`.
fn write_headers(out: &mut [u8], len: usize, flow: u32, number: u64) {
    let ip = &mut out[..20];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 77, 0, 1, 10, 77, 0, 2,
    ]);
    ip[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    let udp = &mut out[20..28];
    udp[..2].copy_from_slice(&(10_000u16.wrapping_add(flow as u16)).to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    out[28..32].copy_from_slice(&flow.to_be_bytes());
    out[32..40].copy_from_slice(&number.to_be_bytes());
    out[40..44].copy_from_slice(&((mix(flow, number) >> 32) as u32).to_be_bytes());
}

/// Produces the packets of one worker's share of the flows, round-robin.
#[derive(Debug)]
pub struct Generator {
    pattern: Vec<u8>,
    flows: Vec<u32>,
    next: Vec<u64>,
    cursor: usize,
    packet_len: usize,
}

impl Generator {
    /// The generator of worker `worker` of `workers`.
    pub fn new(spec: TrafficSpec, worker: usize, workers: usize) -> Self {
        let flows: Vec<u32> = (0..spec.flows)
            .filter(|f| *f as usize % workers.max(1) == worker)
            .collect();
        Self {
            pattern: pattern(),
            next: vec![0; flows.len()],
            flows,
            cursor: 0,
            packet_len: spec.packet_len.clamp(MIN_PACKET, MAX_PACKET),
        }
    }

    /// Whether this worker has any flow to send.
    pub fn is_idle(&self) -> bool {
        self.flows.is_empty()
    }

    /// Flows this worker sends.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Length of every packet.
    pub fn packet_len(&self) -> usize {
        self.packet_len
    }

    /// Writes the next packet into `out` (exactly [`packet_len`](Self::packet_len) bytes).
    #[inline]
    pub fn fill(&mut self, out: &mut [u8]) {
        let flow = self.flows[self.cursor];
        let number = self.next[self.cursor];
        self.next[self.cursor] += 1;
        self.cursor = (self.cursor + 1) % self.flows.len();
        write_headers(out, out.len(), flow, number);
        let offset = pattern_offset(flow, number);
        let body = out.len() - HEADER_LEN;
        out[HEADER_LEN..].copy_from_slice(&self.pattern[offset..offset + body]);
    }

    /// Takes back the packet just written (it could not be sent): its number is reused.
    pub fn unfill(&mut self) {
        self.cursor = (self.cursor + self.flows.len() - 1) % self.flows.len();
        self.next[self.cursor] -= 1;
    }

    /// Packets generated per flow: (flow, count).
    pub fn sent(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.flows.iter().copied().zip(self.next.iter().copied())
    }
}

/// What a sink saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkStats {
    /// Packets whose every byte matched.
    pub verified_packets: u64,
    /// Bytes of those packets.
    pub verified_bytes: u64,
    /// Packets missing in a flow's sequence (lost on the way).
    pub gaps: u64,
    /// Packets that arrived after a later one of their flow (order broken) or twice.
    pub out_of_order: u64,
    /// Packets whose bytes did not match what the generator made, or that were malformed.
    pub corrupt: u64,
}

/// Checks every byte of every packet and each flow's order.
#[derive(Debug)]
pub struct Sink {
    pattern: Vec<u8>,
    expected: Vec<u64>,
    scratch: [u8; HEADER_LEN],
    stats: SinkStats,
}

impl Sink {
    /// A sink for `flows` flows.
    pub fn new(flows: u32) -> Self {
        Self {
            pattern: pattern(),
            expected: vec![0; flows as usize],
            scratch: [0; HEADER_LEN],
            stats: SinkStats::default(),
        }
    }

    /// Checks one inner packet.
    #[inline]
    pub fn deliver(&mut self, packet: &[u8]) {
        if packet.len() < HEADER_LEN || packet.len() > MAX_PACKET {
            self.stats.corrupt += 1;
            return;
        }
        let flow = u32::from_be_bytes([packet[28], packet[29], packet[30], packet[31]]);
        let mut number = [0u8; 8];
        number.copy_from_slice(&packet[32..40]);
        let number = u64::from_be_bytes(number);
        let Some(expected) = self.expected.get_mut(flow as usize) else {
            self.stats.corrupt += 1;
            return;
        };
        write_headers(&mut self.scratch, packet.len(), flow, number);
        let offset = pattern_offset(flow, number);
        let body = &packet[HEADER_LEN..];
        if packet[..HEADER_LEN] != self.scratch[..]
            || body != &self.pattern[offset..offset + body.len()]
        {
            self.stats.corrupt += 1;
            return;
        }
        if number < *expected {
            self.stats.out_of_order += 1;
        } else {
            self.stats.gaps += number - *expected;
            *expected = number + 1;
        }
        self.stats.verified_packets += 1;
        self.stats.verified_bytes += packet.len() as u64;
    }

    /// The counts so far.
    pub fn stats(&self) -> SinkStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(len: usize) -> TrafficSpec {
        TrafficSpec {
            flows: 8,
            packet_len: len,
        }
    }

    #[test]
    fn sink_verifies_what_the_generators_of_all_workers_make() {
        let mut sink = Sink::new(8);
        for worker in 0..3 {
            let mut generator = Generator::new(spec(200), worker, 3);
            let mut packet = vec![0u8; 200];
            for _ in 0..50 {
                generator.fill(&mut packet);
                crate::wire::InnerPacket::new_checked(&packet[..]).unwrap();
                sink.deliver(&packet);
            }
        }
        let stats = sink.stats();
        assert_eq!(stats.verified_packets, 150);
        assert_eq!(stats.verified_bytes, 150 * 200);
        assert_eq!((stats.gaps, stats.out_of_order, stats.corrupt), (0, 0, 0));
    }

    #[test]
    fn sink_catches_any_flipped_byte_gaps_and_reordering() {
        let mut generator = Generator::new(spec(64), 0, 1);
        let packets: Vec<Vec<u8>> = (0..24)
            .map(|_| {
                let mut p = vec![0u8; 64];
                generator.fill(&mut p);
                p
            })
            .collect();
        for byte in 0..64 {
            let mut sink = Sink::new(8);
            let mut bad = packets[0].clone();
            bad[byte] ^= 0x20;
            sink.deliver(&bad);
            assert_eq!(sink.stats().verified_packets, 0, "byte {byte} flipped");
            assert_eq!(sink.stats().corrupt, 1);
        }
        // Flow 0's packets are 0, 8, 16 (numbers 0, 1, 2); skip number 1 of flow 0, then replay 0.
        let mut sink = Sink::new(8);
        sink.deliver(&packets[0]);
        sink.deliver(&packets[8 * 2]);
        sink.deliver(&packets[0]);
        let stats = sink.stats();
        assert_eq!((stats.gaps, stats.out_of_order), (1, 1));
    }

    #[test]
    fn an_unsent_packet_is_generated_again() {
        let mut generator = Generator::new(spec(100), 0, 1);
        let (mut a, mut b) = (vec![0u8; 100], vec![0u8; 100]);
        generator.fill(&mut a);
        generator.unfill();
        generator.fill(&mut b);
        assert_eq!(a, b);
        assert_eq!(generator.sent().map(|(_, n)| n).sum::<u64>(), 1);
    }
}
