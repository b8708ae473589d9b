//! The topology the selector works on: an ingress, transit routers, sites with compute
//! metrics, links with network metrics, candidate paths, and the service request. Loaded
//! from the TOML file `cpclink srv6 select` reads (format in srv6/README.md).

use std::collections::HashMap;
use std::net::Ipv6Addr;

use serde::Deserialize;

use crate::metrics::{Freshness, LinkMetrics, SiteMetrics};
use crate::select::Scoring;
use crate::sid::{SegmentList, Sid};
use crate::Error;
use cpclink_diagnostics::ConfigText;

/// The file as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    /// The service request.
    pub service: ServiceFile,
    /// Name of the ingress node.
    pub ingress: String,
    /// Selector clock for freshness checks, ms (default 0).
    #[serde(default)]
    pub now_ms: u64,
    /// Transit routers.
    #[serde(default)]
    pub transits: Vec<TransitFile>,
    /// Sites.
    #[serde(default)]
    pub sites: Vec<SiteFile>,
    /// Links.
    #[serde(default)]
    pub links: Vec<LinkFile>,
    /// Candidate paths.
    #[serde(default)]
    pub paths: Vec<PathFile>,
}

/// `[service]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Service name.
    pub name: String,
    /// Client-side delay, ms.
    #[serde(default)]
    pub client_delay_ms: f64,
    /// End-to-end latency bound, ms.
    pub latency_bound_ms: Option<f64>,
    /// Bandwidth the path must have free, Mbit/s.
    #[serde(default)]
    pub min_bandwidth_mbps: f64,
    /// GPUs the site must have free.
    #[serde(default)]
    pub gpus: u32,
    /// Data zones the service may run in (empty: any).
    #[serde(default)]
    pub data_zones: Vec<String>,
    /// `joint` (default), `compute-only` or `network-only`.
    #[serde(default)]
    pub scoring: Option<String>,
}

/// `[[transits]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransitFile {
    /// Node name.
    pub name: String,
    /// Its End SID.
    pub sid: String,
}

/// `[[sites]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    /// Node name.
    pub name: String,
    /// The SID that ends the path at the site (End.DT6/End.DT4 decapsulation).
    pub sid: String,
    /// Data zone.
    #[serde(default)]
    pub zone: Option<String>,
    /// False when the site is down.
    #[serde(default = "yes")]
    pub available: bool,
    /// Compute metrics.
    #[serde(default)]
    pub metrics: SiteMetricsFile,
}

fn yes() -> bool {
    true
}

/// `[sites.metrics]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SiteMetricsFile {
    /// CPU load 0.0–1.0.
    pub cpu_load: Option<f64>,
    /// GPUs free.
    pub gpus_free: Option<u32>,
    /// Compute delay, ms.
    pub compute_delay_ms: Option<f64>,
    /// Advertised L2, 0–10.
    pub l2: Option<f64>,
    /// Measurement time, ms (default 0).
    #[serde(default)]
    pub timestamp_ms: u64,
    /// Validity, ms (default: never expires).
    pub ttl_ms: Option<u64>,
    /// Metric source.
    pub source: Option<String>,
}

/// `[[links]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkFile {
    /// One end.
    pub from: String,
    /// The other end.
    pub to: String,
    /// Latency, ms.
    pub latency_ms: f64,
    /// Capacity, Mbit/s (default 10000).
    #[serde(default = "ten_gig")]
    pub bandwidth_mbps: f64,
    /// Utilisation 0.0–1.0.
    #[serde(default)]
    pub utilisation: f64,
    /// Loss 0.0–1.0.
    #[serde(default)]
    pub loss: f64,
    /// False when down.
    #[serde(default = "yes")]
    pub up: bool,
}

fn ten_gig() -> f64 {
    10_000.0
}

/// `[[paths]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PathFile {
    /// Destination site.
    pub site: String,
    /// Transit routers in order (empty: direct).
    #[serde(default)]
    pub via: Vec<String>,
}

/// The service request the selector serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    /// Name.
    pub name: String,
    /// Client-side delay, ms.
    pub client_delay_ms: f64,
    /// End-to-end bound, ms.
    pub latency_bound_ms: Option<f64>,
    /// Free bandwidth needed, Mbit/s.
    pub min_bandwidth_mbps: f64,
    /// GPUs needed.
    pub gpus: u32,
    /// Allowed data zones (empty: any).
    pub data_zones: Vec<String>,
    /// How to score.
    pub scoring: Scoring,
}

/// A transit router.
#[derive(Debug, Clone, PartialEq)]
pub struct Transit {
    /// Name.
    pub name: String,
    /// End SID.
    pub sid: Sid,
}

/// A compute site.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Name.
    pub name: String,
    /// Decapsulation SID.
    pub sid: Sid,
    /// Data zone.
    pub zone: Option<String>,
    /// Up or down.
    pub available: bool,
    /// Metrics.
    pub metrics: SiteMetrics,
}

/// A link between two nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// One end.
    pub from: String,
    /// Other end.
    pub to: String,
    /// Metrics.
    pub metrics: LinkMetrics,
}

/// A candidate (site, path): the links it crosses and the segment list that steers it.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidatePath {
    /// Index into `sites`.
    pub site: usize,
    /// Indices into `transits`, in order.
    pub via: Vec<usize>,
    /// Indices into `links`, ingress first.
    pub links: Vec<usize>,
    /// Transit End SIDs then the site SID.
    pub segments: SegmentList,
}

/// A validated topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The request.
    pub service: ServiceRequest,
    /// Ingress node name.
    pub ingress: String,
    /// Selector clock, ms.
    pub now_ms: u64,
    /// Transits.
    pub transits: Vec<Transit>,
    /// Sites.
    pub sites: Vec<Site>,
    /// Links.
    pub links: Vec<Link>,
    /// Candidates.
    pub paths: Vec<CandidatePath>,
}

/// Checks on a parsed file, each error pointing at its field's line in `text`.
struct Ctx<'a> {
    text: &'a ConfigText,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>, fix: &str) -> Error {
        self.text.error_fix(field, reason, fix).into()
    }

    fn ratio(&self, field: String, v: f64) -> Result<f64, Error> {
        if !(0.0..=1.0).contains(&v) {
            return Err(self.err(
                field,
                format!("{v} is out of range"),
                "write a fraction from 0.0 to 1.0",
            ));
        }
        Ok(v)
    }

    fn non_negative(&self, field: String, v: f64) -> Result<f64, Error> {
        if !v.is_finite() || v < 0.0 {
            return Err(self.err(
                field,
                format!("{v} is invalid"),
                "write a finite number ≥ 0",
            ));
        }
        Ok(v)
    }

    fn sid(&self, field: String, s: &str) -> Result<Sid, Error> {
        s.parse::<Ipv6Addr>().map(Sid).map_err(|_| {
            self.err(
                field,
                format!("{s:?} is not an IPv6 address"),
                "write a SID such as \"fd00:100:1::1\"",
            )
        })
    }
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &std::path::Path) -> Result<Self, Error> {
        let text = ConfigText::read(path)?;
        Self::validate(text.parse()?, &text)
    }

    /// Parses TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, Error> {
        let text = ConfigText::new(file, text);
        Self::validate(text.parse()?, &text)
    }

    /// Validates a file model built in code (errors name `file`, without lines).
    pub fn from_model(m: TopologyFile, file: &str) -> Result<Self, Error> {
        Self::validate(m, &ConfigText::new(file, ""))
    }

    fn validate(m: TopologyFile, text: &ConfigText) -> Result<Self, Error> {
        let file = text.file();
        let c = Ctx { text };
        let scoring = match m.service.scoring.as_deref() {
            None | Some("joint") => Scoring::Joint,
            Some("compute-only") => Scoring::ComputeOnly,
            Some("network-only") => Scoring::NetworkOnly,
            Some(o) => {
                return Err(c.err(
                    "[service].scoring",
                    format!("{o:?} is unknown"),
                    "write joint, compute-only or network-only",
                ))
            }
        };
        if m.service.name.is_empty() {
            return Err(c.err("[service].name", "is empty", "name the service"));
        }
        c.non_negative(
            "[service].client_delay_ms".into(),
            m.service.client_delay_ms,
        )?;
        if let Some(b) = m.service.latency_bound_ms {
            c.non_negative("[service].latency_bound_ms".into(), b)?;
        }
        c.non_negative(
            "[service].min_bandwidth_mbps".into(),
            m.service.min_bandwidth_mbps,
        )?;
        let service = ServiceRequest {
            name: m.service.name,
            client_delay_ms: m.service.client_delay_ms,
            latency_bound_ms: m.service.latency_bound_ms,
            min_bandwidth_mbps: m.service.min_bandwidth_mbps,
            gpus: m.service.gpus,
            data_zones: m.service.data_zones,
            scoring,
        };

        let mut names: HashMap<String, String> = HashMap::new();
        let mut claim = |name: &str, field: String| -> Result<(), Error> {
            if name.is_empty() {
                return Err(c.err(field, "is empty", "give every node a name"));
            }
            if let Some(prev) = names.insert(name.to_string(), field.clone()) {
                return Err(c.err(
                    field,
                    format!("{name:?} is already used by {prev}"),
                    "give every node its own name",
                ));
            }
            Ok(())
        };
        claim(&m.ingress, "ingress".into())?;
        let mut transits = Vec::with_capacity(m.transits.len());
        for (i, t) in m.transits.iter().enumerate() {
            claim(&t.name, format!("[[transits]][{i}].name"))?;
            transits.push(Transit {
                name: t.name.clone(),
                sid: c.sid(format!("[[transits]][{i}].sid"), &t.sid)?,
            });
        }
        let mut sites = Vec::with_capacity(m.sites.len());
        for (i, s) in m.sites.iter().enumerate() {
            claim(&s.name, format!("[[sites]][{i}].name"))?;
            let f = |k: &str| format!("[[sites]][{i}].metrics.{k}");
            let mm = &s.metrics;
            let metrics = SiteMetrics {
                cpu_load: mm.cpu_load.map(|v| c.ratio(f("cpu_load"), v)).transpose()?,
                gpus_free: mm.gpus_free,
                compute_delay_ms: mm
                    .compute_delay_ms
                    .map(|v| c.non_negative(f("compute_delay_ms"), v))
                    .transpose()?,
                l2: match mm.l2 {
                    Some(v) if !(0.0..=10.0).contains(&v) => {
                        return Err(c.err(
                            f("l2"),
                            format!("{v} is out of range"),
                            "write a level from 0 to 10",
                        ))
                    }
                    v => v,
                },
                freshness: Freshness {
                    timestamp_ms: mm.timestamp_ms,
                    ttl_ms: mm.ttl_ms.unwrap_or(u64::MAX),
                    source: mm.source.clone().unwrap_or_else(|| file.to_string()),
                },
            };
            sites.push(Site {
                name: s.name.clone(),
                sid: c.sid(format!("[[sites]][{i}].sid"), &s.sid)?,
                zone: s.zone.clone(),
                available: s.available,
                metrics,
            });
        }
        let mut links = Vec::with_capacity(m.links.len());
        let mut link_index: HashMap<(String, String), usize> = HashMap::new();
        for (i, l) in m.links.iter().enumerate() {
            for (end, name) in [("from", &l.from), ("to", &l.to)] {
                if !names.contains_key(name) {
                    return Err(c.err(
                        format!("[[links]][{i}].{end}"),
                        format!("{name:?} is not the ingress, a transit or a site"),
                        "name a node listed as ingress, in [[transits]] or in [[sites]]",
                    ));
                }
            }
            let f = |k: &str| format!("[[links]][{i}].{k}");
            let metrics = LinkMetrics {
                latency_ms: c.non_negative(f("latency_ms"), l.latency_ms)?,
                bandwidth_mbps: c.non_negative(f("bandwidth_mbps"), l.bandwidth_mbps)?,
                utilisation: c.ratio(f("utilisation"), l.utilisation)?,
                loss: c.ratio(f("loss"), l.loss)?,
                up: l.up,
                freshness: Freshness::static_from(file),
            };
            link_index.insert((l.from.clone(), l.to.clone()), i);
            link_index.insert((l.to.clone(), l.from.clone()), i);
            links.push(Link {
                from: l.from.clone(),
                to: l.to.clone(),
                metrics,
            });
        }
        let site_index: HashMap<&str, usize> = sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let transit_index: HashMap<&str, usize> = transits
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut paths = Vec::with_capacity(m.paths.len());
        for (i, p) in m.paths.iter().enumerate() {
            let site = *site_index.get(p.site.as_str()).ok_or_else(|| {
                c.err(
                    format!("[[paths]][{i}].site"),
                    format!("{:?} is not a site", p.site),
                    "name one of the [[sites]]",
                )
            })?;
            let mut via = Vec::with_capacity(p.via.len());
            for (j, v) in p.via.iter().enumerate() {
                via.push(*transit_index.get(v.as_str()).ok_or_else(|| {
                    c.err(
                        format!("[[paths]][{i}].via[{j}]"),
                        format!("{v:?} is not a transit"),
                        "name one of the [[transits]]",
                    )
                })?);
            }
            let hops: Vec<&str> = std::iter::once(m.ingress.as_str())
                .chain(p.via.iter().map(String::as_str))
                .chain(std::iter::once(p.site.as_str()))
                .collect();
            let mut path_links = Vec::with_capacity(hops.len() - 1);
            for w in hops.windows(2) {
                let key = (w[0].to_string(), w[1].to_string());
                path_links.push(*link_index.get(&key).ok_or_else(|| {
                    c.err(
                        format!("[[paths]][{i}]"),
                        format!("no link between {:?} and {:?}", w[0], w[1]),
                        &format!(
                            "add a [[links]] entry with from = {:?}, to = {:?}",
                            w[0], w[1]
                        ),
                    )
                })?);
            }
            let sids = via
                .iter()
                .map(|&t| transits[t].sid)
                .chain(std::iter::once(sites[site].sid))
                .collect();
            let segments = SegmentList::new(sids).map_err(|e| {
                c.err(
                    format!("[[paths]][{i}].via"),
                    e.to_string(),
                    "route through fewer transits",
                )
            })?;
            paths.push(CandidatePath {
                site,
                via,
                links: path_links,
                segments,
            });
        }
        if paths.is_empty() {
            return Err(c.err(
                "[[paths]]",
                "no candidate path is listed",
                "add at least one [[paths]] entry with site and via",
            ));
        }
        Ok(Self {
            service,
            ingress: m.ingress,
            now_ms: m.now_ms,
            transits,
            sites,
            links,
            paths,
        })
    }

    /// Index of a site by name.
    pub fn site_index(&self, name: &str) -> Option<usize> {
        self.sites.iter().position(|s| s.name == name)
    }

    /// Index of the link between two nodes, either direction.
    pub fn link_index(&self, a: &str, b: &str) -> Option<usize> {
        self.links
            .iter()
            .position(|l| (l.from == a && l.to == b) || (l.from == b && l.to == a))
    }

    /// Human-readable hops of a candidate: `ingress → t1 → site3`.
    pub fn describe_path(&self, path: usize) -> String {
        let Some(p) = self.paths.get(path) else {
            return String::new();
        };
        let mut s = self.ingress.clone();
        for &t in &p.via {
            s.push_str(" → ");
            s.push_str(&self.transits[t].name);
        }
        s.push_str(" → ");
        s.push_str(&self.sites[p.site].name);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
ingress = "ing"
[service]
name = "svc"
[[transits]]
name = "t1"
sid = "fd00:100:1::1"
[[sites]]
name = "s1"
sid = "fd00:200:1::6"
[sites.metrics]
cpu_load = 0.5
[[links]]
from = "ing"
to = "t1"
latency_ms = 1.0
[[links]]
from = "t1"
to = "s1"
latency_ms = 2.0
[[paths]]
site = "s1"
via = ["t1"]
"#;

    #[test]
    fn builds_segment_lists_and_link_chains() {
        let t = Topology::parse(BASE, "t.toml").unwrap();
        assert_eq!(
            t.paths[0].segments.to_string(),
            "fd00:100:1::1,fd00:200:1::6"
        );
        assert_eq!(t.paths[0].links, vec![0, 1]);
        assert_eq!(t.describe_path(0), "ing → t1 → s1");
    }

    fn err(text: &str) -> cpclink_diagnostics::Diagnostic {
        match Topology::parse(text, "topology.toml").unwrap_err() {
            Error::Config(d) => d,
            other => panic!("expected a config diagnostic, got {other}"),
        }
    }

    /// (field, line, fix) of the error `text` gives.
    fn at(text: &str) -> (String, Option<usize>, String) {
        let d = err(text);
        assert_eq!(d.file, "topology.toml");
        (d.field, d.line, d.fix.unwrap_or_default())
    }

    #[test]
    fn errors_name_file_field_line_and_fix() {
        assert_eq!(
            err(&BASE.replace("cpu_load = 0.5", "cpu_load = 1.7")).to_string(),
            "topology.toml:12: [[sites]][0].metrics.cpu_load: 1.7 is out of range; write a fraction from 0.0 to 1.0"
        );
        assert_eq!(
            err(&BASE.replace("sid = \"fd00:200:1::6\"", "sid = \"nope\"")).to_string(),
            "topology.toml:10: [[sites]][0].sid: \"nope\" is not an IPv6 address; write a SID such as \"fd00:100:1::1\""
        );
        let (field, line, fix) = at(&BASE.replace("via = [\"t1\"]", "via = []"));
        assert_eq!((field.as_str(), line), ("[[paths]][0]", Some(21)));
        assert!(fix.contains("from = \"ing\", to = \"s1\""), "{fix}");
        let (field, line, fix) = at(&BASE.replace("to = \"s1\"", "to = \"s9\""));
        assert_eq!((field.as_str(), line), ("[[links]][1].to", Some(19)));
        assert!(fix.contains("[[sites]]"), "{fix}");
        let d = err(&BASE.replace("name = \"t1\"", "name = \"s1\""));
        assert_eq!((d.field.as_str(), d.line), ("[[sites]][0].name", Some(9)));
        assert!(
            d.reason.contains("already used by [[transits]][0].name"),
            "{d}"
        );
        let (field, line, fix) = at(&BASE.replace("[service]", "[service]\nscoring = \"fast\""));
        assert_eq!((field.as_str(), line), ("[service].scoring", Some(4)));
        assert!(fix.contains("compute-only"), "{fix}");
        let (field, line, _) = at(&BASE.replace("via = [\"t1\"]", "via = [\"t9\"]"));
        assert_eq!((field.as_str(), line), ("[[paths]][0].via[0]", Some(23)));
    }

    /// The parser's errors used to give a byte offset ("byte 643"); now the line and field.
    #[test]
    fn syntax_and_type_errors_give_the_line_not_a_byte_offset() {
        let d = err(&BASE.replace("latency_ms = 2.0", "latency_ms = 2.0\nlatncy = 1"));
        assert_eq!((d.field.as_str(), d.line), ("[[links]].latncy", Some(21)));
        assert!(d.reason.contains("unknown field"), "{d}");
        assert!(d.fix.as_deref().unwrap().contains("latency_ms"), "{d}");
        let d = err(&BASE.replace("latency_ms = 1.0", "latency_ms = \"fast\""));
        assert_eq!(
            (d.field.as_str(), d.line),
            ("[[links]].latency_ms", Some(16))
        );
        assert!(d.fix.is_some(), "{d}");
        assert!(!d.to_string().contains("byte"), "{d}");
        let d = err(&BASE.replace("[sites.metrics]\n", "[sites.metrics]\ncpu = 0.1\n"));
        assert_eq!(
            (d.field.as_str(), d.line),
            ("[sites.metrics].cpu", Some(12))
        );
    }

    #[test]
    fn a_model_built_in_code_is_checked_without_lines() {
        let Err(Error::Config(d)) = Topology::from_model(TopologyFile::default(), "synthetic")
        else {
            panic!("an empty model has no service name");
        };
        assert_eq!(
            (d.file.as_str(), d.field.as_str(), d.line),
            ("synthetic", "[service].name", None)
        );
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let Err(Error::Config(d)) = Topology::load(std::path::Path::new("/nonexistent/t.toml"))
        else {
            panic!("expected a config diagnostic");
        };
        assert_eq!(d.file, "/nonexistent/t.toml");
    }
}
