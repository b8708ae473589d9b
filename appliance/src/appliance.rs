//! `cpclink run --config FILE`: an appliance's data plane with its TUN tunnel, keyed by the
//! key plane (`[keymgr]`: a key agent enrolled with the authority) or, in lab mode, from
//! static keys in the configuration. Ctrl-C or SIGTERM drains, stops the agent and exits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use cpclink_control::keyed::{KeyedEngine, KeyedOptions};
use cpclink_dataplane::engine::{lab, Egress, Engine, Event, PeerId, RouteTable, SaProfile};
use cpclink_dataplane::io::tun;
use cpclink_dataplane::sa::{MasterKeys, SaLimits};
use cpclink_keymgr::agent::{AgentOptions, KeyAgent};

use crate::config::{ApplianceConfig, Keying, KeymgrConfig};
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

    // The key agent's files are read before anything is set up, so a wrong path is refused
    // like any other configuration error.
    let mut agent_options = match &config.keying {
        Keying::KeyPlane(k) => Some(k.agent_options()?),
        Keying::Lab { .. } => None,
    };
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
    let engine = Arc::new(Engine::start(engine_config)?);
    eprintln!(
        "cpclink: listening on {} with {} worker(s) over {}, {}",
        engine.local_addr(),
        engine.workers(),
        engine.io(),
        match &config.keying {
            Keying::Lab { .. } => format!("{} lab-keyed peer(s)", config.peers.len()),
            Keying::KeyPlane(_) => "peers and keys from the key plane".to_owned(),
        }
    );
    let key_plane = match &config.keying {
        Keying::Lab { master_keys } => {
            start_lab(&engine, &config, master_keys, profile)?;
            None
        }
        Keying::KeyPlane(k) => Some(KeyPlane::start(&engine, k, agent_options.take(), &config)?),
    };

    let tick = Duration::from_millis(200);
    let mut ticks = 0u64;
    loop {
        match stop_rx.recv_timeout(tick) {
            Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        // With the key plane, its driver answers the engine's events.
        if key_plane.is_none() {
            rekey_lab(&engine, &config, profile)?;
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
    if let Some(key_plane) = key_plane {
        key_plane.stop();
    }
    eprintln!("cpclink: stopping; draining the workers");
    let stats = match Arc::try_unwrap(engine) {
        Ok(engine) => engine.shutdown()?,
        // Unreachable once the key plane's driver has ended; the counters are still worth
        // printing, and dropping the engine stops its workers.
        Err(engine) => engine.snapshot()?,
    };
    println!(
        "{}",
        serde_json::to_string(&stats.total()).map_err(std::io::Error::from)?
    );
    Ok(())
}

/// Lab mode: receive SAs derived from this appliance's keys, transmit SAs from the peers'.
fn start_lab(
    engine: &Engine,
    config: &ApplianceConfig,
    master_keys: &MasterKeys,
    profile: SaProfile,
) -> Result<(), Error> {
    let routes = config.peers.iter().enumerate().flat_map(|(i, peer)| {
        let prefixes = peer.prefixes.iter();
        prefixes.map(move |&(addr, len)| (addr, len, PeerId(i as u32)))
    });
    engine.set_routes(Arc::new(RouteTable::build(routes)?))?;
    lab::enable_rx_derivation(engine, master_keys, config.suite)?;
    engine.snapshot()?;
    for (i, peer) in config.peers.iter().enumerate() {
        let spis = lab::install_tx_sas(engine, PeerId(i as u32), &peer.master_keys, profile)?;
        eprintln!(
            "cpclink: peer {} at {}: transmit SPIs {spis:?}",
            peer.name, peer.endpoint
        );
    }
    Ok(())
}

/// Lab mode: replaces transmit SAs the workers report due or exhausted.
fn rekey_lab(engine: &Engine, config: &ApplianceConfig, profile: SaProfile) -> Result<(), Error> {
    while let Ok(event) = engine.events().try_recv() {
        let (Event::RekeyDue { worker, peer } | Event::SaExhausted { worker, peer }) = event;
        if let Some(p) = config.peers.get(peer.0 as usize) {
            let spi = lab::rekey_tx_sa(engine, worker, peer, &p.master_keys, profile)?;
            eprintln!(
                "cpclink: worker {worker} rekeyed to peer {} with SPI {spi}",
                p.name
            );
        }
    }
    Ok(())
}

/// The key agent and the driver that feeds its SAs to the engine, on their own runtime.
struct KeyPlane {
    runtime: tokio::runtime::Runtime,
    keyed: KeyedEngine,
}

impl KeyPlane {
    /// Enrols (if not yet enrolled), starts the key agent publishing the engine's endpoint,
    /// and starts feeding the engine.
    fn start(
        engine: &Arc<Engine>,
        k: &KeymgrConfig,
        options: Option<AgentOptions>,
        config: &ApplianceConfig,
    ) -> Result<Self, Error> {
        let endpoint = k.endpoint.unwrap_or_else(|| engine.local_addr());
        let mut options = match options {
            Some(o) => o,
            None => k.agent_options()?,
        };
        options.endpoints = vec![endpoint.to_string()];
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cpclink-keys")
            .enable_all()
            .build()?;
        tracing::info!(
            "key agent {}: authority {}, state in {}{}",
            options.appliance,
            options.authority,
            options.state_dir.display(),
            if options.token.is_some() {
                " (enrolment token at hand)"
            } else {
                ""
            }
        );
        let (agent, events) = runtime.block_on(KeyAgent::start(options))?;
        tracing::info!(
            "key agent {} enrolled; serving peers on {}, publishing data-plane endpoint {endpoint}",
            agent.id(),
            agent
                .local_addr()
                .map_or_else(|| "?".to_owned(), |a| a.to_string())
        );
        let options = KeyedOptions {
            prefixes: k.prefixes.clone(),
            crypto: config.crypto,
            ..KeyedOptions::default()
        };
        let keyed = {
            let _inside = runtime.enter();
            KeyedEngine::start(engine.clone(), agent, events, options)
        };
        Ok(Self { runtime, keyed })
    }

    /// Stops the driver and the agent, then the runtime.
    fn stop(self) {
        let Self { runtime, keyed } = self;
        runtime.block_on(keyed.stop());
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
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
