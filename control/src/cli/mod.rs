//! Command-line front end: one module per subcommand.

mod srv6;

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
    /// SRv6: SRH decode/encode with HMAC, CATS path selection, Linux seg6 programming.
    Srv6(srv6::Srv6Args),
}

/// Parses the command line and runs the chosen subcommand.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Srv6(args) => srv6::run(args),
    }
}
