//! `[paths]`, `[[services]]` and `[metrics]`: what the path controller steers.
//!
//! ```toml
//! [paths]
//! node = "dc1"                        # this centre's node in the topology (the ingress)
//! sid = "fd00:200:1::100"             # optional: this appliance's decapsulation SID
//!                                     # (End.DT6 into the local table), programmed at start
//! hmac_key_id = 1                     # SRH HMAC key the kernel signs with and checks
//! hmac_secret_file = "srh-hmac.key"   # the key's secret, hex (1 to 64 bytes)
//! sweep_ms = 250                      # freshness sweep and bucket-activity period
//! buckets = 1024                      # affinity buckets per service
//! bucket_idle_ms = 5000               # a bucket unused this long follows the choice
//! hysteresis = 0.1                    # a challenger must be this much better …
//! hold_down_ms = 2000                 # … and the choice this old, before it moves
//!
//! [[paths.transit]]                   # transit routers with their End SIDs
//! name = "t1"
//! sid = "fd00:100:1::1"
//!
//! [[paths.site]]                      # peer appliances that may host services
//! peer = "dc2"                        # the peer's appliance id
//! sid = "fd00:200:2::100"             # its decapsulation SID (ends every path to it)
//! zone = "eu"                         # optional data zone
//!
//! [[paths.link]]                      # links between nodes, with their metrics
//! from = "dc1"
//! to = "t1"
//! latency_ms = 1.0
//! bandwidth_mbps = 10000              # optional
//! device = "t1"                       # this node's interface on it: the first hop of
//!                                     # paths over it, and its carrier is the link's state
//!
//! [[paths.candidate]]                 # candidate SR policies: a site and its transits
//! site = "dc2"
//! via = ["t1"]
//!
//! [[services]]
//! name = "echo"
//! prefixes = ["10.99.0.7/32"]         # the service (anycast) prefixes clients use
//! sites = ["dc2", "dc3"]              # optional: the sites hosting it (default: all)
//! latency_bound_ms = 50.0             # optional constraints, as `srv6 select` reads them
//! min_bandwidth_mbps = 0.0
//! gpus = 0
//! data_zones = []
//! client_delay_ms = 0.0
//! scoring = "joint"                   # joint | compute-only | network-only
//!
//! [metrics]
//! file = "metrics.toml"               # the centre's scheduler writes the services it hosts
//! ttl_ms = 3000                       # how long peers may use what this appliance says
//! min_interval_ms = 500               # rate control on what peers say (CATS R11)
//! network_file = "network.toml"       # optional: link state from the network's telemetry
//! ```

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Ctx, Prefix};
use crate::Error;

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPaths {
    node: String,
    sid: Option<String>,
    hmac_key_id: Option<u32>,
    hmac_secret_file: Option<PathBuf>,
    #[serde(default = "default_sweep_ms")]
    sweep_ms: u64,
    #[serde(default = "default_buckets")]
    buckets: usize,
    #[serde(default = "default_bucket_idle_ms")]
    bucket_idle_ms: u64,
    #[serde(default = "default_hysteresis")]
    hysteresis: f64,
    #[serde(default = "default_hold_down_ms")]
    hold_down_ms: u64,
    #[serde(default)]
    transit: Vec<cpclink_srv6::topology::TransitFile>,
    #[serde(default)]
    site: Vec<RawSite>,
    #[serde(default)]
    link: Vec<RawLink>,
    #[serde(default)]
    candidate: Vec<cpclink_srv6::topology::PathFile>,
}

fn default_sweep_ms() -> u64 {
    250
}
fn default_buckets() -> usize {
    1024
}
fn default_bucket_idle_ms() -> u64 {
    5_000
}
fn default_hysteresis() -> f64 {
    0.1
}
fn default_hold_down_ms() -> u64 {
    2_000
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawSite {
    peer: String,
    sid: String,
    zone: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawLink {
    from: String,
    to: String,
    latency_ms: f64,
    #[serde(default = "ten_gig")]
    bandwidth_mbps: f64,
    device: Option<String>,
}

fn ten_gig() -> f64 {
    10_000.0
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    name: String,
    prefixes: Vec<String>,
    #[serde(default)]
    sites: Vec<String>,
    latency_bound_ms: Option<f64>,
    #[serde(default)]
    min_bandwidth_mbps: f64,
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    data_zones: Vec<String>,
    #[serde(default)]
    client_delay_ms: f64,
    scoring: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    file: PathBuf,
    #[serde(default = "default_ttl_ms")]
    ttl_ms: u64,
    #[serde(default = "default_min_interval_ms")]
    min_interval_ms: u64,
    network_file: Option<PathBuf>,
}

fn default_ttl_ms() -> u64 {
    3_000
}
fn default_min_interval_ms() -> u64 {
    500
}

/// The topology the path controller works on, shared by every service.
#[derive(Debug, Clone, PartialEq)]
pub struct PathsConfig {
    /// This centre's node name.
    pub node: String,
    /// This appliance's decapsulation SID, if it programs one.
    pub sid: Option<Ipv6Addr>,
    /// SRH HMAC key id and secret.
    pub hmac: Option<(u32, Vec<u8>)>,
    /// Sweep period, ms.
    pub sweep_ms: u64,
    /// Affinity buckets per service.
    pub buckets: usize,
    /// Idle time after which a bucket follows the choice, ms.
    pub bucket_idle_ms: u64,
    /// Relative improvement a challenger needs.
    pub hysteresis: f64,
    /// Minimum age of a choice before an improvement replaces it, ms.
    pub hold_down_ms: u64,
    /// Transit routers.
    pub transits: Vec<cpclink_srv6::topology::TransitFile>,
    /// Sites: (peer appliance id, SID, zone).
    pub sites: Vec<(String, Ipv6Addr, Option<String>)>,
    /// Links, with this node's device on each link it ends.
    pub links: Vec<LinkConfig>,
    /// Candidate SR policies.
    pub candidates: Vec<cpclink_srv6::topology::PathFile>,
}

/// A link of the topology.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// One end.
    pub from: String,
    /// The other end.
    pub to: String,
    /// Latency, ms.
    pub latency_ms: f64,
    /// Capacity, Mbit/s.
    pub bandwidth_mbps: f64,
    /// This node's interface on the link.
    pub device: Option<String>,
}

/// A service the controller places.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Name, as advertisements name it.
    pub name: String,
    /// The anycast prefixes clients use.
    pub prefixes: Vec<Prefix>,
    /// The sites (peer ids) hosting it.
    pub sites: Vec<String>,
    /// The request as the selector reads it.
    pub request: cpclink_srv6::topology::ServiceFile,
}

/// Where this centre's metrics come from and how they are advertised.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// The file the scheduler writes.
    pub file: PathBuf,
    /// TTL of what this appliance advertises, ms.
    pub ttl_ms: u64,
    /// Minimum interval between accepted updates of one subject, ms.
    pub min_interval_ms: u64,
    /// The network telemetry's link-state file.
    pub network_file: Option<PathBuf>,
}

impl Ctx<'_> {
    fn sid6(&self, field: String, value: &str) -> Result<Ipv6Addr, Error> {
        value.parse().map_err(|_| {
            self.err_fix(
                field,
                format!("{value:?} is not an IPv6 address"),
                "write a SID such as \"fd00:200:1::100\"",
            )
        })
    }

    pub(super) fn paths(&self, p: RawPaths) -> Result<PathsConfig, Error> {
        if p.node.is_empty() {
            return Err(self.err_fix(
                "[paths].node",
                "is empty",
                "name this centre's node, as [[paths.link]] entries name it",
            ));
        }
        let sid = p
            .sid
            .as_deref()
            .map(|s| self.sid6("[paths].sid".into(), s))
            .transpose()?;
        let hmac = match (p.hmac_key_id, &p.hmac_secret_file) {
            (Some(id), Some(file)) => {
                let path = self.path(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.err_fix(
                        "[paths].hmac_secret_file",
                        format!("cannot read {}: {e}", path.display()),
                        "give a file holding the SRH HMAC secret in hex",
                    )
                })?;
                let secret = hex::decode(text.trim())
                    .ok()
                    .filter(|s| (1..=64).contains(&s.len()))
                    .ok_or_else(|| {
                        self.err_fix(
                            "[paths].hmac_secret_file",
                            format!("{} does not hold 1 to 64 bytes in hex", path.display()),
                            "write the secret as hex digits, e.g. 64 of them for 32 bytes",
                        )
                    })?;
                Some((id, secret))
            }
            (None, None) => None,
            _ => {
                return Err(self.err_fix(
                    "[paths].hmac_key_id",
                    "hmac_key_id and hmac_secret_file go together",
                    "give both (the kernel signs SRHs with them) or neither",
                ))
            }
        };
        if !(10..=60_000).contains(&p.sweep_ms) {
            return Err(self.err_fix(
                "[paths].sweep_ms",
                format!("{} is out of range", p.sweep_ms),
                "give 10..=60000 ms",
            ));
        }
        if !(1..=65_536).contains(&p.buckets) {
            return Err(self.err_fix(
                "[paths].buckets",
                format!("{} is out of range", p.buckets),
                "give 1..=65536 buckets (1024 spreads flows finely)",
            ));
        }
        if !(0.0..1.0).contains(&p.hysteresis) {
            return Err(self.err_fix(
                "[paths].hysteresis",
                format!("{} is out of range", p.hysteresis),
                "give a fraction from 0.0 up to (not including) 1.0",
            ));
        }
        let mut nodes: BTreeSet<&str> = BTreeSet::from([p.node.as_str()]);
        let mut sites = Vec::new();
        for (i, s) in p.site.iter().enumerate() {
            let sid = self.sid6(format!("[[paths.site]][{i}].sid"), &s.sid)?;
            if !nodes.insert(&s.peer) {
                return Err(self.err_fix(
                    format!("[[paths.site]][{i}].peer"),
                    format!("{:?} is listed twice or is this node", s.peer),
                    "list each peer appliance once",
                ));
            }
            sites.push((s.peer.clone(), sid, s.zone.clone()));
        }
        for (i, t) in p.transit.iter().enumerate() {
            self.sid6(format!("[[paths.transit]][{i}].sid"), &t.sid)?;
            if !nodes.insert(&t.name) {
                return Err(self.err_fix(
                    format!("[[paths.transit]][{i}].name"),
                    format!("{:?} is already a node", t.name),
                    "give every node its own name",
                ));
            }
        }
        for (i, l) in p.link.iter().enumerate() {
            for (end, name) in [("from", &l.from), ("to", &l.to)] {
                if !nodes.contains(name.as_str()) {
                    return Err(self.err_fix(
                        format!("[[paths.link]][{i}].{end}"),
                        format!("{name:?} is not this node, a transit or a site"),
                        "name [paths].node, a [[paths.transit]] or a [[paths.site]] peer",
                    ));
                }
            }
            if !(l.latency_ms.is_finite() && l.latency_ms >= 0.0) {
                return Err(self.err_fix(
                    format!("[[paths.link]][{i}].latency_ms"),
                    format!("{} is invalid", l.latency_ms),
                    "write a finite number ≥ 0",
                ));
            }
        }
        for (i, c) in p.candidate.iter().enumerate() {
            if !sites.iter().any(|(peer, _, _)| *peer == c.site) {
                return Err(self.err_fix(
                    format!("[[paths.candidate]][{i}].site"),
                    format!("{:?} is not a [[paths.site]] peer", c.site),
                    "name a peer listed in [[paths.site]]",
                ));
            }
            if let Some(v) = c
                .via
                .iter()
                .find(|v| !p.transit.iter().any(|t| t.name == **v))
            {
                return Err(self.err_fix(
                    format!("[[paths.candidate]][{i}].via"),
                    format!("{v:?} is not a [[paths.transit]]"),
                    "list transits by their names in [[paths.transit]]",
                ));
            }
        }
        Ok(PathsConfig {
            node: p.node,
            sid,
            hmac,
            sweep_ms: p.sweep_ms,
            buckets: p.buckets,
            bucket_idle_ms: p.bucket_idle_ms,
            hysteresis: p.hysteresis,
            hold_down_ms: p.hold_down_ms,
            transits: p.transit,
            sites,
            links: p
                .link
                .into_iter()
                .map(|l| LinkConfig {
                    from: l.from,
                    to: l.to,
                    latency_ms: l.latency_ms,
                    bandwidth_mbps: l.bandwidth_mbps,
                    device: l.device,
                })
                .collect(),
            candidates: p.candidate,
        })
    }

    pub(super) fn services(
        &self,
        raw: Vec<RawService>,
        paths: Option<&PathsConfig>,
    ) -> Result<Vec<ServiceConfig>, Error> {
        let Some(paths) = paths else {
            if !raw.is_empty() {
                return Err(self.err_fix(
                    "[[services]]",
                    "services without [paths]",
                    "add [paths] with the sites, transits, links and candidates",
                ));
            }
            return Ok(Vec::new());
        };
        let mut out: Vec<ServiceConfig> = Vec::new();
        for (i, s) in raw.into_iter().enumerate() {
            let field = |k: &str| format!("[[services]][{i}].{k}");
            if s.name.is_empty() || out.iter().any(|o| o.name == s.name) {
                return Err(self.err_fix(
                    field("name"),
                    format!("{:?} is empty or used twice", s.name),
                    "give every service its own name",
                ));
            }
            if s.prefixes.is_empty() {
                return Err(self.err_fix(
                    field("prefixes"),
                    "no prefix",
                    "list the service addresses clients use, e.g. [\"10.99.0.7/32\"]",
                ));
            }
            let prefixes = self.prefixes(&field("prefixes"), &s.prefixes)?;
            for o in &out {
                if let Some(p) = prefixes
                    .iter()
                    .find(|p| o.prefixes.iter().any(|q| q.overlaps(p)))
                {
                    return Err(self.err_fix(
                        field("prefixes"),
                        format!("{p} overlaps a prefix of service {:?}", o.name),
                        "give each service its own addresses",
                    ));
                }
            }
            let sites = if s.sites.is_empty() {
                paths.sites.iter().map(|(p, _, _)| p.clone()).collect()
            } else {
                s.sites.clone()
            };
            if let Some(unknown) = sites
                .iter()
                .find(|n| !paths.sites.iter().any(|(p, _, _)| p == *n))
            {
                return Err(self.err_fix(
                    field("sites"),
                    format!("{unknown:?} is not a [[paths.site]] peer"),
                    "name peers listed in [[paths.site]]",
                ));
            }
            let request = cpclink_srv6::topology::ServiceFile {
                name: s.name.clone(),
                client_delay_ms: s.client_delay_ms,
                latency_bound_ms: s.latency_bound_ms,
                min_bandwidth_mbps: s.min_bandwidth_mbps,
                gpus: s.gpus,
                data_zones: s.data_zones,
                scoring: s.scoring,
            };
            let service = ServiceConfig {
                name: s.name,
                prefixes,
                sites,
                request,
            };
            // The selector's own checks (scoring, bounds) run on the topology it will use.
            crate::paths::topology(paths, &service).map_err(|e| {
                self.err_fix(
                    format!("[[services]][{i}]"),
                    e.to_string(),
                    "fix the service's constraints or the [paths] it names",
                )
            })?;
            out.push(service);
        }
        Ok(out)
    }

    pub(super) fn metrics(&self, m: RawMetrics) -> Result<MetricsConfig, Error> {
        if !(100..=3_600_000).contains(&m.ttl_ms) {
            return Err(self.err_fix(
                "[metrics].ttl_ms",
                format!("{} is out of range", m.ttl_ms),
                "give 100..=3600000 ms",
            ));
        }
        Ok(MetricsConfig {
            file: self.path(&m.file),
            ttl_ms: m.ttl_ms,
            min_interval_ms: m.min_interval_ms,
            network_file: m.network_file.map(|f| self.path(&f)),
        })
    }
}
