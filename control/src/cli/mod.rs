//! Command-line front end: one module per subcommand.

mod keymgr;

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
    /// Key plane: the authority daemon, key agents, tokens, revocation and audit.
    Keymgr(keymgr::KeymgrArgs),
}

/// Parses the command line and runs the chosen subcommand.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keymgr(args) => keymgr::run(args),
    }
}
