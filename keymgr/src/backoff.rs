//! How long an agent waits before trying its authority again: doubling from a short first
//! wait up to a cap, each wait drawn at random from the upper half of its step, so that
//! thousands of agents cut off by the same outage do not all reconnect in the same instant.

use std::time::Duration;

/// The first retry's ceiling: a feed that merely dropped is back almost at once.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two attempts: an authority that comes back is found this soon.
pub const RETRY_CAP: Duration = Duration::from_secs(10);

/// Jittered exponential retry delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
    first: Duration,
    cap: Duration,
}

impl Backoff {
    /// Delays doubling from `first` to at most `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            ceiling: first,
            first,
            cap,
        }
    }

    /// Starts again from the first delay (after a connection that worked).
    pub fn reset(&mut self) {
        self.ceiling = self.first;
    }

    /// The next delay: uniform in [ceiling/2, ceiling], then the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (ceiling * 2).min(self.cap);
        // A failed random source only loses the spread, not the retry.
        let draw = crate::seal::random_bytes::<4>().map_or(u32::MAX, |b| u32::from_le_bytes(*b));
        let half = ceiling / 2;
        half + half.mul_f64(f64::from(draw) / f64::from(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stay_in_the_upper_half() {
        let mut b = Backoff::new(RETRY_FIRST, RETRY_CAP);
        let mut ceiling = RETRY_FIRST;
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(RETRY_CAP);
        }
        assert!(b.next_delay() >= RETRY_CAP / 2);
        b.reset();
        assert!(b.next_delay() <= RETRY_FIRST);
    }

    #[test]
    fn agents_cut_off_together_do_not_retry_in_step() {
        // A thousand agents at the same step: their delays spread over the step's upper
        // half instead of all landing on one instant.
        let mut delays: Vec<Duration> = (0..1000)
            .map(|_| {
                let mut b = Backoff::new(RETRY_FIRST, RETRY_CAP);
                for _ in 0..6 {
                    b.next_delay();
                }
                b.next_delay()
            })
            .collect();
        delays.sort();
        delays.dedup();
        assert!(delays.len() > 900, "only {} distinct delays", delays.len());
        let spread = delays[delays.len() - 1] - delays[0];
        assert!(spread > RETRY_CAP / 4, "spread {spread:?}");
    }
}
