//! Where a packet's time goes inside a worker: sampled per-stage timings.
//!
//! One packet in `every` (per direction, per worker) is timed at each step of its way
//! through the worker; the durations go into one HdrHistogram per [`Stage`]. Off (`every`
//! = 0) by default, when the only cost on the packet path is the branch on
//! [`StageSampler::pick`]. The histograms belong to the worker that records them; the
//! control thread gets copies and merges them ([`StageTimes::merge`]).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// A step of a packet's way through a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Transmit: the TUN read system call that brought the packet in.
    TunRead,
    /// Transmit: cutting a super-packet into tunnel-MTU segments and copying them into the
    /// batch (all of a read's segments together).
    Segment,
    /// Transmit: sealing (AEAD) the packet's segments, all together.
    Seal,
    /// Transmit: from sealed to the start of the send that carries it: the time it waited
    /// for the rest of its batch.
    BatchWait,
    /// Transmit: the send call that carried it (every send of its batch).
    Send,
    /// Receive: from the first datagram its receive call handed over to this one: the
    /// time it waited behind the datagrams ahead of it in the same call.
    Receive,
    /// Receive: finding its SA, verifying and decrypting it.
    Open,
    /// Receive: from opened to the start of the TUN write that carries it: the time it was
    /// held to be coalesced with the packets after it.
    Coalesce,
    /// Receive: the TUN write system call that carried it.
    TunWrite,
    /// Per loop turn, not per packet: the transmit half (read, seal, send), during which a
    /// datagram that arrives waits in the socket.
    TxTurn,
    /// Per loop turn, not per packet: the receive half (receive, open, write, or the idle
    /// wait), during which a packet that arrives on TUN waits in its queue.
    RxTurn,
}

impl Stage {
    /// Every stage, in the order a packet meets them.
    pub const ALL: [Stage; 11] = [
        Stage::TunRead,
        Stage::Segment,
        Stage::Seal,
        Stage::BatchWait,
        Stage::Send,
        Stage::Receive,
        Stage::Open,
        Stage::Coalesce,
        Stage::TunWrite,
        Stage::TxTurn,
        Stage::RxTurn,
    ];

    /// The name in tables, JSON and the appliance status.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::TunRead => "tun_read",
            Stage::Segment => "segment",
            Stage::Seal => "seal",
            Stage::BatchWait => "batch_wait",
            Stage::Send => "send",
            Stage::Receive => "receive",
            Stage::Open => "open",
            Stage::Coalesce => "coalesce",
            Stage::TunWrite => "tun_write",
            Stage::TxTurn => "tx_turn",
            Stage::RxTurn => "rx_turn",
        }
    }

    /// Whether it is timed per loop turn rather than per sampled packet.
    pub const fn per_turn(self) -> bool {
        matches!(self, Stage::TxTurn | Stage::RxTurn)
    }
}

/// The longest duration kept apart; anything longer is recorded as this (one second).
const HIGHEST_NS: u64 = 1_000_000_000;

fn histogram() -> Histogram<u64> {
    // Constant bounds that `new_with_bounds` accepts (low ≥ 1, high ≥ 2·low, sigfig ≤ 5):
    // this cannot fail. Two significant digits keep a worker's histograms near 250 KiB.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, HIGHEST_NS, 2).expect("constant histogram bounds are valid")
}

/// One worker's (or, merged, an engine's) stage histograms, in nanoseconds.
#[derive(Debug, Clone)]
pub struct StageTimes {
    histograms: Vec<Histogram<u64>>,
}

impl Default for StageTimes {
    fn default() -> Self {
        Self {
            histograms: Stage::ALL.iter().map(|_| histogram()).collect(),
        }
    }
}

impl PartialEq for StageTimes {
    fn eq(&self, other: &Self) -> bool {
        self.histograms == other.histograms
    }
}

// Histograms compare by their counts: equality is an equivalence.
impl Eq for StageTimes {}

impl StageTimes {
    /// Records one duration of `stage`; never allocates, clamps what is out of range.
    #[inline]
    pub fn record(&mut self, stage: Stage, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(HIGHEST_NS);
        self.histograms[stage as usize].saturating_record(ns.clamp(1, HIGHEST_NS));
    }

    /// Samples recorded for `stage`.
    pub fn count(&self, stage: Stage) -> u64 {
        self.histograms[stage as usize].len()
    }

    /// The histogram of `stage` (nanoseconds).
    pub fn histogram(&self, stage: Stage) -> &Histogram<u64> {
        &self.histograms[stage as usize]
    }

    /// Adds another worker's samples to these.
    pub fn merge(&mut self, other: &StageTimes) {
        for (mine, theirs) in self.histograms.iter_mut().zip(&other.histograms) {
            // Histograms of equal bounds always add.
            let _ = mine.add(theirs);
        }
    }

    /// Forgets every sample.
    pub fn clear(&mut self) {
        for h in &mut self.histograms {
            h.reset();
        }
    }

    /// Percentiles of each stage that has samples, in [`Stage::ALL`] order.
    pub fn summary(&self) -> Vec<StageSummary> {
        Stage::ALL
            .iter()
            .map(|&stage| (stage, self.histogram(stage)))
            .filter(|(_, h)| !h.is_empty())
            .map(|(stage, h)| StageSummary {
                stage,
                samples: h.len(),
                p50_ns: h.value_at_quantile(0.5),
                p99_ns: h.value_at_quantile(0.99),
                p999_ns: h.value_at_quantile(0.999),
                max_ns: h.max(),
            })
            .collect()
    }
}

impl serde::Serialize for StageTimes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.summary().serialize(serializer)
    }
}

/// One stage's percentiles, as tables and the appliance status show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StageSummary {
    /// The stage.
    pub stage: Stage,
    /// Samples taken.
    pub samples: u64,
    /// Median, nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile, nanoseconds.
    pub p99_ns: u64,
    /// 99.9th percentile, nanoseconds.
    pub p999_ns: u64,
    /// Longest, nanoseconds.
    pub max_ns: u64,
}

/// Picks one packet in `every` for timing; 0 picks none.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageSampler {
    every: u32,
    countdown: u32,
}

impl StageSampler {
    /// A sampler of one packet in `every` (0: off).
    pub fn new(every: u32) -> Self {
        Self {
            every,
            countdown: every,
        }
    }

    /// Whether sampling is on.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.every != 0
    }

    /// Whether the next packet is timed. Off, one branch; on, a countdown.
    #[inline]
    pub fn pick(&mut self) -> bool {
        if self.every == 0 {
            return false;
        }
        self.countdown -= 1;
        if self.countdown == 0 {
            self.countdown = self.every;
            true
        } else {
            false
        }
    }

    /// The clock now when the next packet is timed, `None` when it is not.
    #[inline]
    pub fn start(&mut self) -> Option<Instant> {
        self.pick().then(Instant::now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sampler_picks_one_in_every_and_none_when_off() {
        let mut off = StageSampler::new(0);
        assert!(!(0..1000).any(|_| off.pick()));
        let mut s = StageSampler::new(4);
        let picked: Vec<bool> = (0..8).map(|_| s.pick()).collect();
        assert_eq!(
            picked,
            [false, false, false, true, false, false, false, true]
        );
        let mut every = StageSampler::new(1);
        assert!((0..10).all(|_| every.pick()));
    }

    #[test]
    fn merged_times_add_counts_and_summaries_skip_empty_stages() {
        let mut a = StageTimes::default();
        let mut b = StageTimes::default();
        for us in 1..=100 {
            a.record(Stage::Seal, Duration::from_micros(us));
        }
        b.record(Stage::Seal, Duration::from_secs(5));
        b.record(Stage::Open, Duration::ZERO);
        a.merge(&b);
        assert_eq!(a.count(Stage::Seal), 101);
        assert_eq!(a.count(Stage::Open), 1);
        let summary = a.summary();
        assert_eq!(
            summary.iter().map(|s| s.stage).collect::<Vec<_>>(),
            [Stage::Seal, Stage::Open]
        );
        let seal = summary[0];
        // Two significant digits: within 1% of 50 µs.
        assert!((49_000..=52_000).contains(&seal.p50_ns), "{seal:?}");
        // Longer than the histogram's range: kept, as the range's end.
        assert!(seal.max_ns >= HIGHEST_NS, "{seal:?}");
        assert_ne!(a, b);
        a.clear();
        assert_eq!(a, StageTimes::default());
    }
}
