//! The CATS path selector: filter (site, path) candidates by the service's constraints,
//! score them jointly, keep the choice stable with hysteresis, pin flows to sites through
//! resilient hash buckets, and explain every decision.

use std::fmt;

use serde::Serialize;

use crate::sid::SegmentList;
use crate::topology::Topology;
use crate::Error;

/// What the score takes into account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scoring {
    /// Compute and network together (CATS).
    Joint,
    /// Only site metrics, as a compute-only load balancer would.
    ComputeOnly,
    /// Only path metrics, as network-only routing would.
    NetworkOnly,
}

/// How much each penalty weighs, in ms of equivalent delay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Weights {
    /// Per unit of site CPU load (1.0 = fully loaded).
    pub load_ms: f64,
    /// Per unit of the most utilised link on the path.
    pub utilisation_ms: f64,
    /// Per unit of end-to-end loss.
    pub loss_ms: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            load_ms: 10.0,
            utilisation_ms: 5.0,
            loss_ms: 1_000.0,
        }
    }
}

/// Selector settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SelectorConfig {
    /// Penalty weights.
    pub weights: Weights,
    /// A challenger must cost this fraction less than the current choice to replace it.
    pub hysteresis: f64,
    /// Minimum time between two switches, ms.
    pub hold_down_ms: u64,
    /// Number of affinity buckets (fixed: state does not grow with flows).
    pub buckets: usize,
    /// A bucket with no packets for this long may be given to the current best site, ms.
    pub bucket_idle_ms: u64,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        Self {
            weights: Weights::default(),
            hysteresis: 0.1,
            hold_down_ms: 5_000,
            buckets: 4096,
            bucket_idle_ms: 30_000,
        }
    }
}

/// Why a candidate was refused.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Rejection {
    /// The site is marked down.
    SiteDown,
    /// The site's metrics are past their TTL.
    MetricsExpired,
    /// A link on the path is down.
    LinkDown {
        /// `from–to`.
        link: String,
    },
    /// Estimated delay exceeds the bound.
    LatencyBound {
        /// Estimated end-to-end delay, ms.
        estimated_ms: f64,
        /// Bound, ms.
        bound_ms: f64,
    },
    /// Not enough free bandwidth.
    Bandwidth {
        /// Free on the narrowest link, Mbit/s.
        available_mbps: f64,
        /// Needed, Mbit/s.
        needed_mbps: f64,
    },
    /// Not enough free GPUs.
    Gpus {
        /// Free.
        free: u32,
        /// Needed.
        needed: u32,
    },
    /// The site is outside the allowed data zones.
    DataZone {
        /// The site's zone.
        zone: Option<String>,
    },
}

impl Rejection {
    /// True when the site cannot be reached at all over this path (as opposed to not
    /// meeting the service's bounds); pinned flows only move for these.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Rejection::SiteDown | Rejection::MetricsExpired | Rejection::LinkDown { .. }
        )
    }

    fn kind(&self) -> &'static str {
        match self {
            Rejection::SiteDown => "site down",
            Rejection::MetricsExpired => "metrics expired",
            Rejection::LinkDown { .. } => "link down",
            Rejection::LatencyBound { .. } => "latency bound",
            Rejection::Bandwidth { .. } => "bandwidth",
            Rejection::Gpus { .. } => "GPUs",
            Rejection::DataZone { .. } => "data zone",
        }
    }
}

/// The cost of a candidate, broken down, in ms of equivalent delay (lower is better).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cost {
    /// Client-side delay.
    pub client_ms: f64,
    /// Path latency (0 under compute-only scoring).
    pub network_ms: f64,
    /// Site compute delay (0 under network-only scoring).
    pub compute_ms: f64,
    /// CPU load penalty.
    pub load_penalty_ms: f64,
    /// Link utilisation penalty.
    pub utilisation_penalty_ms: f64,
    /// Loss penalty.
    pub loss_penalty_ms: f64,
    /// Estimated end-to-end delay as this scoring sees it.
    pub delay_ms: f64,
    /// Sum of all of the above that the scoring uses.
    pub total_ms: f64,
}

/// Evaluates one candidate; allocation-free except for the rare link-down name.
pub fn evaluate(
    topo: &Topology,
    path: usize,
    weights: &Weights,
    now_ms: u64,
) -> Result<Cost, Rejection> {
    let svc = &topo.service;
    let p = &topo.paths[path];
    let site = &topo.sites[p.site];
    if !site.available {
        return Err(Rejection::SiteDown);
    }
    if !site.metrics.freshness.is_fresh(now_ms) {
        return Err(Rejection::MetricsExpired);
    }
    if !svc.data_zones.is_empty()
        && !site
            .zone
            .as_ref()
            .is_some_and(|z| svc.data_zones.contains(z))
    {
        return Err(Rejection::DataZone {
            zone: site.zone.clone(),
        });
    }
    let (mut latency, mut max_util, mut delivered, mut free_mbps) =
        (0.0, 0.0f64, 1.0, f64::INFINITY);
    for &l in &p.links {
        let link = &topo.links[l];
        let m = &link.metrics;
        if !m.up || !m.freshness.is_fresh(now_ms) {
            return Err(Rejection::LinkDown {
                link: format!("{}–{}", link.from, link.to),
            });
        }
        latency += m.latency_ms;
        max_util = max_util.max(m.utilisation);
        delivered *= 1.0 - m.loss;
        free_mbps = free_mbps.min(m.available_mbps());
    }
    let use_compute = svc.scoring != Scoring::NetworkOnly;
    let use_network = svc.scoring != Scoring::ComputeOnly;
    if use_compute && svc.gpus > 0 {
        let free = site.metrics.gpus_free.unwrap_or(0);
        if free < svc.gpus {
            return Err(Rejection::Gpus {
                free,
                needed: svc.gpus,
            });
        }
    }
    if use_network && free_mbps < svc.min_bandwidth_mbps {
        return Err(Rejection::Bandwidth {
            available_mbps: free_mbps,
            needed_mbps: svc.min_bandwidth_mbps,
        });
    }
    let mut c = Cost {
        client_ms: svc.client_delay_ms,
        network_ms: 0.0,
        compute_ms: 0.0,
        load_penalty_ms: 0.0,
        utilisation_penalty_ms: 0.0,
        loss_penalty_ms: 0.0,
        delay_ms: 0.0,
        total_ms: 0.0,
    };
    if use_network {
        c.network_ms = latency;
        c.utilisation_penalty_ms = weights.utilisation_ms * max_util;
        c.loss_penalty_ms = weights.loss_ms * (1.0 - delivered);
    }
    if use_compute {
        c.compute_ms = site.metrics.compute_delay_ms.unwrap_or(0.0);
        c.load_penalty_ms = weights.load_ms * site.metrics.effective_load();
    }
    c.delay_ms = c.client_ms + c.network_ms + c.compute_ms;
    c.total_ms = c.delay_ms + c.load_penalty_ms + c.utilisation_penalty_ms + c.loss_penalty_ms;
    //= https://datatracker.ietf.org/doc/html/draft-ietf-cats-usecases-requirements#section-4.1
    //# the end-to-end latency [...] must be within 20 ms: client-side, network and compute
    //# delays together.
    if let Some(bound) = svc.latency_bound_ms {
        if c.delay_ms > bound {
            return Err(Rejection::LatencyBound {
                estimated_ms: c.delay_ms,
                bound_ms: bound,
            });
        }
    }
    Ok(c)
}

/// Why the selector chose what it chose.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reason {
    /// First decision: the best candidate.
    Initial,
    /// The best candidate is still the current one.
    StillBest,
    /// A better candidate was found, beyond the hysteresis margin and hold-down.
    Improved {
        /// Cost of the previous choice now, ms.
        previous_cost_ms: f64,
    },
    /// A better candidate exists but not by enough, or too soon after the last switch.
    Held {
        /// The challenger's site.
        challenger: String,
        /// Its cost, ms.
        challenger_cost_ms: f64,
        /// Needed: cost below this, ms.
        needed_below_ms: f64,
        /// Ms until the hold-down ends (0 when only the margin held it).
        hold_down_left_ms: u64,
    },
    /// The previous choice became unusable.
    Failover {
        /// Previous site.
        from_site: String,
        /// Why it was dropped.
        because: Rejection,
    },
}

/// One ranked candidate in an explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    /// Site name.
    pub site: String,
    /// `ingress → t1 → site`.
    pub path: String,
    /// Segment list.
    pub segments: String,
    /// Cost breakdown.
    pub cost: Cost,
}

/// A refused candidate in an explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refused {
    /// Site name.
    pub site: String,
    /// `ingress → t1 → site`.
    pub path: String,
    /// Why.
    pub why: Rejection,
}

/// Why a decision came out the way it did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// Service name.
    pub service: String,
    /// Scoring used.
    pub scoring: Scoring,
    /// Candidates considered.
    pub considered: usize,
    /// Candidates meeting every constraint.
    pub feasible: usize,
    /// The best feasible candidates, best first (at most 5).
    pub best: Vec<Ranked>,
    /// How many candidates each constraint refused.
    pub rejected: Vec<(String, usize)>,
    /// The first refused candidates and why (at most 10).
    pub rejections: Vec<Refused>,
    /// What the hysteresis logic did.
    pub reason: Reason,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "service {:?} ({:?} scoring): {} candidates, {} feasible",
            self.service, self.scoring, self.considered, self.feasible
        )?;
        for (i, r) in self.best.iter().enumerate() {
            writeln!(
                f,
                "  {}. {} via {}: {:.1} ms (client {:.1} + network {:.1} + compute {:.1}; load {:.1}, utilisation {:.1}, loss {:.1})",
                i + 1,
                r.site,
                r.path,
                r.cost.total_ms,
                r.cost.client_ms,
                r.cost.network_ms,
                r.cost.compute_ms,
                r.cost.load_penalty_ms,
                r.cost.utilisation_penalty_ms,
                r.cost.loss_penalty_ms
            )?;
        }
        for (kind, n) in &self.rejected {
            writeln!(f, "  rejected by {kind}: {n}")?;
        }
        for r in &self.rejections {
            writeln!(f, "    {} via {}: {:?}", r.site, r.path, r.why)?;
        }
        write!(f, "  decision: {:?}", self.reason)
    }
}

/// A selection: the site, the segment list that reaches it, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Chosen site.
    pub site: String,
    /// Index into `topology.sites`.
    pub site_index: usize,
    /// Index into `topology.paths`.
    pub path_index: usize,
    /// Segment list to program.
    #[serde(serialize_with = "as_string")]
    pub segments: SegmentList,
    /// Its cost.
    pub cost: Cost,
    /// Why.
    pub explanation: Explanation,
}

fn as_string<S: serde::Serializer>(v: &SegmentList, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.sids().iter().map(|x| x.to_string()))
}

#[derive(Debug, Clone, Copy)]
struct Current {
    path: usize,
    site: usize,
    since_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    site: u32,
    last_used_ms: u64,
}

const NO_SITE: u32 = u32::MAX;

/// Where a flow goes.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowPlacement {
    /// Site index.
    pub site: usize,
    /// Candidate path index.
    pub path: usize,
    /// Whether the flow was (re)assigned now rather than kept.
    pub assigned: bool,
}

/// The selector for one service; holds only the current choice and a fixed bucket table.
#[derive(Debug)]
pub struct PathSelector {
    config: SelectorConfig,
    current: Option<Current>,
    buckets: Vec<Bucket>,
    /// Per site: best feasible path and cost, from the last decision.
    best_feasible: Vec<Option<(usize, f64)>>,
    /// Per site: some path on which it is reachable, from the last decision.
    reachable: Vec<Option<usize>>,
}

impl PathSelector {
    /// A selector with no choice yet.
    pub fn new(config: SelectorConfig) -> Self {
        Self {
            config,
            current: None,
            buckets: vec![
                Bucket {
                    site: NO_SITE,
                    last_used_ms: 0
                };
                config.buckets.max(1)
            ],
            best_feasible: Vec::new(),
            reachable: Vec::new(),
        }
    }

    /// Decides at time `now_ms` against the topology's current metrics.
    pub fn decide(&mut self, topo: &Topology, now_ms: u64) -> Result<Decision, Error> {
        let w = self.config.weights;
        self.best_feasible.clear();
        self.best_feasible.resize(topo.sites.len(), None);
        self.reachable.clear();
        self.reachable.resize(topo.sites.len(), None);
        let mut top: Vec<(usize, Cost)> = Vec::with_capacity(6);
        let mut rejected: Vec<(&'static str, usize)> = Vec::new();
        let mut samples: Vec<(usize, Rejection)> = Vec::new();
        let mut feasible = 0;
        let mut current_eval = None;
        for (i, p) in topo.paths.iter().enumerate() {
            let r = evaluate(topo, i, &w, now_ms);
            if self.current.is_some_and(|c| c.path == i) {
                current_eval = Some(r.clone());
            }
            match r {
                Ok(c) => {
                    feasible += 1;
                    self.reachable[p.site].get_or_insert(i);
                    let slot = &mut self.best_feasible[p.site];
                    if slot.is_none_or(|(_, best)| c.total_ms < best) {
                        *slot = Some((i, c.total_ms));
                    }
                    if top.len() < 5 || c.total_ms < top[top.len() - 1].1.total_ms {
                        let at = top.partition_point(|(_, t)| t.total_ms <= c.total_ms);
                        top.insert(at, (i, c));
                        top.truncate(5);
                    }
                }
                Err(rej) => {
                    if !rej.is_unreachable() {
                        self.reachable[p.site].get_or_insert(i);
                    }
                    match rejected.iter_mut().find(|(k, _)| *k == rej.kind()) {
                        Some((_, n)) => *n += 1,
                        None => rejected.push((rej.kind(), 1)),
                    }
                    if samples.len() < 10 {
                        samples.push((i, rej));
                    }
                }
            }
        }
        let explanation = |reason| Explanation {
            service: topo.service.name.clone(),
            scoring: topo.service.scoring,
            considered: topo.paths.len(),
            feasible,
            best: top
                .iter()
                .map(|(i, c)| Ranked {
                    site: topo.sites[topo.paths[*i].site].name.clone(),
                    path: topo.describe_path(*i),
                    segments: topo.paths[*i].segments.to_string(),
                    cost: *c,
                })
                .collect(),
            rejected: rejected.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            rejections: samples
                .iter()
                .map(|(i, r)| Refused {
                    site: topo.sites[topo.paths[*i].site].name.clone(),
                    path: topo.describe_path(*i),
                    why: r.clone(),
                })
                .collect(),
            reason,
        };
        let Some(&(best, best_cost)) = top.first() else {
            self.current = None;
            let summary = rejected
                .iter()
                .map(|(k, n)| format!("{n} by {k}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::NoCandidate {
                service: topo.service.name.clone(),
                summary,
            });
        };
        let (chosen, reason) = match (self.current, current_eval) {
            (None, _) | (Some(_), None) => (best, Reason::Initial),
            (Some(cur), Some(Err(because))) => {
                let from_site = topo.sites[topo.paths[cur.path].site].name.clone();
                (best, Reason::Failover { from_site, because })
            }
            (Some(cur), Some(Ok(cur_cost))) => {
                let needed_below_ms = cur_cost.total_ms * (1.0 - self.config.hysteresis);
                let held_for = now_ms.saturating_sub(cur.since_ms);
                if best == cur.path || best_cost.total_ms >= cur_cost.total_ms {
                    (cur.path, Reason::StillBest)
                } else if best_cost.total_ms < needed_below_ms
                    && held_for >= self.config.hold_down_ms
                {
                    (
                        best,
                        Reason::Improved {
                            previous_cost_ms: cur_cost.total_ms,
                        },
                    )
                } else {
                    let challenger = topo.sites[topo.paths[best].site].name.clone();
                    let hold_down_left_ms = if best_cost.total_ms < needed_below_ms {
                        self.config.hold_down_ms - held_for
                    } else {
                        0
                    };
                    (
                        cur.path,
                        Reason::Held {
                            challenger,
                            challenger_cost_ms: best_cost.total_ms,
                            needed_below_ms,
                            hold_down_left_ms,
                        },
                    )
                }
            }
        };
        if self.current.is_none_or(|c| c.path != chosen) {
            self.current = Some(Current {
                path: chosen,
                site: topo.paths[chosen].site,
                since_ms: now_ms,
            });
        }
        let cost = match evaluate(topo, chosen, &w, now_ms) {
            Ok(c) => c,
            // `chosen` is either `best` or the current path that just evaluated Ok.
            Err(_) => best_cost,
        };
        let site_index = topo.paths[chosen].site;
        Ok(Decision {
            site: topo.sites[site_index].name.clone(),
            site_index,
            path_index: chosen,
            segments: topo.paths[chosen].segments.clone(),
            cost,
            explanation: explanation(reason),
        })
    }

    /// The bucket a flow hash falls in.
    pub fn bucket_of(&self, flow_hash: u64) -> usize {
        // The splitmix64 finaliser spreads sequential or low-entropy hashes over the table.
        let mut z = flow_hash.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % self.buckets.len() as u64) as usize
    }

    /// Places a flow: a busy bucket keeps its site while that site is reachable (CATS
    /// R15–R17); an idle or orphaned bucket goes to the current choice. Call after
    /// [`PathSelector::decide`].
    //= https://datatracker.ietf.org/doc/html/draft-ietf-cats-usecases-requirements#section-5.4
    //# R16: all packets of one application flow go to the same instance unless it becomes
    //# unreachable. R17: no fine-grained per-flow state in network nodes.
    pub fn place_flow(&mut self, flow_hash: u64, now_ms: u64) -> Result<FlowPlacement, Error> {
        let current = self.current.ok_or(Error::NoCandidate {
            service: String::new(),
            summary: "no decision yet (call decide first)".into(),
        })?;
        let idle_ms = self.config.bucket_idle_ms;
        let i = self.bucket_of(flow_hash);
        let b = self.buckets[i];
        if b.site != NO_SITE && now_ms.saturating_sub(b.last_used_ms) < idle_ms {
            let site = b.site as usize;
            let path = self
                .best_feasible
                .get(site)
                .copied()
                .flatten()
                .map(|(p, _)| p)
                .or_else(|| self.reachable.get(site).copied().flatten());
            if let Some(path) = path {
                self.buckets[i].last_used_ms = now_ms;
                return Ok(FlowPlacement {
                    site,
                    path,
                    assigned: false,
                });
            }
        }
        let (site, path) = (current.site, current.path);
        self.buckets[i] = Bucket {
            site: site as u32,
            last_used_ms: now_ms,
        };
        Ok(FlowPlacement {
            site,
            path,
            assigned: true,
        })
    }

    /// Assigns every bucket a site for a data plane that hashes flows into buckets itself
    /// and reports, per bucket, whether a packet used it since the last call (`used`, one
    /// flag per bucket). The rule is [`PathSelector::place_flow`]'s: a bucket used within
    /// `bucket_idle_ms` keeps its site while that site is reachable; an idle or orphaned one
    /// follows the current choice. A bucket that is assigned but not used stays idle, so it
    /// keeps following the choice. `None` for a bucket: no site at all (no decision, or its
    /// site unreachable and nothing chosen). Call after [`PathSelector::decide`] (or after
    /// a failed decision, which leaves no choice: every idle bucket becomes `None`).
    pub fn assign_buckets(&mut self, used: &[bool], now_ms: u64) -> Vec<Option<usize>> {
        let idle_ms = self.config.bucket_idle_ms;
        let current = self.current.map(|c| c.site as u32).unwrap_or(NO_SITE);
        let reachable = &self.reachable;
        self.buckets
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                if used.get(i).copied().unwrap_or(false) && b.site != NO_SITE {
                    b.last_used_ms = now_ms;
                }
                let busy = b.last_used_ms != 0 && now_ms.saturating_sub(b.last_used_ms) < idle_ms;
                let still_reachable = reachable.get(b.site as usize).is_some_and(Option::is_some);
                if b.site == NO_SITE || !busy || !still_reachable {
                    b.site = current;
                    b.last_used_ms = 0;
                }
                (b.site != NO_SITE).then_some(b.site as usize)
            })
            .collect()
    }

    /// The candidate path a site's traffic takes now: the chosen path when the site is the
    /// current choice, else its best feasible path, else one on which it is reachable.
    pub fn path_for_site(&self, site: usize) -> Option<usize> {
        if let Some(c) = self.current.filter(|c| c.site == site) {
            return Some(c.path);
        }
        self.best_feasible
            .get(site)
            .copied()
            .flatten()
            .map(|(p, _)| p)
            .or_else(|| self.reachable.get(site).copied().flatten())
    }

    /// The number of buckets.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Entries the selector holds: fixed by the configuration and the number of sites,
    /// independent of how many flows it has placed.
    pub fn state_entries(&self) -> usize {
        self.buckets.len() + self.best_feasible.len() + self.reachable.len()
    }
}
