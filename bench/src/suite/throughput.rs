//! Throughput stages: the AEAD libraries bare and through cpclink, the data plane against
//! its plain baseline and the bound, and the synthetic engine's no-drop rate.

use std::collections::BTreeMap;
use std::time::Duration;

use cpclink_dataplane::crypto::{Backend, Suite};
use cpclink_dataplane::engine::Protection;
use cpclink_dataplane::io::IoKind;

use super::plot::{Plot, Series};
use super::report::{median, Figure, Stage, Table};
use super::{ms, pick, Context, Outcome, Progress};
use crate::crypto::{self, CryptoPlan, Op};
use crate::dataplane::{self, DataplanePlan, DataplaneRow, LoopbackPair, PairOptions};
use crate::ndr::{self, Loss, SearchPlan, Trial};
use crate::pacer::SourceRate;

/// The packet size the headline figures are taken at.
const HEADLINE_SIZE: usize = 1400;

/// The bound the CPU allows an encrypted path: the plain path plus the library's bare seal
/// of the same packet, one after the other: `1 / (1/plain + 1/seal)`.
pub fn bound(plain: f64, seal: f64) -> f64 {
    if plain > 0.0 && seal > 0.0 {
        1.0 / (1.0 / plain + 1.0 / seal)
    } else {
        f64::NAN
    }
}

fn crypto_sizes(cx: &Context) -> Vec<usize> {
    let mut sizes = dataplane_sizes(cx);
    if !cx.quick {
        sizes.extend([4096, 9000, 65536]);
    }
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

fn dataplane_sizes(cx: &Context) -> Vec<usize> {
    pick(cx, vec![64, 1400, 8192], vec![64, 512, 1400, 8192])
}

/// Seal and open through cpclink beside each library's bare seal, in rounds.
pub(super) fn crypto(
    cx: &mut Context,
    stage: &mut Stage,
    progress: &Progress,
) -> Result<(), Outcome> {
    let rounds = pick(cx, 2, 3);
    let sizes = crypto_sizes(cx);
    let plan = CryptoPlan {
        round: ms(cx, 10, 40),
        rounds: 2,
    };
    stage.notes.push(format!(
        "Payload Gbit/s on one core; each of {rounds} rounds takes the best of {} runs of {} ms; \
         figures are medians over the rounds. bare seal = the library's own call, no cpclink code.",
        plan.rounds,
        plan.round.as_millis()
    ));
    progress.steps(rounds);
    // (backend, suite, size, op) -> values per round, in the order measured.
    let mut values: BTreeMap<(usize, &'static str, &'static str, usize, u8), Vec<f64>> =
        BTreeMap::new();
    for round in 0..rounds {
        let rows = crypto::run(&sizes, plan)?;
        for (i, row) in rows.iter().enumerate() {
            let op = match row.op {
                Op::Seal => 0,
                Op::Open => 1,
                Op::Baseline => 2,
            };
            values
                .entry((i / 3, row.backend, row.suite, row.size, op))
                .or_default()
                .push(row.gbps);
        }
        progress.step(format!("round {}", round + 1));
    }
    let mut table = Table::new(
        "seal and open against the bare library seal (Gbit/s)",
        &[
            "library",
            "suite",
            "bytes",
            "seal",
            "open",
            "bare seal",
            "seal/bare",
        ],
    );
    let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let figures = &mut stage.figures;
    let mut point = |backend: &str, suite: &str, size: usize| {
        let get = |op: u8| {
            values
                .iter()
                .find(|((_, b, s, z, o), _)| *b == backend && *s == suite && *z == size && *o == op)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (seal, open, bare) = (get(0), get(1), get(2));
        let (m_seal, m_open, m_bare) = (median(&seal), median(&open), median(&bare));
        for (what, rounds) in [("seal", seal), ("open", open), ("bare seal", bare)] {
            figures.push(Figure::from_rounds(
                format!("{what} {backend} {suite} {size}B"),
                "Gbit/s",
                true,
                rounds,
            ));
        }
        lines
            .entry(format!("{backend} {suite}"))
            .or_default()
            .push((size as f64, m_seal));
        (m_seal, m_open, m_bare)
    };
    let mut keys: Vec<(usize, &str, &str, usize)> =
        values.keys().map(|k| (k.0, k.1, k.2, k.3)).collect();
    keys.dedup();
    for (_, backend, suite, size) in keys {
        let (seal, open, bare) = point(backend, suite, size);
        cx.bare_seal
            .insert((backend.to_string(), suite.to_string(), size), bare);
        table.push(vec![
            backend.to_string(),
            suite.to_string(),
            size.to_string(),
            format!("{seal:.2}"),
            format!("{open:.2}"),
            format!("{bare:.2}"),
            format!("{:.3}", seal / bare),
        ]);
    }
    stage.tables.push(table);
    cx.plots.push((
        "crypto.svg".into(),
        Plot {
            title: "AEAD seal through cpclink, one core".into(),
            x_label: "payload bytes".into(),
            y_label: "Gbit/s".into(),
            log_x: true,
            series: lines
                .into_iter()
                .map(|(name, points)| Series {
                    name,
                    points,
                    reference: false,
                })
                .collect(),
        },
    ));
    let aes = |backend: &str| {
        cx.bare_seal
            .get(&(
                backend.to_string(),
                "aes-gcm-256".to_string(),
                HEADLINE_SIZE,
            ))
            .copied()
    };
    if let Some(best) = Backend::ALL
        .iter()
        .filter_map(|b| aes(b.name()).map(|g| (b.name(), g)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
    {
        cx.summary.push(format!(
            "Crypto: the fastest bare AES-GCM-256 seal at {HEADLINE_SIZE} B is {} at {:.2} Gbit/s on one core.",
            best.0, best.1
        ));
    }
    Ok(())
}

/// Identifies one data-plane point across rounds.
type PointId = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    usize,
    usize,
);

fn point_id(row: &DataplaneRow) -> PointId {
    (
        row.io,
        row.mode,
        row.suite,
        row.crypto,
        row.workers,
        row.payload,
    )
}

/// Synthetic flows between two engines over loopback: plain, encrypted, and the bound.
pub(super) fn dataplane(
    cx: &mut Context,
    stage: &mut Stage,
    progress: &Progress,
) -> Result<(), Outcome> {
    let plan = DataplanePlan {
        duration: ms(cx, 250, 500),
        sizes: dataplane_sizes(cx),
        workers: vec![1, 2],
        ios: pick(
            cx,
            vec![IoKind::IoUring],
            vec![IoKind::IoUring, IoKind::Epoll],
        ),
        suites: pick(
            cx,
            vec![Suite::AesGcm256],
            vec![Suite::AesGcm256, Suite::ChaCha20Poly1305],
        ),
        cryptos: pick(cx, vec![Backend::AwsLc], Backend::ALL.to_vec()),
        rounds: pick(cx, 2, 3),
        ..DataplanePlan::default()
    };
    let modes = 1 + plan.suites.len() * plan.cryptos.len();
    progress.steps(plan.ios.len() * plan.workers.len() * plan.sizes.len() * modes * plan.rounds);
    let mut per_round: BTreeMap<PointId, Vec<f64>> = BTreeMap::new();
    let rows = dataplane::run(&plan, |row| {
        per_round.entry(point_id(row)).or_default().push(row.gbps);
        progress.step(format!(
            "{} {} {}w {} B: {:.2} Gbit/s",
            row.io, row.mode, row.workers, row.payload, row.gbps
        ));
    })?;
    stage.notes.push(format!(
        "Synthetic flows a→b over loopback, {} flows, {} ms per point after a warm-up, {} rounds \
         taking the points in turn; figures are medians. bound = 1/(1/plain + 1/seal), with plain \
         the same point without AEAD and seal the library's bare seal of the same packet size \
         measured by the crypto stage of this run, times the workers (each seals on its own core).",
        crate::dataplane::FLOWS,
        plan.duration.as_millis(),
        plan.rounds
    ));
    let mut table = Table::new(
        "data plane, inner Gbit/s verified at the sink",
        &[
            "io",
            "workers",
            "bytes",
            "mode",
            "Gbit/s",
            "Mpps",
            "lost",
            "plain Gbit/s",
            "bound Gbit/s",
            "of bound",
        ],
    );
    let plain_of = |row: &DataplaneRow| {
        rows.iter()
            .find(|p| {
                p.suite.is_none()
                    && p.io == row.io
                    && p.workers == row.workers
                    && p.payload == row.payload
            })
            .map(|p| p.gbps)
    };
    let mut throughput: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut scaling: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let headline_io = plan.ios[0].name();
    for row in &rows {
        let mode = match (row.crypto, row.suite) {
            (Some(c), Some(s)) => format!("{c} {s}"),
            _ => "plain".to_string(),
        };
        let seal = row
            .crypto
            .zip(row.suite)
            .and_then(|(c, s)| {
                cx.bare_seal
                    .get(&(c.to_string(), s.to_string(), row.payload))
            })
            .map(|g| g * row.workers as f64);
        let plain = plain_of(row);
        let bound = match (row.suite, plain, seal) {
            (Some(_), Some(plain), Some(seal)) => Some(bound(plain, seal)),
            _ => None,
        };
        table.push(vec![
            row.io.to_string(),
            row.workers.to_string(),
            row.payload.to_string(),
            mode.clone(),
            format!("{:.2}", row.gbps),
            format!("{:.3}", row.mpps),
            format!("{:.2}%", row.split.lost * 100.0),
            plain.map_or_else(String::new, |p| format!("{p:.2}")),
            bound.map_or_else(String::new, |b| format!("{b:.2}")),
            bound.map_or_else(String::new, |b| format!("{:.1}%", row.gbps / b * 100.0)),
        ]);
        let name = format!("{} {} {}w {}B", mode, row.io, row.workers, row.payload);
        let rounds = per_round
            .get(&point_id(row))
            .cloned()
            .unwrap_or_else(|| vec![row.gbps]);
        stage
            .figures
            .push(Figure::from_rounds(name, "Gbit/s", true, rounds));
        if row.io == headline_io && row.workers == 1 {
            let series = |m: &str| format!("{m} ({} 1 worker)", row.io);
            throughput
                .entry(series(&mode))
                .or_default()
                .push((row.payload as f64, row.gbps));
            if let Some(b) = bound {
                throughput
                    .entry(series(&format!("bound {mode}")))
                    .or_default()
                    .push((row.payload as f64, b));
            }
        }
        if row.payload == HEADLINE_SIZE {
            scaling
                .entry(format!("{mode} {}", row.io))
                .or_default()
                .push((row.workers as f64, row.gbps));
        }
        if row.suite == Some("aes-gcm-256")
            && row.crypto == Some("aws-lc-rs")
            && row.io == headline_io
            && row.workers == 1
            && row.payload == HEADLINE_SIZE
        {
            cx.engine_mpps = Some(row.mpps);
            if let (Some(b), Some(p)) = (bound, plain) {
                cx.summary.push(format!(
                    "Data plane: one worker encrypts {HEADLINE_SIZE} B packets (aws-lc-rs AES-GCM-256, {}) at {:.2} Gbit/s, \
                     {:.0}% of the bound {:.2} Gbit/s this CPU allows (plain {:.2} Gbit/s); SPEC target ≥ 90%.",
                    row.io,
                    row.gbps,
                    row.gbps / b * 100.0,
                    b,
                    p
                ));
            }
        }
    }
    let one = rows.iter().find(|r| {
        r.workers == 1
            && r.payload == HEADLINE_SIZE
            && r.suite == Some("aes-gcm-256")
            && r.io == headline_io
    });
    let two = rows.iter().find(|r| {
        r.workers == 2
            && r.payload == HEADLINE_SIZE
            && r.suite == Some("aes-gcm-256")
            && r.io == headline_io
    });
    if let (Some(one), Some(two)) = (one, two) {
        cx.summary.push(format!(
            "Scaling: 1 → 2 workers at {HEADLINE_SIZE} B encrypted: {:.2} → {:.2} Gbit/s ({:.2}×) on {} cores shared by both engines.",
            one.gbps,
            two.gbps,
            two.gbps / one.gbps,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ));
    }
    stage.tables.push(table);
    let lines = |map: BTreeMap<String, Vec<(f64, f64)>>| {
        map.into_iter()
            .map(|(name, points)| Series {
                reference: name.starts_with("bound") || name.starts_with("plain"),
                name,
                points,
            })
            .collect()
    };
    cx.plots.push((
        "dataplane-throughput.svg".into(),
        Plot {
            title:
                "data plane throughput against packet size, with the plain baseline and the bound"
                    .into(),
            x_label: "inner packet bytes".into(),
            y_label: "Gbit/s".into(),
            log_x: true,
            series: lines(throughput),
        },
    ));
    cx.plots.push((
        "dataplane-scaling.svg".into(),
        Plot {
            title: format!("data plane scaling at {HEADLINE_SIZE} B against workers per engine"),
            x_label: "workers".into(),
            y_label: "Gbit/s".into(),
            log_x: false,
            series: lines(scaling),
        },
    ));
    Ok(())
}

/// One trial of the synthetic engine: a pair with a paced source, everything it generated
/// against everything the sink verified once the source stopped and the rest landed.
struct EngineTrial {
    window: Duration,
    payload: usize,
    error: Option<String>,
}

impl Trial for EngineTrial {
    fn run(&mut self, rate_pps: f64) -> Loss {
        let options = PairOptions {
            workers: 1,
            io: IoKind::Auto,
            protection: Protection::Encrypted,
            payload: self.payload,
            flows: crate::dataplane::FLOWS,
            both_ways: false,
            batch_sends: crate::dataplane::DEFAULT_BATCH_SENDS,
            gso_segments: cpclink_dataplane::io::udp::MAX_GSO_SEGMENTS,
            address: crate::dataplane::LOOPBACK,
            rate: Some(SourceRate::PacketsPerSecond(rate_pps)),
            suite: Suite::AesGcm256,
            crypto: Backend::AwsLc,
            routes: 0,
            services: 0,
        };
        let outcome = LoopbackPair::start(options).and_then(|pair| {
            let started = std::time::Instant::now();
            std::thread::sleep(self.window);
            let active = started.elapsed().as_secs_f64();
            pair.finish().map(|sides| (sides, active))
        });
        match outcome {
            // A source that could not keep to the rate offered less than was asked: the
            // shortfall counts as lost, so a rate the engine cannot generate never passes.
            // Within 2% it is the source's start after the pair is up (milliseconds on a
            // busy machine), not the rate: counting it failed every trial of a loaded run,
            // down to the floor.
            Ok(((a, b), active)) => {
                let asked = (rate_pps * active) as u64;
                let generated = a.traffic.generated;
                let offered = if generated * 50 < asked * 49 {
                    asked
                } else {
                    generated
                };
                Loss {
                    offered,
                    lost: offered.saturating_sub(b.traffic.sink.verified_packets),
                }
            }
            Err(e) => {
                self.error = Some(e.to_string());
                Loss::default()
            }
        }
    }
}

/// NDR and PDR of one encrypting worker pair on loopback.
pub(super) fn engine_ndr(
    cx: &mut Context,
    stage: &mut Stage,
    progress: &Progress,
) -> Result<(), Outcome> {
    let trials = pick(cx, 6, 10);
    let max_pps = cx.engine_mpps.map_or(2e6, |m| m * 1e6 * 1.5);
    // An odd number of rounds, so the median round is a round (with two, the lower one).
    let rounds = pick(cx, 1, 3);
    let plan = SearchPlan {
        max_pps,
        resolution: pick(cx, 0.05, 0.02),
        max_trials: trials,
        // See the tunnel's search (latency stage): a floor first, a failing trial retried.
        min_pps: max_pps * 0.05,
        retries: 1,
    };
    progress.steps(2 * trials * rounds);
    let mut trial = Counted {
        inner: EngineTrial {
            window: ms(cx, 300, 1000),
            payload: HEADLINE_SIZE,
            error: None,
        },
        progress,
    };
    let found_rounds = ndr::ndr_pdr_rounds(&mut trial, plan, rounds);
    if let Some(e) = trial.inner.error {
        return Err(Outcome::Fail(e));
    }
    let Some(found) = ndr::median_round(&found_rounds) else {
        return Err(Outcome::Fail("the search ran no round".into()));
    };
    stage.notes.push(format!(
        "RFC 2544-style binary search on the offered rate of one encrypting worker pair \
         (aws-lc-rs AES-GCM-256, {HEADLINE_SIZE} B, loopback), {} ms per trial, from {max_pps:.0} packets/s down, \
         resolution {:.0}%, {rounds} round(s) (the median round's NDR reported); a floor of 5% of the maximum must pass \
         first and a failing trial is offered once more; loss = packets offered (generated, or the rate times the trial where the source fell short) \
         less packets verified at the sink after the rest landed.",
        trial.inner.window.as_millis(),
        plan.resolution * 100.0
    ));
    rates_table(stage, &found_rounds, HEADLINE_SIZE, "synthetic engine");
    cx.summary.push(format!(
        "Synthetic engine ({HEADLINE_SIZE} B, 1 worker): NDR {}{:.0} packets/s ({:.2} Gbit/s), PDR {:.0} packets/s.",
        // The highest rate offered passed: the NDR is at least that.
        if found.ndr.failed_pps.is_none() { "≥ " } else { "" },
        found.ndr.rate_pps,
        found.ndr.rate_pps * HEADLINE_SIZE as f64 * 8.0 / 1e9,
        found.pdr.rate_pps
    ));
    Ok(())
}

/// A trial that moves the stage's progress bar.
struct Counted<'a, T> {
    inner: T,
    progress: &'a Progress,
}

impl<T: Trial> Trial for Counted<'_, T> {
    fn run(&mut self, rate_pps: f64) -> Loss {
        let loss = self.inner.run(rate_pps);
        self.progress.step(format!(
            "{rate_pps:.0} pps: {:.3}% lost",
            loss.ratio() * 100.0
        ));
        loss
    }
}

/// NDR and PDR of each round as a table, their trials as another, and both as figures whose
/// rounds are the searches' (so `bench compare` sees their spread).
pub(super) fn rates_table(stage: &mut Stage, rounds: &[ndr::NdrPdr], size: usize, what: &str) {
    let mut table = Table::new(
        format!("{what}: no-drop and partial-drop rates per round"),
        &[
            "round",
            "rate",
            "loss threshold",
            "packets/s",
            "Gbit/s",
            "lowest failing packets/s",
            "trials",
        ],
    );
    let mut trials = Table::new(
        format!("{what}: trials in order"),
        &["round", "search", "offered packets/s", "loss"],
    );
    for (round, found) in rounds.iter().enumerate() {
        for (name, rate) in [("NDR", &found.ndr), ("PDR", &found.pdr)] {
            table.push(vec![
                (round + 1).to_string(),
                name.to_string(),
                format!("{:.1}%", rate.threshold * 100.0),
                format!("{:.0}", rate.rate_pps),
                format!("{:.3}", rate.rate_pps * size as f64 * 8.0 / 1e9),
                rate.failed_pps
                    .map_or_else(|| "none".into(), |f| format!("{f:.0}")),
                rate.trials.len().to_string(),
            ]);
            for t in &rate.trials {
                trials.push(vec![
                    (round + 1).to_string(),
                    name.to_string(),
                    format!("{:.0}", t.rate_pps),
                    format!("{:.4}%", t.loss_ratio * 100.0),
                ]);
            }
        }
    }
    if !rounds.is_empty() {
        for name in ["NDR", "PDR"] {
            let values = rounds
                .iter()
                .map(|r| {
                    if name == "NDR" {
                        r.ndr.rate_pps
                    } else {
                        r.pdr.rate_pps
                    }
                })
                .collect();
            stage.figures.push(Figure::from_rounds(
                format!("{name} {what}"),
                "packets/s",
                true,
                values,
            ));
        }
    }
    stage.tables.push(table);
    stage.tables.push(trials);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_two_costs_in_series() {
        assert_eq!(bound(10.0, 10.0), 5.0);
        assert!((bound(30.0, 15.0) - 10.0).abs() < 1e-9);
        assert!(bound(0.0, 1.0).is_nan());
    }
}
