//! Synthetic traffic: a generator of numbered inner IPv4/UDP packets over many flows and a
//! sink that checks every byte and each flow's order; the data plane's [`Source`] and
//! [`Sink`] for benchmarks, the demo and tests.
//!
//! A packet of flow `f`, number `n`, of `len` bytes is a 20-byte IPv4 header
//! (10.77.0.1 → an address in its peer's prefix, protocol UDP), an 8-byte UDP header (source
//! port 10000 + f, destination port 9), then `f` (u32), `n` (u64), a 32-bit tag mixed from
//! both and `len − 44` bytes cut from a fixed pseudo-random pattern at an offset mixed from
//! both. The sink rebuilds the whole packet from (`f`, `n`, `len`) and compares.
//!
//! Flow `f` goes to peer `f % peers`: its destination lies in that peer's prefix
//! ([`TrafficSpec::peer_prefix`]), and the engine routes it there through its route table
//! like any TUN packet, once [`TrafficSpec::routes`] are installed.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpclink_dataplane::engine::{PeerId, Sink, SinkFactory, Source, SourceFactory};
use cpclink_dataplane::io::udp::MAX_GSO_BYTES;
use cpclink_dataplane::psp::PSP_OVERHEAD;

use crate::pacer::{Pacer, SourceRate};
use crate::Error;

/// Smallest synthetic packet: headers, flow, number and tag.
pub const MIN_PACKET: usize = HEADER_LEN;
/// Largest synthetic packet.
pub const MAX_PACKET: usize = 16_384;
/// Peers one spec can spread its flows over (one /24 each in its /16).
pub const MAX_PEERS: u32 = 256;

const IP_UDP_LEN: usize = 28;
const HEADER_LEN: usize = IP_UDP_LEN + 16;
const PATTERN_OFFSETS: usize = 4096;
/// How long a paced worker may sleep in the kernel past its turn (the engine's idle wait);
/// its bucket holds a few of these so that waking late loses nothing.
const PACED_SLACK: Duration = Duration::from_millis(2);

/// What the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficSpec {
    /// Flows in all, numbered 0..flows and shared out over the workers (flow % workers).
    pub flows: u32,
    /// Inner packet length in bytes ([`MIN_PACKET`]..=[`MAX_PACKET`]).
    pub packet_len: usize,
    /// Peers the flows go to, round-robin (flow % peers), 1..=[`MAX_PEERS`].
    pub peers: u32,
    /// The first two octets of the peers' prefixes: peer `p`'s is `a.b.p.0/24`. Two
    /// appliances sending to each other through one directory need different ones.
    pub prefix_base: [u8; 2],
}

impl TrafficSpec {
    /// `flows` flows of `packet_len` bytes, all to peer 0, in 10.200.0.0/16.
    pub fn new(flows: u32, packet_len: usize) -> Self {
        Self {
            flows,
            packet_len,
            peers: 1,
            prefix_base: [10, 200],
        }
    }

    /// The inner prefix of peer `peer`: `prefix_base`.`peer`.0/24.
    pub fn peer_prefix(&self, peer: u32) -> (IpAddr, u8) {
        let [a, b] = self.prefix_base;
        (IpAddr::V4(Ipv4Addr::new(a, b, peer as u8, 0)), 24)
    }

    /// The routes the flows need: each peer's prefix to that peer.
    pub fn routes(&self) -> Vec<(IpAddr, u8, PeerId)> {
        (0..self.peers.clamp(1, MAX_PEERS))
            .map(|p| {
                let (addr, len) = self.peer_prefix(p);
                (addr, len, PeerId(p))
            })
            .collect()
    }

    /// Flow `flow`'s inner destination address.
    pub(crate) fn destination(&self, flow: u32) -> [u8; 4] {
        let peers = self.peers.clamp(1, MAX_PEERS);
        let peer = flow % peers;
        let [a, b] = self.prefix_base;
        [a, b, peer as u8, 1 + ((flow / peers) % 254) as u8]
    }

    fn checked(&self) -> Result<(), Error> {
        if self.flows == 0 {
            return Err(Error::Traffic(
                "a synthetic source needs at least one flow".into(),
            ));
        }
        if !(1..=MAX_PEERS).contains(&self.peers) {
            return Err(Error::Traffic(format!(
                "{} peers is out of range (expected 1..={MAX_PEERS})",
                self.peers
            )));
        }
        Ok(())
    }

    /// The engine's source factory: worker `i` of `n` sends flows `f` with `f % n == i`,
    /// paced to its share of `rate` when one is given, and counts into `counters`.
    /// `gso_segments` is the engine's: a paced worker is let go a whole send at a time.
    pub fn source(
        self,
        rate: Option<SourceRate>,
        gso_segments: usize,
        counters: &Arc<TrafficCounters>,
    ) -> Result<SourceFactory, Error> {
        self.checked()?;
        if let Some(rate) = rate {
            let pps = rate.packets_per_second(self.packet_len);
            if !(pps.is_finite() && pps > 0.0) {
                return Err(Error::Traffic(format!(
                    "source rate {rate} is not a positive rate"
                )));
            }
        }
        let counters = Arc::clone(counters);
        Ok(Box::new(move |worker, workers| {
            let mut generator = Generator::new(self, worker, workers);
            generator.counters = Some((Arc::clone(&counters), worker));
            if let Some(rate) = rate {
                // This worker's share of the rate is its share of the flows.
                let share = generator.flows() as f64 / f64::from(self.flows.max(1));
                let pps = rate.packets_per_second(generator.packet_len()) * share;
                let framed = generator.packet_len() + PSP_OVERHEAD;
                let chunk = (MAX_GSO_BYTES / framed).clamp(1, gso_segments.max(1)) as u64;
                let burst = (pps * 4.0 * PACED_SLACK.as_secs_f64()) as u64;
                generator.pacer = Some(Pacer::new(pps, chunk, burst, Instant::now()));
            }
            Box::new(generator) as Box<dyn Source>
        }))
    }

    /// The engine's sink factory: every worker checks what it delivers against this spec
    /// and counts into `counters`.
    pub fn sink(self, counters: &Arc<TrafficCounters>) -> SinkFactory {
        let counters = Arc::clone(counters);
        Box::new(move |worker, _| {
            let mut sink = VerifyingSink::new(self);
            sink.counters = Some((Arc::clone(&counters), worker));
            Box::new(sink) as Box<dyn Sink>
        })
    }
}

/// One worker's counters, on a cache line of its own: only that worker writes them.
#[derive(Debug, Default)]
#[repr(align(128))]
struct WorkerCounters {
    generated: AtomicU64,
    verified_packets: AtomicU64,
    verified_bytes: AtomicU64,
    gaps: AtomicU64,
    out_of_order: AtomicU64,
    corrupt: AtomicU64,
}

/// What an engine's generators made and its sinks saw, per worker, readable at any time
/// from another thread.
#[derive(Debug)]
pub struct TrafficCounters {
    workers: Vec<WorkerCounters>,
}

/// What the synthetic traffic of one engine counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrafficStats {
    /// Packets the generators made (and the engine took).
    pub generated: u64,
    /// What the sinks saw.
    pub sink: SinkStats,
}

impl TrafficCounters {
    /// Counters for an engine of `workers` workers.
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self {
            workers: (0..workers.max(1))
                .map(|_| WorkerCounters::default())
                .collect(),
        })
    }

    /// All workers summed.
    pub fn total(&self) -> TrafficStats {
        let mut t = TrafficStats::default();
        for w in &self.workers {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            t.generated += get(&w.generated);
            t.sink.verified_packets += get(&w.verified_packets);
            t.sink.verified_bytes += get(&w.verified_bytes);
            t.sink.gaps += get(&w.gaps);
            t.sink.out_of_order += get(&w.out_of_order);
            t.sink.corrupt += get(&w.corrupt);
        }
        t
    }

    fn worker(&self, index: usize) -> Option<&WorkerCounters> {
        self.workers.get(index)
    }
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

/// Writes the 44 header bytes of packet (`flow`, `number`) of `len` bytes to `dst` into `out`.
fn write_headers(out: &mut [u8], len: usize, dst: [u8; 4], flow: u32, number: u64) {
    let ip = &mut out[..20];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 77, 0, 1, 0, 0, 0, 0,
    ]);
    ip[16..20].copy_from_slice(&dst);
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
    spec: TrafficSpec,
    pattern: Vec<u8>,
    flows: Vec<u32>,
    next: Vec<u64>,
    cursor: usize,
    packet_len: usize,
    generated: u64,
    pacer: Option<Pacer>,
    counters: Option<(Arc<TrafficCounters>, usize)>,
}

impl Generator {
    /// The generator of worker `worker` of `workers`.
    pub fn new(spec: TrafficSpec, worker: usize, workers: usize) -> Self {
        let flows: Vec<u32> = (0..spec.flows)
            .filter(|f| *f as usize % workers.max(1) == worker)
            .collect();
        Self {
            spec,
            pattern: pattern(),
            next: vec![0; flows.len()],
            flows,
            cursor: 0,
            packet_len: spec.packet_len.clamp(MIN_PACKET, MAX_PACKET),
            generated: 0,
            pacer: None,
            counters: None,
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
        write_headers(out, out.len(), self.spec.destination(flow), flow, number);
        let offset = pattern_offset(flow, number);
        let body = out.len() - HEADER_LEN;
        out[HEADER_LEN..].copy_from_slice(&self.pattern[offset..offset + body]);
        self.generated += 1;
        self.publish();
    }

    /// Takes back the packet just written (it could not be sent): its number is reused.
    pub fn unfill(&mut self) {
        self.cursor = (self.cursor + self.flows.len() - 1) % self.flows.len();
        self.next[self.cursor] -= 1;
        self.generated -= 1;
        self.publish();
    }

    fn publish(&self) {
        if let Some(c) = self.counters.as_ref().and_then(|(c, i)| c.worker(*i)) {
            c.generated.store(self.generated, Ordering::Relaxed);
        }
    }

    /// Packets generated per flow: (flow, count).
    pub fn sent(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.flows.iter().copied().zip(self.next.iter().copied())
    }
}

impl Source for Generator {
    #[inline]
    fn next_len(&self) -> usize {
        if self.flows.is_empty() {
            0
        } else {
            self.packet_len
        }
    }

    #[inline]
    fn fill(&mut self, out: &mut [u8]) {
        Generator::fill(self, out);
    }

    fn unfill(&mut self) {
        Generator::unfill(self);
    }

    fn allowance(&mut self, now: Instant) -> u64 {
        self.pacer.as_mut().map_or(u64::MAX, |p| p.allowance(now))
    }

    fn spend(&mut self, packets: u64) {
        if let Some(pacer) = self.pacer.as_mut() {
            pacer.spend(packets);
        }
    }

    fn until_next(&self, now: Instant) -> Option<Duration> {
        self.pacer.as_ref().map(|p| p.until_next(now))
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
pub struct VerifyingSink {
    spec: TrafficSpec,
    pattern: Vec<u8>,
    expected: Vec<u64>,
    scratch: [u8; HEADER_LEN],
    stats: SinkStats,
    counters: Option<(Arc<TrafficCounters>, usize)>,
}

impl VerifyingSink {
    /// A sink for the flows of `spec`.
    pub fn new(spec: TrafficSpec) -> Self {
        Self {
            spec,
            pattern: pattern(),
            expected: vec![0; spec.flows as usize],
            scratch: [0; HEADER_LEN],
            stats: SinkStats::default(),
            counters: None,
        }
    }

    /// Checks one inner packet.
    #[inline]
    pub fn deliver(&mut self, packet: &[u8]) {
        self.check(packet);
        if let Some(c) = self.counters.as_ref().and_then(|(c, i)| c.worker(*i)) {
            // Plain stores: this worker is the only writer of its counters.
            let s = &self.stats;
            c.verified_packets
                .store(s.verified_packets, Ordering::Relaxed);
            c.verified_bytes.store(s.verified_bytes, Ordering::Relaxed);
            c.gaps.store(s.gaps, Ordering::Relaxed);
            c.out_of_order.store(s.out_of_order, Ordering::Relaxed);
            c.corrupt.store(s.corrupt, Ordering::Relaxed);
        }
    }

    #[inline]
    fn check(&mut self, packet: &[u8]) {
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
        write_headers(
            &mut self.scratch,
            packet.len(),
            self.spec.destination(flow),
            flow,
            number,
        );
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

impl Sink for VerifyingSink {
    #[inline]
    fn deliver(&mut self, packet: &[u8]) {
        VerifyingSink::deliver(self, packet);
    }
}

impl std::ops::AddAssign for SinkStats {
    fn add_assign(&mut self, o: Self) {
        self.verified_packets += o.verified_packets;
        self.verified_bytes += o.verified_bytes;
        self.gaps += o.gaps;
        self.out_of_order += o.out_of_order;
        self.corrupt += o.corrupt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(len: usize) -> TrafficSpec {
        TrafficSpec::new(8, len)
    }

    #[test]
    fn sink_verifies_what_the_generators_of_all_workers_make() {
        let mut sink = VerifyingSink::new(spec(64));
        for worker in 0..3 {
            let mut generator = Generator::new(spec(200), worker, 3);
            let mut packet = vec![0u8; 200];
            for _ in 0..50 {
                generator.fill(&mut packet);
                cpclink_dataplane::wire::InnerPacket::new_checked(&packet[..]).unwrap();
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
            let mut sink = VerifyingSink::new(spec(64));
            let mut bad = packets[0].clone();
            bad[byte] ^= 0x20;
            sink.deliver(&bad);
            assert_eq!(sink.stats().verified_packets, 0, "byte {byte} flipped");
            assert_eq!(sink.stats().corrupt, 1);
        }
        // Flow 0's packets are 0, 8, 16 (numbers 0, 1, 2); skip number 1 of flow 0, then replay 0.
        let mut sink = VerifyingSink::new(spec(64));
        sink.deliver(&packets[0]);
        sink.deliver(&packets[8 * 2]);
        sink.deliver(&packets[0]);
        let stats = sink.stats();
        assert_eq!((stats.gaps, stats.out_of_order), (1, 1));
    }

    #[test]
    fn every_flow_routes_to_its_peer_through_the_specs_routes() {
        let spec = TrafficSpec {
            peers: 3,
            ..spec(64)
        };
        let table = cpclink_dataplane::route::RouteTable::build(spec.routes()).unwrap();
        let mut generator = Generator::new(spec, 0, 1);
        let mut sink = VerifyingSink::new(spec);
        let mut packet = vec![0u8; 64];
        for flow in 0..8 {
            generator.fill(&mut packet);
            let inner = cpclink_dataplane::wire::InnerPacket::new_checked(&packet[..]).unwrap();
            assert_eq!(table.lookup(inner.destination()), Some(PeerId(flow % 3)));
            sink.deliver(&packet);
        }
        assert_eq!(sink.stats().verified_packets, 8);
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
