//! The key plane as the appliance's [`KeySource`]: a key agent's directory and SA events
//! become the engine's peers, transmit and receive SAs, retirements and revocations.
//!
//! It is a state machine the appliance's owner task drives: [`KeySource::next`] waits for
//! the agent (SA events, directory changes, answers to SA requests, the retry timer),
//! [`KeySource::handle`] acts on what came; engine events reach it through
//! [`KeySource::on_engine_event`]. Nothing polls.
//!
//! - Peers are the appliances the agent's directory lists as authorised for this one, each
//!   at the first data-plane endpoint it publishes of the engine's address family. They get
//!   a [`PeerId`] when first seen and keep it, so revoked peers stay known to the engine and
//!   their packets count as rejected rather than as strangers'. The inner prefixes each
//!   serves are the ones its directory entry lists; the appliance builds the route table.
//! - Transmit SAs: one per worker and peer, each obtained from the peer's agent, because a
//!   worker's IV counter is its own: one SA on two workers would repeat (key, IV) pairs.
//!   A fresh SA goes into use [`KeyedOptions::settle`] after the grant: the receiver installs
//!   its half when it grants, and that must reach its workers before the first packet. The
//!   SA it replaces stays valid at the receiver meanwhile (make-before-break), so the wait
//!   costs nothing.
//! - Receive SAs are installed as the agent grants them and retired when a rotation
//!   overwrites their generation. Revocation (or a policy that no longer lets a peer talk)
//!   drops every SA with the peer, both ways.
//!
//! Nothing is ever sent in clear: a worker without a transmit SA for a peer drops and
//! counts what it would send there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpclink_dataplane::crypto::Backend;
use cpclink_dataplane::engine::{Engine, Event, PeerConfig, PeerId, SaProfile};
use cpclink_dataplane::sa::{SaLimits, Spi};
use cpclink_keymgr::agent::{KeyAgent, SaEvent, TxSaGrant};
use cpclink_keymgr::directory::Directory;
use tokio::sync::{mpsc, watch};

use crate::config::Prefix;
use crate::keys::{KeySource, KeyUpdate, KeyingStatus, PeerStatus};

/// How long a failed SA request waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How the key plane drives an engine.
#[derive(Debug, Clone)]
pub struct KeyedOptions {
    /// The AEAD library SAs use.
    pub crypto: Backend,
    /// How long a granted transmit SA waits before it is used.
    pub settle: Duration,
}

impl Default for KeyedOptions {
    fn default() -> Self {
        Self {
            crypto: Backend::AwsLc,
            settle: Duration::from_millis(100),
        }
    }
}

#[derive(Debug)]
struct Slot {
    peer: PeerId,
    endpoint: Option<SocketAddr>,
    active: bool,
    revoked: bool,
    /// The inner prefixes its directory entry lists.
    prefixes: Vec<Prefix>,
    /// Each worker's transmit SA towards the peer and the request for its next one.
    workers: Vec<WorkerSa>,
}

/// One worker's transmit SA towards a peer, and where getting its next one stands.
#[derive(Debug, Clone, Copy, Default)]
struct WorkerSa {
    /// The SA in use.
    tx: Option<Spi>,
    /// A request is out.
    pending: bool,
    /// Due for replacement until a new SA is installed: a failed request is retried (the
    /// engine reports a due SA only once).
    due: bool,
    /// The pending request was sent before the peer offered a fresh SA: the grant it brings
    /// may be of the old generation, so another request follows it.
    again: bool,
    /// After a failure, not asked again before this.
    retry_at: Option<Instant>,
}

impl WorkerSa {
    /// Whether a request should go out now.
    fn wants_sa(&self, now: Instant) -> bool {
        (self.tx.is_none() || self.due) && !self.pending && self.retry_at.is_none_or(|t| t <= now)
    }
}

/// An SA request's outcome, back on the owner task.
#[derive(Debug)]
pub enum Fetched {
    /// The peer granted an SA for `worker`.
    Granted {
        /// The worker it is for.
        worker: usize,
        /// The grant.
        grant: TxSaGrant,
    },
    /// The request failed; it is retried after [`RETRY`].
    Failed {
        /// The peer asked.
        peer: String,
        /// The worker it was for.
        worker: usize,
    },
}

/// What the key plane waits for (see [`KeySource::next`]).
#[derive(Debug)]
pub enum KeyInput {
    /// The agent reported an SA event; `None`: the agent has stopped.
    Sa(Option<SaEvent>),
    /// The agent's directory copy changed; `false`: the agent has stopped.
    Directory(bool),
    /// An SA request came back.
    Fetched(Fetched),
    /// A failed request's back-off ended.
    Retry,
}

/// The key plane driving an engine: the appliance's key source when `[keymgr]` is given.
#[derive(Debug)]
pub struct KeyPlane {
    engine: Arc<Engine>,
    workers: usize,
    agent: KeyAgent,
    events: mpsc::UnboundedReceiver<SaEvent>,
    version: watch::Receiver<u64>,
    options: KeyedOptions,
    slots: BTreeMap<String, Slot>,
    status: KeyingStatus,
    fetched_tx: mpsc::UnboundedSender<Fetched>,
    fetched: mpsc::UnboundedReceiver<Fetched>,
    /// Peers already reported as publishing no usable endpoint.
    unreachable: BTreeSet<String>,
    /// Peers told that this run started (each once).
    told: BTreeSet<String>,
    /// The agent has stopped: nothing more will come from it.
    ended: bool,
    /// Metric advertisements from peers, for the path controller.
    metrics: Vec<(String, Vec<u8>)>,
}

impl KeyPlane {
    /// The TLS configuration the management API serves with: this appliance's certificate.
    pub fn https_server_config(&self) -> std::sync::Arc<rustls::ServerConfig> {
        self.agent.https_server_config()
    }

    /// Who may call the management API: the configured tokens, and the operator
    /// credentials the authority issued (checked offline against its CA).
    /// Every refusal is reported to the authority's audit log.
    pub fn api_access(&self, tokens: Vec<cpclink_mgmt::ApiToken>) -> cpclink_mgmt::Access {
        let agent = self.agent.clone();
        cpclink_mgmt::Access::new(tokens)
            .with_credentials(std::sync::Arc::new(self.agent.operator_credentials()))
            .with_refusals(move |r| {
                agent.report(cpclink_keymgr::audit::ApplianceReport::ApiRefused {
                    by: r.by,
                    what: r.what,
                    status: r.status,
                    reason: r.reason,
                });
            })
    }

    /// The tenant this appliance serves, as the directory lists it.
    pub fn tenant_source(&self) -> impl Fn() -> Option<String> + Send + Sync + 'static {
        let agent = self.agent.clone();
        move || agent.tenant()
    }

    /// Drives `engine` from `agent` and its event stream. Must be called within a tokio
    /// runtime (SA requests run as tasks of their own).
    pub fn new(
        engine: Arc<Engine>,
        agent: KeyAgent,
        events: mpsc::UnboundedReceiver<SaEvent>,
        options: KeyedOptions,
    ) -> Self {
        let (fetched_tx, fetched) = mpsc::unbounded_channel();
        let mut plane = Self {
            workers: engine.workers(),
            engine,
            version: agent.directory_version(),
            agent,
            events,
            options,
            slots: BTreeMap::new(),
            metrics: Vec::new(),
            status: KeyingStatus::default(),
            fetched_tx,
            fetched,
            unreachable: BTreeSet::new(),
            told: BTreeSet::new(),
            ended: false,
        };
        // The owner applies the routes this finds when it starts.
        let _ = plane.sync_directory();
        plane
    }

    /// The agent.
    pub fn agent(&self) -> &KeyAgent {
        &self.agent
    }

    /// When the earliest failed request may be tried again.
    fn next_retry(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter(|s| s.active)
            .flat_map(|s| s.workers.iter())
            .filter(|w| (w.tx.is_none() || w.due) && !w.pending)
            .filter_map(|w| w.retry_at)
            .min()
    }
}

impl KeySource for KeyPlane {
    type Input = KeyInput;

    async fn next(&mut self) -> KeyInput {
        if self.ended {
            return std::future::pending().await;
        }
        let retry = self.next_retry();
        let sleep = async {
            match retry {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = self.events.recv() => KeyInput::Sa(event),
            changed = self.version.changed() => KeyInput::Directory(changed.is_ok()),
            Some(outcome) = self.fetched.recv() => KeyInput::Fetched(outcome),
            () = sleep => KeyInput::Retry,
        }
    }

    fn handle(&mut self, input: KeyInput) -> KeyUpdate {
        match input {
            KeyInput::Sa(Some(event)) => return self.on_sa_event(event),
            KeyInput::Sa(None) | KeyInput::Directory(false) => {
                let first = !self.ended;
                self.ended = true;
                if self.agent.is_revoked() {
                    tracing::error!(
                        "this appliance ({}) was revoked: stopping; to bring new hardware into its role, an admin runs `cpclink keymgr replace --appliance {}`",
                        self.agent.id(),
                        self.agent.id()
                    );
                    return KeyUpdate::Revoked;
                }
                if first {
                    tracing::warn!("key agent {} has stopped", self.agent.id());
                }
            }
            KeyInput::Directory(true) => return self.sync_directory(),
            KeyInput::Fetched(outcome) => self.on_fetched(outcome),
            KeyInput::Retry => self.fetch_missing(),
        }
        KeyUpdate::Nothing
    }

    fn on_engine_event(&mut self, event: Event) {
        let (Event::RekeyDue { worker, peer } | Event::SaExhausted { worker, peer }) = event;
        let Some(id) = self
            .slots
            .iter()
            .find(|(_, s)| s.peer == peer)
            .map(|(id, _)| id.clone())
        else {
            return;
        };
        let why = match event {
            Event::RekeyDue { .. } => "is due for replacement",
            Event::SaExhausted { .. } => "is exhausted",
        };
        tracing::info!("worker {worker}'s SA towards {id} {why}: requesting the next");
        if matches!(event, Event::SaExhausted { .. }) {
            if let Some(slot) = self.slots.get_mut(&id) {
                if let Some(spent) = slot.workers[worker].tx.take() {
                    self.status.sas.remove(&spent);
                }
            }
        }
        self.fetch(&id, worker);
        self.publish();
    }

    fn status(&self) -> KeyingStatus {
        self.status.clone()
    }

    fn reload(
        &mut self,
        _config: &crate::config::ApplianceConfig,
    ) -> Result<KeyUpdate, crate::Error> {
        // The agent's identity and addresses need a restart (the appliance reports them);
        // prefix overrides are the appliance's own.
        Ok(KeyUpdate::Nothing)
    }

    fn routes(&self) -> Vec<(String, PeerId, Vec<Prefix>)> {
        self.slots
            .iter()
            .filter(|(_, s)| s.active)
            .map(|(id, s)| (id.clone(), s.peer, s.prefixes.clone()))
            .collect()
    }

    fn peer_id(&self, name: &str) -> Option<PeerId> {
        self.slots.get(name).filter(|s| s.active).map(|s| s.peer)
    }

    fn report(&self, report: cpclink_keymgr::audit::ApplianceReport) {
        tracing::info!("reporting to the authority: {report:?}");
        // A full queue is counted and logged by the agent.
        self.agent.report(report);
    }

    fn publish_metrics(&self, payload: Vec<u8>) {
        if let Err(e) = self.agent.publish_metrics(payload) {
            tracing::warn!("metrics not advertised: {e}");
        }
    }

    fn take_metrics(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.metrics)
    }

    fn own_id(&self) -> Option<String> {
        Some(self.agent.id().to_owned())
    }

    async fn shutdown(self) {
        self.agent.shutdown();
        tracing::info!("key agent {} stopped", self.agent.id());
    }
}

impl KeyPlane {
    fn publish(&mut self) {
        self.status.peers = self
            .slots
            .iter()
            .map(|(id, s)| {
                (
                    id.clone(),
                    PeerStatus {
                        peer: s.peer,
                        endpoint: s.endpoint,
                        active: s.active,
                        revoked: s.revoked,
                        prefixes: s.prefixes.clone(),
                        tx: s.workers.iter().map(|w| w.tx).collect(),
                    },
                )
            })
            .collect();
    }

    /// The peer's slot, made (with the next [`PeerId`]) if it has none yet.
    fn slot(&mut self, id: &str) -> &mut Slot {
        let next = PeerId(self.slots.len() as u32);
        let workers = self.workers;
        self.slots.entry(id.to_owned()).or_insert_with(|| Slot {
            peer: next,
            endpoint: None,
            active: false,
            revoked: false,
            prefixes: Vec::new(),
            workers: vec![WorkerSa::default(); workers],
        })
    }

    /// The first published endpoint of the engine's address family.
    fn endpoint_of(&self, endpoints: &[String]) -> Option<SocketAddr> {
        let v4 = self.engine.local_addr().is_ipv4();
        endpoints
            .iter()
            .filter_map(|e| e.parse::<SocketAddr>().ok())
            .find(|a| a.is_ipv4() == v4 && !a.ip().is_unspecified() && a.port() != 0)
    }

    /// Brings peers, endpoints and prefixes in line with the agent's directory copy.
    fn sync_directory(&mut self) -> KeyUpdate {
        let before = self.routes();
        let dir: Directory = self.agent.directory();
        let me = self.agent.id().to_owned();
        for (id, entry) in &dir.appliances {
            if *id == me {
                continue;
            }
            if !entry.joined && !entry.revoked {
                // Enrolled but never connected with its certificate: nobody answers for it.
                continue;
            }
            if entry.revoked || !dir.allows(&me, id) {
                let why = if entry.revoked {
                    "revoked"
                } else {
                    "no longer authorised"
                };
                self.drop_peer(id, why, entry.revoked);
                continue;
            }
            let Some(endpoint) = self.endpoint_of(&entry.endpoints) else {
                if self.unreachable.insert(id.clone()) {
                    tracing::warn!(
                        "peer {id} publishes no data-plane endpoint of this appliance's address family ({:?}); not sending to it",
                        entry.endpoints
                    );
                }
                continue;
            };
            self.unreachable.remove(id);
            let prefixes = entry.prefixes.clone();
            let slot = self.slot(id);
            if slot.revoked {
                continue;
            }
            let (peer, moved, was_active) =
                (slot.peer, slot.endpoint != Some(endpoint), slot.active);
            slot.endpoint = Some(endpoint);
            slot.active = true;
            slot.prefixes = prefixes;
            if !entry.control.is_empty() && self.told.insert(id.clone()) {
                // The peer may still seal with SAs a previous run of this appliance granted;
                // those died with it. Ask it to re-key now rather than when they expire.
                self.agent.announce_start_to(id);
            }
            let slot = self.slot(id);
            if moved || !was_active {
                tracing::info!(
                    "peer {id} ({peer:?}) at {endpoint}, serving {} prefix(es)",
                    slot.prefixes.len()
                );
                if let Err(e) = self.engine.set_peer(peer, PeerConfig { endpoint }) {
                    tracing::error!("the data plane refused peer {id}: {e}");
                }
            }
        }
        // Peers the directory no longer lists (a narrower view after a policy change).
        let gone: Vec<String> = self
            .slots
            .iter()
            .filter(|(id, s)| s.active && !dir.appliances.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.drop_peer(&id, "no longer listed", false);
        }
        // A change may have fixed what failed (a peer's control address appears once its
        // agent first reaches the authority): retry now rather than at the back-off's end.
        for slot in self.slots.values_mut() {
            slot.workers.iter_mut().for_each(|w| w.retry_at = None);
        }
        self.publish();
        self.fetch_missing();
        if self.routes() == before {
            KeyUpdate::Nothing
        } else {
            KeyUpdate::RoutesChanged
        }
    }

    /// Drops every SA with `id`, both ways; `revoked` makes it for good.
    fn drop_peer(&mut self, id: &str, why: &str, revoked: bool) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if !slot.active && (slot.revoked || !revoked) {
            return;
        }
        slot.active = false;
        slot.revoked |= revoked;
        slot.workers
            .iter_mut()
            .for_each(|w| (w.tx, w.due) = (None, false));
        let peer = slot.peer;
        tracing::info!("peer {id} ({peer:?}) {why}: dropping every SA with it");
        if let Err(e) = self.engine.revoke_peer(peer) {
            tracing::error!("the data plane did not take the revocation of {id}: {e}");
        }
        self.status.rx.retain(|_, p| p != id);
        self.status.sas.retain(|_, r| r.peer != id);
        self.publish();
    }

    /// Asks `id`'s agent for a transmit SA for `worker`.
    fn fetch(&mut self, id: &str, worker: usize) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let w = &mut slot.workers[worker];
        if !slot.active || w.pending {
            return;
        }
        (w.pending, w.due, w.retry_at) = (true, true, None);
        let (agent, results, settle) = (
            self.agent.clone(),
            self.fetched_tx.clone(),
            self.options.settle,
        );
        let peer = id.to_owned();
        tokio::spawn(async move {
            let outcome = match agent.request_sa(&peer).await {
                Ok(grant) => {
                    tokio::time::sleep(settle).await;
                    Fetched::Granted { worker, grant }
                }
                Err(e) => {
                    tracing::warn!(
                        "SA request to {peer} for worker {worker} failed: {e}; retrying in {RETRY:?}"
                    );
                    Fetched::Failed { peer, worker }
                }
            };
            let _ = results.send(outcome);
        });
    }

    /// Requests SAs for every worker of an authorised peer that has none.
    fn fetch_missing(&mut self) {
        let now = Instant::now();
        let wanted: Vec<(String, usize)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.active)
            .flat_map(|(id, s)| {
                s.workers
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.wants_sa(now))
                    .map(|(worker, _)| (id.clone(), worker))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (id, worker) in wanted {
            self.fetch(&id, worker);
        }
    }

    fn on_fetched(&mut self, outcome: Fetched) {
        match outcome {
            Fetched::Granted { worker, grant } => self.install_tx(worker, grant),
            Fetched::Failed { peer, worker } => {
                if let Some(slot) = self.slots.get_mut(&peer) {
                    let w = &mut slot.workers[worker];
                    (w.pending, w.retry_at) = (false, Some(Instant::now() + RETRY));
                }
            }
        }
    }

    fn install_tx(&mut self, worker: usize, grant: TxSaGrant) {
        let crypto = self.options.crypto;
        let Some(slot) = self.slots.get_mut(&grant.peer) else {
            return;
        };
        slot.workers[worker].pending = false;
        if !slot.active {
            tracing::info!(
                "SA {} towards {} arrived after the peer was dropped; not used",
                grant.spi,
                grant.peer
            );
            return;
        }
        let profile = SaProfile {
            suite: grant.suite,
            crypto,
            limits: limits_for(grant.expires),
        };
        match self
            .engine
            .install_tx_sa(worker, slot.peer, grant.spi, &grant.key, profile)
        {
            Ok(()) => {
                let w = &mut slot.workers[worker];
                w.due = std::mem::take(&mut w.again);
                let old = w.tx.replace(grant.spi);
                let lifetime = grant
                    .expires
                    .checked_duration_since(Instant::now())
                    .map(|d| d.as_secs());
                if let Some(old) = old {
                    self.status.sas.remove(&old);
                }
                self.status.sas.insert(
                    grant.spi,
                    crate::keys::SaRecord::now("tx", &grant.peer, worker, grant.spi, lifetime),
                );
                tracing::info!(
                    "worker {worker} sends to {} with SA {} (generation {}, epoch {}){}",
                    grant.peer,
                    grant.spi,
                    grant.spi.generation(),
                    grant.epoch,
                    old.map(|o| format!(", replacing {o}")).unwrap_or_default()
                );
            }
            Err(e) => {
                tracing::error!("the data plane refused SA {}: {e}", grant.spi);
                slot.workers[worker].retry_at = Some(Instant::now() + RETRY);
            }
        }
        self.publish();
    }

    fn on_sa_event(&mut self, event: SaEvent) -> KeyUpdate {
        match event {
            SaEvent::InstallTx(grant) => {
                // The peer rotated (or the SA nears its end): every worker moves to a fresh
                // SA, the first with this one; the old ones stay valid until the peer retires
                // them, one rotation later.
                let id = grant.peer.clone();
                let Some(slot) = self.slots.get_mut(&id).filter(|s| s.active) else {
                    return KeyUpdate::Nothing;
                };
                tracing::info!(
                    "peer {id} offered SA {} (epoch {}): moving all {} worker(s) to fresh SAs",
                    grant.spi,
                    grant.epoch,
                    self.workers
                );
                let first = &mut slot.workers[0];
                (first.again, first.pending) = (first.pending, true);
                let (results, settle) = (self.fetched_tx.clone(), self.options.settle);
                tokio::spawn(async move {
                    tokio::time::sleep(settle).await;
                    let _ = results.send(Fetched::Granted { worker: 0, grant });
                });
                for w in &mut slot.workers[1..] {
                    w.again |= w.pending;
                }
                for worker in 1..self.workers {
                    self.fetch(&id, worker);
                }
            }
            SaEvent::InstallRx {
                peer,
                spi,
                suite,
                key,
            } => {
                let mut update = KeyUpdate::Nothing;
                if !self.slots.contains_key(&peer) {
                    // Granted before this side saw the peer in the directory.
                    update = self.sync_directory();
                }
                let id = self.slot(&peer).peer;
                let profile = SaProfile {
                    suite,
                    crypto: self.options.crypto,
                    limits: SaLimits::default(),
                };
                match self.engine.install_rx_sa(id, spi, &key, profile) {
                    Ok(()) => {
                        tracing::info!(
                            "worker {} accepts SA {spi} from {peer} (generation {})",
                            self.engine.rx_worker(spi),
                            spi.generation()
                        );
                        self.status.sas.insert(
                            spi,
                            crate::keys::SaRecord::now(
                                "rx",
                                &peer,
                                self.engine.rx_worker(spi),
                                spi,
                                None,
                            ),
                        );
                        self.status.rx.insert(spi, peer);
                    }
                    Err(e) => tracing::error!("the data plane refused receive SA {spi}: {e}"),
                }
                self.publish();
                return update;
            }
            SaEvent::RetireRx { spis } => {
                for spi in &spis {
                    if let Err(e) = self.engine.retire_rx_sa(*spi) {
                        tracing::error!("retiring receive SA {spi}: {e}");
                    }
                }
                tracing::info!(
                    "retired {} receive SA(s) of the overwritten generation: {}",
                    spis.len(),
                    spis.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                for spi in spis {
                    self.status.rx.remove(&spi);
                    self.status.sas.remove(&spi);
                    self.status.retired_rx.insert(spi);
                }
            }
            SaEvent::RetirePeer { peer } => {
                self.drop_peer(&peer, "retired", true);
                return KeyUpdate::RoutesChanged;
            }
            SaEvent::Revoked { appliance } => {
                if appliance == self.agent.id() {
                    tracing::error!(
                        "this appliance ({appliance}) was revoked: peers refuse its traffic and SA requests"
                    );
                } else {
                    self.drop_peer(&appliance, "revoked", true);
                    return KeyUpdate::RoutesChanged;
                }
            }
            SaEvent::Rotated { generation, epoch } => tracing::info!(
                "master keys rotated: generation {generation} current, epoch {epoch}"
            ),
            SaEvent::Metrics {
                peer,
                advertisement,
            } => {
                // Bounded: the owner drains these after every input it handles.
                if self.metrics.len() < 1024 {
                    self.metrics.push((peer, advertisement));
                }
            }
        }
        KeyUpdate::Nothing
    }
}

/// Transmit SA limits for a grant valid until `expires`: replaced at four fifths of its
/// life, unusable at its end, and never beyond the data plane's own limits.
fn limits_for(expires: Instant) -> SaLimits {
    let d = SaLimits::default();
    let left = expires.saturating_duration_since(Instant::now());
    let soft = d.soft_lifetime.min(left * 4 / 5);
    SaLimits {
        soft_lifetime: soft,
        hard_lifetime: d.hard_lifetime.min(left).max(soft),
        ..d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sa_limits_follow_the_grant_and_stay_within_the_data_plane() {
        let d = SaLimits::default();
        let long = limits_for(Instant::now() + Duration::from_secs(86_400));
        assert_eq!(long, d);
        let short = limits_for(Instant::now() + Duration::from_secs(10));
        assert!(short.soft_lifetime <= Duration::from_secs(8));
        assert!(short.soft_lifetime > Duration::from_secs(7));
        assert!(short.hard_lifetime <= Duration::from_secs(10));
        assert!(short.hard_lifetime >= short.soft_lifetime);
        assert_eq!(short.hard_packets, d.hard_packets);
        let spent = limits_for(Instant::now() - Duration::from_secs(1));
        assert_eq!(spent.hard_lifetime, Duration::ZERO);
    }
}
