//! The tuning sweep: run one throughput trial per (batch, GSO segments, workers), keep
//! every measurement, and write a profile with the best setting and the numbers behind it.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::profile::Profile;

/// One point of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrialConfig {
    /// Datagrams (GSO sends) per burst.
    pub batch: u32,
    /// Segments per GSO send.
    pub gso_segments: u16,
    /// Parallel sender/receiver pairs.
    pub workers: usize,
}

/// What one trial measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Received UDP payload, Gbit/s.
    pub gbps: f64,
    /// Received datagrams (wire packets, after GSO segmentation), millions per second.
    pub mpps: f64,
    /// Plain UDP sockets' Gbit/s at the same point, measured beside this run, if the
    /// runner measures a baseline.
    pub baseline_gbps: Option<f64>,
}

/// Something that can measure throughput for one configuration.
pub trait TuneRunner {
    /// One line saying what is measured and how, for the tuned profile.
    fn describe(&self) -> String;
    /// Payload bytes per datagram the runner sends.
    fn payload_bytes(&self) -> usize;
    /// Measurement window per trial, in milliseconds.
    fn trial_ms(&self) -> u64;
    /// Runs one trial.
    fn run(&mut self, trial: TrialConfig) -> Result<Measurement>;
}

/// The values to sweep over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepSpace {
    /// Batch sizes.
    pub batches: Vec<u32>,
    /// GSO segment counts.
    pub gso_segments: Vec<u16>,
    /// Worker counts.
    pub workers: Vec<usize>,
    /// Runs per point; the median (by Gbit/s) is kept, so one disturbed run does not win.
    pub repeats: usize,
}

impl SweepSpace {
    /// A default space for a host with `cores` online cores.
    pub fn for_cores(cores: usize) -> Self {
        let mut workers = vec![1];
        let mut w = 2;
        while w <= cores {
            workers.push(w);
            w *= 2;
        }
        if *workers.last().unwrap_or(&1) != cores && cores > 1 {
            workers.push(cores);
        }
        Self {
            batches: vec![8, 32, 64],
            gso_segments: vec![1, 8, 16, 44],
            workers,
            repeats: 3,
        }
    }

    /// Every configuration, workers outermost.
    pub fn trials(&self) -> Vec<TrialConfig> {
        let mut out = Vec::new();
        for &workers in &self.workers {
            for &gso_segments in &self.gso_segments {
                for &batch in &self.batches {
                    out.push(TrialConfig {
                        batch,
                        gso_segments,
                        workers,
                    });
                }
            }
        }
        out
    }
}

/// A trial and its result, as written into a tuned profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialResult {
    /// Datagrams per burst.
    pub batch: u32,
    /// Segments per GSO send.
    pub gso_segments: u16,
    /// Sender/receiver pairs.
    pub workers: usize,
    /// Gbit/s of UDP payload.
    pub gbps: f64,
    /// Million datagrams per second.
    pub mpps: f64,
    /// Plain UDP sockets' Gbit/s at the same point in the same run (the kernel's bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_gbps: Option<f64>,
}

/// The `[tuned]` table of a tuned profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunedRecord {
    /// Profile the sweep started from.
    pub base_profile: String,
    /// Interface measured.
    pub device: String,
    /// What was measured and how.
    pub runner: String,
    /// UDP payload per datagram.
    pub payload_bytes: usize,
    /// Measurement window per trial.
    pub trial_ms: u64,
    /// Runs per point (the median is recorded).
    #[serde(default = "one")]
    pub repeats: usize,
    /// One-minute load average (/proc/loadavg) before and after the sweep: other work on
    /// the host shares the cores and lowers the numbers.
    #[serde(default)]
    pub load_average: [f64; 2],
    /// Seconds since the Unix epoch when the sweep finished.
    pub measured_unix: u64,
    /// The winning trial.
    pub best: TrialResult,
    /// Every trial, in the order run.
    pub trials: Vec<TrialResult>,
}

fn one() -> usize {
    1
}

/// Runs every trial of `space`, calling `progress` after each.
pub fn sweep(
    runner: &mut dyn TuneRunner,
    space: &SweepSpace,
    mut progress: impl FnMut(&TrialResult),
) -> Result<Vec<TrialResult>> {
    let mut results = Vec::new();
    for t in space.trials() {
        let mut runs = Vec::with_capacity(space.repeats.max(1));
        for _ in 0..space.repeats.max(1) {
            runs.push(runner.run(t)?);
        }
        runs.sort_by(|a, b| a.gbps.total_cmp(&b.gbps));
        let m = runs[runs.len() / 2];
        let r = TrialResult {
            batch: t.batch,
            gso_segments: t.gso_segments,
            workers: t.workers,
            gbps: m.gbps,
            mpps: m.mpps,
            udp_gbps: m.baseline_gbps,
        };
        progress(&r);
        results.push(r);
    }
    Ok(results)
}

/// The trial with the most Gbit/s; among equals (within 2%), the fewest workers, then the
/// smallest batch, since they cost less latency and fewer cores.
pub fn best(results: &[TrialResult]) -> Option<TrialResult> {
    let top = results.iter().map(|r| r.gbps).fold(f64::NAN, f64::max);
    results
        .iter()
        .filter(|r| r.gbps >= top * 0.98)
        .min_by(|a, b| {
            (a.workers, a.batch, std::cmp::Reverse(a.gso_segments)).cmp(&(
                b.workers,
                b.batch,
                std::cmp::Reverse(b.gso_segments),
            ))
        })
        .copied()
}

/// A copy of `base` with the best batch, GSO segments and workers, named
/// `BASE-tuned-DEV`, carrying every measurement in `[tuned]`.
pub fn tuned_profile(
    base: &Profile,
    dev: &str,
    runner: &dyn TuneRunner,
    space: &SweepSpace,
    results: Vec<TrialResult>,
    load_average: [f64; 2],
    measured_unix: u64,
) -> Option<Profile> {
    let winner = best(&results)?;
    let mut p = base.clone();
    p.name = format!(
        "{}-tuned-{}",
        base.name,
        dev.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    );
    p.description = format!("{} (tuned on {dev})", base.description);
    p.dataplane.batch = winner.batch;
    p.dataplane.gso_segments = winner.gso_segments;
    p.cpu.workers = Some(winner.workers);
    // The ring holds the batch's sends and the receive.
    p.io_uring.entries = p
        .io_uring
        .entries
        .max((winner.batch + 1).next_power_of_two());
    p.tuned = Some(TunedRecord {
        base_profile: base.name.clone(),
        device: dev.to_owned(),
        runner: runner.describe(),
        payload_bytes: runner.payload_bytes(),
        trial_ms: runner.trial_ms(),
        repeats: space.repeats.max(1),
        load_average,
        measured_unix,
        best: winner,
        trials: results,
    });
    Some(p)
}

/// The one-minute load average from /proc/loadavg, if readable.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The TOML text of a tuned profile, with a header saying where it came from.
pub fn render(p: &Profile) -> std::result::Result<String, toml::ser::Error> {
    let body = toml::to_string(p)?;
    let head = match &p.tuned {
        Some(t) => format!(
            "# Written by `cpclink hw tune --dev {}` from profile {}.\n# Best: batch {}, gso_segments {}, workers {}: {:.2} Gbit/s, {:.3} Mpps{}.\n\n",
            t.device, t.base_profile, t.best.batch, t.best.gso_segments, t.best.workers, t.best.gbps, t.best.mpps,
            t.best.udp_gbps.map_or(String::new(), |u| format!(" (plain UDP at the same point: {u:.2} Gbit/s)"))
        ),
        None => String::new(),
    };
    Ok(head + &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::SHIPPED;

    /// Throughput grows with gso and workers, saturating at batch 32: a known optimum.
    struct Model(Vec<TrialConfig>);

    impl TuneRunner for Model {
        fn describe(&self) -> String {
            "model".into()
        }
        fn payload_bytes(&self) -> usize {
            1400
        }
        fn trial_ms(&self) -> u64 {
            1
        }
        fn run(&mut self, t: TrialConfig) -> Result<Measurement> {
            self.0.push(t);
            let gbps =
                f64::from(t.gso_segments.min(16)) * t.workers as f64 * f64::from(t.batch.min(32));
            Ok(Measurement {
                gbps,
                mpps: gbps / 11.2,
                baseline_gbps: Some(2.0 * gbps),
            })
        }
    }

    #[test]
    fn sweep_runs_every_point_and_the_profile_carries_the_winner() {
        let space = SweepSpace {
            batches: vec![8, 32, 64],
            gso_segments: vec![1, 16, 44],
            workers: vec![1, 2],
            repeats: 1,
        };
        let mut runner = Model(Vec::new());
        let mut seen = 0;
        let results = sweep(&mut runner, &space, |_| seen += 1).unwrap();
        assert_eq!(results.len(), 18);
        assert_eq!(seen, 18);
        assert_eq!(runner.0.len(), 18);
        let w = best(&results).unwrap();
        // 32 and 64 tie, as do gso 16 and 44: the smaller batch and larger gso win.
        assert_eq!((w.batch, w.gso_segments, w.workers), (32, 44, 2));

        let base = Profile::parse("profiles/loopback.toml", SHIPPED[2].1).unwrap();
        let p = tuned_profile(
            &base,
            "lo",
            &runner,
            &space,
            results,
            [0.5, 0.7],
            1_700_000_000,
        )
        .unwrap();
        let text = render(&p).unwrap();
        let back = Profile::parse("loopback-tuned-lo.toml", &text).unwrap();
        assert_eq!(back.name, "loopback-tuned-lo");
        assert_eq!(back.dataplane.batch, 32);
        assert_eq!(back.dataplane.gso_segments, 44);
        assert_eq!(back.cpu.workers, Some(2));
        let tuned = back.tuned.unwrap();
        assert_eq!(tuned.trials.len(), 18);
        assert_eq!(tuned.best.gbps, 16.0 * 2.0 * 32.0);
        assert_eq!(tuned.best.udp_gbps, Some(2.0 * 16.0 * 2.0 * 32.0));
        assert!(text.starts_with("# Written by `cpclink hw tune --dev lo` from profile loopback."));
    }

    /// Alternates a disturbed run with steady ones: the median ignores the outlier.
    struct Noisy(u32);

    impl TuneRunner for Noisy {
        fn describe(&self) -> String {
            "noisy".into()
        }
        fn payload_bytes(&self) -> usize {
            1000
        }
        fn trial_ms(&self) -> u64 {
            1
        }
        fn run(&mut self, _: TrialConfig) -> Result<Measurement> {
            self.0 += 1;
            let gbps = if self.0 % 3 == 1 { 100.0 } else { 10.0 };
            Ok(Measurement {
                gbps,
                mpps: gbps / 8.0,
                baseline_gbps: None,
            })
        }
    }

    #[test]
    fn repeats_keep_the_median() {
        let space = SweepSpace {
            batches: vec![8],
            gso_segments: vec![1],
            workers: vec![1],
            repeats: 3,
        };
        let mut runner = Noisy(0);
        let r = sweep(&mut runner, &space, |_| {}).unwrap();
        assert_eq!(runner.0, 3);
        assert_eq!(r[0].gbps, 10.0);
        assert_eq!(r[0].udp_gbps, None);
        let text = toml::to_string(&r[0]).unwrap();
        assert!(!text.contains("udp_gbps"), "no baseline, no key: {text}");
    }

    #[test]
    fn default_space_covers_every_core_count_power_and_the_total() {
        assert_eq!(SweepSpace::for_cores(1).workers, [1]);
        assert_eq!(SweepSpace::for_cores(2).workers, [1, 2]);
        assert_eq!(SweepSpace::for_cores(6).workers, [1, 2, 4, 6]);
    }
}
