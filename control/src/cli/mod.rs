//! Command-line front end: one module per subcommand.

mod bench;
mod ctl;
mod demo;
mod engine_runner;
mod hw;
mod keymgr;
mod lab;
mod psp;
mod run;
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
    /// PSP packet tools: derive keys, seal and open packets.
    Psp(psp::PspArgs),
    /// Benchmark suites, each beside a baseline measured in the same run.
    Bench(bench::BenchArgs),
    /// SRv6: SRH decode/encode with HMAC, CATS path selection, Linux seg6 programming.
    Srv6(srv6::Srv6Args),
    /// Hardware profiles: detect the NIC and CPU, apply a profile, tune by measurement.
    Hw(hw::HwArgs),
    /// Run an appliance: the data plane with its TUN tunnel (Ctrl-C drains and exits).
    Run(run::RunArgs),
    /// Two appliances on loopback, pushing verified encrypted traffic both ways (no root).
    Demo(demo::DemoArgs),
    /// Key plane: the authority daemon, key agents, tokens, revocation and audit.
    Keymgr(keymgr::KeymgrArgs),
    /// An appliance's management API: status, services, explanations, reload.
    Ctl(ctl::CtlArgs),
    /// Three centres and two transits in network namespaces: services placed by compute,
    /// over SRv6 paths, keyed by the key plane (root).
    Lab(lab::LabArgs),
}

/// Parses the command line and runs the chosen subcommand.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Psp(args) => finish(psp::run(args).map(|line| println!("{line}"))),
        Command::Bench(args) => finish(bench::run(args)),
        Command::Srv6(args) => srv6::run(args),
        Command::Hw(args) => hw::run(args),
        Command::Run(args) => finish(run::run(args)),
        Command::Demo(args) => finish(demo::run(args)),
        Command::Keymgr(args) => keymgr::run(args),
        Command::Lab(args) => finish(lab::run(args)),
        Command::Ctl(args) => finish(ctl::run(args)),
    }
}

/// Reports an error on stderr, one line, and turns the outcome into an exit status.
fn finish(result: Result<(), crate::error::Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cpclink: {e}");
            ExitCode::FAILURE
        }
    }
}
