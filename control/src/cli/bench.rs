//! `cpclink bench`: the benchmark suites, each beside its baseline in the same run.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::{Args, Subcommand};

use cpclink_bench::compare;
use cpclink_bench::crypto::{self, CryptoPlan};
use cpclink_bench::dataplane::{self as dataplane_suite, DataplanePlan};
use cpclink_bench::latency::{self, LatencyPlan};
use cpclink_bench::suite::{self, report::StageStatus, SuitePlan};
use cpclink_dataplane::engine::BatchingMode;
use cpclink_dataplane::io::IoKind;

use crate::error::Error;

/// Arguments of `cpclink bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    suite: BenchSuite,
}

#[derive(Debug, Subcommand)]
enum BenchSuite {
    /// Every suite in one run (crypto, data plane, engine NDR, latency, tunnel against its
    /// peers, key plane, path plane) with progress and ETA per stage; writes report.md,
    /// report.json, CSVs, SVG plots and HdrHistogram interval logs. Stages that need root
    /// or a missing tool are reported as skipped.
    Suite {
        /// The quick run: about a minute, fewer sizes, rounds and shorter points.
        #[arg(long)]
        quick: bool,
        /// Directory for the report and its files (created if missing).
        #[arg(long, default_value = "bench-report")]
        out: std::path::PathBuf,
        /// Run only these stages (crypto dataplane engine-ndr latency tunnel keyplane path).
        #[arg(long = "stage", num_args = 1..)]
        stages: Vec<String>,
    },
    /// Compares two suite reports figure by figure: the change, and whether it exceeds the
    /// spread the rounds of either run showed.
    Compare {
        /// The earlier run's report.json.
        old: std::path::PathBuf,
        /// The later run's report.json.
        new: std::path::PathBuf,
        /// Print only the figures that changed beyond their noise.
        #[arg(long)]
        changed: bool,
    },
    /// Synthetic flows between two engines over loopback, encrypted beside the plain
    /// baseline (same framing and GSO/GRO batching, no AEAD), per size, workers and backend.
    Dataplane {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Seconds measured per point (after a 0.3 s warm-up).
        #[arg(long, default_value_t = 1.0)]
        duration: f64,
        /// Inner packet sizes in bytes (default 64 512 1400 8192).
        #[arg(long = "size", num_args = 1..)]
        sizes: Vec<usize>,
        /// Workers per engine (default 1 2).
        #[arg(long = "workers", num_args = 1..)]
        workers: Vec<usize>,
        /// Backends (default io_uring epoll).
        #[arg(long = "io", num_args = 1..)]
        ios: Vec<IoKind>,
        /// GSO sends (of up to 64 datagrams each) per transmit batch.
        #[arg(long, default_value_t = dataplane_suite::DEFAULT_BATCH_SENDS)]
        batch: usize,
        /// Datagrams per GSO send at most (1 to 64).
        #[arg(long, default_value_t = cpclink_dataplane::io::udp::MAX_GSO_SEGMENTS)]
        gso_segments: usize,
        /// PSP suites measured encrypted (default aes-gcm-256): aes-gcm-128, aes-gcm-256,
        /// chacha20-poly1305.
        #[arg(long = "suite", num_args = 1..)]
        suites: Vec<cpclink_dataplane::crypto::Suite>,
        /// AEAD libraries measured encrypted (default aws-lc-rs): aws-lc-rs, ring, rustcrypto.
        #[arg(long = "crypto", num_args = 1..)]
        cryptos: Vec<cpclink_dataplane::crypto::Backend>,
        /// Rounds: every point is measured once per round and the medians are reported.
        #[arg(long, default_value_t = dataplane_suite::DEFAULT_ROUNDS)]
        rounds: usize,
        /// Extra random prefixes (a realistic IPv4/IPv6 mix) in the route tables beside the
        /// flows' own; every point is then measured with them right after without.
        #[arg(long, default_value_t = 0)]
        routes: usize,
        /// Services the flows' prefixes are split into, each with a 1024-bucket affinity
        /// table; every point is then measured through them right after without.
        #[arg(long, default_value_t = 0)]
        services: usize,
    },
    /// Probe latency through two engines (TUN, PSP over loopback UDP, TUN; needs root)
    /// beside plain UDP on loopback and a bare veth, at background loads of the measured maximum.
    Latency {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Seconds of probing per path and load, in rounds of 0.5 s (each after 0.1 s of background alone).
        #[arg(long, default_value_t = 2.0)]
        duration: f64,
        /// Background loads in percent of the tunnel's no-drop rate, searched first (default 0 50).
        #[arg(long = "load", num_args = 1..)]
        loads: Vec<u32>,
        /// UDP payload bytes of probes and background packets.
        #[arg(long, default_value_t = latency::DEFAULT_SIZE)]
        size: usize,
        /// The engines' I/O backend.
        #[arg(long, default_value_t = IoKind::Auto)]
        io: IoKind,
        /// While probing, time one packet in this many per stage inside the engines
        /// (0: no stage table).
        #[arg(long, default_value_t = latency::DEFAULT_STAGE_SAMPLE_EVERY)]
        stage_sample: u32,
        /// The engines' latency-first mode (bounded batch waits, busy polling) instead of
        /// throughput first.
        #[arg(long, conflicts_with = "compare_modes")]
        latency_first: bool,
        /// Both modes in one run: the tunnel probed throughput first and latency first in
        /// turn, at the same background (the throughput mode's no-drop rate), each with its
        /// own stage table, beside the same baselines.
        #[arg(long)]
        compare_modes: bool,
        /// Latency-first: the longest a transmit batch's first packet waits, µs.
        #[arg(long)]
        max_hold_us: Option<u64>,
        /// Latency-first: polling after the last packet before sleeping, µs.
        #[arg(long)]
        busy_poll_us: Option<u64>,
        /// Latency-first: transmit batches of at most this many TUN reads.
        #[arg(long)]
        max_packets: Option<usize>,
    },
    /// The key plane: one authority (or replicas) and N simulated appliances over real QUIC
    /// (enrolment rate, directory change, rotation and revocation reaching all of them).
    Keymgr {
        /// The scale benchmark's options.
        #[command(flatten)]
        args: cpclink_bench::keyplane::BenchArgs,
        /// This many authority replicas on a three-member etcd cluster started on loopback
        /// (needs the `etcd` binary, not root). Without `--kills`: the scale benchmark with
        /// the replicas as the authority, every appliance given all their addresses. With
        /// `--kills`: the failover run instead.
        #[arg(long)]
        replicas: Option<usize>,
        /// With `--replicas`: the failover run instead of the scale benchmark, killing the
        /// leader this many times; reports failover times and any invariant broken.
        #[arg(long, requires = "replicas")]
        kills: Option<usize>,
    },
    /// Seal and open through cpclink's AEAD trait against each library's bare call.
    Crypto {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Payload sizes in bytes (default 64 512 1400 4096 9000 65536).
        #[arg(long = "size", num_args = 1..)]
        sizes: Vec<usize>,
        /// Milliseconds per measurement round.
        #[arg(long, default_value_t = 40)]
        round_ms: u64,
        /// Rounds per measurement; the best one counts.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

/// `cpclink bench keymgr --replicas N --kills K`: failover of authority replicas, with
/// every invariant checked after each kill.
fn replica_bench(
    runtime: &tokio::runtime::Runtime,
    replicas: usize,
    kills: usize,
    json: bool,
) -> Result<(), Error> {
    let plan = cpclink_bench::replicas::ReplicaPlan {
        binary: std::env::current_exe()?,
        replicas: replicas.max(2),
        kills,
        chaos: false,
        seed: cpclink_bench::replicas::seed_from_env(),
        agents: 4,
    };
    let report = runtime.block_on(cpclink_bench::replicas::run(&plan))?;
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        println!(
            "{} replicas, {} leader kills: failover p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; agents following the new leader p50 {:.0} ms, p99 {:.0} ms; {} agents, {} grants, {} rotations across failovers; violations: {}",
            report.replicas,
            report.kills,
            report.failover_ms.p50,
            report.failover_ms.p99,
            report.failover_ms.max,
            report.agents_back_ms.p50,
            report.agents_back_ms.p99,
            report.enrolled,
            report.grants,
            report.rotations_across_failover,
            if report.violations.is_empty() {
                "none".to_owned()
            } else {
                report.violations.join("; ")
            }
        );
    }
    Ok(())
}

/// Runs `cpclink bench`.
pub fn run(args: BenchArgs) -> Result<(), Error> {
    if let BenchSuite::Keymgr {
        args,
        replicas,
        kills,
    } = &args.suite
    {
        // Its own runtime: the key plane is async; the other suites drive threads.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        if let (Some(replicas), Some(kills)) = (*replicas, *kills) {
            return replica_bench(&runtime, replicas, kills, args.json);
        }
        return Ok(runtime.block_on(cpclink_bench::keyplane::run(args, *replicas))?);
    }
    let mut out = std::io::stdout().lock();
    match args.suite {
        BenchSuite::Keymgr { .. } => {}
        BenchSuite::Suite {
            quick,
            out: dir,
            stages,
        } => {
            if let Some(bad) = stages.iter().find(|s| !suite::STAGES.contains(&s.as_str())) {
                return Err(Error::BadArgument {
                    arg: "--stage",
                    reason: format!(
                        "{bad:?} is not a stage (expected one of {})",
                        suite::STAGES.join(" ")
                    ),
                });
            }
            let plan = SuitePlan {
                quick,
                out: dir.clone(),
                only: stages,
                // The tunnel stage runs this very binary as `cpclink run` in each namespace.
                cpclink: std::env::current_exe().ok(),
                progress: std::io::stderr().is_terminal(),
            };
            let report = suite::run(&plan)?;
            writeln!(
                out,
                "# cpclink benchmark suite: {}
",
                dir.display()
            )?;
            for line in &report.summary {
                writeln!(out, "- {line}")?;
            }
            for stage in &report.stages {
                match &stage.status {
                    StageStatus::Ran => {}
                    StageStatus::Skipped(why) => {
                        writeln!(out, "- stage {} skipped: {why}", stage.name)?
                    }
                    StageStatus::Failed(why) => {
                        writeln!(out, "- stage {} failed: {why}", stage.name)?
                    }
                }
            }
            writeln!(
                out,
                "\nwritten: report.md, report.json, {} plot(s) ({}), {} other file(s)",
                report.plots.len(),
                report.plots.join(" "),
                report.files.len()
            )?;
        }
        BenchSuite::Compare { old, new, changed } => {
            let (old, new) = (suite::read_report(&old)?, suite::read_report(&new)?);
            let mut changes = compare::compare(&old, &new);
            if changed {
                changes.retain(|c| c.verdict != compare::Verdict::Noise);
            }
            if old.machine.cpu != new.machine.cpu || old.machine.cores != new.machine.cores {
                writeln!(
                    out,
                    "note: the runs were on different machines ({} × {} against {} × {}); changes may be the machine's\n",
                    old.machine.cores, old.machine.cpu, new.machine.cores, new.machine.cpu
                )?;
            }
            write!(out, "{}", compare::table(&changes).markdown())?;
            let regressions = changes
                .iter()
                .filter(|c| c.verdict == compare::Verdict::Regression)
                .count();
            writeln!(
                out,
                "\n{regressions} regression(s) beyond the rounds' spread, {} figure(s) compared",
                changes.len()
            )?;
        }
        BenchSuite::Dataplane {
            json,
            duration,
            sizes,
            workers,
            ios,
            batch,
            gso_segments,
            suites,
            cryptos,
            rounds,
            routes,
            services,
        } => {
            check_duration(duration)?;
            let defaults = DataplanePlan::default();
            let plan = DataplanePlan {
                duration: Duration::from_secs_f64(duration),
                sizes: given_or(sizes, defaults.sizes),
                workers: given_or(workers, defaults.workers),
                ios: given_or(ios, defaults.ios),
                batch_sends: batch.clamp(1, 64),
                gso_segments: gso_segments.clamp(1, cpclink_dataplane::io::udp::MAX_GSO_SEGMENTS),
                suites: given_or(suites, defaults.suites),
                cryptos: given_or(cryptos, defaults.cryptos),
                rounds: rounds.max(1),
                routes,
                services,
            };
            if !json {
                writeln!(
                    out,
                    "cpclink bench dataplane: synthetic flows a→b over loopback, {} flows, {:.1} s per point; \
                     Gbit/s and Mpps of inner packets verified byte for byte at the sink; \
                     every figure the median of {} round(s) taking the points in turn\n",
                    dataplane_suite::FLOWS,
                    duration,
                    plan.rounds
                )?;
            }
            let rows = dataplane_suite::run(&plan, |row| {
                if !json {
                    eprintln!(
                        "  {:>9} {:>8} {} worker(s) {:>5} B {} extra routes {} services {}: {:.2} Gbit/s",
                        row.mode,
                        row.io,
                        row.workers,
                        row.payload,
                        row.routes,
                        row.services,
                        match (row.suite, row.crypto) {
                            (Some(suite), Some(crypto)) => format!("{suite} {crypto}"),
                            _ => "no AEAD".to_string(),
                        },
                        row.gbps
                    );
                }
            })?;
            if json {
                write_json(&mut out, &rows)?;
            } else {
                write!(out, "\n{}", dataplane_suite::table(&rows))?;
                if routes > 0 {
                    write!(
                        out,
                        "\nwith {routes} extra prefixes in the route tables beside the same points without:\n{}",
                        dataplane_suite::routes_table(&rows)
                    )?;
                }
                if services > 0 {
                    write!(
                        out,
                        "\nwith the flows' prefixes split into {services} services of {} affinity buckets beside the same points with plain peer prefixes:\n{}",
                        dataplane_suite::SERVICE_BUCKETS,
                        dataplane_suite::services_table(&rows)
                    )?;
                }
                writeln!(
                    out,
                    "\nsplits: share of worker time, plain/encrypted; tx build = generate + seal, \
                     rx process = open + verify; lost = datagrams dropped by the kernel; \
                     cpu ns/pkt = worker CPU time (user + kernel) per packet sent or received, \
                     which holds on a busy machine; enc/plain by cpu = the throughput ratio the \
                     slower side's CPU cost allows"
                )?;
            }
        }
        BenchSuite::Latency {
            json,
            duration,
            loads,
            size,
            io,
            stage_sample,
            latency_first,
            compare_modes,
            max_hold_us,
            busy_poll_us,
            max_packets,
        } => {
            check_duration(duration)?;
            if !(latency_first || compare_modes) {
                if let Some(arg) = max_hold_us
                    .map(|_| "--max-hold-us")
                    .or(busy_poll_us.map(|_| "--busy-poll-us"))
                    .or(max_packets.map(|_| "--max-packets"))
                {
                    return Err(Error::BadArgument {
                        arg,
                        reason: "applies to the latency-first mode only: add --latency-first or --compare-modes".into(),
                    });
                }
            }
            let mut batching = if latency_first || compare_modes {
                BatchingMode::LATENCY_FIRST
            } else {
                BatchingMode::THROUGHPUT
            };
            if let Some(us) = max_hold_us {
                batching.policy.max_hold = Some(Duration::from_micros(us));
            }
            if let Some(us) = busy_poll_us {
                batching.busy_poll = Duration::from_micros(us);
            }
            if let Some(n) = max_packets {
                batching.policy.max_packets = n;
            }
            let batching = batching.checked().map_err(|e| Error::BadArgument {
                arg: "--max-hold-us, --busy-poll-us or --max-packets",
                reason: e.to_string(),
            })?;
            let plan = LatencyPlan {
                duration: Duration::from_secs_f64(duration),
                loads: given_or(loads, latency::DEFAULT_LOADS.to_vec()),
                size,
                io,
                stage_sample_every: stage_sample,
                batching,
                compare_modes,
                ..LatencyPlan::default()
            };
            if let Some(e) = latency::unavailable() {
                return Err(e.into());
            }
            if !json {
                writeln!(
                    out,
                    "cpclink bench latency: UDP probes of {size} B at {}/s, {duration:.1} s per path and load; \
                     client in netns A, echo server in netns B; background load from A to B in % of the \
                     maximum through the tunnel, the same packet rate on every path\n",
                    latency::PROBES_PER_SECOND,
                )?;
            }
            let run = latency::measure(&plan, |line| {
                if !json {
                    eprintln!("  {line}");
                }
            })?;
            let rows = run.rows;
            if json {
                write_json(&mut out, &rows)?;
            } else {
                write!(out, "\n{}", latency::table(&rows))?;
                if !run.stages.is_empty() {
                    write!(
                        out,
                        "\n{}\n{}",
                        latency::stages_title(stage_sample),
                        latency::per_engine_table(&run.stages)
                    )?;
                }
                if !run.engine_cpu.is_empty() {
                    write!(
                        out,
                        "\n{}\n{}",
                        latency::EngineCpuRow::TITLE,
                        latency::per_engine_table(&run.engine_cpu)
                    )?;
                }
                if let Some(row) = rows.first() {
                    writeln!(
                        out,
                        "\nmaximum through the tunnel, measured first: {:.0} packets/s of {size} B ({:.2} Gbit/s), engines on {io}",
                        row.max_pps,
                        row.max_pps * size as f64 * 8.0 / 1e9,
                    )?;
                }
                if compare_modes {
                    if let Some(row) = rows
                        .iter()
                        .find(|r| r.mode == Some(latency::Mode::LatencyFirst))
                    {
                        writeln!(
                            out,
                            "maximum through the tunnel, latency-first, measured right after: {:.0} packets/s ({:.2} of throughput first's)",
                            row.max_pps,
                            rows.first().map_or(0.0, |f| row.max_pps / f.max_pps),
                        )?;
                    }
                }
                writeln!(
                    out,
                    "\npaths: udp_loopback = plain UDP sockets on 127.0.0.1 (the baseline); veth = the \
                     namespaces joined directly; cpclink = TUN → engine A → AES-GCM-256 PSP over UDP on \
                     loopback → engine B → TUN. added = cpclink − udp_loopback at the same load and metric"
                )?;
                if latency_first || compare_modes {
                    writeln!(
                        out,
                        "latency-first in this run: {batching}{}",
                        if compare_modes {
                            "; the loads are the throughput mode's, the engines switched between modes at run time"
                        } else {
                            ""
                        }
                    )?;
                }
                if let Some(verdict) = latency::verdict(&rows) {
                    writeln!(out, "{verdict}")?;
                }
            }
        }
        BenchSuite::Crypto {
            json,
            sizes,
            round_ms,
            rounds,
        } => {
            let sizes = given_or(sizes, crypto::DEFAULT_SIZES.to_vec());
            let plan = CryptoPlan {
                round: Duration::from_millis(round_ms),
                rounds: rounds.max(1),
            };
            let rows = crypto::run(&sizes, plan)?;
            if json {
                write_json(&mut out, &rows)?;
            } else {
                writeln!(out, "cpclink bench crypto: payload Gbit/s on one core, best of {} rounds of {} ms\n", plan.rounds, round_ms)?;
                write!(out, "{}", crypto::table(&rows))?;
            }
        }
    }
    Ok(())
}

/// A list option as given, or its default when none was given.
fn given_or<T>(given: Vec<T>, default: Vec<T>) -> Vec<T> {
    if given.is_empty() {
        default
    } else {
        given
    }
}

/// `--duration` of the timed suites: more than nothing, at most ten minutes a point.
fn check_duration(duration: f64) -> Result<(), Error> {
    if duration > 0.0 && duration <= 600.0 {
        Ok(())
    } else {
        Err(Error::BadArgument {
            arg: "--duration",
            reason: format!("{duration} is out of range (expected 0 < S <= 600 seconds)"),
        })
    }
}

/// The `--json` form of a suite: its rows as one JSON array on one line.
fn write_json(out: &mut impl Write, rows: &impl serde::Serialize) -> Result<(), Error> {
    writeln!(
        out,
        "{}",
        serde_json::to_string(rows).map_err(std::io::Error::from)?
    )?;
    Ok(())
}
