//! `cpclink bench`: the benchmark suites, each beside its baseline in the same run.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};

use cpclink_bench::crypto::{self, CryptoPlan};

use crate::error::Error;

/// Arguments of `cpclink bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    suite: BenchSuite,
}

#[derive(Debug, Subcommand)]
enum BenchSuite {
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
    let mut out = std::io::stdout().lock();
    match args.suite {
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
