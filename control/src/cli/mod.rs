//! Command-line front end: one module per subcommand.

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
enum Command {}

/// Parses the command line and runs the chosen subcommand.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {}
}
