//! The authority's management API (HTTPS with the authority's certificate, bearer tokens
//! with roles; see `cpclink-mgmt`). Every route is a request the admin socket also takes,
//! answered by the same code, so what the API does is audited as the socket's requests
//! are; the token holder's name is who asked.
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /healthz` | none | the process answers |
//! | `GET /metrics` | viewer | Prometheus text: directory, connections, revocations, rotations, audit lines |
//! | `GET /v1/appliances` | viewer | the directory: every appliance, its state and prefixes |
//! | `GET /v1/prefixes` | viewer | prefix assignments |
//! | `GET /v1/audit/verify` | viewer | the audit chain verified: lines and head |
//! | `POST /v1/tokens` | admin | an enrolment token: `{"appliance", "centre", "tenant", "ttl_secs", "prefixes"}` |
//! | `POST /v1/appliances/{id}/revoke` | admin | revoke an appliance everywhere |
//! | `POST /v1/rotate` | operator | order every appliance to rotate now |

use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cpclink_mgmt::{echo, problem, Role, RouteSpec, Tokens};
use serde::Deserialize;

use super::Authority;
use crate::prefix::InnerPrefix;
use crate::proto::{AdminReply, AdminRequest};

#[derive(Clone)]
struct Api {
    authority: Authority,
    tokens: Tokens,
    audit: PathBuf,
}

/// The authority's routes over `authority`, its audit log at `audit`.
pub(super) fn router(authority: Authority, tokens: Tokens, audit: PathBuf) -> Router {
    let route = RouteSpec::new;
    cpclink_mgmt::documented(
        "cpclink authority",
        vec![
            (
                route(
                    "/metrics",
                    "get",
                    Some(Role::Viewer),
                    "Prometheus exposition: directory, connections, revocations, rotations, audit",
                ),
                get(metrics),
            ),
            (
                route(
                    "/v1/appliances",
                    "get",
                    Some(Role::Viewer),
                    "the directory: every appliance, its state and prefixes",
                ),
                get(appliances),
            ),
            (
                route(
                    "/v1/prefixes",
                    "get",
                    Some(Role::Viewer),
                    "prefix assignments",
                ),
                get(prefixes),
            ),
            (
                route(
                    "/v1/audit/verify",
                    "get",
                    Some(Role::Viewer),
                    "the audit chain verified",
                ),
                get(verify_audit),
            ),
            (
                route(
                    "/v1/tokens",
                    "post",
                    Some(Role::Admin),
                    "mint an enrolment token",
                ),
                post(create_token),
            ),
            (
                route(
                    "/v1/appliances/{id}/revoke",
                    "post",
                    Some(Role::Admin),
                    "revoke an appliance everywhere",
                ),
                post(revoke),
            ),
            (
                route(
                    "/v1/rotate",
                    "post",
                    Some(Role::Operator),
                    "order every appliance to rotate now",
                ),
                post(rotate),
            ),
        ],
    )
    .with_state(Api {
        authority,
        tokens,
        audit,
    })
}

/// An admin reply as the API answers it: an error reply is a 422 problem.
fn answer(headers: &HeaderMap, reply: AdminReply) -> Response {
    match reply {
        AdminReply::Error(reason) => problem(
            headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            "refused",
            &reason,
        ),
        reply => echo(headers, Json(reply).into_response()),
    }
}

async fn ask(
    api: &Api,
    headers: &HeaderMap,
    role: Role,
    what: &str,
    req: AdminRequest,
) -> Response {
    match api.tokens.authorise(headers, role, what) {
        Ok(who) => answer(
            headers,
            api.authority.admin(req, &format!("api:{who}")).await,
        ),
        Err(r) => *r,
    }
}

async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.tokens.authorise(&headers, Role::Viewer, "GET /metrics") {
        return *r;
    }
    let AdminReply::Status {
        version,
        appliances,
        revoked,
        rotation,
        connected,
        ..
    } = api.authority.status().await
    else {
        return problem(&headers, StatusCode::SERVICE_UNAVAILABLE, "no status", "-");
    };
    let audit_lines = crate::audit::verify(&api.audit).map_or(0, |v| v.lines);
    let mut out = String::new();
    for (name, kind, value) in [
        ("cpclink_directory_version", "gauge", version),
        ("cpclink_appliances", "gauge", appliances as u64),
        ("cpclink_appliances_revoked", "gauge", revoked as u64),
        ("cpclink_appliances_connected", "gauge", connected as u64),
        ("cpclink_rotations", "counter", rotation),
        ("cpclink_audit_lines", "counter", audit_lines),
    ] {
        let series = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_owned()
        };
        out += &format!("# TYPE {name} {kind}\n{series} {value}\n");
    }
    out += &format!(
        "# TYPE cpclink_build_info gauge\ncpclink_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut r = out.into_response();
    r.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    echo(&headers, r)
}

async fn appliances(State(api): State<Api>, headers: HeaderMap) -> Response {
    ask(
        &api,
        &headers,
        Role::Viewer,
        "GET /v1/appliances",
        AdminRequest::Status,
    )
    .await
}

async fn prefixes(State(api): State<Api>, headers: HeaderMap) -> Response {
    ask(
        &api,
        &headers,
        Role::Viewer,
        "GET /v1/prefixes",
        AdminRequest::ListPrefixes,
    )
    .await
}

async fn rotate(State(api): State<Api>, headers: HeaderMap) -> Response {
    ask(
        &api,
        &headers,
        Role::Operator,
        "POST /v1/rotate",
        AdminRequest::Rotate,
    )
    .await
}

async fn revoke(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let what = format!("POST /v1/appliances/{id}/revoke");
    ask(
        &api,
        &headers,
        Role::Admin,
        &what,
        AdminRequest::Revoke { appliance: id },
    )
    .await
}

async fn verify_audit(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api
        .tokens
        .authorise(&headers, Role::Viewer, "GET /v1/audit/verify")
    {
        return *r;
    }
    match crate::audit::verify(&api.audit) {
        Ok(v) => echo(
            &headers,
            Json(serde_json::json!({ "intact": true, "lines": v.lines, "head": v.head }))
                .into_response(),
        ),
        Err(e) => problem(
            &headers,
            StatusCode::CONFLICT,
            "audit chain broken",
            &e.to_string(),
        ),
    }
}

/// The body of `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenOrder {
    appliance: String,
    centre: String,
    #[serde(default = "default_tenant")]
    tenant: String,
    ttl_secs: Option<u64>,
    #[serde(default)]
    prefixes: Vec<String>,
}

fn default_tenant() -> String {
    "default".into()
}

async fn create_token(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let who = match api
        .tokens
        .authorise(&headers, Role::Admin, "POST /v1/tokens")
    {
        Ok(who) => who,
        Err(r) => return *r,
    };
    // Malformed bodies name the field serde stumbled on.
    let order: TokenOrder = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(e) => {
            return problem(
                &headers,
                StatusCode::BAD_REQUEST,
                "malformed body",
                &format!(
                    "{e}; send {{\"appliance\": ID, \"centre\": C, \"tenant\": T, \"ttl_secs\": N, \"prefixes\": [\"10.1.0.0/24\"]}}"
                ),
            )
        }
    };
    let mut prefixes = Vec::with_capacity(order.prefixes.len());
    for (i, p) in order.prefixes.iter().enumerate() {
        match p.parse::<InnerPrefix>() {
            Ok(p) => prefixes.push(p),
            Err(reason) => {
                return problem(
                    &headers,
                    StatusCode::BAD_REQUEST,
                    "malformed body",
                    &format!("prefixes[{i}]: {reason}"),
                )
            }
        }
    }
    let reply = api
        .authority
        .admin(
            AdminRequest::CreateToken {
                appliance: order.appliance,
                centre: order.centre,
                tenant: order.tenant,
                ttl_secs: order.ttl_secs,
                prefixes,
            },
            &format!("api:{who}"),
        )
        .await;
    answer(&headers, reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthorityConfig, StoreConfig};
    use cpclink_mgmt::{token_digest, ApiToken};

    async fn api(dir: &std::path::Path) -> Api {
        std::fs::write(dir.join("kek"), "22".repeat(32)).unwrap();
        let cfg = AuthorityConfig {
            listen: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            state_dir: dir.join("authority"),
            kek_file: dir.join("kek"),
            rotation_interval_secs: 86_400,
            cert_days: 1,
            token_ttl_secs: 600,
            store: StoreConfig::Redb { path: None },
            rules: Vec::new(),
            api: None,
        };
        Api {
            authority: Authority::start(&cfg).await.unwrap(),
            tokens: Tokens::new(vec![ApiToken {
                name: "root".into(),
                role: Role::Admin,
                sha256: token_digest("t"),
            }]),
            audit: dir.join("authority/audit.jsonl"),
        }
    }

    async fn order(api: &Api, body: &str) -> (StatusCode, String) {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer t".parse().unwrap());
        let r = create_token(State(api.clone()), headers, Bytes::from(body.to_owned())).await;
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn malformed_token_orders_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path()).await;
        let (status, body) = order(&api, r#"{"appliance": "dc9"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("missing field `centre`"), "{body}");
        let (status, body) = order(
            &api,
            r#"{"appliance": "dc9", "centre": "dc9", "prefixes": ["10.9.0.1/24"]}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("prefixes[0]: 10.9.0.1/24"), "{body}");
        let (status, body) = order(
            &api,
            r#"{"appliance": "dc9", "centre": "dc9", "colour": 1}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("unknown field `colour`"), "{body}");
        let (status, body) = order(
            &api,
            r#"{"appliance": "dc9", "centre": "dc9", "prefixes": ["10.9.0.0/24"]}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("cpt"), "{body}");
        let audit = std::fs::read_to_string(dir.path().join("authority/audit.jsonl")).unwrap();
        assert!(
            audit.contains("api:root"),
            "the order is audited with who gave it"
        );
        api.authority.shutdown();
    }
}
