//! Compute and network metrics after the CATS metric draft, and their ingestion: rate
//! control, freshness and authenticated sources.
//!
//! draft-ietf-cats-metric-definition defines three levels: L0 raw metrics as measured, L1
//! metrics normalised per category (computing, communication, delay), and L2 one fully
//! normalised value. cpclink normalises L1 and L2 to 0–10, higher is better.

use std::collections::{BTreeMap, HashMap};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Error;

/// Where a set of metric values came from and how long it stays valid.
#[derive(Debug, Clone, PartialEq)]
pub struct Freshness {
    /// When the source measured it (ms on the selector's clock).
    pub timestamp_ms: u64,
    /// How long after `timestamp_ms` it may be used.
    pub ttl_ms: u64,
    /// The advertising source.
    pub source: String,
}

impl Freshness {
    /// Values that never expire, for what-if runs.
    pub fn static_from(source: &str) -> Self {
        Self {
            timestamp_ms: 0,
            ttl_ms: u64::MAX,
            source: source.to_string(),
        }
    }

    /// True while `now_ms` is within the TTL.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.timestamp_ms.saturating_add(self.ttl_ms)
    }
}

/// L0 (raw) compute metrics of a site, plus an optional advertised L2 value.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteMetrics {
    /// CPU utilisation, 0.0–1.0.
    pub cpu_load: Option<f64>,
    /// GPUs free for new work.
    pub gpus_free: Option<u32>,
    /// Compute (processing) delay the service sees at this site, ms.
    pub compute_delay_ms: Option<f64>,
    /// An L2 value the site advertised instead of raw values, 0–10 (10 = idle).
    pub l2: Option<f64>,
    /// Timestamp, TTL and source.
    pub freshness: Freshness,
}

/// L1 metrics: one normalised 0–10 value per category (10 is best).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct L1Metrics {
    /// Computing capacity left (from CPU load).
    pub computing: f64,
    /// Delay category (from compute delay; 0 ms = 10, 20 ms or more = 0).
    pub delay: f64,
}

impl SiteMetrics {
    /// Metrics with nothing known yet.
    pub fn unknown(freshness: Freshness) -> Self {
        Self {
            cpu_load: None,
            gpus_free: None,
            compute_delay_ms: None,
            l2: None,
            freshness,
        }
    }

    /// L1: per-category normalisation of the raw values.
    pub fn l1(&self) -> L1Metrics {
        L1Metrics {
            computing: self
                .cpu_load
                .map_or(10.0, |l| 10.0 * (1.0 - l.clamp(0.0, 1.0))),
            delay: self
                .compute_delay_ms
                .map_or(10.0, |d| (10.0 - d / 2.0).clamp(0.0, 10.0)),
        }
    }

    /// L2: one value, the advertised one or the mean of the L1 categories.
    pub fn l2(&self) -> f64 {
        self.l2.unwrap_or_else(|| {
            let l1 = self.l1();
            (l1.computing + l1.delay) / 2.0
        })
    }

    /// Load 0.0–1.0 from the raw CPU load, or from an advertised L2 when that is all there is.
    pub fn effective_load(&self) -> f64 {
        match (self.cpu_load, self.l2) {
            (Some(l), _) => l,
            (None, Some(l2)) => 1.0 - l2 / 10.0,
            (None, None) => 0.0,
        }
    }
}

/// Network metrics of a link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkMetrics {
    /// One-way latency, ms.
    pub latency_ms: f64,
    /// Capacity, Mbit/s.
    pub bandwidth_mbps: f64,
    /// Utilisation, 0.0–1.0.
    pub utilisation: f64,
    /// Loss ratio, 0.0–1.0.
    pub loss: f64,
    /// Whether the link is up.
    pub up: bool,
    /// Timestamp, TTL and source.
    pub freshness: Freshness,
}

impl LinkMetrics {
    /// Bandwidth not in use, Mbit/s.
    pub fn available_mbps(&self) -> f64 {
        self.bandwidth_mbps * (1.0 - self.utilisation)
    }
}

/// What a metric advertisement is about.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Subject {
    /// A site, by name.
    Site(String),
    /// A link, by its two end names.
    Link(String, String),
}

/// A signed metric advertisement from a metric source (CATS R8–R11, R23).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Advertisement {
    /// Source name; must be a registered source.
    pub source: String,
    /// What the values describe.
    pub subject: Subject,
    /// Metric name → value; names the selector does not know are kept but ignored (R14).
    pub values: BTreeMap<String, f64>,
    /// Measurement time, ms.
    pub timestamp_ms: u64,
    /// Validity, ms.
    pub ttl_ms: u64,
    /// HMAC-SHA256 over [`Advertisement::signed_text`] with the source's key (zero when the
    /// carrier authenticates the source instead: see [`MetricStore::ingest_verified`]).
    #[serde(default)]
    pub mac: [u8; 32],
}

impl Advertisement {
    /// Canonical bytes the MAC covers.
    pub fn signed_text(&self) -> Vec<u8> {
        let mut t = Vec::with_capacity(128);
        let mut put = |b: &[u8]| {
            t.extend_from_slice(&(b.len() as u32).to_be_bytes());
            t.extend_from_slice(b);
        };
        put(self.source.as_bytes());
        match &self.subject {
            Subject::Site(s) => {
                put(b"site");
                put(s.as_bytes());
            }
            Subject::Link(a, b) => {
                put(b"link");
                put(a.as_bytes());
                put(b.as_bytes());
            }
        }
        for (k, v) in &self.values {
            put(k.as_bytes());
            put(&v.to_bits().to_be_bytes());
        }
        put(&self.timestamp_ms.to_be_bytes());
        put(&self.ttl_ms.to_be_bytes());
        t
    }

    fn mac_for(&self, key: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        let mut m = match Hmac::<Sha256>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        m.update(&self.signed_text());
        m
    }

    /// Signs the advertisement with the source's key.
    pub fn sign(&mut self, key: &[u8]) {
        self.mac = self.mac_for(key).finalize().into_bytes().into();
    }
}

/// Why an advertisement was refused; each kind is counted apart by the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricFault {
    /// The source is not registered.
    UnknownSource,
    /// The MAC or signature does not verify, or the source is not who sent it.
    Forged,
    /// Timestamp + TTL is already past.
    Stale,
    /// Older than the values already held: replayed or reordered.
    Replayed,
    /// A value is NaN or infinite.
    NotFinite,
}

impl std::fmt::Display for MetricFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MetricFault::UnknownSource => "unknown source (register it first)",
            MetricFault::Forged => "MAC does not verify (wrong key or altered advertisement)",
            MetricFault::Stale => "already expired (timestamp + TTL is in the past)",
            MetricFault::Replayed => "older than the values already held (replayed or reordered)",
            MetricFault::NotFinite => "a value is not a finite number",
        })
    }
}

/// What [`MetricStore::ingest`] did with an advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// New or significantly changed values: stored and to be distributed.
    Accepted,
    /// Change below the significance threshold: freshness extended, values kept.
    Refreshed,
    /// Came sooner than the minimum interval after the last accepted one: dropped.
    RateLimited,
}

/// Rate control for metric distribution (CATS R11).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateControl {
    /// Minimum time between accepted updates of one subject, ms.
    pub min_interval_ms: u64,
    /// Relative change below which an update only refreshes freshness (e.g. 0.05 = 5%).
    pub significance: f64,
}

impl Default for RateControl {
    fn default() -> Self {
        Self {
            min_interval_ms: 1_000,
            significance: 0.05,
        }
    }
}

#[derive(Debug, Clone)]
struct Stored {
    values: BTreeMap<String, f64>,
    freshness: Freshness,
    accepted_at_ms: u64,
}

/// Latest authenticated metrics per subject, with rate control and expiry.
#[derive(Debug, Default)]
pub struct MetricStore {
    rate: RateControl,
    sources: HashMap<String, Vec<u8>>,
    entries: BTreeMap<Subject, Stored>,
}

impl MetricStore {
    /// An empty store.
    pub fn new(rate: RateControl) -> Self {
        Self {
            rate,
            sources: HashMap::new(),
            entries: BTreeMap::new(),
        }
    }

    /// Registers a metric source and the key its advertisements are signed with.
    pub fn add_source(&mut self, name: &str, key: Vec<u8>) {
        self.sources.insert(name.to_string(), key);
    }

    /// Ingests one advertisement at time `now_ms`, authenticated by its MAC with the key
    /// registered for its source.
    pub fn ingest(&mut self, adv: &Advertisement, now_ms: u64) -> Result<Ingest, Error> {
        let reject = |fault| Error::MetricRejected {
            source_name: adv.source.clone(),
            fault,
        };
        //= https://datatracker.ietf.org/doc/html/draft-ietf-cats-usecases-requirements#section-5.5
        //# R23: secure the advertisement of metrics so that rogue nodes cannot take part.
        let key = self
            .sources
            .get(&adv.source)
            .ok_or_else(|| reject(MetricFault::UnknownSource))?;
        if adv.mac_for(key).verify_slice(&adv.mac).is_err() {
            return Err(reject(MetricFault::Forged));
        }
        self.ingest_verified(adv, now_ms)
    }

    /// Ingests an advertisement whose source the caller has authenticated otherwise (a
    /// signature by the source's key-plane identity, checked against the certificate it
    /// presented): the MAC is not looked at, freshness, order and rate control are.
    pub fn ingest_verified(&mut self, adv: &Advertisement, now_ms: u64) -> Result<Ingest, Error> {
        let reject = |fault| Error::MetricRejected {
            source_name: adv.source.clone(),
            fault,
        };
        let freshness = Freshness {
            timestamp_ms: adv.timestamp_ms,
            ttl_ms: adv.ttl_ms,
            source: adv.source.clone(),
        };
        if !freshness.is_fresh(now_ms) {
            return Err(reject(MetricFault::Stale));
        }
        if adv.values.values().any(|v| !v.is_finite()) {
            return Err(reject(MetricFault::NotFinite));
        }
        let Some(prev) = self.entries.get_mut(&adv.subject) else {
            self.entries.insert(
                adv.subject.clone(),
                Stored {
                    values: adv.values.clone(),
                    freshness,
                    accepted_at_ms: now_ms,
                },
            );
            return Ok(Ingest::Accepted);
        };
        if adv.timestamp_ms < prev.freshness.timestamp_ms {
            return Err(reject(MetricFault::Replayed));
        }
        if now_ms.saturating_sub(prev.accepted_at_ms) < self.rate.min_interval_ms {
            return Ok(Ingest::RateLimited);
        }
        if !significant(&prev.values, &adv.values, self.rate.significance) {
            prev.freshness = freshness;
            return Ok(Ingest::Refreshed);
        }
        *prev = Stored {
            values: adv.values.clone(),
            freshness,
            accepted_at_ms: now_ms,
        };
        Ok(Ingest::Accepted)
    }

    /// Drops expired entries and returns their subjects.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Subject> {
        let gone: Vec<Subject> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.freshness.is_fresh(now_ms))
            .map(|(s, _)| s.clone())
            .collect();
        for s in &gone {
            self.entries.remove(s);
        }
        gone
    }

    /// Current values and freshness for a subject.
    pub fn get(&self, subject: &Subject) -> Option<(&BTreeMap<String, f64>, &Freshness)> {
        self.entries.get(subject).map(|e| (&e.values, &e.freshness))
    }

    /// Number of subjects held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl MetricStore {
    /// Writes the held values into a topology: sites and links named by the subjects get
    /// the values and freshness they were advertised with. Names the topology does not
    /// know, and metric names the selector does not use, are ignored (CATS R14).
    pub fn apply(&self, topo: &mut crate::Topology) {
        for (subject, e) in &self.entries {
            match subject {
                Subject::Site(name) => {
                    let Some(i) = topo.site_index(name) else {
                        continue;
                    };
                    let m = &mut topo.sites[i].metrics;
                    for (k, &v) in &e.values {
                        match k.as_str() {
                            "cpu_load" => m.cpu_load = Some(v.clamp(0.0, 1.0)),
                            "gpus_free" => m.gpus_free = Some(v.max(0.0) as u32),
                            "compute_delay_ms" => m.compute_delay_ms = Some(v.max(0.0)),
                            "l2" => m.l2 = Some(v.clamp(0.0, 10.0)),
                            _ => {}
                        }
                    }
                    m.freshness = e.freshness.clone();
                }
                Subject::Link(a, b) => {
                    let Some(i) = topo.link_index(a, b) else {
                        continue;
                    };
                    let m = &mut topo.links[i].metrics;
                    for (k, &v) in &e.values {
                        match k.as_str() {
                            "latency_ms" => m.latency_ms = v.max(0.0),
                            "bandwidth_mbps" => m.bandwidth_mbps = v.max(0.0),
                            "utilisation" => m.utilisation = v.clamp(0.0, 1.0),
                            "loss" => m.loss = v.clamp(0.0, 1.0),
                            "up" => m.up = v != 0.0,
                            _ => {}
                        }
                    }
                    m.freshness = e.freshness.clone();
                }
            }
        }
    }
}

fn significant(old: &BTreeMap<String, f64>, new: &BTreeMap<String, f64>, threshold: f64) -> bool {
    if old.len() != new.len() || old.keys().ne(new.keys()) {
        return true;
    }
    old.values().zip(new.values()).any(|(a, b)| {
        let scale = a.abs().max(b.abs());
        scale > 0.0 && (a - b).abs() / scale > threshold
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adv(source: &str, load: f64, ts: u64, key: &[u8]) -> Advertisement {
        let mut a = Advertisement {
            source: source.into(),
            subject: Subject::Site("site1".into()),
            values: BTreeMap::from([("cpu_load".to_string(), load)]),
            timestamp_ms: ts,
            ttl_ms: 10_000,
            mac: [0; 32],
        };
        a.sign(key);
        a
    }

    #[test]
    fn unauthenticated_sources_are_rejected() {
        let mut s = MetricStore::new(RateControl::default());
        s.add_source("probe-a", b"key-a".to_vec());
        assert!(matches!(
            s.ingest(&adv("rogue", 0.1, 0, b"key-a"), 0),
            Err(Error::MetricRejected { .. })
        ));
        assert!(matches!(
            s.ingest(&adv("probe-a", 0.1, 0, b"wrong"), 0),
            Err(Error::MetricRejected { .. })
        ));
        let mut tampered = adv("probe-a", 0.1, 0, b"key-a");
        tampered.values.insert("cpu_load".into(), 0.9);
        assert!(s.ingest(&tampered, 0).is_err());
        assert!(s.is_empty());
        assert_eq!(
            s.ingest(&adv("probe-a", 0.1, 0, b"key-a"), 0).unwrap(),
            Ingest::Accepted
        );
    }

    #[test]
    fn rate_control_and_significance() {
        let mut s = MetricStore::new(RateControl {
            min_interval_ms: 1_000,
            significance: 0.1,
        });
        s.add_source("p", b"k".to_vec());
        let subj = Subject::Site("site1".into());
        assert_eq!(
            s.ingest(&adv("p", 0.50, 0, b"k"), 0).unwrap(),
            Ingest::Accepted
        );
        assert_eq!(
            s.ingest(&adv("p", 0.90, 500, b"k"), 500).unwrap(),
            Ingest::RateLimited
        );
        assert_eq!(s.get(&subj).unwrap().0["cpu_load"], 0.50);
        assert_eq!(
            s.ingest(&adv("p", 0.52, 1_500, b"k"), 1_500).unwrap(),
            Ingest::Refreshed
        );
        let (v, f) = s.get(&subj).unwrap();
        assert_eq!((v["cpu_load"], f.timestamp_ms), (0.50, 1_500));
        assert_eq!(
            s.ingest(&adv("p", 0.90, 2_000, b"k"), 2_000).unwrap(),
            Ingest::Accepted
        );
        assert_eq!(s.get(&subj).unwrap().0["cpu_load"], 0.90);
        assert!(
            s.ingest(&adv("p", 0.1, 1_000, b"k"), 4_000).is_err(),
            "older than held"
        );
    }

    #[test]
    fn entries_expire_after_ttl() {
        let mut s = MetricStore::new(RateControl::default());
        s.add_source("p", b"k".to_vec());
        s.ingest(&adv("p", 0.5, 0, b"k"), 0).unwrap();
        assert!(s.expire(9_999).is_empty());
        assert_eq!(s.expire(10_000), vec![Subject::Site("site1".into())]);
        assert!(s.is_empty());
        assert!(
            s.ingest(&adv("p", 0.5, 0, b"k"), 10_000).is_err(),
            "expired on arrival"
        );
    }

    #[test]
    fn applied_metrics_drive_selection_and_expire() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/arvr.toml");
        let mut topo = crate::Topology::load(std::path::Path::new(path)).unwrap();
        let mut s = MetricStore::new(RateControl::default());
        s.add_source("p", b"k".to_vec());
        // site3's compute delay rises to 8 ms: 22.4 ms end to end, over the bound; site1's
        // falls to 1 ms: 19.4 ms, now the only one within it.
        for (site, delay) in [("site3", 8.0), ("site1", 1.0)] {
            let mut a = Advertisement {
                source: "p".into(),
                subject: Subject::Site(site.into()),
                values: BTreeMap::from([
                    ("compute_delay_ms".to_string(), delay),
                    ("vendor_x".to_string(), 1.0),
                ]),
                timestamp_ms: 0,
                ttl_ms: 5_000,
                mac: [0; 32],
            };
            a.sign(b"k");
            s.ingest(&a, 0).unwrap();
        }
        s.apply(&mut topo);
        let mut sel = crate::PathSelector::new(crate::select::SelectorConfig::default());
        assert_eq!(sel.decide(&topo, 1_000).unwrap().site, "site1");
        // Past the TTL both advertised sites drop out; site2 alone is over the bound.
        assert!(sel.decide(&topo, 5_000).is_err());
    }

    #[test]
    fn levels_normalise_to_zero_to_ten() {
        let mut m = SiteMetrics::unknown(Freshness::static_from("t"));
        assert_eq!(m.l2(), 10.0);
        m.cpu_load = Some(0.5);
        m.compute_delay_ms = Some(4.0);
        assert_eq!(
            m.l1(),
            L1Metrics {
                computing: 5.0,
                delay: 8.0
            }
        );
        assert_eq!(m.l2(), 6.5);
        let only_l2 = SiteMetrics {
            l2: Some(3.0),
            ..SiteMetrics::unknown(Freshness::static_from("t"))
        };
        assert!((only_l2.effective_load() - 0.7).abs() < 1e-9);
    }
}
