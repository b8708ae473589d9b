//! Command-line front end: one module per subcommand.

mod bench;
mod psp;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// cpclink: encrypted, compute-aware links between computing power centres.
#[derive(Debug, Parser)]
#[command(name = "cpclink", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// PSP packet tools: derive keys, seal and open packets.
    Psp(psp::PspArgs),
    /// Benchmark suites, each beside a baseline measured in the same run.
    Bench(bench::BenchArgs),
}

/// Parses the command line and runs the chosen subcommand.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Psp(args) => psp::run(args).map(|line| println!("{line}")),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cpclink: {e}");
            ExitCode::FAILURE
        }
    }
}
