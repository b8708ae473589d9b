//! The latency stage: the tunnel's NDR and PDR, then probes at fixed fractions of the NDR
//! on every path, as HdrHistograms (tables, spectra, interval logs).

use std::collections::BTreeMap;

use cpclink_dataplane::io::IoKind;

use super::plot::{Plot, Series};
use super::report::{Figure, Stage, Table};
use super::throughput::rates_table;
use super::{ms, pick, Context, Outcome, Progress};
use crate::latency::{self, LatencyPlan, LatencyRow, Metric, Path};

/// A report table of rows about one engine each, in the shape `bench latency` prints them.
fn engine_table<R: latency::PerEngineRow>(title: &str, rows: &[R]) -> Table {
    let (columns, cells) = latency::per_engine_cells(rows);
    let mut table = Table::new(title, &columns);
    for row in cells {
        table.push(row);
    }
    table
}

/// Probes through the tunnel beside plain UDP on loopback and a bare veth (root).
pub(super) fn latency(
    cx: &mut Context,
    stage: &mut Stage,
    progress: &Progress,
) -> Result<(), Outcome> {
    if let Some(why) = latency::unavailable() {
        return Err(Outcome::Skip(why.to_string()));
    }
    let plan = LatencyPlan {
        duration: ms(cx, 500, 2000),
        loads: pick(cx, vec![0, 50], vec![0, 25, 50, 75, 90]),
        size: latency::DEFAULT_SIZE,
        io: IoKind::Auto,
        // Trials of a second in the full run: a shorter one is mostly the ramp and the
        // drain, and one scheduler hiccup on a shared machine is a larger share of it.
        ndr_trial: ms(cx, 250, 1000),
        ndr_trials: pick(cx, 6, 10),
        stage_sample_every: latency::DEFAULT_STAGE_SAMPLE_EVERY,
        ndr_rounds: pick(cx, 1, 3),
        ..LatencyPlan::default()
    };
    // Setup and maximum, the searches, then each load.
    progress.steps(2 + plan.loads.len());
    let run = latency::measure(&plan, |line| progress.step(line.to_string()))?;
    stage.notes.push(format!(
        "UDP probes of {} B at {}/s, {} ms per path and load in rounds of 0.5 s taking the paths in turn; \
         background load in % of the tunnel's no-drop rate (NDR), searched first in {} round(s) ({} ms trials; \
         a tenth of the maximum must pass first, a failing trial is offered twice more; the NDR used is the \
         median round's). \
         Latencies are HdrHistograms corrected for coordinated omission with the probes' interval; \
         interval logs (one interval per round) are the latency-*.hlog files. Paths: udp_loopback = plain UDP \
         on 127.0.0.1 (the baseline), veth = the namespaces joined directly, cpclink = TUN → engine A → \
         AES-GCM-256 PSP over UDP → engine B → TUN. added = cpclink − udp_loopback.",
        plan.size,
        latency::PROBES_PER_SECOND,
        plan.duration.as_millis(),
        plan.ndr_rounds,
        plan.ndr_trial.as_millis()
    ));
    rates_table(stage, &run.ndr_rounds, plan.size, "tunnel");
    stage.notes.push(format!(
        "Tunnel maximum (sender as fast as it goes): {:.0} packets/s delivered.",
        run.max_pps
    ));
    let mut table = Table::new(
        "latency percentiles (µs) per path and load",
        &[
            "load",
            "bg pkt/s",
            "path",
            "metric",
            "probes",
            "lost",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "added p50",
            "added p99",
        ],
    );
    let added = |x: Option<f64>| x.map_or_else(String::new, |x| format!("{x:+.1}"));
    for r in &run.rows {
        table.push(vec![
            format!("{}%", r.load_pct),
            format!("{:.0}", r.background_pps),
            r.path.name().into(),
            r.metric.name().into(),
            r.probes.to_string(),
            r.lost.to_string(),
            format!("{:.1}", r.p50_us),
            format!("{:.1}", r.p90_us),
            format!("{:.1}", r.p99_us),
            format!("{:.1}", r.p999_us),
            format!("{:.1}", r.max_us),
            added(r.added_p50_us),
            added(r.added_p99_us),
        ]);
        if r.metric == Metric::OneWay && r.received > 0 {
            // The value is the percentile of every round's samples together; the rounds
            // are each round's own, for their spread.
            for (i, (q, v)) in [("p50", r.p50_us), ("p99", r.p99_us), ("p99.9", r.p999_us)]
                .into_iter()
                .enumerate()
            {
                let mut rounds: Vec<f64> = r.rounds_us.iter().map(|round| round[i]).collect();
                if rounds.is_empty() {
                    rounds.push(v);
                }
                stage.figures.push(Figure {
                    value: v,
                    ..Figure::from_rounds(
                        format!("{q} one-way {} at {}% NDR", r.path.name(), r.load_pct),
                        "µs",
                        false,
                        rounds,
                    )
                });
            }
        }
    }
    stage.tables.push(table);
    if !run.stages.is_empty() {
        stage.tables.push(engine_table(
            &latency::stages_title(plan.stage_sample_every),
            &run.stages,
        ));
    }
    if !run.engine_cpu.is_empty() {
        stage
            .tables
            .push(engine_table(latency::EngineCpuRow::TITLE, &run.engine_cpu));
    }
    let reference = if run.ndr.ndr.rate_pps > 0.0 {
        "its NDR"
    } else {
        "its maximum (no trial was loss-free)"
    };
    if let Some(line) = added_at_half(&run.rows, reference) {
        cx.summary.push(line);
    }
    if run.ndr.ndr.rate_pps <= 0.0 {
        stage.notes.push(
            "No trial was loss-free: loads are fractions of the tunnel's maximum instead of its NDR.".into(),
        );
    }
    cx.summary.push(format!(
        "Tunnel (TUN to TUN through two engines, {} B): NDR {}{:.0} packets/s ({:.2} Gbit/s), PDR {:.0} packets/s.",
        plan.size,
        // The highest rate offered passed: the NDR is at least that.
        if run.ndr.ndr.failed_pps.is_none() { "≥ " } else { "" },
        run.ndr.ndr.rate_pps,
        run.ndr.ndr.rate_pps * plan.size as f64 * 8.0 / 1e9,
        run.ndr.pdr.rate_pps
    ));
    for (load, log) in &run.interval_logs {
        cx.write_file(&format!("latency-{load}pct.hlog"), log)?;
    }
    let mut spectra: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for s in run.spectra.iter().filter(|s| s.metric == Metric::OneWay) {
        // x in "nines": 1 = p90, 2 = p99, 3 = p99.9; the maximum is left off the axis.
        let points = s
            .points
            .iter()
            .filter(|(p, _)| *p < 100.0)
            .map(|&(p, us)| (-(1.0 - p / 100.0).log10(), us))
            .collect();
        spectra.insert(format!("{} {}%", s.path.name(), s.load_pct), points);
    }
    cx.plots.push((
        "latency-spectrum.svg".into(),
        Plot {
            title: "one-way latency spectrum per path and load (% of NDR)".into(),
            x_label: "percentile in nines (0 = p0, 1 = p90, 2 = p99, 3 = p99.9, 4 = p99.99)".into(),
            y_label: "µs".into(),
            log_x: false,
            series: spectra
                .into_iter()
                .map(|(name, points)| Series {
                    reference: !name.starts_with("cpclink"),
                    name,
                    points,
                })
                .collect(),
        },
    ));
    Ok(())
}

/// What the tunnel adds one way at 50% of its NDR, at p50, p99 and p99.9.
fn added_at_half(rows: &[LatencyRow], reference: &str) -> Option<String> {
    let row = |path| {
        rows.iter().find(|r| {
            r.path == path && r.metric == Metric::OneWay && r.load_pct == 50 && r.received > 0
        })
    };
    let (cpc, base) = (row(Path::Cpclink)?, row(Path::UdpLoopback)?);
    Some(format!(
        "Latency the tunnel adds one way (both engines) at 50% of {reference}: p50 {:+.1} µs, p99 {:+.1} µs, p99.9 {:+.1} µs \
         (SPEC target p99 ≤ {} µs: {}).",
        cpc.p50_us - base.p50_us,
        cpc.p99_us - base.p99_us,
        cpc.p999_us - base.p999_us,
        latency::TARGET_ADDED_P99_US,
        latency::judge_p99(cpc, rows).unwrap_or_else(|| "no baseline to judge against".into())
    ))
}
