//! The key plane and the path plane: times against appliances, decisions and routes per second.

use std::time::Duration;

use super::plot::{Plot, Series};
use super::report::{Figure, Stage, Table};
use super::{pick, Context, Outcome, Progress};
use crate::keyplane::{self, AgentStore};
use crate::path;

/// One authority and N simulated appliances over real QUIC, at growing N.
pub(super) fn keyplane(
    cx: &mut Context,
    stage: &mut Stage,
    progress: &Progress,
) -> Result<(), Outcome> {
    let sizes = pick(cx, vec![10, 40], vec![100, 300, 1000]);
    let revocations = pick(cx, 2, 10);
    progress.steps(sizes.len());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Outcome::Fail(format!("starting the key plane's runtime: {e}")))?;
    let mut table = Table::new(
        "key plane against appliances",
        &[
            "appliances",
            "enrolments/s",
            "all connected s",
            "directory change s",
            "rotation s",
            "revocation p50 ms",
            "revocation p99 ms",
        ],
    );
    let mut series: [(&str, Vec<(f64, f64)>); 4] = [
        ("all connected", Vec::new()),
        ("directory change", Vec::new()),
        ("rotation", Vec::new()),
        ("revocation p99", Vec::new()),
    ];
    for &n in &sizes {
        // Every appliance in this process: no child processes of the suite's binary.
        let r = runtime.block_on(keyplane::run_once(
            n,
            revocations,
            n,
            AgentStore::Memory,
            None,
        ))?;
        table.push(vec![
            n.to_string(),
            format!("{:.1}", r.enrolments_per_sec),
            format!("{:.3}", r.all_connected_secs),
            format!("{:.3}", r.directory_change_secs),
            format!("{:.3}", r.rotation_secs),
            format!("{:.1}", r.revocation_p50_ms),
            format!("{:.1}", r.revocation_p99_ms),
        ]);
        let x = n as f64;
        for ((_, points), y) in series.iter_mut().zip([
            r.all_connected_secs,
            r.directory_change_secs,
            r.rotation_secs,
            r.revocation_p99_ms / 1e3,
        ]) {
            points.push((x, y));
        }
        stage.figures.push(Figure::from_rounds(
            format!("rotation {n} appliances"),
            "s",
            false,
            vec![r.rotation_secs],
        ));
        stage.figures.push(Figure::from_rounds(
            format!("enrolments/s {n} appliances"),
            "1/s",
            true,
            vec![r.enrolments_per_sec],
        ));
        progress.step(format!("{n} appliances: rotation {:.3} s", r.rotation_secs));
        if Some(&n) == sizes.last() {
            cx.summary.push(format!(
                "Key plane: {n} simulated appliances: rotation reaches all in {:.3} s, revocation enforced p99 {:.1} ms \
                 (SPEC: 10,000 in ≤ 10 s; this run's size is smaller).",
                r.rotation_secs, r.revocation_p99_ms
            ));
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    stage.notes.push(format!(
        "One authority (redb store) and N simulated appliances (memory stores) in this process over real QUIC \
         (TLS 1.3) on loopback; {revocations} revocations each enforced by every other appliance."
    ));
    stage.tables.push(table);
    cx.plots.push((
        "keyplane.svg".into(),
        Plot {
            title: "key plane: time to reach every appliance".into(),
            x_label: "appliances".into(),
            y_label: "seconds".into(),
            log_x: true,
            series: series
                .into_iter()
                .map(|(name, points)| Series {
                    name: name.into(),
                    points,
                    reference: false,
                })
                .collect(),
        },
    ));
    Ok(())
}

/// Path selection decisions per second; seg6 route programming and the SRH's cost (root).
pub(super) fn path(
    cx: &mut Context,
    stage: &mut Stage,
    progress: &Progress,
) -> Result<(), Outcome> {
    let (sites, paths) = pick(cx, (100, 1000), (1000, 10_000));
    let seconds = pick(cx, 0.5, 3.0);
    progress.steps(3);
    let sel = path::selection(sites, paths, Duration::from_secs_f64(seconds))?;
    progress.step("selection");
    let mut table = Table::new("path plane", &["what", "value", "unit"]);
    let mut row = |what: String, value: f64, unit: &str| {
        table.push(vec![what, format!("{value:.1}"), unit.to_string()]);
    };
    row(
        format!("selection, {sites} sites, {paths} candidate paths"),
        sel.decisions_per_sec,
        "decisions/s",
    );
    stage.figures.push(Figure::from_rounds(
        format!("selection {sites} sites {paths} paths"),
        "decisions/s",
        true,
        vec![sel.decisions_per_sec],
    ));
    match crate::netns::unavailable() {
        Some(reason) => stage
            .notes
            .push(format!("Route programming and SRH cost skipped: {reason}.")),
        None => {
            let routes = pick(cx, 200, 1000);
            let prog = path::programming(routes)?;
            progress.step("programming");
            row(
                format!("seg6 encap routes added ({routes})"),
                prog.add_per_sec,
                "routes/s",
            );
            row(
                "reconcile, replace".into(),
                prog.reconcile_replace_per_sec,
                "routes/s",
            );
            row(
                "reconcile, no-op".into(),
                prog.reconcile_noop_per_sec,
                "routes/s",
            );
            row("removed".into(), prog.remove_per_sec, "routes/s");
            let srh = path::srh_cost(pick(cx, 20_000, 200_000), 1400 + 32)?;
            progress.step("SRH cost");
            row(
                "send, plain route".into(),
                srh.gso_plain_send_ns,
                "ns/datagram (GSO)",
            );
            row(
                "send, kernel seg6 encap route".into(),
                srh.gso_kernel_srh_send_ns,
                "ns/datagram (GSO)",
            );
            row(
                "engine builds outer header, SRH, HMAC".into(),
                srh.engine_build_ns,
                "ns/datagram",
            );
        }
    }
    stage.tables.push(table);
    cx.summary.push(format!(
        "Path selection: {:.0} decisions/s over {sites} sites and {paths} candidate paths.",
        sel.decisions_per_sec
    ));
    Ok(())
}
