//! The latency suite end to end, briefly: every path at every load is measured, every probe
//! is accounted for, the percentiles are in order and each cpclink row has its baseline.
//! Needs root (TUN, namespaces); skips with a reason otherwise. Nothing here judges speed.

use std::time::Duration;

use cpclink_bench::latency::{self, LatencyPlan, Metric, Path, Side};
use cpclink_bench::Error;
use cpclink_dataplane::engine::Stage;
use cpclink_dataplane::io::IoKind;

#[test]
fn the_suite_measures_every_path_at_every_load_against_its_baseline() {
    if let Some(why) = latency::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let plan = LatencyPlan {
        duration: Duration::from_millis(300),
        loads: vec![0, 50],
        size: 256,
        io: IoKind::Auto,
        ndr_trial: Duration::from_millis(200),
        ndr_trials: 4,
        stage_sample_every: 4,
        ndr_rounds: 1,
        ..LatencyPlan::default()
    };
    let run = latency::measure(&plan, |line| eprintln!("{line}")).unwrap();
    let rows = run.rows;
    eprintln!("{}", latency::table(&rows));
    eprintln!("{}", latency::per_engine_table(&run.stages));
    // Every load has its own stage times: engine A's probes (and background) read from
    // TUN and sealed, engine B's opened and written to TUN.
    for load in [0, 50] {
        for (side, stage) in [
            (Side::A, Stage::TunRead),
            (Side::A, Stage::Seal),
            (Side::A, Stage::BatchWait),
            (Side::A, Stage::Send),
            (Side::B, Stage::Receive),
            (Side::B, Stage::Open),
            (Side::B, Stage::TunWrite),
        ] {
            let row = run
                .stages
                .iter()
                .find(|r| r.load_pct == load && r.side == side && r.stage == stage);
            assert!(
                row.is_some_and(|r| r.samples > 0 && r.p50_us > 0.0 && r.p50_us <= r.p99_us),
                "{load}% {side:?} {stage:?}: {row:?}"
            );
        }
    }
    assert_eq!(rows.len(), 2 * 3 * 2, "loads × paths × metrics: {rows:#?}");
    for load in [0, 50] {
        for path in [Path::UdpLoopback, Path::Veth, Path::Cpclink] {
            for metric in [Metric::OneWay, Metric::RoundTrip] {
                let found = rows
                    .iter()
                    .filter(|r| r.load_pct == load && r.path == path && r.metric == metric)
                    .count();
                assert_eq!(found, 1, "{load}% {path:?} {metric:?}");
            }
        }
    }
    for r in &rows {
        let name = format!("{}% {:?} {:?}", r.load_pct, r.path, r.metric);
        assert!(r.probes > 0, "{name}: no probe sent");
        assert_eq!(
            r.received + r.lost,
            r.probes,
            "{name}: every probe accounted for"
        );
        let p = [r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.max_us];
        if r.received == 0 {
            // Only a machine starved for a whole round gets here; then nothing is ranked.
            assert!(p.iter().all(|x| x.is_nan()), "{name}: {p:?}");
        } else {
            assert!(p[0] > 0.0, "{name}: {p:?}");
            assert!(
                p.windows(2).all(|w| w[0] <= w[1]),
                "{name}: not monotonic {p:?}"
            );
        }
        assert_eq!(r.size, 256);
        assert!(r.max_pps > 0.0, "{name}: the maximum was measured");
        assert!(r.ndr_pps > 0.0, "{name}: the no-drop rate was searched");
        if r.load_pct == 0 {
            assert_eq!(r.background_pps, 0.0, "{name}");
        } else {
            assert!(r.background_pps > 0.0, "{name}: background ran");
        }
        match r.path {
            Path::Cpclink => {
                let baseline = rows
                    .iter()
                    .find(|b| {
                        b.path == Path::UdpLoopback
                            && b.load_pct == r.load_pct
                            && b.metric == r.metric
                    })
                    .unwrap();
                if r.received > 0 && baseline.received > 0 {
                    assert_eq!(r.added_p50_us, Some(r.p50_us - baseline.p50_us), "{name}");
                    assert_eq!(r.added_p99_us, Some(r.p99_us - baseline.p99_us), "{name}");
                } else {
                    assert_eq!((r.added_p50_us, r.added_p99_us), (None, None), "{name}");
                }
            }
            _ => assert_eq!((r.added_p50_us, r.added_p99_us), (None, None), "{name}"),
        }
    }
    for path in [Path::UdpLoopback, Path::Veth, Path::Cpclink] {
        let received: u64 = rows
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.received)
            .sum();
        assert!(received > 0, "{path:?}: no probe arrived at all");
    }
    // A round trip crosses the path twice: with no reply lost, each probe's round trip is
    // longer than its one-way time, and so is the median.
    for path in [Path::UdpLoopback, Path::Cpclink] {
        let row = |metric| {
            rows.iter()
                .find(|r| r.load_pct == 0 && r.path == path && r.metric == metric)
                .unwrap()
        };
        let (one_way, round_trip) = (row(Metric::OneWay), row(Metric::RoundTrip));
        if round_trip.lost == 0 {
            assert!(round_trip.p50_us > one_way.p50_us, "{path:?}");
        }
    }
    let json = serde_json::to_value(&rows).unwrap();
    let first = json[0].as_object().unwrap();
    for key in [
        "path",
        "metric",
        "load_pct",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "lost",
        "added_p99_us",
    ] {
        assert!(first.contains_key(key), "JSON lacks {key}");
    }
    assert_eq!(json[0]["path"], "udp_loopback");
    assert_eq!(latency::table(&rows).lines().count(), 2 + rows.len());
}

#[test]
fn plans_outside_the_probe_and_load_ranges_are_refused() {
    let refused = |plan: LatencyPlan| latency::run(&plan, |_| {}).unwrap_err();
    let e = refused(LatencyPlan {
        size: 8,
        ..LatencyPlan::default()
    });
    assert!(matches!(e, Error::BadProbeSize { size: 8, .. }), "{e}");
    let e = refused(LatencyPlan {
        size: latency::MAX_SIZE + 1,
        ..LatencyPlan::default()
    });
    assert!(e.to_string().contains("one TUN MTU at most"), "{e}");
    let e = refused(LatencyPlan {
        loads: vec![0, 150],
        ..LatencyPlan::default()
    });
    assert!(matches!(e, Error::BadLoad(150)), "{e}");
}
