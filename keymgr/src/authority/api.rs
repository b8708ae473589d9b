//! The authority's management API (HTTPS with the authority's certificate; operator
//! certificates, signed tokens the authority issued, or configured tokens, with roles and
//! tenant scopes; see `cpclink-mgmt`). Writes go through the same code as the admin
//! socket's requests, audited with the caller's name (`api:NAME`); every refusal is audited
//! too.
//!
//! A caller scoped to a tenant sees only that tenant's appliances and prefixes, may revoke
//! only its appliances and mint enrolment tokens and credentials only for it; what spans
//! every tenant (rotation, policy, escrow, the audit log) needs an unscoped caller.
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /healthz` | none | the process answers |
//! | `GET /metrics` | viewer | Prometheus: directory, connections, revocations, rotations, audit lines, refusals |
//! | `GET /v1/appliances` | viewer | the directory: every appliance, its state and prefixes |
//! | `GET /v1/prefixes` | viewer | prefix assignments |
//! | `GET /v1/rules` | viewer | the policy: which appliances may talk |
//! | `PUT /v1/rules` | admin | replace the policy: `{"rules": [{"a": {..}, "b": {..}, "same_tenant": bool}]}` |
//! | `GET /v1/audit` | viewer | audit lines, paged: `?from=LINE&limit=N` |
//! | `GET /v1/audit/verify` | viewer | the audit chain verified: lines and head |
//! | `POST /v1/tokens` | admin | an enrolment token: `{"appliance", "centre", "tenant", "ttl_secs", "prefixes"}` |
//! | `GET /v1/tokens` | viewer | enrolment tokens minted, each `unused`, `spent`, `expired` or `revoked` |
//! | `POST /v1/tokens/{id}/revoke` | admin | revoke an enrolment token before it is redeemed |
//! | `POST /v1/credentials` | admin | an operator credential: `{"name", "role", "tenant", "ttl_secs", "kind": "token" or "certificate"}` |
//! | `POST /v1/appliances/{id}/revoke` | admin | revoke an appliance everywhere |
//! | `POST /v1/appliances/{id}/escrow` | admin | open the appliance's escrowed master keys |
//! | `POST /v1/rotate` | operator | order every appliance to rotate now |

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use cpclink_mgmt::metrics::label;
use cpclink_mgmt::{echo, problem, Access, Caller, Role, RouteSpec};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::Authority;
use crate::audit::AuditEvent;
use crate::credentials::{self, OperatorClaims};
use crate::directory::Rule;
use crate::prefix::InnerPrefix;
use crate::proto::{AdminReply, AdminRequest};

#[derive(Clone)]
struct Api {
    authority: Authority,
    access: Access,
}

/// The longest page `GET /v1/audit` answers.
const MAX_AUDIT_PAGE: usize = 1000;

/// The authority's routes over `authority`, callers checked by `access` (to which the
/// authority's credentials and the audit of refusals are added). On a replica that does not
/// lead, every write is answered 503 naming the leader's API.
pub(super) fn router(authority: Authority, access: Access) -> Router {
    let follower = axum::middleware::from_fn_with_state(authority.clone(), follower_writes);
    routes(authority, access).layer(follower)
}

/// Lets reads through on any replica, and writes only on the leader: elsewhere a 503
/// problem naming the leader's API URL (not a redirect: the operator's client then sees
/// why, and a credential may be meant for one replica's address).
async fn follower_writes(
    State(authority): State<Authority>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method();
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        return next.run(request).await;
    }
    let Some(refusal) = authority.not_leading().await else {
        return next.run(request).await;
    };
    let mut response = problem(
        request.headers(),
        StatusCode::SERVICE_UNAVAILABLE,
        "not the leader",
        &refusal,
    );
    if let Some(url) = authority.leader_api().await {
        if let Ok(value) = axum::http::HeaderValue::from_str(&url) {
            response.headers_mut().insert("cpclink-leader", value);
        }
    }
    response
}

fn routes(authority: Authority, access: Access) -> Router {
    let access = authority.api_access(access);
    let route = RouteSpec::new;
    let viewer = Some(Role::Viewer);
    let admin = Some(Role::Admin);
    cpclink_mgmt::documented(
        "cpclink key authority",
        &access,
        vec![
            (
                route("/metrics", "get", viewer, "Prometheus exposition"),
                get(metrics),
            ),
            (
                route(
                    "/v1/appliances",
                    "get",
                    viewer,
                    "the directory: appliances and their state",
                ),
                get(appliances),
            ),
            (
                route("/v1/prefixes", "get", viewer, "prefix assignments"),
                get(prefixes),
            ),
            (route("/v1/rules", "get", viewer, "the policy"), get(rules)),
            (
                route("/v1/rules", "put", admin, "replace the policy"),
                put(set_rules),
            ),
            (
                route(
                    "/v1/audit",
                    "get",
                    viewer,
                    "audit lines, paged (?from=&limit=)",
                ),
                get(audit_page),
            ),
            (
                route("/v1/audit/verify", "get", viewer, "verify the audit chain"),
                get(verify_audit),
            ),
            (
                route("/v1/tokens", "post", admin, "mint an enrolment token"),
                post(create_token),
            ),
            (
                route(
                    "/v1/tokens",
                    "get",
                    viewer,
                    "enrolment tokens and their state",
                ),
                get(list_tokens),
            ),
            (
                route(
                    "/v1/tokens/{id}/revoke",
                    "post",
                    admin,
                    "revoke an unused enrolment token",
                ),
                post(revoke_token),
            ),
            (
                route(
                    "/v1/credentials",
                    "post",
                    admin,
                    "issue an operator token or certificate",
                ),
                post(issue_credential),
            ),
            (
                route(
                    "/v1/appliances/{id}/revoke",
                    "post",
                    admin,
                    "revoke an appliance everywhere",
                ),
                post(revoke),
            ),
            (
                route(
                    "/v1/appliances/{id}/escrow",
                    "post",
                    admin,
                    "open an appliance's escrowed master keys",
                ),
                post(escrow),
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
    .with_state(Api { authority, access })
}

impl Authority {
    /// `access` with this authority's operator credentials accepted and every refusal
    /// audited.
    fn api_access(&self, access: Access) -> Access {
        let access = match credentials::OperatorCredentials::new(&self.inner.ca_cert) {
            Ok(c) => access.with_credentials(std::sync::Arc::new(c)),
            Err(e) => {
                tracing::error!("management API: operator credentials unusable: {e}");
                access
            }
        };
        let authority = self.clone();
        access.with_refusals(move |r| {
            let authority = authority.clone();
            tokio::spawn(async move {
                let event = AuditEvent::ApiRefused {
                    by: r.by,
                    what: r.what,
                    status: r.status,
                    reason: r.reason,
                };
                if let Err(e) = authority.audit(event).await {
                    tracing::error!("audit of a refused API request failed: {e}");
                }
            });
        })
    }
}

/// `api:NAME`, as the audit log records an API caller.
fn by(caller: &Caller) -> String {
    format!("api:{}", caller.name)
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

/// A JSON body, or the 400 naming the field serde stumbled on and the shape expected.
fn body<T: DeserializeOwned>(
    headers: &HeaderMap,
    bytes: &[u8],
    shape: &str,
) -> Result<T, Box<Response>> {
    serde_json::from_slice(bytes).map_err(|e| {
        Box::new(problem(
            headers,
            StatusCode::BAD_REQUEST,
            "malformed body",
            &format!("{e}; send {shape}"),
        ))
    })
}

impl Api {
    /// The 403 for a tenant-scoped caller asking for what spans every tenant.
    fn unscoped(
        &self,
        headers: &HeaderMap,
        caller: &Caller,
        what: &str,
    ) -> Result<(), Box<Response>> {
        match &caller.tenant {
            None => Ok(()),
            Some(t) => Err(Box::new(self.access.forbid(
                headers,
                caller,
                what,
                &format!(
                    "{what} spans every tenant; {} is scoped to {t}",
                    caller.name
                ),
            ))),
        }
    }

    /// The 403 for a caller whose scope does not cover `tenant`.
    fn in_scope(
        &self,
        headers: &HeaderMap,
        caller: &Caller,
        what: &str,
        tenant: &str,
    ) -> Result<(), Box<Response>> {
        if caller.may_see_tenant(tenant) {
            return Ok(());
        }
        Err(Box::new(self.access.forbid(
            headers,
            caller,
            what,
            &format!(
                "{what} concerns tenant {tenant}; {} is scoped to {}",
                caller.name,
                caller.tenant.as_deref().unwrap_or("-")
            ),
        )))
    }

    /// The audit log's lines, or the 409 naming why it cannot be read.
    async fn audit_records(
        &self,
        headers: &HeaderMap,
    ) -> Result<Vec<crate::audit::AuditRecord>, Box<Response>> {
        self.authority.audit_records().await.map_err(|e| {
            Box::new(problem(
                headers,
                StatusCode::CONFLICT,
                "audit log unreadable",
                &e.to_string(),
            ))
        })
    }

    /// The tenant of appliance `id`, if it is listed.
    async fn tenant_of(&self, id: &str) -> Option<String> {
        self.authority
            .directory()
            .await
            .appliances
            .get(id)
            .map(|e| e.tenant.clone())
    }
}

async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Response {
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
    let (audit_lines, kinds) = api.authority.audit_counts().await;
    let mut registry = cpclink_mgmt::metrics::Registry::new();
    registry.gauge(
        "cpclink_directory_version",
        "the directory's version",
        version,
    );
    registry.gauge("cpclink_appliances", "appliances listed", appliances as u64);
    registry.gauge(
        "cpclink_appliances_revoked",
        "appliances revoked",
        revoked as u64,
    );
    registry.gauge(
        "cpclink_appliances_connected",
        "appliances connected now",
        connected as u64,
    );
    registry.counter("cpclink_rotations", "rotations ordered", rotation);
    registry.counter("cpclink_audit_lines", "lines in the audit log", audit_lines);
    // Key-plane events (enrolments, tokens, grants of credentials, revocations, rotations
    // confirmed, refusals) are the audit log's lines by kind.
    registry.counters(
        "cpclink_audit_events",
        "audit log lines by event kind",
        kinds
            .into_iter()
            .map(|(kind, n)| (vec![label("kind", kind)], n)),
    );
    echo(&headers, registry.into_response())
}

async fn appliances(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    match api
        .authority
        .admin(AdminRequest::Status, &by(&caller))
        .await
    {
        AdminReply::Status {
            version,
            rotation,
            mut listed,
            ..
        } if caller.tenant.is_some() => {
            listed.retain(|a| caller.may_see_tenant(&a.entry.tenant));
            let revoked = listed.iter().filter(|a| a.entry.revoked).count();
            let connected = listed.iter().filter(|a| a.connected).count();
            let reply = AdminReply::Status {
                version,
                appliances: listed.len(),
                revoked,
                rotation,
                connected,
                listed,
            };
            answer(&headers, reply)
        }
        reply => answer(&headers, reply),
    }
}

async fn prefixes(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    match api
        .authority
        .admin(AdminRequest::ListPrefixes, &by(&caller))
        .await
    {
        AdminReply::Prefixes(mut records) if caller.tenant.is_some() => {
            let directory = api.authority.directory().await;
            records.retain(|r| {
                directory
                    .appliances
                    .get(&r.appliance)
                    .is_some_and(|e| caller.may_see_tenant(&e.tenant))
            });
            answer(&headers, AdminReply::Prefixes(records))
        }
        reply => answer(&headers, reply),
    }
}

async fn rules(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.unscoped(&headers, &caller, "GET /v1/rules") {
        return *r;
    }
    let rules = api.authority.directory().await.rules;
    echo(
        &headers,
        Json(serde_json::json!({ "rules": rules })).into_response(),
    )
}

/// The body of `PUT /v1/rules`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesOrder {
    rules: Vec<Rule>,
}

async fn set_rules(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    if let Err(r) = api.unscoped(&headers, &caller, "PUT /v1/rules") {
        return *r;
    }
    let order: RulesOrder = match body(
        &headers,
        &bytes,
        r#"{"rules": [{"a": {"tenant": T}, "b": {"centre": C}, "same_tenant": false}]}"#,
    ) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let reply = api
        .authority
        .admin(AdminRequest::SetRules(order.rules), &by(&caller))
        .await;
    answer(&headers, reply)
}

/// The query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditPage {
    #[serde(default)]
    from: usize,
    limit: Option<usize>,
}

async fn audit_page(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    page: Result<Query<AuditPage>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = api.unscoped(&headers, &caller, "GET /v1/audit") {
        return *r;
    }
    let Ok(Query(page)) = page else {
        return problem(
            &headers,
            StatusCode::BAD_REQUEST,
            "malformed query",
            "from and limit are line counts: ?from=0&limit=100",
        );
    };
    let limit = page.limit.unwrap_or(100).min(MAX_AUDIT_PAGE);
    let lines = match api.audit_records(&headers).await {
        Ok(lines) => lines,
        Err(r) => return *r,
    };
    let total = lines.len();
    let shown: Vec<_> = lines.into_iter().skip(page.from).take(limit).collect();
    let next = (page.from + shown.len() < total).then_some(page.from + shown.len());
    echo(
        &headers,
        Json(
            serde_json::json!({ "total": total, "from": page.from, "next": next, "lines": shown }),
        )
        .into_response(),
    )
}

async fn rotate(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.unscoped(&headers, &caller, "POST /v1/rotate") {
        return *r;
    }
    answer(
        &headers,
        api.authority
            .admin(AdminRequest::Rotate, &by(&caller))
            .await,
    )
}

async fn revoke(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let what = format!("POST /v1/appliances/{id}/revoke");
    if let Some(tenant) = api.tenant_of(&id).await {
        if let Err(r) = api.in_scope(&headers, &caller, &what, &tenant) {
            return *r;
        }
    } else if let Err(r) = api.unscoped(&headers, &caller, &what) {
        // An id that is not listed: a scoped caller learns nothing about other tenants.
        return *r;
    }
    answer(
        &headers,
        api.authority
            .admin(AdminRequest::Revoke { appliance: id }, &by(&caller))
            .await,
    )
}

async fn escrow(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let what = format!("POST /v1/appliances/{id}/escrow");
    if let Err(r) = api.unscoped(&headers, &caller, &what) {
        return *r;
    }
    match api.authority.escrowed_keys(&id, &by(&caller)).await {
        Ok(Some((epoch, keys))) => {
            let generation = keys.current_generation();
            let hex_of = |g: u8| keys.key(g).map(hex::encode);
            echo(
                &headers,
                Json(serde_json::json!({
                    "appliance": id,
                    "epoch": epoch,
                    "current_generation": generation,
                    "master_keys": [hex_of(0), hex_of(1)],
                }))
                .into_response(),
            )
        }
        Ok(None) => problem(
            &headers,
            StatusCode::NOT_FOUND,
            "nothing escrowed",
            &format!("{id} has escrowed no master keys (not enrolled, or never connected)"),
        ),
        Err(e) => problem(
            &headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            "escrow not opened",
            &e.to_string(),
        ),
    }
}

async fn verify_audit(State(api): State<Api>, headers: HeaderMap) -> Response {
    match api.authority.verify_audit().await {
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

async fn list_tokens(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.unscoped(&headers, &caller, "GET /v1/tokens") {
        return *r;
    }
    let records = match api.audit_records(&headers).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let now = super::now_secs();
    let mut tokens = Vec::new();
    for r in records {
        let AuditEvent::TokenCreated {
            token_id,
            appliance,
            by,
            tenant,
            expires,
        } = r.event
        else {
            continue;
        };
        let state = match api.authority.token_state(&token_id).await {
            Ok("unused") if expires != 0 && expires <= now => "expired",
            Ok(state) => state,
            Err(e) => {
                return problem(
                    &headers,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store unreadable",
                    &e.to_string(),
                )
            }
        };
        tokens.push(serde_json::json!({
            "id": token_id, "appliance": appliance, "tenant": tenant, "created_by": by,
            "created_ms": r.time, "expires": expires, "state": state,
        }));
    }
    echo(
        &headers,
        Json(serde_json::json!({ "tokens": tokens })).into_response(),
    )
}

async fn revoke_token(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let what = format!("POST /v1/tokens/{id}/revoke");
    if let Err(r) = api.unscoped(&headers, &caller, &what) {
        return *r;
    }
    match api.authority.revoke_token(&id, &by(&caller)).await {
        Ok(()) => echo(
            &headers,
            Json(serde_json::json!({ "revoked": id })).into_response(),
        ),
        Err(e) => problem(
            &headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            "not revoked",
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

async fn create_token(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let order: TokenOrder = match body(
        &headers,
        &bytes,
        r#"{"appliance": ID, "centre": C, "tenant": T, "ttl_secs": N, "prefixes": ["10.1.0.0/24"]}"#,
    ) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    if let Err(r) = api.in_scope(&headers, &caller, "POST /v1/tokens", &order.tenant) {
        return *r;
    }
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
            &by(&caller),
        )
        .await;
    answer(&headers, reply)
}

/// The body of `POST /v1/credentials`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialOrder {
    name: String,
    role: Role,
    tenant: Option<String>,
    ttl_secs: Option<u64>,
    #[serde(default)]
    kind: CredentialKind,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum CredentialKind {
    #[default]
    Token,
    Certificate,
}

async fn issue_credential(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let order: CredentialOrder = match body(
        &headers,
        &bytes,
        r#"{"name": N, "role": "viewer"|"operator"|"admin", "tenant": T, "ttl_secs": S, "kind": "token"|"certificate"}"#,
    ) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let what = "POST /v1/credentials";
    // A scoped admin issues only within its tenant: never an unscoped credential.
    if let Some(scope) = &caller.tenant {
        if order.tenant.as_deref() != Some(scope) {
            return api.access.forbid(
                &headers,
                &caller,
                what,
                &format!(
                    "{} is scoped to {scope}; give \"tenant\": \"{scope}\"",
                    caller.name
                ),
            );
        }
    }
    let valid_name = !order.name.is_empty()
        && order.name.len() <= 64
        && order
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if !valid_name {
        return problem(
            &headers,
            StatusCode::BAD_REQUEST,
            "malformed body",
            "name: 1 to 64 characters of letters, digits, '-', '_', '.', '@'",
        );
    }
    let ttl = order.ttl_secs.unwrap_or(12 * 3600);
    if ttl == 0 || ttl > credentials::MAX_TTL_SECS {
        return problem(
            &headers,
            StatusCode::BAD_REQUEST,
            "malformed body",
            &format!("ttl_secs: give 1 to {} seconds", credentials::MAX_TTL_SECS),
        );
    }
    match api
        .authority
        .issue_credential(
            &order.name,
            order.role,
            order.tenant.as_deref(),
            ttl,
            order.kind == CredentialKind::Certificate,
            &by(&caller),
        )
        .await
    {
        Ok(issued) => echo(&headers, Json(issued).into_response()),
        Err(e) => problem(
            &headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            "not issued",
            &e.to_string(),
        ),
    }
}

/// What `POST /v1/credentials` answers: a token, or a certificate with its key (PEM).
#[derive(Debug, serde::Serialize)]
pub(super) struct IssuedCredential {
    id: String,
    name: String,
    role: Role,
    tenant: Option<String>,
    expires: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_pem: Option<String>,
}

impl Authority {
    /// Issues an operator credential, audited as `by` asked.
    async fn issue_credential(
        &self,
        name: &str,
        role: Role,
        tenant: Option<&str>,
        ttl_secs: u64,
        certificate: bool,
        by: &str,
    ) -> crate::Result<IssuedCredential> {
        let expires = super::now_secs().saturating_add(ttl_secs);
        let mut issued = IssuedCredential {
            id: String::new(),
            name: name.to_owned(),
            role,
            tenant: tenant.map(str::to_owned),
            expires,
            token: None,
            certificate_pem: None,
            key_pem: None,
        };
        if certificate {
            let days = ttl_secs.div_ceil(86_400);
            let cert = self.inner.ca.issue_operator(name, role, tenant, days)?;
            issued.id = crate::pki::serial_of(&cert.cert)?;
            issued.certificate_pem = Some(crate::pki::cert_pem(&cert.cert));
            issued.key_pem = Some(crate::pki::key_pem(&cert.key));
        } else {
            issued.id = hex::encode(*crate::seal::random_bytes::<8>()?);
            let claims = OperatorClaims {
                id: issued.id.clone(),
                name: name.to_owned(),
                role,
                tenant: tenant.map(str::to_owned),
                expires,
            };
            issued.token = Some(credentials::issue_token(&self.inner.ca.key_der(), &claims)?);
        }
        self.audit(AuditEvent::CredentialIssued {
            id: issued.id.clone(),
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            tenant: issued.tenant.clone(),
            credential: if certificate { "certificate" } else { "token" }.to_owned(),
            expires,
            by: by.to_owned(),
        })
        .await?;
        Ok(issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthorityConfig;
    use axum::body::Body;
    use axum::http::Request;
    use cpclink_mgmt::{token_digest, ApiToken};
    use std::path::PathBuf;
    use tower::ServiceExt as _;

    struct Lab {
        authority: Authority,
        router: Router,
        audit: PathBuf,
    }

    /// A real authority (redb store, its QUIC endpoint on loopback) with two enrolled
    /// appliances of two tenants, and its API router with a token per role.
    async fn lab(dir: &std::path::Path) -> Lab {
        std::fs::write(dir.join("kek"), "22".repeat(32)).unwrap();
        let cfg = AuthorityConfig::on_loopback(dir.join("authority"), dir.join("kek"));
        let authority = Authority::start(&cfg).await.unwrap();
        for (id, tenant) in [("acme-1", "acme"), ("globex-1", "globex")] {
            let token = authority
                .mint_token(id, id, tenant, std::time::Duration::from_secs(60))
                .unwrap();
            let (_key, csr) = crate::pki::appliance_csr(id).unwrap();
            authority
                .enrol(
                    &token,
                    id,
                    &csr,
                    "127.0.0.1:1".into(),
                    Vec::new(),
                    Vec::new(),
                )
                .await
                .unwrap();
        }
        let tokens = [
            ("v", Role::Viewer),
            ("o", Role::Operator),
            ("a", Role::Admin),
        ]
        .map(|(secret, role)| ApiToken {
            name: format!("{}-token", role.as_str()),
            role,
            sha256: token_digest(secret),
        });
        let audit = dir.join("authority/audit.jsonl");
        Lab {
            router: router(authority.clone(), Access::new(tokens.to_vec())),
            authority,
            audit,
        }
    }

    impl Lab {
        async fn call(
            &self,
            token: &str,
            method: &str,
            uri: &str,
            body: &str,
        ) -> (StatusCode, String) {
            let mut request = Request::builder().method(method).uri(uri);
            if !token.is_empty() {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let r = self
                .router
                .clone()
                .oneshot(request.body(Body::from(body.to_owned())).unwrap())
                .await
                .unwrap();
            let status = r.status();
            let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        }

        fn audited(&self, kind: &str) -> Vec<serde_json::Value> {
            crate::audit::records(&self.audit)
                .unwrap()
                .into_iter()
                .map(|r| serde_json::to_value(r.event).unwrap())
                .filter(|e| e["kind"] == kind)
                .collect()
        }

        /// Waits for the spawned audit of refusals to reach the log.
        async fn refusals(&self, n: usize) -> Vec<serde_json::Value> {
            for _ in 0..100 {
                let seen = self.audited("api_refused");
                if seen.len() >= n {
                    return seen;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            self.audited("api_refused")
        }
    }

    #[tokio::test]
    async fn every_route_answers_each_role_as_documented_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let lab = lab(dir.path()).await;
        let (_, doc) = lab.call("", "GET", "/openapi.json", "").await;
        let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        let rotation_before = lab.audited("rotation_ordered").len();
        let mut refused = 0;
        for (path, methods) in doc["paths"].as_object().unwrap() {
            for (method, op) in methods.as_object().unwrap() {
                let uri = path.replace("{id}", "acme-1");
                let need = op["x-cpclink-role"].as_str();
                for (token, role) in [
                    ("", None),
                    ("v", Some("viewer")),
                    ("o", Some("operator")),
                    ("a", Some("admin")),
                ] {
                    let (status, body) = lab.call(token, &method.to_uppercase(), &uri, "").await;
                    let rank =
                        |r: &str| ["viewer", "operator", "admin"].iter().position(|x| *x == r);
                    let expect_refused = match (need, role) {
                        (None, _) => None,
                        (Some(_), None) => Some(StatusCode::UNAUTHORIZED),
                        (Some(n), Some(r)) if rank(r) < rank(n) => Some(StatusCode::FORBIDDEN),
                        _ => None,
                    };
                    match expect_refused {
                        Some(code) => {
                            refused += 1;
                            assert_eq!(status, code, "{method} {uri} as {role:?}: {body}");
                            assert!(body.contains("\"status\""), "problem+json: {body}");
                        }
                        None => assert!(
                            status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                            "{method} {uri} as {role:?} refused: {status} {body}"
                        ),
                    }
                }
            }
        }
        let refusals = lab.refusals(refused).await;
        assert_eq!(refusals.len(), refused, "every refusal is audited");
        assert!(refusals.iter().any(|r| r["what"] == "POST /v1/rotate"
            && r["by"] == "viewer-token"
            && r["status"] == 403));
        // The admin's rotate and the operator's went through; the viewer's and the
        // anonymous one changed nothing.
        assert_eq!(lab.audited("rotation_ordered").len(), rotation_before + 2);
        assert!(lab
            .audited("rotation_ordered")
            .iter()
            .all(|r| r["by"].as_str().unwrap().starts_with("api:")));
        lab.authority.shutdown();
    }

    #[tokio::test]
    async fn issued_credentials_carry_role_and_tenant_scope() {
        let dir = tempfile::tempdir().unwrap();
        let lab = lab(dir.path()).await;
        let (status, body) = lab
            .call(
                "a",
                "POST",
                "/v1/credentials",
                r#"{"name": "acme-noc", "role": "admin", "tenant": "acme", "ttl_secs": 600}"#,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let issued: serde_json::Value = serde_json::from_str(&body).unwrap();
        let acme = issued["token"].as_str().unwrap().to_owned();
        assert_eq!(lab.audited("credential_issued")[0]["by"], "api:admin-token");

        let (status, body) = lab.call(&acme, "GET", "/v1/appliances", "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.contains("acme-1") && !body.contains("globex-1"),
            "{body}"
        );
        let (status, _) = lab
            .call(&acme, "POST", "/v1/appliances/globex-1/revoke", "")
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!lab.authority.directory().await.appliances["globex-1"].revoked);
        for (method, uri) in [
            ("POST", "/v1/rotate"),
            ("GET", "/v1/rules"),
            ("GET", "/v1/audit"),
            ("POST", "/v1/appliances/acme-1/escrow"),
        ] {
            let (status, body) = lab.call(&acme, method, uri, "").await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {body}");
            assert!(body.contains("spans every tenant"), "{body}");
        }
        // A scoped admin cannot issue beyond its tenant, nor an unscoped credential.
        let (status, _) = lab
            .call(
                &acme,
                "POST",
                "/v1/credentials",
                r#"{"name": "x", "role": "viewer"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, body) = lab
            .call(&acme, "POST", "/v1/appliances/acme-1/revoke", "")
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(lab.authority.directory().await.appliances["acme-1"].revoked);
        assert_eq!(lab.audited("revoked")[0]["by"], "api:acme-noc");
        let refusals = lab.refusals(6).await;
        assert!(
            refusals.iter().all(|r| r["by"] == "acme-noc"),
            "{refusals:?}"
        );

        // A forged or tampered token is unknown.
        let tampered = format!("{}x", &acme[..acme.len() - 1]);
        let (status, _) = lab.call(&tampered, "GET", "/v1/appliances", "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        lab.authority.shutdown();
    }

    #[tokio::test]
    async fn enrolment_tokens_are_listed_and_a_revoked_one_never_enrols() {
        let dir = tempfile::tempdir().unwrap();
        let lab = lab(dir.path()).await;
        let (status, body) = lab
            .call(
                "a",
                "POST",
                "/v1/tokens",
                r#"{"appliance": "dc9", "centre": "dc9"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let token: AdminReply = serde_json::from_str(&body).unwrap();
        let AdminReply::Token(token) = token else {
            panic!("{body}")
        };
        let listed = |body: &str| -> Vec<(String, String)> {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            v["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["appliance"] == "dc9")
                .map(|t| {
                    (
                        t["id"].as_str().unwrap().to_owned(),
                        t["state"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        };
        let (_, body) = lab.call("v", "GET", "/v1/tokens", "").await;
        let tokens = listed(&body);
        assert_eq!(tokens.len(), 1, "{body}");
        assert_eq!(tokens[0].1, "unused");
        let id = tokens[0].0.clone();
        let (status, _) = lab
            .call("o", "POST", &format!("/v1/tokens/{id}/revoke"), "")
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "revoking a token needs an admin"
        );
        let (status, body) = lab
            .call("a", "POST", &format!("/v1/tokens/{id}/revoke"), "")
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, body) = lab.call("v", "GET", "/v1/tokens", "").await;
        assert_eq!(listed(&body)[0].1, "revoked");
        let (_key, csr) = crate::pki::appliance_csr("dc9").unwrap();
        let refused = lab
            .authority
            .enrol(
                &token,
                "dc9",
                &csr,
                "127.0.0.1:1".into(),
                Vec::new(),
                Vec::new(),
            )
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("revoked"), "{refused}");
        assert!(!lab
            .authority
            .directory()
            .await
            .appliances
            .contains_key("dc9"));
        assert_eq!(lab.audited("token_revoked")[0]["by"], "api:admin-token");
        // A redeemed token cannot be revoked: its appliance can.
        let (_, body) = lab.call("v", "GET", "/v1/tokens", "").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let spent: Vec<&str> = v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "spent")
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert!(
            spent.is_empty(),
            "tokens minted without audit are not listed: {body}"
        );
        lab.authority.shutdown();
    }

    #[tokio::test]
    async fn malformed_bodies_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let lab = lab(dir.path()).await;
        for (uri, body, expect) in [
            (
                "/v1/tokens",
                r#"{"appliance": "dc9"}"#,
                "missing field `centre`",
            ),
            (
                "/v1/tokens",
                r#"{"appliance": "dc9", "centre": "dc9", "prefixes": ["10.9.0.1/24"]}"#,
                "prefixes[0]: 10.9.0.1/24",
            ),
            (
                "/v1/tokens",
                r#"{"appliance": "dc9", "centre": "dc9", "colour": 1}"#,
                "unknown field `colour`",
            ),
            (
                "/v1/credentials",
                r#"{"name": "n", "role": "root"}"#,
                "unknown variant `root`",
            ),
            (
                "/v1/credentials",
                r#"{"name": "n", "role": "viewer", "ttl_secs": 0}"#,
                "ttl_secs",
            ),
            (
                "/v1/credentials",
                r#"{"name": "a b", "role": "viewer"}"#,
                "name:",
            ),
        ] {
            let (status, body) = lab.call("a", "POST", uri, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert!(body.contains(expect), "{uri}: {body}");
        }
        let (status, body) = lab
            .call(
                "a",
                "PUT",
                "/v1/rules",
                r#"{"rules": [{"a": {"colour": "x"}}]}"#,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("unknown field `colour`"), "{body}");
        let (status, body) = lab.call("a", "GET", "/v1/audit?from=x", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

        let (status, body) = lab
            .call(
                "a",
                "POST",
                "/v1/tokens",
                r#"{"appliance": "dc9", "centre": "dc9", "prefixes": ["10.9.0.0/24"]}"#,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("cpt"), "{body}");
        assert_eq!(
            lab.audited("token_created").last().unwrap()["by"],
            "api:admin-token"
        );
        let (status, body) = lab.call("a", "GET", "/v1/audit?from=1&limit=2", "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["lines"].as_array().unwrap().len(), 2);
        assert_eq!(page["lines"][0]["seq"], 2);
        assert_eq!(page["next"], 3);
        lab.authority.shutdown();
    }
}
