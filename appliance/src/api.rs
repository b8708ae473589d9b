//! The management API: HTTPS/JSON on `[api].listen`, served with the appliance's key-plane
//! certificate (issued by the authority's CA, naming the appliance id), so `cpclink ctl`
//! and curl verify it against the CA they already trust.
//!
//! Callers present an operator certificate or a signed token the authority issued (checked
//! offline against its CA), or a bearer token `[[api.token]]` lists by its SHA-256. Roles
//! nest: `viewer` reads, `operator` also reloads, `admin` may do everything. A caller scoped
//! to a tenant may call an appliance of that tenant only. Errors are RFC 9457
//! `application/problem+json`; an `x-correlator` request header is echoed and logged.
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /healthz` | none | the process answers |
//! | `GET /readyz` | none | 200 once every peer routed to has a transmit SA on every worker |
//! | `GET /metrics` | viewer | Prometheus text: counters per worker, peers, SAs, decisions, metrics |
//! | `GET /v1/status` | viewer | the appliance's status (peers, SAs by SPI, routes, services) and counters |
//! | `GET /v1/peers` | viewer | peers: endpoint, state, prefixes, transmit SA per worker, path |
//! | `GET /v1/sas` | viewer | every SA the data plane holds: SPI, generation, age, packets, limits (never keys) |
//! | `GET /v1/services` | viewer | services, their placement, the last decisions, metric counters |
//! | `GET /v1/services/{name}` | viewer | one service and the explanation of its last decision |
//! | `POST /v1/reload` | operator | re-read the configuration file (as SIGHUP) |
//! | `GET /v1/stages` | viewer | time per stage inside each worker: count, p50, p99, p99.9, max (µs) |
//! | `POST /v1/stages` | admin | `{"sample_every": N}`: time one packet in N per stage (0: off, the default) |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use cpclink_dataplane::engine::Engine;

use cpclink_dataplane::engine::EngineStats;

use crate::appliance::{ApplianceHandle, ApplianceStatus};

mod stages;
pub use stages::{StageView, StagesReport, WorkerStages};

use cpclink_mgmt::metrics::{label, Registry};
use cpclink_mgmt::{echo, problem, Access, Caller, RouteSpec};
pub use cpclink_mgmt::{token_digest, ApiToken, Role};

/// The tenant this appliance serves, once known.
pub type TenantSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Clone)]
struct Api {
    handle: ApplianceHandle,
    engine: Arc<Engine>,
    access: Access,
    tenant: TenantSource,
}

/// Serves the API on `listen` until the runtime stops. Returns the address bound.
pub async fn serve(
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    handle: ApplianceHandle,
    engine: Arc<Engine>,
    access: Access,
    tenant: TenantSource,
) -> std::io::Result<SocketAddr> {
    let app = router(Api {
        handle,
        engine,
        access,
        tenant,
    });
    cpclink_mgmt::serve(listen, tls, app).await
}

fn router(api: Api) -> Router {
    let route = RouteSpec::new;
    cpclink_mgmt::documented(
        "cpclink appliance",
        &api.access,
        vec![
            (
                route(
                    "/readyz",
                    "get",
                    None,
                    "200 once every peer routed to has a transmit SA on every worker",
                ),
                get(ready),
            ),
            (
                route(
                    "/metrics",
                    "get",
                    Some(Role::Viewer),
                    "Prometheus exposition",
                ),
                get(metrics),
            ),
            (
                route(
                    "/v1/status",
                    "get",
                    Some(Role::Viewer),
                    "peers, SAs by SPI, routes, services and counters",
                ),
                get(status),
            ),
            (
                route(
                    "/v1/peers",
                    "get",
                    Some(Role::Viewer),
                    "peers: endpoint, state, prefixes, transmit SA per worker, path",
                ),
                get(peers),
            ),
            (
                route(
                    "/v1/sas",
                    "get",
                    Some(Role::Viewer),
                    "every SA the data plane holds: SPI, generation, age, packets, limits",
                ),
                get(sas),
            ),
            (
                route(
                    "/v1/services",
                    "get",
                    Some(Role::Viewer),
                    "services, placement, decisions",
                ),
                get(services),
            ),
            (
                route(
                    "/v1/services/{name}",
                    "get",
                    Some(Role::Viewer),
                    "one service and its last decision's explanation",
                ),
                get(service),
            ),
            (
                route(
                    "/v1/reload",
                    "post",
                    Some(Role::Operator),
                    "re-read the configuration file",
                ),
                post(reload),
            ),
            (
                route(
                    "/v1/stages",
                    "get",
                    Some(Role::Viewer),
                    "time per stage inside each worker (count, p50, p99, p99.9, max in µs)",
                ),
                get(stages::show),
            ),
            (
                route(
                    "/v1/stages",
                    "post",
                    Some(Role::Admin),
                    "turn per-stage sampling on ({\"sample_every\": N}) or off (0)",
                ),
                post(stages::set),
            ),
        ],
    )
    .with_state(api)
}

impl Api {
    /// The 403 for a caller scoped to another tenant than this appliance's (or to any
    /// tenant while this appliance does not know its own yet).
    fn in_scope(
        &self,
        headers: &HeaderMap,
        caller: &Caller,
        what: &str,
    ) -> Result<(), Box<Response>> {
        let Some(scope) = &caller.tenant else {
            return Ok(());
        };
        match (self.tenant)() {
            Some(t) if t == *scope => Ok(()),
            own => Err(Box::new(self.access.forbid(
                headers,
                caller,
                what,
                &format!(
                    "{} is scoped to tenant {scope}; this appliance serves {}",
                    caller.name,
                    own.as_deref().unwrap_or("a tenant not known yet")
                ),
            ))),
        }
    }

    /// The appliance's status, or the 503 to answer with while it stops.
    async fn appliance(&self, headers: &HeaderMap) -> Result<ApplianceStatus, Box<Response>> {
        self.handle.status().await.map_err(|e| {
            Box::new(problem(
                headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "stopping",
                &e.to_string(),
            ))
        })
    }

    /// The status and the data plane's counters.
    async fn with_counters(
        &self,
        headers: &HeaderMap,
    ) -> Result<(ApplianceStatus, EngineStats), Box<Response>> {
        let status = self.appliance(headers).await?;
        let counters = self.engine.snapshot().map_err(|e| {
            Box::new(problem(
                headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "data plane",
                &e.to_string(),
            ))
        })?;
        Ok((status, counters))
    }

    /// Every SA the data plane holds, with its counts.
    async fn with_sas(&self, headers: &HeaderMap) -> Result<Vec<SaView>, Box<Response>> {
        let status = self.appliance(headers).await?;
        let counters = self.engine.sa_counters().map_err(|e| {
            Box::new(problem(
                headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "data plane",
                &e.to_string(),
            ))
        })?;
        Ok(sa_views(&status.keys, &counters, crate::paths::now_ms()))
    }
}

async fn ready(State(api): State<Api>, headers: HeaderMap) -> Response {
    let status = match api.appliance(&headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let waiting: Vec<String> = status
        .routes
        .iter()
        .map(|r| r.peer.clone())
        .filter(|peer| {
            status
                .keys
                .peers
                .get(peer)
                .is_none_or(|p| p.tx.iter().any(Option::is_none))
        })
        .collect();
    if waiting.is_empty() {
        echo(&headers, "ready\n".into_response())
    } else {
        problem(
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready",
            &format!(
                "no transmit SA yet on every worker towards {}",
                waiting.join(", ")
            ),
        )
    }
}

async fn status(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.in_scope(&headers, &caller, "GET /v1/status") {
        return *r;
    }
    let (status, counters) = match api.with_counters(&headers).await {
        Ok(both) => both,
        Err(r) => return *r,
    };
    let body = serde_json::json!({
        "appliance": status,
        // Stage times (p50/p99/p99.9 per stage, all workers merged) are there only while
        // the engine samples them; otherwise the list is empty.
        "counters": {
            "total": counters.total(),
            "workers": counters.workers,
            "stages": counters.stage_times(),
        },
    });
    echo(&headers, Json(body).into_response())
}

async fn peers(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.in_scope(&headers, &caller, "GET /v1/peers") {
        return *r;
    }
    let status = match api.appliance(&headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let peer_paths = status.paths.as_ref().map(|p| &p.peer_paths);
    let peers: Vec<serde_json::Value> = status
        .keys
        .peers
        .iter()
        .map(|(name, p)| {
            serde_json::json!({
                "name": name,
                "index": p.peer,
                "endpoint": p.endpoint,
                "active": p.active,
                "revoked": p.revoked,
                "prefixes": p.prefixes,
                "tx": p.tx,
                "path": peer_paths.and_then(|paths| paths.get(name)),
            })
        })
        .collect();
    echo(&headers, Json(peers).into_response())
}

/// One SA as `GET /v1/sas` shows it: the data plane's counts, with what the key source
/// recorded when it installed the SA (an SA the data plane derived on demand has no such
/// record). Never key material.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SaView {
    /// The SPI, hex.
    pub spi: String,
    /// `tx` or `rx`.
    pub direction: &'static str,
    /// The peer at the other end.
    pub peer: String,
    /// The worker holding it.
    pub worker: usize,
    /// Its key generation (the SPI's top bit).
    pub generation: u8,
    /// Seconds since it was installed, when recorded.
    pub age_secs: Option<u64>,
    /// Its lifetime in seconds from installation, when it has one.
    pub lifetime_secs: Option<u64>,
    /// Packets sealed (tx) or delivered (rx).
    pub packets: u64,
    /// Receive only: packets refused (replayed, too old, failed ICV, IV out of range).
    pub refused: u64,
    /// The packet count at which it ends.
    pub hard_packets: u64,
}

/// The SA views of what the engine reports, joined with the key source's records.
pub fn sa_views(
    keys: &crate::keys::KeyingStatus,
    counters: &[cpclink_dataplane::engine::SaCounters],
    now_ms: u64,
) -> Vec<SaView> {
    let names: std::collections::HashMap<_, _> =
        keys.peers.iter().map(|(name, p)| (p.peer, name)).collect();
    counters
        .iter()
        .map(|c| {
            let direction = if c.transmit { "tx" } else { "rx" };
            let peer = names
                .get(&c.peer)
                .map_or_else(|| format!("#{}", c.peer.0), |n| (*n).clone());
            // The key source's records are keyed by SPI alone, and SPIs two peers allocated
            // may be equal: a record counts only if it is this SA's in every respect.
            let record = keys
                .sas
                .get(&c.spi)
                .filter(|r| r.direction == direction && r.worker == c.worker && r.peer == peer);
            SaView {
                spi: format!("0x{:08x}", c.spi.0),
                direction,
                peer,
                worker: c.worker,
                generation: (c.spi.0 >> 31) as u8,
                age_secs: record.map(|r| now_ms.saturating_sub(r.installed_ms) / 1000),
                lifetime_secs: record.and_then(|r| r.lifetime_secs),
                packets: c.packets,
                refused: c.refused,
                hard_packets: c.hard_packets,
            }
        })
        .collect()
}

async fn sas(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.in_scope(&headers, &caller, "GET /v1/sas") {
        return *r;
    }
    match api.with_sas(&headers).await {
        Ok(views) => echo(&headers, Json(views).into_response()),
        Err(r) => *r,
    }
}

async fn services(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.in_scope(&headers, &caller, "GET /v1/services") {
        return *r;
    }
    match api.appliance(&headers).await {
        Ok(s) => echo(&headers, Json(s.paths.unwrap_or_default()).into_response()),
        Err(r) => *r,
    }
}

async fn service(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.in_scope(&headers, &caller, "GET /v1/services/{name}") {
        return *r;
    }
    let paths = match api.appliance(&headers).await {
        Ok(s) => s.paths.unwrap_or_default(),
        Err(r) => return *r,
    };
    let Some(current) = paths.services.iter().find(|s| s.name == name) else {
        return problem(
            &headers,
            StatusCode::NOT_FOUND,
            "no such service",
            &format!(
                "{name:?} is not in [[services]]; this appliance places: {}",
                paths
                    .services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    };
    let last = paths.decisions.iter().rev().find(|d| d.service == name);
    echo(
        &headers,
        Json(serde_json::json!({ "service": current, "last_decision": last })).into_response(),
    )
}

async fn reload(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.in_scope(&headers, &caller, "POST /v1/reload") {
        return *r;
    }
    let who = caller.name;
    let file = match api.appliance(&headers).await {
        Ok(s) => std::path::PathBuf::from(s.config_file),
        Err(r) => return *r,
    };
    tracing::info!("reload of {} asked by {who}", file.display());
    match api.handle.reload_file(&file, &format!("api:{who}")).await {
        Ok(r) => echo(
            &headers,
            Json(serde_json::json!({
                "changed": r.changed,
                "mode": r.mode.map(|m| m.to_string()),
                "needs_restart": r.needs_restart,
                "applied": r.to_string(),
            }))
            .into_response(),
        ),
        Err(e) => problem(
            &headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload refused; the running configuration stays",
            &e.to_string(),
        ),
    }
}

async fn metrics(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.in_scope(&headers, &caller, "GET /metrics") {
        return *r;
    }
    let (status, counters) = match api.with_counters(&headers).await {
        Ok(both) => both,
        Err(r) => return *r,
    };
    let mut registry = Registry::new();
    // Every worker counter (packets, bytes, drops by reason, replay and authentication
    // rejections, derives), by its name in the JSON counters, as one family each.
    let workers: Vec<serde_json::Map<String, serde_json::Value>> = counters
        .workers
        .iter()
        .filter_map(|w| serde_json::to_value(w).ok()?.as_object().cloned())
        .collect();
    let names: Vec<String> = workers
        .first()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v.is_u64())
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    for name in &names {
        registry.counters(
            &format!("cpclink_worker_{name}"),
            &format!("the data plane's {name} counter, per worker"),
            workers.iter().enumerate().map(|(i, w)| {
                (
                    vec![label("worker", i)],
                    w.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0),
                )
            }),
        );
    }
    let keys = &status.keys;
    registry.gauge("cpclink_peers", "peers known", keys.peers.len() as u64);
    registry.gauges(
        "cpclink_peer_tx_sas",
        "workers holding a transmit SA towards each peer",
        keys.peers.iter().map(|(name, p)| {
            (
                vec![label("peer", name)],
                p.tx.iter().filter(|s| s.is_some()).count() as u64,
            )
        }),
    );
    registry.gauge(
        "cpclink_rx_sas",
        "receive SAs installed",
        keys.rx.len() as u64,
    );
    let now_ms = crate::paths::now_ms();
    let mut oldest = std::collections::BTreeMap::<(&str, &str), u64>::new();
    for r in keys.sas.values() {
        let age = now_ms.saturating_sub(r.installed_ms) / 1000;
        let e = oldest.entry((r.peer.as_str(), r.direction)).or_insert(0);
        *e = (*e).max(age);
    }
    registry.gauges(
        "cpclink_sa_age_seconds",
        "age of the oldest SA in use, per peer and direction",
        oldest.into_iter().map(|((peer, direction), age)| {
            (
                vec![label("peer", peer), label("direction", direction)],
                age,
            )
        }),
    );
    if let Ok(views) = api.with_sas(&headers).await {
        registry.counters(
            "cpclink_sa_packets",
            "packets sealed (tx) or delivered (rx) per SA",
            views.iter().map(|v| {
                (
                    vec![
                        label("spi", &v.spi),
                        label("direction", v.direction),
                        label("peer", &v.peer),
                        label("worker", v.worker),
                    ],
                    v.packets,
                )
            }),
        );
    }
    registry.gauge(
        "cpclink_rx_sas_retired",
        "receive SAs retired by rotations",
        keys.retired_rx.len() as u64,
    );
    registry.gauge(
        "cpclink_routes",
        "inner prefixes routed",
        status.routes.len() as u64,
    );
    registry.counter(
        "cpclink_reloads",
        "configuration reloads applied",
        status.reloads,
    );
    if let Some(p) = &status.paths {
        registry.counters(
            "cpclink_path_decisions",
            "path decisions kept (the last 64), per service",
            p.services.iter().map(|s| {
                (
                    vec![label("service", &s.name)],
                    p.decisions.iter().filter(|d| d.service == s.name).count() as u64,
                )
            }),
        );
        registry.counter(
            "cpclink_path_selector_runs",
            "path selector runs since start",
            p.decisions_made,
        );
        registry.counter(
            "cpclink_path_decision_microseconds",
            "time the path selector spent deciding since start, microseconds",
            p.decision_micros,
        );
        registry.counter(
            "cpclink_path_switches",
            "changes of a service's placement since start",
            p.switches,
        );
        registry.gauges(
            "cpclink_service_buckets",
            "affinity buckets per service and site",
            p.services.iter().flat_map(|s| {
                s.buckets.iter().map(|(site, n)| {
                    (
                        vec![label("service", &s.name), label("site", site)],
                        *n as u64,
                    )
                })
            }),
        );
        let outcomes = serde_json::to_value(&p.metrics)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        registry.counters(
            "cpclink_metric_advertisements",
            "compute-metric advertisements by outcome",
            outcomes
                .iter()
                .map(|(outcome, v)| (vec![label("outcome", outcome)], v.as_u64().unwrap_or(0))),
        );
    }
    echo(&headers, registry.into_response())
}

#[cfg(test)]
mod tests;
