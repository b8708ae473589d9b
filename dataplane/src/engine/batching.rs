//! When a transmit batch goes out: the decision, apart from the clock and the I/O.
//!
//! A worker reads packets from its input (TUN) and seals them into a batch while more are
//! waiting, so that one send carries many. A batch goes out as soon as the input has
//! nothing more (a lone packet never waits for company), when it holds `max_packets`, or
//! when its oldest packet has waited `max_hold`, whichever comes first: under a burst the
//! first packet of the batch waits at most `max_hold` (plus the one read under way) for
//! the ones behind it, instead of for as many reads as the burst holds.
//!
//! [`BatchDeadline`] takes `now` as an argument and reads no clock, so its bound is
//! tested on virtual time.

use std::time::{Duration, Instant};

/// How long a transmit batch may gather packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// The longest the batch's oldest packet waits for more to join it; `None`: as long
    /// as the input has more (up to `max_packets`).
    pub max_hold: Option<Duration>,
    /// Input reads per batch at most.
    pub max_packets: usize,
}

impl BatchPolicy {
    /// Gather while the input has more, up to 64 reads, however long they take.
    ///
    /// 64 reads of small packets fill one GSO send (64 segments): one system call carries
    /// them as well as it would carry four times as many, while a larger batch only makes its
    /// first packet wait for the reads and seals behind it (at 256 reads, A's `batch_wait`
    /// p99.9 was 390 to 440 µs under half load; at 64, 170 to 195 µs, docs/latency.md run 6).
    /// Large reads (a TCP super-packet is up to 46 segments) fill the batch's sends first.
    pub const GATHER: BatchPolicy = BatchPolicy {
        max_hold: None,
        max_packets: 64,
    };
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self::GATHER
    }
}

/// How a worker trades latency against batching: its transmit batches' policy, and how
/// long it keeps polling after its last packet before it blocks in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchingMode {
    /// When a transmit batch goes out.
    pub policy: BatchPolicy,
    /// After the last packet sent or received, the worker polls its socket and TUN queue
    /// this long without blocking (zero: it blocks at once), so that the next packet is
    /// not delayed by a wake-up; it spends the CPU for it.
    pub busy_poll: Duration,
}

impl BatchingMode {
    /// Throughput first (the default): the largest batches, no busy polling.
    pub const THROUGHPUT: BatchingMode = BatchingMode {
        policy: BatchPolicy::GATHER,
        busy_poll: Duration::ZERO,
    };

    /// Latency first: a batch's first packet waits at most 20 µs for the rest, batches of
    /// at most 32 reads, and 100 µs of polling after the last packet.
    pub const LATENCY_FIRST: BatchingMode = BatchingMode {
        policy: BatchPolicy {
            max_hold: Some(Duration::from_micros(20)),
            max_packets: 32,
        },
        busy_poll: Duration::from_micros(100),
    };

    /// The largest batch (in reads) a mode may ask for.
    pub const MAX_PACKETS: usize = 1024;
    /// The longest busy poll a mode may ask for: past it a worker is simply spinning.
    pub const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

    /// `self` if a worker can run it, or what is wrong with it.
    pub fn checked(self) -> crate::Result<Self> {
        if !(1..=Self::MAX_PACKETS).contains(&self.policy.max_packets) {
            return Err(crate::Error::EngineConfig(format!(
                "a transmit batch of {} reads is out of range (expected 1..={})",
                self.policy.max_packets,
                Self::MAX_PACKETS
            )));
        }
        if self.policy.max_hold.is_some_and(|h| h.is_zero()) {
            return Err(crate::Error::EngineConfig(
                "a batch hold of 0 µs sends every packet alone: give at least 1 µs, or none for no bound".into(),
            ));
        }
        if self.busy_poll > Self::MAX_BUSY_POLL {
            return Err(crate::Error::EngineConfig(format!(
                "a busy poll of {:?} is over the limit of {:?}",
                self.busy_poll,
                Self::MAX_BUSY_POLL
            )));
        }
        Ok(self)
    }
}

impl Default for BatchingMode {
    fn default() -> Self {
        Self::THROUGHPUT
    }
}

impl BatchingMode {
    /// The mode's name as the configuration spells it: `throughput` without a hold bound or
    /// busy polling, `latency` with either.
    pub fn name(&self) -> &'static str {
        if self.policy.max_hold.is_none() && self.busy_poll.is_zero() {
            "throughput"
        } else {
            "latency"
        }
    }
}

/// For operators' logs and replies: `latency (a batch's first packet waits at most 30 µs,
/// batches of at most 32 reads, no busy polling)`.
impl std::fmt::Display for BatchingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (", self.name())?;
        if let Some(hold) = self.policy.max_hold {
            write!(
                f,
                "a batch's first packet waits at most {} µs, ",
                hold.as_micros()
            )?;
        }
        write!(f, "batches of at most {} reads, ", self.policy.max_packets)?;
        if self.busy_poll.is_zero() {
            f.write_str("no busy polling)")
        } else {
            write!(f, "{} µs of busy polling)", self.busy_poll.as_micros())
        }
    }
}

/// Whether the batch being gathered must go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchDecision {
    /// Read another packet into it.
    Gather,
    /// Send it now.
    Flush,
}

/// The state of one batch being gathered: when its oldest packet joined and how many
/// reads it took.
#[derive(Debug, Clone, Copy)]
pub struct BatchDeadline {
    policy: BatchPolicy,
    oldest: Option<Instant>,
    reads: usize,
}

impl BatchDeadline {
    /// An empty batch under `policy`.
    pub fn new(policy: BatchPolicy) -> Self {
        Self {
            policy,
            oldest: None,
            reads: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> BatchPolicy {
        self.policy
    }

    /// Whether the clock is needed to decide: only with a hold bound and a packet held.
    #[inline]
    pub fn needs_clock(&self) -> bool {
        self.policy.max_hold.is_some() && self.oldest.is_some()
    }

    /// Whether to read another packet before sending, at `now` (ignored when
    /// [`needs_clock`](Self::needs_clock) is false). `input_empty`: the last read found
    /// nothing waiting.
    #[inline]
    pub fn decide(&self, now: Instant, input_empty: bool) -> BatchDecision {
        let held_too_long = match (self.policy.max_hold, self.oldest) {
            (Some(bound), Some(oldest)) => now.saturating_duration_since(oldest) >= bound,
            _ => false,
        };
        if input_empty || held_too_long || self.reads >= self.policy.max_packets {
            BatchDecision::Flush
        } else {
            BatchDecision::Gather
        }
    }

    /// A read was made; `joined_at`: when its packet joined the batch, `None` when it
    /// was dropped (no route, no SA) and the batch holds nothing new.
    #[inline]
    pub fn read(&mut self, joined_at: Option<Instant>) {
        self.reads += 1;
        if self.oldest.is_none() {
            self.oldest = joined_at;
        }
    }

    /// The batch went out (or was empty): the next one starts.
    #[inline]
    pub fn flushed(&mut self) {
        self.oldest = None;
        self.reads = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker on virtual time: packets arrive at the given offsets, each read and seal
    /// takes `read_cost`, each send `send_cost`. Returns, per packet, how long it waited
    /// in the batch between joining it and the start of its send.
    fn simulate(
        policy: BatchPolicy,
        arrivals: &[Duration],
        read_cost: Duration,
        send_cost: Duration,
    ) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut now = t0;
        let mut next = 0;
        let mut held = Vec::new();
        let mut waits = vec![Duration::MAX; arrivals.len()];
        let mut deadline = BatchDeadline::new(policy);
        while next < arrivals.len() || !held.is_empty() {
            let waiting = next < arrivals.len() && t0 + arrivals[next] <= now;
            match deadline.decide(now, !waiting) {
                BatchDecision::Gather => {
                    now += read_cost;
                    held.push((next, now));
                    deadline.read(Some(now));
                    next += 1;
                }
                BatchDecision::Flush if held.is_empty() => {
                    // Idle: the worker sleeps until the next packet arrives.
                    now = now.max(t0 + arrivals[next]);
                    deadline.flushed();
                }
                BatchDecision::Flush => {
                    for (i, joined) in held.drain(..) {
                        waits[i] = now - joined;
                    }
                    now += send_cost;
                    deadline.flushed();
                }
            }
        }
        waits
    }

    const READ: Duration = Duration::from_nanos(1_500);
    const SEND: Duration = Duration::from_micros(20);

    #[test]
    fn a_lone_packet_goes_as_soon_as_the_input_is_empty() {
        let policy = BatchPolicy {
            max_hold: Some(Duration::from_micros(30)),
            max_packets: 256,
        };
        let waits = simulate(policy, &[Duration::from_micros(7)], READ, SEND);
        assert_eq!(waits, [Duration::ZERO]);
        // Lone packets spaced wider than a send: none ever waits for another.
        let spaced: Vec<_> = (0..50).map(|i| Duration::from_micros(100 * i)).collect();
        let waits = simulate(policy, &spaced, READ, SEND);
        assert!(waits.iter().all(|w| w.is_zero()), "{waits:?}");
    }

    #[test]
    fn under_a_burst_no_packet_waits_longer_than_its_bound() {
        let bound = Duration::from_micros(30);
        let policy = BatchPolicy {
            max_hold: Some(bound),
            max_packets: 256,
        };
        // 1000 packets at once: the input never empties while the batch gathers.
        let burst = vec![Duration::ZERO; 1000];
        let waits = simulate(policy, &burst, READ, SEND);
        let worst = waits.iter().max().copied().unwrap_or_default();
        assert!(worst <= bound + READ, "waited {worst:?} (bound {bound:?})");
        // Gathering still happens: a batch holds about bound / read cost packets.
        assert!(worst >= bound - READ, "batches were cut short: {worst:?}");

        // Without the bound the same burst holds its first packet for 256 reads.
        let unbounded = BatchPolicy {
            max_hold: None,
            max_packets: 256,
        };
        let waits = simulate(unbounded, &burst, READ, SEND);
        let worst = waits.iter().max().copied().unwrap_or_default();
        assert_eq!(worst, READ * 255);
    }

    #[test]
    fn the_default_gather_holds_a_packet_for_one_gso_send_of_reads_at_most() {
        // A burst longer than any batch: the first packet of each waits for 63 reads, the
        // reads that fill one GSO send, and never for a second send's worth.
        let burst = vec![Duration::ZERO; 1000];
        let waits = simulate(BatchPolicy::GATHER, &burst, READ, SEND);
        let worst = waits.iter().max().copied().unwrap_or_default();
        assert_eq!(worst, READ * 63);
        assert_eq!(
            BatchPolicy::GATHER.max_hold,
            None,
            "no clock read per packet"
        );
    }

    #[test]
    fn a_steady_stream_faster_than_a_read_is_bounded_too() {
        let bound = Duration::from_micros(10);
        let policy = BatchPolicy {
            max_hold: Some(bound),
            max_packets: 64,
        };
        // A packet every 1 µs against 1.5 µs per read: the input is never empty.
        let stream: Vec<_> = (0..5000).map(Duration::from_micros).collect();
        let waits = simulate(policy, &stream, READ, SEND);
        assert!(waits.iter().all(|w| *w <= bound + READ));
        // A packet cap alone bounds the wait by reads, not by time.
        let capped = BatchPolicy {
            max_hold: None,
            max_packets: 4,
        };
        let waits = simulate(capped, &stream, READ, SEND);
        assert!(
            waits.iter().all(|w| *w <= READ * 3),
            "{:?}",
            waits.iter().max()
        );
    }

    #[test]
    fn modes_read_as_the_configuration_names_them() {
        assert_eq!(
            BatchingMode::THROUGHPUT.to_string(),
            "throughput (batches of at most 64 reads, no busy polling)"
        );
        assert_eq!(
            BatchingMode::LATENCY_FIRST.to_string(),
            "latency (a batch's first packet waits at most 20 µs, batches of at most 32 reads, \
             100 µs of busy polling)"
        );
        let mut hold_only = BatchingMode::LATENCY_FIRST;
        hold_only.busy_poll = Duration::ZERO;
        assert_eq!(hold_only.name(), "latency");
        assert!(hold_only.to_string().ends_with("no busy polling)"));
    }

    #[test]
    fn modes_a_worker_cannot_run_are_refused() {
        assert!(BatchingMode::THROUGHPUT.checked().is_ok());
        assert!(BatchingMode::LATENCY_FIRST.checked().is_ok());
        let mut m = BatchingMode::LATENCY_FIRST;
        m.policy.max_packets = 0;
        assert!(m.checked().unwrap_err().to_string().contains("0 reads"));
        let mut m = BatchingMode::LATENCY_FIRST;
        m.policy.max_hold = Some(Duration::ZERO);
        assert!(m.checked().is_err());
        let mut m = BatchingMode::LATENCY_FIRST;
        m.busy_poll = Duration::from_secs(1);
        assert!(m.checked().unwrap_err().to_string().contains("busy poll"));
    }

    #[test]
    fn the_clock_is_read_only_with_a_bound_and_a_packet_held() {
        let mut d = BatchDeadline::new(BatchPolicy {
            max_hold: None,
            max_packets: 8,
        });
        let now = Instant::now();
        d.read(Some(now));
        assert!(!d.needs_clock());
        let mut d = BatchDeadline::new(BatchPolicy {
            max_hold: Some(Duration::from_micros(20)),
            max_packets: 8,
        });
        assert!(!d.needs_clock(), "nothing held yet");
        d.read(None);
        assert!(!d.needs_clock(), "a dropped packet holds nothing");
        d.read(Some(now));
        assert!(d.needs_clock());
        d.flushed();
        assert!(!d.needs_clock());
    }
}
