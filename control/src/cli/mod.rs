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
    /// Log lines on stderr as text or as one JSON object each.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Log lines go to stderr, at info unless RUST_LOG says otherwise.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().init(),
    }
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
    /// Check a configuration file without running anything.
    Config(ConfigArgs),
    /// An appliance's management API: status, services, explanations, reload.
    Ctl(ctl::CtlArgs),
    /// Three centres and two transits in network namespaces: services placed by compute,
    /// over SRv6 paths, keyed by the key plane (root).
    Lab(lab::LabArgs),
}

/// Parses the command line and runs the chosen subcommand.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
        Command::Config(args) => finish(check_config(args)),
    }
}

/// Arguments of `cpclink config`.
#[derive(Debug, clap::Args)]
struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate an appliance configuration as `cpclink run` would, and say what it sets up.
    Check {
        /// The file.
        file: std::path::PathBuf,
    },
}

fn check_config(args: ConfigArgs) -> Result<(), crate::error::Error> {
    let ConfigCommand::Check { file } = args.command;
    let c = cpclink_appliance::ApplianceConfig::load(&file)?;
    let keys = match &c.keying {
        cpclink_appliance::config::Keying::KeyPlane(k) => {
            format!("keyed by the key plane as {}", k.agent.appliance)
        }
        cpclink_appliance::config::Keying::Lab { .. } => {
            format!("lab keys, {} peer(s)", c.peers.len())
        }
    };
    println!(
        "{}: valid: listens on {}, {} worker(s), {keys}; {} service(s){}{}",
        file.display(),
        c.listen,
        c.workers,
        c.services.len(),
        c.tun
            .as_ref()
            .map(|t| format!(", TUN {}", t.name))
            .unwrap_or_default(),
        c.api
            .as_ref()
            .map(|a| format!(
                ", management API on {} ({} token(s))",
                a.listen,
                a.tokens.len()
            ))
            .unwrap_or_default()
    );
    Ok(())
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
