//! The path controller: services placed by compute, over SRv6 paths.
//!
//! Owned by the appliance's owner task (no locks). On every accepted metric change and on
//! each freshness sweep it runs the CATS selector for every service and applies the
//! decision, both halves together:
//! - the data plane's affinity table for the service's prefixes (busy buckets keep their
//!   site while it is reachable, idle ones follow the choice; the tables are swapped whole
//!   by control message, nothing locks on the packet path);
//! - the outer path to each peer: a kernel seg6 encap route with HMAC for the peer's
//!   data-plane address, reconciled so only cpclink's routes change.
//!
//! Metrics: this centre's scheduler writes a file ([`MetricsConfig::file`]); the controller
//! turns it into one advertisement per hosted service, which the key source signs with the
//! appliance's key-plane identity and carries to the peers allowed to talk to it. What peers
//! advertise arrives authenticated by that signature; the controller checks that each
//! speaks only of itself, then applies freshness, order and rate control (CATS R4, R11).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use cpclink_dataplane::engine::PeerId;
use cpclink_dataplane::route::{AffinityTable, BucketActivity};
use cpclink_srv6::metrics::{Advertisement, Ingest, MetricFault, RateControl, Subject};
use cpclink_srv6::program::{Programmer, Seg6LocalAction, Seg6Route};
use cpclink_srv6::select::{PathSelector, Reason, SelectorConfig};
use cpclink_srv6::topology::{LinkFile, SiteFile, SiteMetricsFile, TopologyFile};
use cpclink_srv6::{HmacKey, MetricStore, Topology};
use serde::{Deserialize, Serialize};

use crate::config::{ApplianceConfig, MetricsConfig, PathsConfig, ServiceConfig};

/// Decisions kept for operators.
const DECISIONS_KEPT: usize = 64;

/// The selector's topology for one service: this node as the ingress, the transits, the
/// sites hosting the service (no metrics until they advertise), the links between them
/// and the candidate paths to those sites.
pub fn topology(
    paths: &PathsConfig,
    service: &ServiceConfig,
) -> Result<Topology, cpclink_srv6::Error> {
    let sites: Vec<SiteFile> = paths
        .sites
        .iter()
        .filter(|(peer, _, _)| service.sites.contains(peer))
        .map(|(peer, sid, zone)| SiteFile {
            name: peer.clone(),
            sid: sid.to_string(),
            zone: zone.clone(),
            available: true,
            // Expired from the start: a site is a candidate only once it advertises.
            metrics: SiteMetricsFile {
                ttl_ms: Some(0),
                source: Some(peer.clone()),
                ..SiteMetricsFile::default()
            },
        })
        .collect();
    let known = |n: &str| {
        n == paths.node
            || paths.transits.iter().any(|t| t.name == n)
            || sites.iter().any(|s| s.name == n)
    };
    let links = paths
        .links
        .iter()
        .filter(|l| known(&l.from) && known(&l.to))
        .map(|l| LinkFile {
            from: l.from.clone(),
            to: l.to.clone(),
            latency_ms: l.latency_ms,
            bandwidth_mbps: l.bandwidth_mbps,
            utilisation: 0.0,
            loss: 0.0,
            up: true,
        })
        .collect();
    let candidates = paths
        .candidates
        .iter()
        .filter(|c| service.sites.contains(&c.site))
        .cloned()
        .collect();
    Topology::from_model(
        TopologyFile {
            service: service.request.clone(),
            ingress: paths.node.clone(),
            now_ms: 0,
            transits: paths.transits.clone(),
            sites,
            links,
            paths: candidates,
        },
        "[paths]",
    )
}

/// What travels between appliances: one service's metrics at one site, the site being the
/// sending appliance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsPayload {
    /// The service.
    pub service: String,
    /// The advertisement (source and subject: the sending appliance).
    pub advertisement: Advertisement,
}

/// What the scheduler writes: the services this centre hosts and their compute metrics.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct LocalMetricsFile {
    #[serde(default)]
    service: Vec<LocalService>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct LocalService {
    name: String,
    cpu_load: Option<f64>,
    gpus_free: Option<u32>,
    compute_delay_ms: Option<f64>,
    l2: Option<f64>,
}

/// What the network's telemetry writes: link state.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    #[serde(default)]
    link: Vec<NetworkLink>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct NetworkLink {
    from: String,
    to: String,
    #[serde(default = "yes")]
    up: bool,
    latency_ms: Option<f64>,
    utilisation: Option<f64>,
    loss: Option<f64>,
}

fn yes() -> bool {
    true
}

/// Counters of metric advertisements, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MetricCounters {
    /// Advertisements this appliance sent (one per service per peer round).
    pub advertised: u64,
    /// Accepted: new or significantly changed values.
    pub accepted: u64,
    /// Refreshed freshness without a significant change.
    pub refreshed: u64,
    /// Dropped by rate control (too frequent).
    pub rate_limited: u64,
    /// A peer speaking of another site, or an undecodable payload.
    pub forged: u64,
    /// Past their TTL on arrival.
    pub stale: u64,
    /// Older than what is held (replayed or reordered).
    pub replayed: u64,
    /// For a service this appliance does not place, or a non-finite value.
    pub ignored: u64,
}

/// One decision, as operators read it.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The service.
    pub service: String,
    /// The chosen site, or none.
    pub site: Option<String>,
    /// The chosen path, `node → t1 → site`.
    pub path: Option<String>,
    /// The segment list.
    pub segments: Option<String>,
    /// What moved: initial, improved, failover, withdrawn, …
    pub reason: String,
    /// The selector's full explanation (or why nothing was feasible).
    pub explanation: String,
}

/// One service's placement now.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// Its prefixes.
    pub prefixes: Vec<String>,
    /// The current choice.
    pub site: Option<String>,
    /// The path to it.
    pub path: Option<String>,
    /// Buckets per site (`none`: dropped, counted as tx_no_site).
    pub buckets: BTreeMap<String, usize>,
}

/// The controller's state for operators.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PathsStatus {
    /// Services and where they go.
    pub services: Vec<ServiceStatus>,
    /// The segment list each peer's outer packets follow.
    pub peer_paths: BTreeMap<String, String>,
    /// The last decisions, oldest first.
    pub decisions: Vec<DecisionRecord>,
    /// Metric advertisements by outcome.
    pub metrics: MetricCounters,
    /// Why the kernel's seg6 routes are not programmed, if they are not.
    pub programming: Option<String>,
    /// Selector runs since start.
    pub decisions_made: u64,
    /// Time spent deciding, microseconds, since start.
    pub decision_micros: u64,
    /// Changes of a service's placement since start.
    pub switches: u64,
}

struct ServiceState {
    config: ServiceConfig,
    topology: Topology,
    selector: PathSelector,
    store: MetricStore,
    activity: Arc<BucketActivity>,
    /// Site index per bucket, as last handed to the data plane.
    buckets: Vec<Option<usize>>,
    /// (site, path) of the last decision; None when nothing was feasible.
    choice: Option<(usize, usize)>,
    decided: bool,
}

/// The path controller.
pub struct PathController {
    paths: PathsConfig,
    metrics: Option<MetricsConfig>,
    services: Vec<ServiceState>,
    counters: MetricCounters,
    decisions: VecDeque<DecisionRecord>,
    /// Selector runs, their time in all (µs) and placement changes, since start.
    decisions_made: u64,
    decision_micros: u64,
    switches: u64,
    /// The local metric file as last read, and when it was last advertised.
    local: Option<(SystemTime, LocalMetricsFile)>,
    last_advertised_ms: u64,
    network: Option<(SystemTime, NetworkFile)>,
    /// Link state as of the last decision: the network file, then local carriers.
    links: Vec<NetworkLink>,
    programmer: Result<Programmer, String>,
    /// The segment list (and first-hop device) programmed per peer.
    peer_paths: BTreeMap<String, (Vec<Ipv6Addr>, String)>,
    /// The outer source of encapsulated packets: the data-plane address, when IPv6.
    tunnel_source: Option<Ipv6Addr>,
    /// When the kernel's routes were last reconciled: they are again every
    /// [`REPAIR_EVERY`] even when nothing changed (a link going down flushes its routes).
    reconciled: Option<Instant>,
    /// The last programming error, logged once.
    last_error: Option<String>,
    /// Every site peer's data-plane address as last reported (kept while unreported).
    endpoints: BTreeMap<String, Ipv6Addr>,
    /// The addresses the kernel's routes were last programmed for.
    programmed_endpoints: BTreeMap<String, Ipv6Addr>,
}

/// How often the kernel's seg6 routes are reconciled when no decision changed them.
const REPAIR_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl std::fmt::Debug for PathController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathController")
            .field("services", &self.services.len())
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch: advertisements carry wall-clock time.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PathController {
    /// A controller for `config`'s `[paths]`, or None when it has none.
    pub fn new(config: &ApplianceConfig) -> Option<Self> {
        let paths = config.paths.clone()?;
        let mut this = Self {
            paths,
            metrics: config.metrics.clone(),
            services: Vec::new(),
            counters: MetricCounters::default(),
            decisions_made: 0,
            decision_micros: 0,
            switches: 0,
            decisions: VecDeque::new(),
            local: None,
            last_advertised_ms: 0,
            network: None,
            links: Vec::new(),
            programmer: Programmer::new().map_err(|e| e.to_string()),
            peer_paths: BTreeMap::new(),
            reconciled: None,
            last_error: None,
            endpoints: BTreeMap::new(),
            programmed_endpoints: BTreeMap::new(),
            tunnel_source: match config.listen.ip() {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            },
        };
        this.set_services(&config.services, false);
        this.program_node();
        Some(this)
    }

    /// The sweep period.
    pub fn sweep_period(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.paths.sweep_ms)
    }

    /// Takes a reloaded configuration: services that did not change keep their selector,
    /// metrics and bucket activity (established flows stay); new ones start fresh.
    pub fn reload(&mut self, config: &ApplianceConfig) -> bool {
        let Some(paths) = config.paths.clone() else {
            return false;
        };
        // Selectors, metrics and bucket state are kept only for services whose topology is
        // what it was: a changed [paths] or [metrics] rebuilds every service.
        let topology_same = paths == self.paths && config.metrics == self.metrics;
        let changed = !topology_same
            || config.services.len() != self.services.len()
            || config
                .services
                .iter()
                .zip(&self.services)
                .any(|(a, b)| *a != b.config);
        if changed {
            self.paths = paths;
            self.metrics = config.metrics.clone();
            self.local = None;
            self.set_services(&config.services, topology_same);
            self.program_node();
        }
        changed
    }

    /// Builds the services' state; with `keep`, a service configured as before keeps its
    /// state whole. A rebuilt service keeps its bucket activity (flows stay marked busy).
    fn set_services(&mut self, services: &[ServiceConfig], keep: bool) {
        let mut old: Vec<ServiceState> = std::mem::take(&mut self.services);
        for s in services {
            if let Some(i) = old.iter().position(|o| keep && o.config == *s) {
                self.services.push(old.swap_remove(i));
                continue;
            }
            let topology = match topology(&self.paths, s) {
                Ok(t) => t,
                Err(e) => {
                    // Validated when the configuration was read; kept only as a guard.
                    tracing::error!("service {}: {e}; not placed", s.name);
                    continue;
                }
            };
            let selector = PathSelector::new(SelectorConfig {
                hysteresis: self.paths.hysteresis,
                hold_down_ms: self.paths.hold_down_ms,
                buckets: self.paths.buckets,
                bucket_idle_ms: self.paths.bucket_idle_ms,
                ..SelectorConfig::default()
            });
            let activity = old
                .iter()
                .find(|o| o.config.name == s.name && o.activity.len() == self.paths.buckets)
                .map(|o| o.activity.clone())
                .unwrap_or_else(|| BucketActivity::new(self.paths.buckets));
            self.services.push(ServiceState {
                config: s.clone(),
                topology,
                selector,
                store: MetricStore::new(RateControl {
                    min_interval_ms: self.metrics.as_ref().map_or(500, |m| m.min_interval_ms),
                    ..RateControl::default()
                }),
                activity,
                buckets: vec![None; self.paths.buckets],
                choice: None,
                decided: false,
            });
        }
    }

    /// Programs what does not depend on decisions: the SRH HMAC key, the tunnel source and
    /// this appliance's decapsulation SID.
    fn program_node(&mut self) {
        let Ok(p) = self.programmer.as_mut() else {
            return;
        };
        if let Some(source) = self.tunnel_source {
            if let Err(e) = p.set_tunnel_source(source) {
                tracing::error!("seg6 tunnel source {source} not set: {e}");
            }
        }
        if let Some((id, secret)) = &self.paths.hmac {
            let applied = HmacKey::new(*id, secret.clone())
                .and_then(|k| p.reconcile_hmac_keys(std::slice::from_ref(&k)));
            if let Err(e) = applied {
                tracing::error!("SRH HMAC key {id} not installed: {e}");
            }
        }
    }

    /// Advertisements of this centre's metrics due now: when the scheduler's file changed,
    /// and every third of the TTL so peers never see them expire while it stands. A file
    /// that is gone or unreadable stops the advertisements (peers withdraw this site when
    /// the last ones expire). Each is a [`MetricsPayload`], serialised.
    pub fn due_advertisements(&mut self, node_id: &str, now: u64) -> Vec<Vec<u8>> {
        let Some(m) = &self.metrics else {
            return Vec::new();
        };
        let modified = std::fs::metadata(&m.file).and_then(|md| md.modified()).ok();
        let reread = match (&self.local, modified) {
            (_, None) => {
                if self.local.take().is_some() {
                    tracing::warn!(
                        "{} is gone: advertising nothing; peers withdraw this site as its metrics expire",
                        m.file.display()
                    );
                }
                return Vec::new();
            }
            (Some((at, _)), Some(t)) => *at != t,
            (None, Some(_)) => true,
        };
        let ttl = m.ttl_ms;
        if reread {
            let parsed = std::fs::read_to_string(&m.file)
                .map_err(|e| e.to_string())
                .and_then(|t| toml::from_str::<LocalMetricsFile>(&t).map_err(|e| e.to_string()));
            match parsed {
                Ok(file) => {
                    if self.local.as_ref().map(|(_, f)| f) != Some(&file) {
                        tracing::info!("{}: {:?}", m.file.display(), file.service);
                    }
                    self.local = Some((modified.unwrap_or(SystemTime::UNIX_EPOCH), file));
                }
                Err(e) => {
                    tracing::warn!(
                        "{}: {e}; keeping the values read before (fix the file: [[service]] name, cpu_load, gpus_free, compute_delay_ms)",
                        m.file.display()
                    );
                    if let Some((at, _)) = &mut self.local {
                        *at = modified.unwrap_or(*at);
                    }
                }
            }
        } else if now.saturating_sub(self.last_advertised_ms) < ttl / 3 {
            return Vec::new();
        }
        let Some((_, file)) = &self.local else {
            return Vec::new();
        };
        self.last_advertised_ms = now;
        file.service
            .iter()
            .filter_map(|s| {
                let mut values = BTreeMap::new();
                let mut put = |k: &str, v: Option<f64>| {
                    if let Some(v) = v {
                        values.insert(k.to_string(), v);
                    }
                };
                put("cpu_load", s.cpu_load);
                put("gpus_free", s.gpus_free.map(f64::from));
                put("compute_delay_ms", s.compute_delay_ms);
                put("l2", s.l2);
                let payload = MetricsPayload {
                    service: s.name.clone(),
                    advertisement: Advertisement {
                        source: node_id.to_owned(),
                        subject: Subject::Site(node_id.to_owned()),
                        values,
                        timestamp_ms: now,
                        ttl_ms: ttl,
                        mac: [0; 32],
                    },
                };
                self.counters.advertised += 1;
                serde_json::to_vec(&payload).ok()
            })
            .collect()
    }

    /// Takes an advertisement `peer` sent (its signature already checked by the key
    /// plane). True when it changed what is held, so a decision is due.
    pub fn ingest(&mut self, peer: &str, bytes: &[u8], now: u64) -> bool {
        let Ok(payload) = serde_json::from_slice::<MetricsPayload>(bytes) else {
            self.counters.forged += 1;
            tracing::warn!("metrics from {peer}: not a metrics payload; dropped");
            return false;
        };
        let adv = &payload.advertisement;
        //= https://datatracker.ietf.org/doc/html/draft-ietf-cats-usecases-requirements#section-5.5
        //# R23: rogue nodes cannot take part: an appliance speaks only of its own site.
        if adv.source != peer || adv.subject != Subject::Site(peer.to_owned()) {
            self.counters.forged += 1;
            tracing::warn!(
                "metrics from {peer} claim to come from {:?} about {:?}; dropped",
                adv.source,
                adv.subject
            );
            return false;
        }
        let Some(s) = self
            .services
            .iter_mut()
            .find(|s| s.config.name == payload.service && s.config.sites.iter().any(|p| p == peer))
        else {
            self.counters.ignored += 1;
            return false;
        };
        let known = s.store.get(&adv.subject).is_some();
        match s.store.ingest_verified(adv, now) {
            Ok(Ingest::Accepted) => {
                self.counters.accepted += 1;
                if !known {
                    tracing::info!(
                        "service {}: {peer} advertises {:?} (TTL {} ms)",
                        payload.service,
                        adv.values,
                        adv.ttl_ms
                    );
                }
                true
            }
            Ok(Ingest::Refreshed) => {
                self.counters.refreshed += 1;
                // Freshness moved: a site withdrawn for stale metrics may be back.
                true
            }
            Ok(Ingest::RateLimited) => {
                self.counters.rate_limited += 1;
                false
            }
            Err(cpclink_srv6::Error::MetricRejected { fault, .. }) => {
                match fault {
                    MetricFault::Stale => self.counters.stale += 1,
                    MetricFault::Replayed => self.counters.replayed += 1,
                    MetricFault::Forged | MetricFault::UnknownSource => self.counters.forged += 1,
                    MetricFault::NotFinite => self.counters.ignored += 1,
                }
                tracing::debug!("metrics from {peer} for {}: {fault}", payload.service);
                false
            }
            Err(_) => false,
        }
    }

    /// Link state now: the network telemetry's file, then this node's own devices (a
    /// device without carrier is a link down, whatever the file says).
    fn refresh_links(&mut self) {
        if let Some(path) = self.metrics.as_ref().and_then(|m| m.network_file.clone()) {
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            if modified != self.network.as_ref().map(|(t, _)| *t) {
                let parsed = std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| toml::from_str::<NetworkFile>(&t).map_err(|e| e.to_string()));
                match (parsed, modified) {
                    (Ok(file), Some(at)) => self.network = Some((at, file)),
                    (Err(e), Some(at)) => {
                        tracing::warn!("{}: {e}; link state as before", path.display());
                        if let Some((t, _)) = &mut self.network {
                            *t = at;
                        }
                    }
                    (_, None) => self.network = None,
                }
            }
        }
        let mut links = self
            .network
            .as_ref()
            .map(|(_, f)| f.link.clone())
            .unwrap_or_default();
        for l in &self.paths.links {
            let Some(dev) = &l.device else { continue };
            if !has_carrier(dev) {
                links.push(NetworkLink {
                    from: l.from.clone(),
                    to: l.to.clone(),
                    up: false,
                    latency_ms: None,
                    utilisation: None,
                    loss: None,
                });
            }
        }
        if links != self.links {
            // Routes over a device that went down were flushed by the kernel, and the
            // decapsulation SID may need another device: reconcile at once.
            self.reconciled = None;
        }
        self.links = links;
    }

    /// Runs every selector against fresh metrics and link state and updates the bucket
    /// tables. True when a table changed (the route table must be rebuilt). `keyed` says
    /// whether a site's appliance is keyed now: one that is not (revoked, or not yet
    /// keyed) is down, whatever its metrics say.
    pub fn decide(&mut self, now: u64, keyed: impl Fn(&str) -> bool) -> bool {
        self.refresh_links();
        let links = &self.links;
        let mut changed = false;
        for s in &mut self.services {
            for gone in s.store.expire(now) {
                tracing::warn!(
                    "service {}: metrics of {gone:?} expired; withdrawn until it advertises again",
                    s.config.name
                );
            }
            s.store.apply(&mut s.topology);
            for site in &mut s.topology.sites {
                site.available = keyed(&site.name);
            }
            for l in &mut s.topology.links {
                l.metrics.up = true;
                for n in links.iter().filter(|n| {
                    (n.from == l.from && n.to == l.to) || (n.from == l.to && n.to == l.from)
                }) {
                    l.metrics.up &= n.up;
                    if let Some(v) = n.latency_ms {
                        l.metrics.latency_ms = v.max(0.0);
                    }
                    if let Some(v) = n.utilisation {
                        l.metrics.utilisation = v.clamp(0.0, 1.0);
                    }
                    if let Some(v) = n.loss {
                        l.metrics.loss = v.clamp(0.0, 1.0);
                    }
                }
            }
            let started = Instant::now();
            let decision = s.selector.decide(&s.topology, now);
            self.decisions_made += 1;
            self.decision_micros += started.elapsed().as_micros() as u64;
            let (choice, record) = match &decision {
                Ok(d) => (
                    Some((d.site_index, d.path_index)),
                    DecisionRecord {
                        at_ms: now,
                        service: s.config.name.clone(),
                        site: Some(d.site.clone()),
                        path: Some(s.topology.describe_path(d.path_index)),
                        segments: Some(d.segments.to_string()),
                        reason: reason_word(&d.explanation.reason).into(),
                        explanation: d.explanation.to_string(),
                    },
                ),
                Err(e) => (
                    None,
                    DecisionRecord {
                        at_ms: now,
                        service: s.config.name.clone(),
                        site: None,
                        path: None,
                        segments: None,
                        reason: "withdrawn".into(),
                        explanation: e.to_string(),
                    },
                ),
            };
            if choice != s.choice || !s.decided {
                let level_info = choice.is_some();
                if level_info {
                    tracing::info!(
                        "service {}: {} → {} ({})\n{}",
                        record.service,
                        record.site.as_deref().unwrap_or("-"),
                        record.path.as_deref().unwrap_or("-"),
                        record.reason,
                        record.explanation
                    );
                } else {
                    tracing::warn!(
                        "service {}: no feasible site; its packets are dropped and counted (tx_no_site): {}",
                        record.service,
                        record.explanation
                    );
                }
                if self.decisions.len() == DECISIONS_KEPT {
                    self.decisions.pop_front();
                }
                self.decisions.push_back(record);
                if s.decided {
                    self.switches += 1;
                }
                s.choice = choice;
                s.decided = true;
            }
            let buckets = s.selector.assign_buckets(&s.activity.take(), now);
            if buckets != s.buckets {
                s.buckets = buckets;
                changed = true;
            }
        }
        changed
    }

    /// The service routes for the data plane: each prefix with its affinity table.
    pub fn service_routes(
        &self,
        peer_id: impl Fn(&str) -> Option<PeerId>,
    ) -> Vec<(IpAddr, u8, AffinityTable)> {
        let mut out = Vec::new();
        for s in &self.services {
            let peers: Vec<Option<PeerId>> = s
                .buckets
                .iter()
                .map(|b| b.and_then(|site| peer_id(&s.topology.sites[site].name)))
                .collect();
            for p in &s.config.prefixes {
                out.push((
                    p.addr(),
                    p.prefix_len(),
                    AffinityTable::new(peers.clone(), s.activity.clone()),
                ));
            }
        }
        out
    }

    /// Programs the outer path to every peer whose data-plane address is IPv6: the path of
    /// the service decision using it, else the lowest-latency candidate whose links are up.
    /// Returns how long the kernel took, when something changed.
    pub fn program_paths(
        &mut self,
        endpoints: &BTreeMap<String, Ipv6Addr>,
    ) -> Option<std::time::Duration> {
        // A peer's address stays known while the key source briefly reports none (it
        // republishes its peers as SAs change): forgetting it would delete the peer's
        // steering route and its guard until the next repair, and the peer's packets would
        // leave along the plain underlay meanwhile. A new address replaces the old.
        let mut known = std::mem::take(&mut self.endpoints);
        known.extend(endpoints.iter().map(|(p, a)| (p.clone(), *a)));
        known.retain(|p, _| self.paths.sites.iter().any(|(site, _, _)| site == p));
        let endpoints_changed = known != self.programmed_endpoints;
        self.endpoints = known;
        let mut desired: BTreeMap<String, (Vec<Ipv6Addr>, String)> = BTreeMap::new();
        for s in &self.services {
            let mut in_use: Vec<usize> = s.buckets.iter().flatten().copied().collect();
            in_use.sort_unstable();
            in_use.dedup();
            for site in in_use {
                let peer = &s.topology.sites[site].name;
                if desired.contains_key(peer) {
                    continue;
                }
                if let Some(path) = s.selector.path_for_site(site) {
                    if let Some(dev) = self.first_hop_device(&s.topology, path) {
                        let segs = s.topology.paths[path]
                            .segments
                            .sids()
                            .iter()
                            .map(|x| x.0)
                            .collect();
                        desired.insert(peer.clone(), (segs, dev));
                    }
                }
            }
        }
        for (peer, sid, _) in &self.paths.sites {
            if desired.contains_key(peer) {
                continue;
            }
            if let Some(best) = self.network_best(peer, *sid) {
                desired.insert(peer.clone(), best);
            }
        }
        let due = self
            .reconciled
            .is_none_or(|at| at.elapsed() >= REPAIR_EVERY);
        if desired == self.peer_paths && !due && !endpoints_changed {
            return None;
        }
        let started = Instant::now();
        let p = self.programmer.as_mut().ok()?;
        let hmac = self.paths.hmac.as_ref().map(|(id, _)| *id);
        let mut routes = Vec::new();
        let local_device = self
            .paths
            .links
            .iter()
            .filter(|l| l.from == self.paths.node || l.to == self.paths.node)
            .filter_map(|l| l.device.as_deref())
            .find(|dev| has_carrier(dev));
        if let (Some(sid), Some(dev)) = (self.paths.sid, local_device) {
            // The decapsulation SID: End.DT6 into the local table, so what it decapsulates
            // is delivered to this host only (never forwarded on; and the main table's
            // route for an address on `lo` is a unicast one, which would not deliver). On
            // one of this node's links: the kernel wants a device, any of them will do.
            match p.link_index(dev) {
                Ok(oif) => routes.push(Seg6Route::local_sid(
                    sid,
                    Seg6LocalAction::EndDt6 { table: 255 },
                    oif,
                )),
                Err(e) => tracing::warn!("decapsulation SID {sid}: device {dev}: {e}"),
            }
        }
        for (peer, (segs, dev)) in &desired {
            let Some(addr) = self.endpoints.get(peer) else {
                continue;
            };
            if !has_carrier(dev) {
                continue;
            }
            let oif = match p.link_index(dev) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!("path to {peer}: device {dev}: {e}");
                    continue;
                }
            };
            let list = cpclink_srv6::SegmentList::new(
                segs.iter().map(|a| cpclink_srv6::Sid(*a)).collect(),
            );
            match list.and_then(|l| Seg6Route::steer(*addr, 128, &l, hmac, oif)) {
                Ok(r) => routes.push(r),
                Err(e) => tracing::warn!("path to {peer}: {e}"),
            }
        }
        // Behind every peer's steering route a guard: when the steering route is gone (a
        // link going down flushes the routes over its device at once), packets to the peer
        // are dropped until the next sweep re-steers, never sent along a plain route.
        for (peer, _, _) in &self.paths.sites {
            if let Some(addr) = self.endpoints.get(peer) {
                routes.push(Seg6Route::guard(*addr, 128));
            }
        }
        match p.reconcile_routes(&routes) {
            Ok(report) => {
                let took = started.elapsed();
                self.reconciled = Some(Instant::now());
                self.last_error = None;
                let changed = desired != self.peer_paths
                    || report.added + report.replaced + report.removed > 0;
                for (peer, (segs, dev)) in &desired {
                    if self.peer_paths.get(peer) != Some(&(segs.clone(), dev.clone())) {
                        tracing::info!(
                            "outer path to {peer}: segments {} via {dev} ({:?} to program; {report:?})",
                            segs.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(","),
                            took
                        );
                    }
                }
                self.peer_paths = desired;
                self.programmed_endpoints = self.endpoints.clone();
                changed.then_some(took)
            }
            Err(e) => {
                let e = e.to_string();
                if self.last_error.as_ref() != Some(&e) {
                    tracing::error!("seg6 routes not programmed: {e} (retrying every sweep)");
                    self.last_error = Some(e);
                }
                None
            }
        }
    }

    fn first_hop_device(&self, topo: &Topology, path: usize) -> Option<String> {
        let first = topo.paths[path].links.first()?;
        let l = &topo.links[*first];
        self.paths
            .links
            .iter()
            .find(|c| (c.from == l.from && c.to == l.to) || (c.from == l.to && c.to == l.from))
            .and_then(|c| c.device.clone())
    }

    /// The lowest-latency candidate to `peer` whose links are all up (for peers no service
    /// decision steers: return traffic, the key plane's own traffic).
    fn network_best(&self, peer: &str, site_sid: Ipv6Addr) -> Option<(Vec<Ipv6Addr>, String)> {
        let link = |a: &str, b: &str| {
            self.paths
                .links
                .iter()
                .find(|l| (l.from == a && l.to == b) || (l.from == b && l.to == a))
        };
        let is_down = |a: &str, b: &str| {
            self.links
                .iter()
                .any(|l| !l.up && ((l.from == a && l.to == b) || (l.from == b && l.to == a)))
        };
        self.paths
            .candidates
            .iter()
            .filter(|c| c.site == peer)
            .filter_map(|c| {
                let hops: Vec<&str> = std::iter::once(self.paths.node.as_str())
                    .chain(c.via.iter().map(String::as_str))
                    .chain(std::iter::once(peer))
                    .collect();
                let mut latency = 0.0;
                for w in hops.windows(2) {
                    let l = link(w[0], w[1])?;
                    if is_down(w[0], w[1]) {
                        return None;
                    }
                    latency += l.latency_ms;
                }
                let dev = link(hops[0], hops[1])?.device.clone()?;
                let mut segs: Vec<Ipv6Addr> = c
                    .via
                    .iter()
                    .filter_map(|v| {
                        self.paths
                            .transits
                            .iter()
                            .find(|t| t.name == *v)?
                            .sid
                            .parse()
                            .ok()
                    })
                    .collect();
                segs.push(site_sid);
                Some((latency, segs, dev))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, segs, dev)| (segs, dev))
    }

    /// What operators read.
    pub fn status(&self) -> PathsStatus {
        PathsStatus {
            services: self
                .services
                .iter()
                .map(|s| {
                    let mut buckets = BTreeMap::new();
                    for b in &s.buckets {
                        let name = b.map_or_else(
                            || "none".to_owned(),
                            |i| s.topology.sites[i].name.clone(),
                        );
                        *buckets.entry(name).or_insert(0) += 1;
                    }
                    ServiceStatus {
                        name: s.config.name.clone(),
                        prefixes: s.config.prefixes.iter().map(ToString::to_string).collect(),
                        site: s
                            .choice
                            .map(|(site, _)| s.topology.sites[site].name.clone()),
                        path: s.choice.map(|(_, p)| s.topology.describe_path(p)),
                        buckets,
                    }
                })
                .collect(),
            peer_paths: self
                .peer_paths
                .iter()
                .map(|(p, (segs, dev))| {
                    (
                        p.clone(),
                        format!(
                            "{} via {dev}",
                            segs.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                    )
                })
                .collect(),
            decisions: self.decisions.iter().cloned().collect(),
            metrics: self.counters.clone(),
            programming: self.programmer.as_ref().err().cloned(),
            decisions_made: self.decisions_made,
            decision_micros: self.decision_micros,
            switches: self.switches,
        }
    }
}

/// Whether a local device is up with carrier (a veth whose peer went down has none).
fn has_carrier(dev: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/carrier")).is_ok_and(|c| c.trim() == "1")
}

fn reason_word(r: &Reason) -> &'static str {
    match r {
        Reason::Initial => "initial",
        Reason::StillBest => "still best",
        Reason::Improved { .. } => "improved",
        Reason::Held { .. } => "held",
        Reason::Failover { .. } => "failover",
    }
}

#[cfg(test)]
mod tests;
