//! No-drop and partial-drop rate search, RFC 2544 §26.1 style: a binary search on the
//! offered rate for the highest rate whose trial loses no more than a threshold. CSIT's
//! reports call the result at 0 loss the NDR and at 0.1 % the PDR.
//!
//! The search is a pure function over a [`Trial`]: whatever offers traffic at a rate and
//! counts what was lost (the synthetic engine, the tunnel, a loss model in a test).
//!
//! On a shared machine one trial can lose packets to a neighbour's burst of work rather than
//! to the rate, and a binary search that believes every failure walks down to zero. So a
//! failing rate may be offered again ([`SearchPlan::retries`]) and passes if any attempt
//! does (one loss-free trial shows the system can carry the rate), and a floor
//! ([`SearchPlan::min_pps`]) is tried first: if even the floor fails every attempt, the
//! search says so (rate 0, failing at the floor) instead of bisecting noise. Searches are
//! repeated in rounds ([`ndr_pdr_rounds`]) so a report carries their spread.

use serde::{Deserialize, Serialize};

/// Loss threshold of the no-drop rate.
pub const NDR_THRESHOLD: f64 = 0.0;
/// Loss threshold of the partial-drop rate (0.1 %).
pub const PDR_THRESHOLD: f64 = 0.001;

/// What one trial offered and lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Loss {
    /// Packets offered.
    pub offered: u64,
    /// Packets that did not arrive.
    pub lost: u64,
}

impl Loss {
    /// Lost as a share of offered; a trial that offered nothing lost everything (it
    /// measured nothing, so it must not pass).
    pub fn ratio(self) -> f64 {
        if self.offered == 0 {
            1.0
        } else {
            self.lost as f64 / self.offered as f64
        }
    }
}

/// Offers traffic at a rate for one trial and says what was lost.
pub trait Trial {
    /// Runs one trial at `rate_pps` packets per second.
    fn run(&mut self, rate_pps: f64) -> Loss;
}

/// The search's bounds and when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SearchPlan {
    /// The highest rate offered (the line rate, or a measured maximum).
    pub max_pps: f64,
    /// The search stops when the interval between passing and failing rates is narrower
    /// than this share of the failing rate.
    pub resolution: f64,
    /// Rates offered at most per threshold (each with its retries).
    pub max_trials: usize,
    /// A rate the system must carry before the search bisects above it (0: none); when
    /// it fails, the search ends there, reporting rate 0 and this as the failing rate.
    #[serde(default)]
    pub min_pps: f64,
    /// How many times a failing rate is offered again before it counts as failing.
    #[serde(default)]
    pub retries: usize,
}

impl Default for SearchPlan {
    fn default() -> Self {
        Self {
            max_pps: 1e6,
            resolution: 0.02,
            max_trials: 12,
            min_pps: 0.0,
            retries: 0,
        }
    }
}

/// One trial as the search saw it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// Rate offered, packets per second.
    pub rate_pps: f64,
    /// Loss ratio measured.
    pub loss_ratio: f64,
}

/// The highest rate found whose loss stayed within a threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateFound {
    /// The loss threshold searched for.
    pub threshold: f64,
    /// The highest passing rate, packets per second (0 when none passed).
    pub rate_pps: f64,
    /// The lowest failing rate, packets per second (`None` when the maximum passed).
    pub failed_pps: Option<f64>,
    /// Every trial, in order.
    pub trials: Vec<TrialRecord>,
}

/// NDR and PDR of one system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NdrPdr {
    /// The no-drop rate (loss 0).
    pub ndr: RateFound,
    /// The partial-drop rate (loss ≤ 0.1 %).
    pub pdr: RateFound,
}

/// Searches for the highest rate in `(0, max_pps]` whose loss ratio is at most `threshold`,
/// assuming loss grows with the rate. `passing` is a rate already known to pass (0 if none).
pub fn search(trial: &mut dyn Trial, plan: SearchPlan, threshold: f64, passing: f64) -> RateFound {
    let mut found = RateFound {
        threshold,
        rate_pps: passing.max(0.0),
        failed_pps: None,
        trials: Vec::new(),
    };
    let mut offer = |rate: f64, found: &mut RateFound| {
        for _ in 0..=plan.retries {
            let loss_ratio = trial.run(rate).ratio();
            found.trials.push(TrialRecord {
                rate_pps: rate,
                loss_ratio,
            });
            if loss_ratio <= threshold {
                return true;
            }
        }
        false
    };
    // A rate already known to pass at the maximum (the NDR, for the PDR) needs no trial.
    if passing >= plan.max_pps {
        found.rate_pps = plan.max_pps;
        return found;
    }
    // Rates offered so far (each with its retries).
    let mut steps = 1;
    if offer(plan.max_pps, &mut found) {
        found.rate_pps = plan.max_pps;
        return found;
    }
    let mut fail = plan.max_pps;
    if plan.min_pps > found.rate_pps && plan.min_pps < plan.max_pps {
        steps += 1;
        if !offer(plan.min_pps, &mut found) {
            found.failed_pps = Some(plan.min_pps);
            return found;
        }
        found.rate_pps = plan.min_pps;
    }
    while steps < plan.max_trials.max(1) && (fail - found.rate_pps) > plan.resolution * fail {
        let mid = (found.rate_pps + fail) / 2.0;
        steps += 1;
        if offer(mid, &mut found) {
            found.rate_pps = mid;
        } else {
            fail = mid;
        }
    }
    found.failed_pps = Some(fail);
    found
}

/// NDR (loss 0), then PDR (loss ≤ 0.1 %) starting from the NDR, which passes it too.
pub fn ndr_pdr(trial: &mut dyn Trial, plan: SearchPlan) -> NdrPdr {
    let ndr = search(trial, plan, NDR_THRESHOLD, 0.0);
    let pdr = search(trial, plan, PDR_THRESHOLD, ndr.rate_pps);
    NdrPdr { ndr, pdr }
}

/// [`ndr_pdr`] searched `rounds` times (at least once), each round from scratch.
pub fn ndr_pdr_rounds(trial: &mut dyn Trial, plan: SearchPlan, rounds: usize) -> Vec<NdrPdr> {
    (0..rounds.max(1)).map(|_| ndr_pdr(trial, plan)).collect()
}

/// The round whose NDR is the median of the rounds' (the lower middle one for an even
/// count: a report never claims more than half its rounds carried).
pub fn median_round(rounds: &[NdrPdr]) -> Option<&NdrPdr> {
    let mut sorted: Vec<&NdrPdr> = rounds.iter().collect();
    sorted.sort_by(|a, b| a.ndr.rate_pps.total_cmp(&b.ndr.rate_pps));
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A system that carries up to `capacity` packets per second and drops the excess,
    /// offered for one second a trial.
    struct Capacity {
        capacity: f64,
        trials: usize,
    }

    impl Trial for Capacity {
        fn run(&mut self, rate_pps: f64) -> Loss {
            self.trials += 1;
            let offered = rate_pps.round() as u64;
            Loss {
                offered,
                lost: (rate_pps - self.capacity).max(0.0).round() as u64,
            }
        }
    }

    #[test]
    fn ndr_and_pdr_converge_on_a_capacity_model() {
        let mut model = Capacity {
            capacity: 300_000.0,
            trials: 0,
        };
        let plan = SearchPlan {
            max_pps: 1_000_000.0,
            resolution: 0.005,
            max_trials: 20,
            ..SearchPlan::default()
        };
        let found = ndr_pdr(&mut model, plan);
        // NDR: at most the capacity, within the resolution.
        assert!(found.ndr.rate_pps <= 300_000.0, "{found:?}");
        assert!(found.ndr.rate_pps >= 300_000.0 * 0.99, "{found:?}");
        // PDR: 0.1 % loss is allowed, so the rate may exceed capacity by that much.
        let pdr_exact = 300_000.0 / (1.0 - PDR_THRESHOLD);
        assert!(found.pdr.rate_pps <= pdr_exact, "{found:?}");
        assert!(found.pdr.rate_pps >= found.ndr.rate_pps);
        assert!(found.pdr.rate_pps >= pdr_exact * 0.99, "{found:?}");
        assert!(found.ndr.trials.len() <= 20 && found.pdr.trials.len() <= 20);
        assert_eq!(
            model.trials,
            found.ndr.trials.len() + found.pdr.trials.len()
        );
        // The failing bound brackets the answer.
        let fail = found.ndr.failed_pps.unwrap();
        assert!(fail > 300_000.0 && fail - found.ndr.rate_pps <= 0.005 * fail + 1.0);
    }

    #[test]
    fn a_system_that_carries_the_maximum_takes_one_trial() {
        let mut model = Capacity {
            capacity: 2e6,
            trials: 0,
        };
        let found = search(&mut model, SearchPlan::default(), 0.0, 0.0);
        assert_eq!((found.rate_pps, found.trials.len()), (1e6, 1));
        assert_eq!(found.failed_pps, None);
    }

    #[test]
    fn a_system_that_carries_nothing_finds_zero() {
        struct Dead;
        impl Trial for Dead {
            fn run(&mut self, _: f64) -> Loss {
                Loss {
                    offered: 10,
                    lost: 10,
                }
            }
        }
        let found = ndr_pdr(&mut Dead, SearchPlan::default());
        assert_eq!(found.ndr.rate_pps, 0.0);
        assert_eq!(found.pdr.rate_pps, 0.0);
        assert_eq!(found.ndr.trials.len(), SearchPlan::default().max_trials);
        assert_eq!(Loss::default().ratio(), 1.0, "nothing offered never passes");
    }

    /// The capacity model, except that every third trial loses a packet whatever its rate
    /// (a neighbour's burst on a shared machine).
    struct Noisy {
        capacity: f64,
        trials: usize,
    }

    impl Trial for Noisy {
        fn run(&mut self, rate_pps: f64) -> Loss {
            self.trials += 1;
            let noise = u64::from(self.trials % 3 == 0);
            Loss {
                offered: rate_pps.round() as u64,
                lost: (rate_pps - self.capacity).max(0.0).round() as u64 + noise,
            }
        }
    }

    #[test]
    fn retries_keep_noise_from_walking_the_search_down() {
        let plan = SearchPlan {
            max_pps: 1_000_000.0,
            resolution: 0.01,
            max_trials: 16,
            ..SearchPlan::default()
        };
        let mut noisy = Noisy {
            capacity: 300_000.0,
            trials: 0,
        };
        let believed = search(&mut noisy, plan, NDR_THRESHOLD, 0.0);
        assert!(
            believed.rate_pps < 300_000.0 * 0.9,
            "without retries, noise is taken for the limit: {believed:?}"
        );
        let mut noisy = Noisy {
            capacity: 300_000.0,
            trials: 0,
        };
        let retried = search(
            &mut noisy,
            SearchPlan { retries: 2, ..plan },
            NDR_THRESHOLD,
            0.0,
        );
        assert!(retried.rate_pps <= 300_000.0, "{retried:?}");
        assert!(retried.rate_pps >= 300_000.0 * 0.98, "{retried:?}");
        assert!(
            retried.trials.len() > 16,
            "failing rates were offered again"
        );
    }

    #[test]
    fn a_floor_that_fails_ends_the_search_there() {
        let mut model = Capacity {
            capacity: 50_000.0,
            trials: 0,
        };
        let plan = SearchPlan {
            max_pps: 1_000_000.0,
            min_pps: 100_000.0,
            retries: 1,
            ..SearchPlan::default()
        };
        let found = search(&mut model, plan, NDR_THRESHOLD, 0.0);
        assert_eq!(found.rate_pps, 0.0);
        assert_eq!(found.failed_pps, Some(100_000.0));
        assert_eq!(
            found.trials.len(),
            4,
            "the maximum and the floor, twice each"
        );
        // A floor the system carries is where the bisection starts.
        let mut model = Capacity {
            capacity: 300_000.0,
            trials: 0,
        };
        let found = search(&mut model, plan, NDR_THRESHOLD, 0.0);
        assert_eq!(found.trials[2].rate_pps, 100_000.0);
        assert!(found.rate_pps >= 300_000.0 * 0.97 && found.rate_pps <= 300_000.0);
    }

    #[test]
    fn a_pdr_above_a_maximum_ndr_needs_no_trial() {
        let mut model = Capacity {
            capacity: 2e6,
            trials: 0,
        };
        let found = ndr_pdr(&mut model, SearchPlan::default());
        assert_eq!(found.ndr.rate_pps, 1e6);
        assert_eq!((found.pdr.rate_pps, found.pdr.failed_pps), (1e6, None));
        assert_eq!(model.trials, 1, "only the NDR's trial at the maximum");
    }

    #[test]
    fn rounds_are_searched_apart_and_the_median_reported() {
        let mut model = Capacity {
            capacity: 300_000.0,
            trials: 0,
        };
        let rounds = ndr_pdr_rounds(&mut model, SearchPlan::default(), 3);
        assert_eq!(rounds.len(), 3);
        assert_eq!(
            median_round(&rounds).unwrap().ndr.rate_pps,
            rounds[1].ndr.rate_pps
        );
        assert!(median_round(&[]).is_none());
    }
}
