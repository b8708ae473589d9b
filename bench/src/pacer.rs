//! Pacing of the synthetic source: a token bucket in packets, so a demo or a latency run
//! sends at a set rate instead of as fast as the sender can (which, with the receiver on
//! the same machine, ends in datagrams lost in the kernel). Sans-IO: time is passed in.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How fast a synthetic source sends, over all its workers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SourceRate {
    /// Inner bits per second (inner packet bytes × 8, as the sink counts them).
    BitsPerSecond(f64),
    /// Inner packets per second.
    PacketsPerSecond(f64),
}

impl SourceRate {
    /// Packets per second for packets of `packet_len` bytes.
    pub fn packets_per_second(self, packet_len: usize) -> f64 {
        match self {
            SourceRate::BitsPerSecond(bits) => bits / (8.0 * packet_len.max(1) as f64),
            SourceRate::PacketsPerSecond(pps) => pps,
        }
    }
}

impl fmt::Display for SourceRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SourceRate::BitsPerSecond(b) => write!(f, "{} Gbit/s", b / 1e9),
            SourceRate::PacketsPerSecond(p) => write!(f, "{p} packets/s"),
        }
    }
}

impl FromStr for SourceRate {
    type Err = String;

    /// `5g`, `2.5gbit`, `800m`, `800mbit` (bits per second); `100kpps`, `1.5mpps`,
    /// `20000pps` (packets per second).
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let split = lower
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(lower.len());
        let (number, unit) = lower.split_at(split);
        let bad = || {
            format!(
                "rate {s:?} is not understood (expected a positive number and a unit: \
                 5g or 5gbit, 800m or 800mbit, 100kpps, 1mpps, 20000pps)"
            )
        };
        let value: f64 = number.parse().map_err(|_| bad())?;
        if !(value.is_finite() && value > 0.0) {
            return Err(bad());
        }
        Ok(match unit {
            "g" | "gbit" | "gbps" | "gbit/s" => SourceRate::BitsPerSecond(value * 1e9),
            "m" | "mbit" | "mbps" | "mbit/s" => SourceRate::BitsPerSecond(value * 1e6),
            "pps" => SourceRate::PacketsPerSecond(value),
            "kpps" => SourceRate::PacketsPerSecond(value * 1e3),
            "mpps" => SourceRate::PacketsPerSecond(value * 1e6),
            _ => return Err(bad()),
        })
    }
}

/// The token bucket of one worker's source: tokens are packets, earned at `rate` per
/// second, spent by sending, and held up to `burst` (so an idle spell is not made up for
/// with a flood later).
#[derive(Debug, Clone)]
pub struct Pacer {
    per_ns: f64,
    burst: f64,
    tokens: f64,
    chunk: u64,
    last: Instant,
}

impl Pacer {
    /// A pacer of `rate` packets per second that hands out packets `chunk` at a time (one
    /// GSO send's worth, so pacing does not cost batching) and holds at most `burst`
    /// (raised to `chunk`); it starts with one chunk.
    pub fn new(rate: f64, chunk: u64, burst: u64, now: Instant) -> Self {
        let chunk = chunk.max(1);
        Self {
            per_ns: rate.max(0.0) / 1e9,
            burst: burst.max(chunk) as f64,
            tokens: chunk as f64,
            chunk,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let ns = now.saturating_duration_since(self.last).as_nanos() as f64;
        self.last = now;
        self.tokens = (self.tokens + ns * self.per_ns).min(self.burst);
    }

    /// Packets that may be sent now: a whole number of chunks, or nothing.
    pub fn allowance(&mut self, now: Instant) -> u64 {
        self.refill(now);
        let chunks = (self.tokens / self.chunk as f64) as u64;
        chunks * self.chunk
    }

    /// Takes `packets` sent out of the bucket.
    pub fn spend(&mut self, packets: u64) {
        self.tokens = (self.tokens - packets as f64).max(0.0);
    }

    /// How long until the next chunk may go (zero if it may now).
    pub fn until_next(&self, now: Instant) -> Duration {
        let since = now.saturating_duration_since(self.last).as_nanos() as f64;
        let missing = self.chunk as f64 - self.tokens - since * self.per_ns;
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        if self.per_ns == 0.0 {
            return Duration::MAX;
        }
        Duration::from_nanos((missing / self.per_ns).ceil() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_their_units_and_bad_ones_are_named() {
        let r = |s: &str| s.parse::<SourceRate>().unwrap();
        assert_eq!(r("5g"), SourceRate::BitsPerSecond(5e9));
        assert_eq!(r("2.5Gbit"), SourceRate::BitsPerSecond(2.5e9));
        assert_eq!(r("800m"), SourceRate::BitsPerSecond(800e6));
        assert_eq!(r("100kpps"), SourceRate::PacketsPerSecond(100e3));
        assert_eq!(r("1.5mpps"), SourceRate::PacketsPerSecond(1.5e6));
        assert_eq!(r("20000pps"), SourceRate::PacketsPerSecond(20e3));
        for bad in ["", "5", "0g", "-1g", "fast", "5 tb", "1e3pps"] {
            let e = bad.parse::<SourceRate>().unwrap_err();
            assert!(e.contains("is not understood"), "{bad}: {e}");
        }
        assert_eq!(
            SourceRate::BitsPerSecond(8e6).packets_per_second(1000),
            1000.0
        );
    }

    /// Drives a pacer the way a worker does, polling every `step`, for `total`; returns
    /// the packets it let go.
    fn drive(rate: f64, chunk: u64, burst: u64, step: Duration, total: Duration) -> u64 {
        let start = Instant::now();
        let mut pacer = Pacer::new(rate, chunk, burst, start);
        let mut sent = 0;
        let mut now = start;
        while now < start + total {
            let n = pacer.allowance(now);
            assert_eq!(n % chunk, 0, "whole chunks only");
            pacer.spend(n);
            sent += n;
            now += step;
        }
        sent
    }

    #[test]
    fn the_rate_holds_whether_the_worker_polls_often_or_seldom() {
        let second = Duration::from_secs(1);
        for step in [Duration::from_micros(7), Duration::from_millis(3)] {
            let sent = drive(100_000.0, 40, 1000, step, second);
            assert!((99_000..=101_000).contains(&sent), "{step:?}: {sent}");
        }
        // A rate below one chunk per poll still comes out right on average.
        let sent = drive(1_000.0, 64, 64, Duration::from_micros(100), 10 * second);
        assert!((9_900..=10_100).contains(&sent), "{sent}");
    }

    #[test]
    fn an_idle_spell_is_not_made_up_for_beyond_the_burst() {
        let start = Instant::now();
        let mut pacer = Pacer::new(1e6, 10, 100, start);
        assert_eq!(pacer.allowance(start), 10, "one chunk to start with");
        pacer.spend(10);
        assert_eq!(pacer.until_next(start), Duration::from_micros(10));
        assert_eq!(pacer.allowance(start + Duration::from_secs(5)), 100);
        pacer.spend(100);
        assert_eq!(pacer.allowance(start + Duration::from_secs(5)), 0);
        let stopped = Pacer::new(0.0, 10, 10, start);
        assert_eq!(stopped.until_next(start), Duration::ZERO, "its first chunk");
    }
}
