//! `cpclink`: the one binary of the appliance, the authority and the operator tools.

mod cli;
mod error;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::run()
}
