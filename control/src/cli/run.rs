//! `cpclink run --config FILE`: an appliance's data plane with its TUN tunnel, keyed in lab
//! mode from the configuration until the key plane drives it. Ctrl-C drains and exits.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use cpclink_dataplane::engine::{lab, Egress, Engine, Event, PeerId, SaProfile};
use cpclink_dataplane::io::tun;
use cpclink_dataplane::sa::SaLimits;

use crate::config::ApplianceConfig;
use crate::error::Error;

/// Arguments of `cpclink run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The appliance configuration (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Print the counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0)]
    stats_every: u64,
}

/// Runs the appliance until Ctrl-C (SIGINT) or SIGTERM.
pub fn run(args: RunArgs) -> Result<(), Error> {
    let config = ApplianceConfig::load(&args.config)?;
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })
    .map_err(|e| Error::BadArgument {
        arg: "(signals)",
        reason: format!("cannot install the Ctrl-C handler: {e}"),
    })?;

    let mut engine_config = config.engine_config();
    log_hardware(&config);
    if let (Some(t), Some(mtu)) = (&config.tun, config.tun_mtu()) {
        let queues = tun::open_queues(&t.name, config.workers, t.offloads)?;
        tun::set_mtu_and_up(&t.name, mtu)?;
        eprintln!(
            "cpclink: TUN {} up with MTU {mtu} ({} queues)",
            t.name,
            queues.len()
        );
        engine_config.egress = Egress::Tun(queues);
    }
    let profile = SaProfile {
        suite: config.suite,
        crypto: config.crypto,
        limits: SaLimits::default(),
    };
    let engine = Engine::start(engine_config)?;
    eprintln!(
        "cpclink: listening on {} with {} worker(s) over {}, {} peer(s)",
        engine.local_addr(),
        engine.workers(),
        engine.io(),
        config.peers.len()
    );
    lab::enable_rx_derivation(&engine, &config.master_keys, config.suite)?;
    engine.snapshot()?;
    for (i, peer) in config.peers.iter().enumerate() {
        let spis = lab::install_tx_sas(&engine, PeerId(i as u32), &peer.master_keys, profile)?;
        eprintln!(
            "cpclink: peer {} at {}: transmit SPIs {spis:?}",
            peer.name, peer.endpoint
        );
    }

    let tick = Duration::from_millis(200);
    let mut ticks = 0u64;
    loop {
        match stop_rx.recv_timeout(tick) {
            Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        while let Ok(event) = engine.events().try_recv() {
            let (Event::RekeyDue { worker, peer } | Event::SaExhausted { worker, peer }) = event;
            if let Some(p) = config.peers.get(peer.0 as usize) {
                let spi = lab::rekey_tx_sa(&engine, worker, peer, &p.master_keys, profile)?;
                eprintln!(
                    "cpclink: worker {worker} rekeyed to peer {} with SPI {spi}",
                    p.name
                );
            }
        }
        ticks += 1;
        if args.stats_every > 0 && ticks % (args.stats_every * 5) == 0 {
            let s = engine.snapshot()?.total();
            eprintln!(
                "cpclink: tx {} pkts {} B, rx {} pkts delivered {}, dropped tx {} rx {}",
                s.tx_packets,
                s.tx_bytes,
                s.rx_packets,
                s.rx_delivered,
                s.tx_dropped(),
                s.rx_dropped()
            );
        }
    }
    eprintln!("cpclink: stopping; draining the workers");
    let s = engine.shutdown()?.total();
    println!(
        "{}",
        serde_json::to_string(&s).map_err(std::io::Error::from)?
    );
    Ok(())
}

/// Says which data plane settings came from the hardware profile and which the
/// configuration overrode.
fn log_hardware(config: &ApplianceConfig) {
    let Some(hw) = &config.hardware else { return };
    let from_profile = hw
        .from_profile
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" ");
    tracing::info!(
        profile = %hw.profile,
        device = hw.device.as_deref().unwrap_or("-"),
        overridden = %hw.overridden.join(","),
        "data plane sized from hardware profile: {from_profile}"
    );
}
