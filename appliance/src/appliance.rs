//! The appliance: one owner task for the engine, the key source, the route table and the
//! state operators read.
//!
//! Invariants:
//! - Only the owner task changes what the engine routes and keys: it holds the key source,
//!   takes the engine's events from a channel (a bridge thread turns the engine's blocking
//!   channel into a wake-up of the task; nothing polls), and takes commands (status,
//!   reload, stop) from [`ApplianceHandle`]s. No state is shared behind a lock.
//! - A reload is all or nothing: the new file is validated completely before the owner sees
//!   it; a bad one is refused with its error and the running configuration stays. Settings
//!   only a restart can change are reported and left as they run.
//! - Routes follow the key source: peers' prefixes (from the directory, or the lab config),
//!   overridden per peer by `[[keymgr.peer]]`, become the engine's route table whenever a
//!   peer, a prefix or an override changes. SAs are never touched by a route change.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use cpclink_dataplane::engine::{BatchingMode, Egress, Engine, EngineStats, Event, PeerId};
use cpclink_dataplane::io::tun;
use cpclink_dataplane::route::RouteTable;
use cpclink_diagnostics::ConfigText;
use cpclink_keymgr::agent::KeyAgent;
use cpclink_keymgr::audit::ApplianceReport;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{ApplianceConfig, Keying, KeymgrConfig, Prefix};
use crate::keyed::{KeyPlane, KeyedOptions};
use crate::keys::{KeySource, KeyUpdate, KeyingStatus};
use crate::lab::LabKeys;
use crate::paths::{now_ms, PathController, PathsStatus};
use crate::Error;

/// What an operator can read of a running appliance.
#[derive(Debug, Clone, Serialize)]
pub struct ApplianceStatus {
    /// The configuration file it runs.
    pub config_file: String,
    /// Where PSP arrives.
    pub listen: SocketAddr,
    /// Workers.
    pub workers: usize,
    /// Peers and SAs, as the key source gave them to the engine.
    pub keys: KeyingStatus,
    /// The route table: every inner prefix and the peer it goes to.
    pub routes: Vec<Route>,
    /// Reloads applied since start.
    pub reloads: u64,
    /// Services, their placement, the outer paths and the last decisions, when the
    /// appliance steers (`[paths]`).
    pub paths: Option<PathsStatus>,
    /// The hardware profile the data plane was sized from, and which settings came from
    /// it, if `[hardware]` names one.
    pub hardware: Option<crate::config::HardwareSource>,
}

/// One entry of the route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The inner prefix.
    pub prefix: Prefix,
    /// The peer it goes to, by name.
    pub peer: String,
    /// Where the prefix came from: `directory`, `config` (lab peers) or `override`.
    pub origin: &'static str,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Whether routes or peers changed.
    pub changed: bool,
    /// The data plane's new batching mode, when the reload changed it.
    pub mode: Option<BatchingMode>,
    /// Fields that differ but take effect only at the next start.
    pub needs_restart: Vec<&'static str>,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.changed, &self.mode) {
            (true, Some(mode)) => write!(f, "peers or routes changed; data plane mode now {mode}")?,
            (true, None) => f.write_str("peers or routes changed")?,
            (false, Some(mode)) => write!(f, "data plane mode now {mode}")?,
            (false, None) => f.write_str("nothing to change")?,
        }
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; waiting for a restart: {}",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

enum Command {
    Status(oneshot::Sender<ApplianceStatus>),
    Reload(
        Box<ApplianceConfig>,
        String,
        oneshot::Sender<Result<Reloaded, String>>,
    ),
    /// An operator action to report to the authority's audit log.
    Report(ApplianceReport),
    /// Time one packet in this many per stage (0: stop), asked for by the named caller.
    StageSampling(
        u32,
        String,
        oneshot::Sender<Result<(), cpclink_dataplane::Error>>,
    ),
    Stop,
}

/// A handle on a running appliance's owner task.
#[derive(Debug, Clone)]
pub struct ApplianceHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Status(_) => "Status",
            Command::Reload(..) => "Reload",
            Command::Report(_) => "Report",
            Command::StageSampling(..) => "StageSampling",
            Command::Stop => "Stop",
        })
    }
}

impl ApplianceHandle {
    /// What the appliance runs now.
    pub async fn status(&self) -> Result<ApplianceStatus, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Status(tx))
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Re-reads the configuration file the appliance was started with and applies it; a
    /// file that does not validate changes nothing and its error is returned. `by` names
    /// who asked (`api:NAME`, `signal:SIGHUP`): the outcome either way goes to the
    /// authority's audit log when the appliance is keyed by the key plane.
    pub async fn reload_file(&self, path: &std::path::Path, by: &str) -> Result<Reloaded, Error> {
        match ApplianceConfig::load(path) {
            Ok(config) => self.reload(config, by).await,
            Err(e) => {
                let _ = self
                    .commands
                    .send(Command::Report(ApplianceReport::ReloadRefused {
                        by: by.to_owned(),
                        reason: e.to_string(),
                    }));
                Err(e)
            }
        }
    }

    /// Applies a validated configuration, asked for by `by`.
    pub async fn reload(&self, config: ApplianceConfig, by: &str) -> Result<Reloaded, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Reload(Box::new(config), by.to_owned(), tx))
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?.map_err(Error::Reload)
    }

    /// Times one packet in `every` per stage on every worker from now on (0: stop; the
    /// samples so far are forgotten), asked for by `by`; reported to the audit log like a
    /// reload.
    pub async fn set_stage_sampling(&self, every: u32, by: &str) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::StageSampling(every, by.to_owned(), tx))
            .map_err(|_| Error::Stopped)?;
        Ok(rx.await.map_err(|_| Error::Stopped)??)
    }

    /// Asks the owner task to stop; [`RunningAppliance::wait`] then returns.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }
}

/// An appliance started on a tokio runtime: its handle and its owner task.
#[derive(Debug)]
pub struct RunningAppliance {
    handle: ApplianceHandle,
    engine: Arc<Engine>,
    keys: watch::Receiver<KeyingStatus>,
    /// Ends with whether the owner stopped because this appliance was revoked.
    task: tokio::task::JoinHandle<bool>,
}

impl RunningAppliance {
    /// The handle operators' commands go through.
    pub fn handle(&self) -> ApplianceHandle {
        self.handle.clone()
    }

    /// The engine (for counters).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// What the key source has given the engine, as the owner last published it (no round
    /// trip to the owner task).
    pub fn keys(&self) -> KeyingStatus {
        self.keys.borrow().clone()
    }

    /// Stops the owner task and the key source and waits for both; the engine keeps
    /// running with the SAs it has until it is shut down.
    pub async fn stop(self) -> Arc<Engine> {
        self.handle.stop();
        self.wait().await.0
    }

    /// Waits for the owner task to end (after [`ApplianceHandle::stop`], or because this
    /// appliance was revoked); the key source is stopped by then and the engine is returned
    /// for draining, with whether the end was a revocation.
    pub async fn wait(self) -> (Arc<Engine>, bool) {
        let revoked = self.task.await.unwrap_or(false);
        (self.engine, revoked)
    }
}

/// Starts the owner task for `engine` keyed by `keys`. `config` (the file the appliance
/// runs, for reloads and prefix overrides) is absent when a test drives an engine directly.
/// Must be called within a tokio runtime.
pub fn spawn<K: KeySource>(
    engine: Arc<Engine>,
    keys: K,
    config: Option<ApplianceConfig>,
) -> RunningAppliance {
    let (commands, inbox) = mpsc::unbounded_channel();
    let events = bridge_events(&engine);
    let (published, keys_rx) = watch::channel(keys.status());
    let paths = config.as_ref().and_then(PathController::new);
    let mut owner = Owner {
        engine: engine.clone(),
        keys,
        paths,
        config,
        routes: Vec::new(),
        reloads: 0,
        published,
        revoked: false,
    };
    owner.apply_routes();
    let task = tokio::spawn(owner.run(inbox, events));
    RunningAppliance {
        handle: ApplianceHandle { commands },
        engine,
        keys: keys_rx,
        task,
    }
}

/// Forwards the engine's events to the owner task as they happen: the engine's channel is
/// a blocking one, so a thread waits on it and wakes the task.
fn bridge_events(engine: &Engine) -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    let events = engine.events().clone();
    let spawned = std::thread::Builder::new()
        .name("cpclink-events".into())
        .spawn(move || {
            // Ends when the engine's workers are gone or the owner task is.
            while let Ok(event) = events.recv() {
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the engine-event thread ({e}); SAs will not be renewed before they run out");
    }
    rx
}

struct Owner<K> {
    engine: Arc<Engine>,
    keys: K,
    /// The path controller, when the configuration has `[paths]`.
    paths: Option<PathController>,
    config: Option<ApplianceConfig>,
    routes: Vec<Route>,
    reloads: u64,
    /// The key source's status as last published to [`RunningAppliance::keys`].
    published: watch::Sender<KeyingStatus>,
    /// The owner stopped because this appliance was revoked.
    revoked: bool,
}

impl<K: KeySource> Owner<K> {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) -> bool {
        let period = self
            .paths
            .as_ref()
            .map_or(Duration::from_secs(3600), PathController::sweep_period);
        let mut sweep = tokio::time::interval(period);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(Command::Status(reply)) => {
                        let _ = reply.send(self.status());
                    }
                    Some(Command::Reload(config, by, reply)) => {
                        let outcome = self.reload(*config);
                        self.keys.report(match &outcome {
                            Ok(r) => ApplianceReport::Reloaded { by, applied: r.to_string() },
                            Err(reason) => ApplianceReport::ReloadRefused { by, reason: reason.clone() },
                        });
                        let _ = reply.send(outcome);
                    }
                    Some(Command::Report(report)) => self.keys.report(report),
                    Some(Command::StageSampling(every, by, reply)) => {
                        let outcome = self.engine.set_stage_sampling(every);
                        if outcome.is_ok() {
                            tracing::info!("stage sampling set to one packet in {every} by {by}");
                            self.keys.report(ApplianceReport::SettingChanged {
                                by,
                                setting: "stage_sample_every".into(),
                                value: every.to_string(),
                            });
                        }
                        let _ = reply.send(outcome);
                    }
                    Some(Command::Stop) | None => break,
                },
                Some(event) = events.recv() => self.keys.on_engine_event(event),
                _ = sweep.tick(), if self.paths.is_some() => self.steer(false),
                input = self.keys.next() => {
                    match self.keys.handle(input) {
                        KeyUpdate::RoutesChanged => self.apply_routes(),
                        KeyUpdate::Revoked => {
                            self.revoked = true;
                            break;
                        }
                        KeyUpdate::Nothing => {}
                    }
                    self.take_metrics();
                }
            }
            let status = self.keys.status();
            self.published.send_if_modified(|old| {
                let changed = *old != status;
                if changed {
                    *old = status;
                }
                changed
            });
        }
        self.keys.shutdown().await;
        self.revoked
    }

    fn status(&self) -> ApplianceStatus {
        ApplianceStatus {
            config_file: self
                .config
                .as_ref()
                .map_or_else(String::new, |c| c.file.display().to_string()),
            listen: self.engine.local_addr(),
            workers: self.engine.workers(),
            keys: self.keys.status(),
            routes: self.routes.clone(),
            reloads: self.reloads,
            paths: self.paths.as_ref().map(PathController::status),
            hardware: self.config.as_ref().and_then(|c| c.hardware.clone()),
        }
    }

    /// Hands what peers advertised to the path controller; a change decides at once.
    fn take_metrics(&mut self) {
        let arrived = self.keys.take_metrics();
        let Some(paths) = self.paths.as_mut() else {
            return;
        };
        let now = now_ms();
        let mut changed = false;
        for (peer, bytes) in arrived {
            changed |= paths.ingest(&peer, &bytes, now);
        }
        if changed {
            self.steer(true);
        }
    }

    /// One round of the path controller: advertise this centre's metrics when due, decide
    /// every service against fresh metrics and link state, and apply both halves of the
    /// decision (the data plane's bucket tables, the kernel's outer paths).
    fn steer(&mut self, metrics_changed: bool) {
        let Some(paths) = self.paths.as_mut() else {
            return;
        };
        let now = now_ms();
        if !metrics_changed {
            let id = self
                .keys
                .own_id()
                .or_else(|| {
                    self.config
                        .as_ref()
                        .and_then(|c| Some(c.paths.as_ref()?.node.clone()))
                })
                .unwrap_or_default();
            for payload in paths.due_advertisements(&id, now) {
                self.keys.publish_metrics(payload);
            }
        }
        let decided = std::time::Instant::now();
        let keys = &self.keys;
        if paths.decide(now, |site| keys.peer_id(site).is_some()) {
            self.apply_routes();
        }
        let endpoints: BTreeMap<String, std::net::Ipv6Addr> = self
            .keys
            .status()
            .peers
            .into_iter()
            .filter_map(|(name, p)| match p.endpoint?.ip() {
                std::net::IpAddr::V6(a) => Some((name, a)),
                std::net::IpAddr::V4(_) => None,
            })
            .collect();
        if let Some(paths) = self.paths.as_mut() {
            if paths.program_paths(&endpoints).is_some() {
                tracing::info!(
                    "decision to programmed (tables and kernel routes): {:?}",
                    decided.elapsed()
                );
            }
        }
    }

    fn reload(&mut self, config: ApplianceConfig) -> Result<Reloaded, String> {
        let Some(running) = &self.config else {
            return Err("this appliance was started without a configuration file".into());
        };
        let needs_restart = config.needs_restart(running);
        for field in &needs_restart {
            tracing::warn!("reload: {field} changed; it takes effect at the next start (running with the old value)");
        }
        let keying_kind_changed = matches!(
            (&config.keying, &running.keying),
            (Keying::Lab { .. }, Keying::KeyPlane(_)) | (Keying::KeyPlane(_), Keying::Lab { .. })
        );
        if keying_kind_changed {
            return Err(
                "switching between lab keys and the key plane needs a restart; nothing was changed"
                    .into(),
            );
        }
        let update = self.keys.reload(&config).map_err(|e| e.to_string())?;
        // The workers take a new mode between packets: no restart for it.
        let mode = (config.batching != running.batching).then_some(config.batching);
        if let Some(mode) = mode {
            self.engine
                .set_batching(mode)
                .map_err(|e| format!("the data plane's mode: {e}"))?;
        }
        let overrides_changed = overrides(Some(&config)) != overrides(self.config.as_ref());
        let paths_changed = match (&mut self.paths, config.paths.is_some()) {
            (Some(p), true) => p.reload(&config),
            (None, false) => false,
            (slot, _) => {
                *slot = PathController::new(&config);
                true
            }
        };
        self.config = Some(config);
        self.reloads += 1;
        let changed = update == KeyUpdate::RoutesChanged || overrides_changed || paths_changed;
        if paths_changed {
            self.steer(false);
        }
        if changed {
            self.apply_routes();
        }
        let reloaded = Reloaded {
            changed,
            mode,
            needs_restart,
        };
        tracing::info!("reload {} applied: {reloaded}", self.reloads);
        Ok(reloaded)
    }

    /// Rebuilds the route table from the key source's peers and the overrides, and hands
    /// it to the engine whole (the workers swap it between packets; nothing locks).
    fn apply_routes(&mut self) {
        let overrides = overrides(self.config.as_ref());
        let from_directory = match self.config.as_ref().map(|c| &c.keying) {
            Some(Keying::Lab { .. }) => "config",
            _ => "directory",
        };
        let mut routes: Vec<(Route, PeerId)> = Vec::new();
        let mut taken = std::collections::HashSet::new();
        let peers = self.keys.routes();
        // Overrides first: a prefix an operator pinned to a peer wins over the same prefix
        // in another peer's directory entry.
        for (name, peer, _) in &peers {
            for prefix in overrides.get(name).into_iter().flatten() {
                if taken.insert(*prefix) {
                    routes.push((route(*prefix, name, "override"), *peer));
                }
            }
        }
        for (name, peer, prefixes) in &peers {
            if overrides.contains_key(name) {
                continue;
            }
            for prefix in prefixes {
                if taken.insert(*prefix) {
                    routes.push((route(*prefix, name, from_directory), *peer));
                } else {
                    tracing::warn!(
                        "{prefix} of {name} is routed elsewhere already; not routed to {name}"
                    );
                }
            }
        }
        routes.sort_by_key(|(r, _)| r.prefix);
        let services = self.paths.as_ref().map_or_else(Vec::new, |p| {
            p.service_routes(|name| self.keys.peer_id(name))
        });
        let table = RouteTable::build_with_services(
            routes
                .iter()
                .map(|(r, peer)| (r.prefix.addr(), r.prefix.prefix_len(), *peer)),
            services,
        );
        let table = match table {
            Ok(table) => table,
            Err(e) => {
                tracing::error!("the route table cannot be built ({e}); keeping the previous one");
                return;
            }
        };
        let routes: Vec<Route> = routes.into_iter().map(|(r, _)| r).collect();
        if routes != self.routes {
            tracing::info!(
                "routing {} prefix(es) to {} peer(s)",
                routes.len(),
                peers.len()
            );
        }
        if let Err(e) = self.engine.set_routes(Arc::new(table)) {
            tracing::error!("the data plane refused the route table: {e}");
            return;
        }
        self.routes = routes;
    }
}

fn route(prefix: Prefix, peer: &str, origin: &'static str) -> Route {
    Route {
        prefix,
        peer: peer.to_owned(),
        origin,
    }
}

/// Per-peer prefix overrides (`[[keymgr.peer]]`).
fn overrides(config: Option<&ApplianceConfig>) -> BTreeMap<String, Vec<Prefix>> {
    match config.map(|c| &c.keying) {
        Some(Keying::KeyPlane(k)) => k.prefixes.clone(),
        _ => BTreeMap::new(),
    }
}

/// How long a start waits for a previous run's sockets to be released: after a kill -9,
/// the kernel tears an io_uring (and the sockets it holds) down in the background.
const BIND_WAIT: Duration = Duration::from_secs(5);

/// Refuses a listen address this machine cannot bind before anything is set up, naming
/// the field and the fix. An address still held (a previous run's sockets closing) is
/// waited for a few seconds: joining its SO_REUSEPORT group would hand datagrams to the
/// dead run's sockets.
fn check_bindable(config: &ApplianceConfig) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + BIND_WAIT;
    let mut socket = socket_probe(config.listen);
    let mut waited = false;
    while matches!(&socket, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
        && std::time::Instant::now() < deadline
    {
        if !waited {
            tracing::info!(
                "{} is still held (a previous run's sockets closing?); waiting up to {BIND_WAIT:?}",
                config.listen
            );
            waited = true;
        }
        std::thread::sleep(Duration::from_millis(20));
        socket = socket_probe(config.listen);
    }
    socket.map(drop).map_err(|e| {
        let text = ConfigText::read(&config.file)
            .unwrap_or_else(|_| ConfigText::new(config.file.display().to_string(), ""));
        Error::Config(text.error_fix(
            "[appliance].listen",
            format!("cannot bind {}: {e}", config.listen),
            "give an address of this machine (see `ip addr`) and a port no other program holds",
        ))
    })
}

fn socket_probe(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(addr)
}

/// Runs an appliance until `stop` fires: opens the TUN device, starts the engine and the
/// key source, serves reloads (`reload` fires with nothing: re-read the file), and returns
/// the engine's final counters.
pub fn run(
    config: ApplianceConfig,
    signals: impl FnOnce(ApplianceHandle) -> Result<(), Error>,
) -> Result<EngineStats, Error> {
    // Everything that can be refused is refused before the system is touched: the key
    // files are read and the listen address probed before the TUN device exists.
    let agent_options = match &config.keying {
        Keying::KeyPlane(k) => Some(k.agent_options()?),
        Keying::Lab { .. } => None,
    };
    check_bindable(&config)?;
    let mut engine_config = config.engine_config();
    log_hardware(&config);
    if let (Some(t), Some(mtu)) = (&config.tun, config.tun_mtu()) {
        let queues = tun::open_queues(&t.name, config.workers, t.offloads)?;
        tun::set_mtu_and_up(&t.name, mtu)?;
        tracing::info!("TUN {} up with MTU {mtu} ({} queues)", t.name, queues.len());
        engine_config.egress = Egress::Tun(queues);
    }
    let engine = Arc::new(Engine::start(engine_config)?);
    tracing::info!(
        "listening on {} with {} worker(s) over {}",
        engine.local_addr(),
        engine.workers(),
        engine.io()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cpclink-appliance")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the appliance's runtime", e))?;
    let engine = runtime.block_on(async {
        let running = match (&config.keying, agent_options) {
            (Keying::KeyPlane(k), Some(options)) => {
                let keys = start_key_plane(&engine, k, options, &config).await?;
                let tls = keys.https_server_config();
                let access = config
                    .api
                    .as_ref()
                    .map(|api| (keys.api_access(api.tokens.clone()), keys.tenant_source()));
                let running = spawn(engine.clone(), keys, Some(config.clone()));
                if let (Some(api), Some((access, tenant))) = (&config.api, access) {
                    crate::api::serve(
                        api.listen,
                        tls,
                        running.handle(),
                        engine.clone(),
                        access,
                        std::sync::Arc::new(tenant),
                    )
                    .await
                    .map_err(|e| {
                        Error::io(format!("serving the management API on {}", api.listen), e)
                    })?;
                }
                running
            }
            _ => {
                let keys = LabKeys::start(engine.clone(), &config)?;
                spawn(engine.clone(), keys, Some(config.clone()))
            }
        };
        signals(running.handle())?;
        Ok::<_, Error>(running.wait().await)
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let (engine, revoked) = engine?;
    tracing::info!("stopping; draining the workers");
    let stats = match Arc::try_unwrap(engine) {
        Ok(engine) => engine.shutdown()?,
        // Something still holds the engine (a request task of the key plane that outlived
        // the runtime); the counters are still worth printing, and dropping it stops it.
        Err(engine) => engine.snapshot()?,
    };
    if revoked {
        return Err(Error::Revoked(
            serde_json::to_string(&stats.total()).unwrap_or_default(),
        ));
    }
    Ok(stats)
}

/// Enrols (if not yet enrolled) and starts the key agent publishing the engine's endpoint.
async fn start_key_plane(
    engine: &Arc<Engine>,
    k: &KeymgrConfig,
    mut options: cpclink_keymgr::agent::AgentOptions,
    config: &ApplianceConfig,
) -> Result<KeyPlane, Error> {
    let endpoint = k.endpoint.unwrap_or_else(|| engine.local_addr());
    options.endpoints = vec![endpoint.to_string()];
    tracing::info!(
        "key agent {}: authority {}, state in {}{}",
        options.appliance,
        options
            .authorities
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        options.state_dir.display(),
        if options.token.is_some() {
            " (enrolment token at hand)"
        } else {
            ""
        }
    );
    let authorities = options.authorities.clone();
    let (agent, events) = KeyAgent::start(options).await.map_err(|e| match e {
        // Not an unreachable authority: say what it is, and the way out it names.
        e @ (cpclink_keymgr::Error::Revoked { .. }
        | cpclink_keymgr::Error::WrongAppliance { .. }) => Error::KeyPlane(e),
        e => Error::Authority {
            authorities,
            reason: e.to_string(),
        },
    })?;
    tracing::info!(
        "key agent {} enrolled; serving peers on {}, publishing data-plane endpoint {endpoint}",
        agent.id(),
        agent
            .local_addr()
            .map_or_else(|| "?".to_owned(), |a| a.to_string())
    );
    Ok(KeyPlane::new(
        engine.clone(),
        agent,
        events,
        KeyedOptions {
            crypto: config.crypto,
            ..KeyedOptions::default()
        },
    ))
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
