//! `cpclink`: the one binary of the appliance, the authority and the operator tools.

mod cli;
mod error;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Log lines go to stderr, at info unless RUST_LOG says otherwise.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    cli::run()
}
