//! `cpclink bench`: the benchmark suites, each beside its baseline in the same run.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};

use cpclink_bench::crypto::{self, CryptoPlan};
use cpclink_bench::dataplane::{self as dataplane_suite, DataplanePlan};
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
    },
    /// The key plane: one authority and N simulated appliances over real QUIC (enrolment
    /// rate, directory change, rotation and revocation reaching all of them).
    Keymgr(cpclink_keymgr::bench::BenchArgs),
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

/// Runs `cpclink bench`.
pub fn run(args: BenchArgs) -> Result<(), Error> {
    if let BenchSuite::Keymgr(args) = &args.suite {
        // Its own runtime: the key plane is async; the other suites drive threads.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return Ok(runtime.block_on(cpclink_keymgr::bench::run(args))?);
    }
    let mut out = std::io::stdout().lock();
    match args.suite {
        BenchSuite::Keymgr(_) => {}
        BenchSuite::Dataplane {
            json,
            duration,
            sizes,
            workers,
            ios,
            batch,
            gso_segments,
        } => {
            if !(duration > 0.0 && duration <= 600.0) {
                return Err(Error::BadArgument {
                    arg: "--duration",
                    reason: format!("{duration} is out of range (expected 0 < S <= 600 seconds)"),
                });
            }
            let defaults = DataplanePlan::default();
            let plan = DataplanePlan {
                duration: Duration::from_secs_f64(duration),
                sizes: if sizes.is_empty() {
                    defaults.sizes
                } else {
                    sizes
                },
                workers: if workers.is_empty() {
                    defaults.workers
                } else {
                    workers
                },
                ios: if ios.is_empty() { defaults.ios } else { ios },
                batch_sends: batch.clamp(1, 64),
                gso_segments: gso_segments.clamp(1, cpclink_dataplane::io::udp::MAX_GSO_SEGMENTS),
            };
            if !json {
                writeln!(
                    out,
                    "cpclink bench dataplane: synthetic flows a→b over loopback, {} flows, {:.1} s per point; \
                     Gbit/s and Mpps of inner packets verified byte for byte at the sink\n",
                    dataplane_suite::FLOWS,
                    duration
                )?;
            }
            let rows = dataplane_suite::run(&plan, |row| {
                if !json {
                    eprintln!(
                        "  {:>9} {:>8} {} worker(s) {:>5} B: {:.2} Gbit/s",
                        row.mode, row.io, row.workers, row.payload, row.gbps
                    );
                }
            })?;
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&rows).map_err(std::io::Error::from)?
                )?;
            } else {
                write!(out, "\n{}", dataplane_suite::table(&rows))?;
                writeln!(
                    out,
                    "\nsplits: share of worker time, plain/encrypted; tx build = generate + seal, \
                     rx process = open + verify; lost = datagrams dropped by the kernel"
                )?;
            }
        }
        BenchSuite::Crypto {
            json,
            sizes,
            round_ms,
            rounds,
        } => {
            let sizes = if sizes.is_empty() {
                crypto::DEFAULT_SIZES.to_vec()
            } else {
                sizes
            };
            let plan = CryptoPlan {
                round: Duration::from_millis(round_ms),
                rounds: rounds.max(1),
            };
            let rows = crypto::run(&sizes, plan)?;
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&rows).map_err(std::io::Error::from)?
                )?;
            } else {
                writeln!(out, "cpclink bench crypto: payload Gbit/s on one core, best of {} rounds of {} ms\n", plan.rounds, round_ms)?;
                write!(out, "{}", crypto::table(&rows))?;
            }
        }
    }
    Ok(())
}
