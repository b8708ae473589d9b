//! What every cpclink management API shares (the appliance's and the authority's): HTTPS
//! serving of an axum router with rustls, bearer tokens with roles, RFC 9457
//! `application/problem+json` errors and the `x-correlator` header echoed and logged.
//!
//! Roles nest: `viewer` reads, `operator` also acts on the running system (reload,
//! rotate), `admin` may do everything (tokens, revocation, escrow). A role may be scoped to
//! one tenant. Callers authenticate with an operator certificate or a signed token the
//! authority issued, or a token configured by the SHA-256 of its secret (never the secret);
//! see [`Access`].
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use cpclink_diagnostics::{ConfigText, Diagnostic};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod access;
pub mod metrics;
pub use access::{Access, Caller, Credentials, PeerCertificate, Refusal};

/// A role, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Reads, and acts on the running system.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// The role's name, as `[[api.token]].role` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("{other:?} is no role: viewer, operator or admin")),
        }
    }
}

/// A bearer token an API accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Who holds it (logged, and audited, with every request).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
}

/// The SHA-256 of a token, as `[[api.token]].sha256` holds it.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// `[api]` as written: where to listen and the tokens.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    listen: String,
    #[serde(default)]
    token: Vec<RawToken>,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    role: Role,
    sha256: String,
}

/// An API's validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Where it listens (HTTPS).
    pub listen: SocketAddr,
    /// The bearer tokens it accepts.
    pub tokens: Vec<ApiToken>,
}

impl RawApi {
    /// Validates the section, errors naming `text`'s file, the field, its line and the fix.
    pub fn check(self, text: &ConfigText) -> Result<ApiConfig, Diagnostic> {
        let listen = self.listen.parse().map_err(|_| {
            text.error_fix(
                "[api].listen",
                format!("{:?} is not an address with a port", self.listen),
                "write e.g. \"192.0.2.1:7443\" or \"[2001:db8::1]:7443\"",
            )
        })?;
        let mut tokens: Vec<ApiToken> = Vec::new();
        for (i, t) in self.token.into_iter().enumerate() {
            let sha256 = hex::decode(t.sha256.trim())
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| {
                    text.error_fix(
                        format!("[[api.token]][{i}].sha256"),
                        "is not 64 hex digits",
                        "write the token's SHA-256 in hex: printf %s \"$TOKEN\" | sha256sum",
                    )
                })?;
            if t.name.is_empty()
                || tokens
                    .iter()
                    .any(|o| o.name == t.name || o.sha256 == sha256)
            {
                return Err(text.error_fix(
                    format!("[[api.token]][{i}]"),
                    format!(
                        "{:?} is empty or listed twice (by name or by token)",
                        t.name
                    ),
                    "give every token its own name and its own secret",
                ));
            }
            tokens.push(ApiToken {
                name: t.name,
                role: t.role,
                sha256,
            });
        }
        Ok(ApiConfig { listen, tokens })
    }
}

/// An RFC 9457 problem, with the request's `x-correlator` echoed.
pub fn problem(headers: &HeaderMap, status: StatusCode, title: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/problem+json"),
    );
    echo(headers, r)
}

/// `r` with the request's `x-correlator` echoed.
pub fn echo(headers: &HeaderMap, mut r: Response) -> Response {
    if let Some(c) = headers.get("x-correlator") {
        r.headers_mut().insert("x-correlator", c.clone());
    }
    r
}

/// Serves `app` over HTTPS on `listen` until the runtime stops; returns the address bound.
/// Unknown routes answer 404 as a problem.
pub async fn serve(
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let app = app.fallback(|headers: HeaderMap| async move {
        problem(
            &headers,
            StatusCode::NOT_FOUND,
            "no such resource",
            "see the API's routes in its guide",
        )
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, from)) = listener.accept().await else {
                continue;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let stream = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("management API: TLS from {from} failed: {e}");
                        return;
                    }
                };
                // The handshake verified a presented certificate against the CA; which
                // caller it names is the route guard's question.
                let certificate = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|c| Arc::new(c.to_vec()));
                let app = app.layer(axum::Extension(PeerCertificate(certificate)));
                let service = hyper_util::service::TowerToHyperService::new(app);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!("management API: connection from {from}: {e}");
                }
            });
        }
    });
    tracing::info!("management API on https://{bound}");
    Ok(bound)
}

/// One route of an API, as the router serves it and the OpenAPI document lists it: both
/// come from one table ([`documented`]), so neither can miss a route the other has.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// The path in OpenAPI form, parameters in braces (`/v1/services/{name}`).
    pub path: &'static str,
    /// `get` or `post`.
    pub method: &'static str,
    /// The role it needs; `None`: open.
    pub role: Option<Role>,
    /// What it does, one line.
    pub summary: &'static str,
}

impl RouteSpec {
    /// A route: its path (OpenAPI form), method, role (`None`: open) and summary.
    pub const fn new(
        path: &'static str,
        method: &'static str,
        role: Option<Role>,
        summary: &'static str,
    ) -> Self {
        Self {
            path,
            method,
            role,
            summary,
        }
    }
}

/// A router serving `routes`, plus `GET /healthz` (open: the process answers) and
/// `GET /openapi.json`: an OpenAPI 3.1 document generated from the same table.
///
/// Every route with a role runs behind `access`'s guard: the handler runs only for a
/// caller whose role suffices, and finds it as `Extension<Caller>`.
pub fn documented<S: Clone + Send + Sync + 'static>(
    title: &str,
    access: &Access,
    mut routes: Vec<(RouteSpec, axum::routing::MethodRouter<S>)>,
) -> Router<S> {
    routes.insert(
        0,
        (
            RouteSpec::new("/healthz", "get", None, "the process answers"),
            axum::routing::get(|| async { "ok\n" }),
        ),
    );
    let document = openapi(title, routes.iter().map(|(spec, _)| *spec));
    let mut router = Router::new().route(
        "/openapi.json",
        axum::routing::get(move || {
            let document = document.clone();
            async move { axum::Json(document) }
        }),
    );
    for (spec, mut method_router) in routes {
        if let Some(role) = spec.role {
            let access = access.clone();
            method_router =
                method_router.route_layer(axum::middleware::from_fn(move |request, next| {
                    access.clone().guard(role, spec.path, request, next)
                }));
        }
        router = router.route(&axum_path(spec.path), method_router);
    }
    router
}

/// `/v1/services/{name}` in axum's form, `/v1/services/:name`.
fn axum_path(path: &str) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => format!(":{name}"),
                None => seg.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// The OpenAPI 3.1 document of `routes`: bearer authentication, each route's role
/// (`x-cpclink-role`), path parameters, and problem+json for every error.
pub fn openapi(title: &str, routes: impl IntoIterator<Item = RouteSpec>) -> serde_json::Value {
    let problem = serde_json::json!({
        "description": "RFC 9457 problem",
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    });
    let mut paths = serde_json::Map::new();
    for r in routes {
        let parameters: Vec<serde_json::Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                serde_json::json!({
                    "name": name, "in": "path", "required": true, "schema": { "type": "string" }
                })
            })
            .collect();
        let mut responses =
            serde_json::json!({ "200": { "description": "done" }, "default": problem });
        if r.role.is_some() {
            responses["401"] = serde_json::json!({
                "description": "no valid credential",
                "content": problem["content"].clone(),
            });
            responses["403"] = serde_json::json!({
                "description": "the caller's role or tenant scope does not cover this",
                "content": problem["content"].clone(),
            });
        }
        let operation = serde_json::json!({
            "summary": r.summary,
            "operationId": format!("{}{}", r.method, r.path.replace(['/', '{', '}'], "_")),
            "parameters": parameters,
            "security": if r.role.is_some() {
                serde_json::json!([{ "bearer": [] }, { "operatorCertificate": [] }])
            } else {
                serde_json::json!([])
            },
            "x-cpclink-role": r.role.map(Role::as_str),
            "responses": responses,
        });
        let entry = paths
            .entry(r.path.to_owned())
            .or_insert_with(|| serde_json::json!({}));
        entry[r.method] = operation;
    }
    serde_json::json!({
        "openapi": "3.1.0",
        "info": { "title": title, "version": env!("CARGO_PKG_VERSION") },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "operatorCertificate": { "type": "mutualTLS" }
            },
            "schemas": { "Problem": {
                "type": "object",
                "properties": {
                    "type": { "type": "string" }, "title": { "type": "string" },
                    "status": { "type": "integer" }, "detail": { "type": "string" }
                }
            } }
        },
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_route_with_its_role_and_parameters() {
        let routes = [
            RouteSpec::new("/healthz", "get", None, "alive"),
            RouteSpec::new(
                "/v1/services/{name}",
                "get",
                Some(Role::Viewer),
                "one service",
            ),
        ];
        let doc = openapi("t", routes);
        assert_eq!(doc["openapi"], "3.1.0");
        let svc = &doc["paths"]["/v1/services/{name}"]["get"];
        assert_eq!(svc["x-cpclink-role"], "viewer");
        assert_eq!(svc["parameters"][0]["name"], "name");
        assert!(svc["responses"]["403"].is_object());
        assert_eq!(
            doc["paths"]["/healthz"]["get"]["security"],
            serde_json::json!([])
        );
        assert_eq!(axum_path("/v1/services/{name}"), "/v1/services/:name");
    }
}
