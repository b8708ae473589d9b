//! `cpclink run --config FILE`: an appliance (see the `cpclink-appliance` crate). SIGINT or
//! SIGTERM drains and exits with the final counters as JSON on stdout; SIGHUP re-reads the
//! file and applies it, or keeps the running configuration and logs why not.

use std::path::PathBuf;

use clap::Args;
use cpclink_appliance::{ApplianceConfig, ApplianceHandle};
use tokio::signal::unix::{signal, SignalKind};

use crate::error::Error;

/// Arguments of `cpclink run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The appliance configuration (TOML).
    #[arg(long)]
    config: PathBuf,
}

/// Runs the appliance until SIGINT or SIGTERM.
pub fn run(args: RunArgs) -> Result<(), Error> {
    let config = ApplianceConfig::load(&args.config)?;
    let path = args.config.clone();
    let stats = cpclink_appliance::run(config, move |handle| serve_signals(handle, path))?;
    println!(
        "{}",
        serde_json::to_string(&stats.total()).map_err(std::io::Error::from)?
    );
    Ok(())
}

/// SIGINT/SIGTERM stop the appliance; SIGHUP reloads its configuration file.
fn serve_signals(handle: ApplianceHandle, path: PathBuf) -> Result<(), cpclink_appliance::Error> {
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| cpclink_appliance::Error::Io {
            context: format!("installing the {name} handler"),
            source: e,
        })
    };
    let mut interrupt = install(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = install(SignalKind::terminate(), "SIGTERM")?;
    let mut hangup = install(SignalKind::hangup(), "SIGHUP")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading {}", path.display());
                    match handle.reload_file(&path, "signal:SIGHUP").await {
                        Ok(r) if r.needs_restart.is_empty() => {}
                        Ok(r) => tracing::warn!(
                            "reloaded; these changes wait for a restart: {}",
                            r.needs_restart.join(", ")
                        ),
                        Err(e) => tracing::error!("{e}; the running configuration stays"),
                    }
                }
            }
        }
        handle.stop();
    });
    Ok(())
}
