//! The management API: HTTPS/JSON on `[api].listen`, served with the appliance's key-plane
//! certificate (issued by the authority's CA, naming the appliance id), so `cpclink ctl`
//! and curl verify it against the CA they already trust.
//!
//! Clients present a bearer token (`Authorization: Bearer …`); `[[api.token]]` lists the
//! SHA-256 of each with a name and a role. Roles nest: `viewer` reads, `operator` also
//! reloads, `admin` may do everything. Errors are RFC 9457 `application/problem+json`; an
//! `x-correlator` request header is echoed and logged with the request.
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /healthz` | none | the process answers |
//! | `GET /readyz` | none | 200 once every peer routed to has a transmit SA on every worker |
//! | `GET /metrics` | viewer | Prometheus text: counters per worker, peers, SAs, decisions, metrics |
//! | `GET /v1/status` | viewer | the appliance's status (peers, SAs by SPI, routes, services) and counters |
//! | `GET /v1/services` | viewer | services, their placement, the last decisions, metric counters |
//! | `GET /v1/services/{name}` | viewer | one service and the explanation of its last decision |
//! | `POST /v1/reload` | operator | re-read the configuration file (as SIGHUP) |

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cpclink_dataplane::engine::Engine;

use cpclink_dataplane::engine::EngineStats;

use crate::appliance::{ApplianceHandle, ApplianceStatus};

use cpclink_mgmt::{echo, problem, RouteSpec, Tokens};
pub use cpclink_mgmt::{token_digest, ApiToken, Role};

#[derive(Clone)]
struct Api {
    handle: ApplianceHandle,
    engine: Arc<Engine>,
    tokens: Tokens,
}

/// Serves the API on `listen` until the runtime stops. Returns the address bound.
pub async fn serve(
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    handle: ApplianceHandle,
    engine: Arc<Engine>,
    tokens: Vec<ApiToken>,
) -> std::io::Result<SocketAddr> {
    let app = router(Api {
        handle,
        engine,
        tokens: Tokens::new(tokens),
    });
    cpclink_mgmt::serve(listen, tls, app).await
}

fn router(api: Api) -> Router {
    let route = RouteSpec::new;
    cpclink_mgmt::documented(
        "cpclink appliance",
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
        ],
    )
    .with_state(api)
}

impl Api {
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

async fn status(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api
        .tokens
        .authorise(&headers, Role::Viewer, "GET /v1/status")
    {
        return *r;
    }
    let (status, counters) = match api.with_counters(&headers).await {
        Ok(both) => both,
        Err(r) => return *r,
    };
    let body = serde_json::json!({
        "appliance": status,
        "counters": { "total": counters.total(), "workers": counters.workers },
    });
    echo(&headers, Json(body).into_response())
}

async fn services(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api
        .tokens
        .authorise(&headers, Role::Viewer, "GET /v1/services")
    {
        return *r;
    }
    match api.appliance(&headers).await {
        Ok(s) => echo(&headers, Json(s.paths.unwrap_or_default()).into_response()),
        Err(r) => *r,
    }
}

async fn service(State(api): State<Api>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = api
        .tokens
        .authorise(&headers, Role::Viewer, "GET /v1/services/{name}")
    {
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

async fn reload(State(api): State<Api>, headers: HeaderMap) -> Response {
    let who = match api
        .tokens
        .authorise(&headers, Role::Operator, "POST /v1/reload")
    {
        Ok(who) => who,
        Err(r) => return *r,
    };
    let file = match api.appliance(&headers).await {
        Ok(s) => std::path::PathBuf::from(s.config_file),
        Err(r) => return *r,
    };
    tracing::info!("reload of {} asked by {who}", file.display());
    match api.handle.reload_file(&file).await {
        Ok(r) => echo(
            &headers,
            Json(serde_json::json!({
                "changed": r.changed,
                "needs_restart": r.needs_restart,
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

async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.tokens.authorise(&headers, Role::Viewer, "GET /metrics") {
        return *r;
    }
    let (status, counters) = match api.with_counters(&headers).await {
        Ok(both) => both,
        Err(r) => return *r,
    };
    let mut out = String::new();
    // Every worker counter, by its name in the final JSON counters, as one family each.
    let workers: Vec<serde_json::Value> = counters
        .workers
        .iter()
        .map(|w| serde_json::to_value(w).unwrap_or_default())
        .collect();
    let mut names: Vec<String> = workers
        .first()
        .and_then(|w| w.as_object())
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v.is_u64())
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for name in &names {
        let _ = writeln!(out, "# TYPE cpclink_worker_{name} counter");
        for (i, w) in workers.iter().enumerate() {
            let v = w.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0);
            let _ = writeln!(out, "cpclink_worker_{name}_total{{worker=\"{i}\"}} {v}");
        }
    }
    let _ = writeln!(out, "# TYPE cpclink_peers gauge");
    let _ = writeln!(out, "cpclink_peers {}", status.keys.peers.len());
    let _ = writeln!(out, "# TYPE cpclink_rx_sas gauge");
    let _ = writeln!(out, "cpclink_rx_sas {}", status.keys.rx.len());
    let _ = writeln!(out, "# TYPE cpclink_routes gauge");
    let _ = writeln!(out, "cpclink_routes {}", status.routes.len());
    let _ = writeln!(out, "# TYPE cpclink_reloads counter");
    let _ = writeln!(out, "cpclink_reloads_total {}", status.reloads);
    if let Some(p) = &status.paths {
        let _ = writeln!(out, "# TYPE cpclink_path_decisions counter");
        for s in &p.services {
            let n = p.decisions.iter().filter(|d| d.service == s.name).count();
            let _ = writeln!(
                out,
                "cpclink_path_decisions_total{{service=\"{}\"}} {n}",
                s.name
            );
        }
        let _ = writeln!(out, "# TYPE cpclink_service_buckets gauge");
        for s in &p.services {
            for (site, n) in &s.buckets {
                let _ = writeln!(
                    out,
                    "cpclink_service_buckets{{service=\"{}\",site=\"{site}\"}} {n}",
                    s.name
                );
            }
        }
        let _ = writeln!(out, "# TYPE cpclink_metric_advertisements counter");
        if let Some(m) = serde_json::to_value(&p.metrics)
            .ok()
            .and_then(|v| v.as_object().cloned())
        {
            for (outcome, v) in m {
                let _ = writeln!(
                    out,
                    "cpclink_metric_advertisements_total{{outcome=\"{outcome}\"}} {}",
                    v.as_u64().unwrap_or(0)
                );
            }
        }
    }
    let _ = writeln!(out, "# TYPE cpclink_build_info gauge");
    let _ = writeln!(
        out,
        "cpclink_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let mut r = out.into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    echo(&headers, r)
}
