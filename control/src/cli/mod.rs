//! Command-line front end: one module per subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod hw;

/// cpclink: encrypted, compute-aware links between computing power centres.
#[derive(Debug, Parser)]
#[command(name = "cpclink", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Hardware profiles: detect the NIC and CPU, apply a profile, tune by measurement.
    Hw(hw::HwArgs),
}

/// Parses the command line and runs the chosen subcommand.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Hw(args) => hw::run(args),
    }
}
