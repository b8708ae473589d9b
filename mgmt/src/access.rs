//! Who is calling and what they may do: every route's role is checked here, from the same
//! table the OpenAPI document is written from, before its handler runs.
//!
//! A caller proves who it is with one of three credentials, tried in this order:
//! - a client certificate issued by the authority's CA for an operator (it names the role,
//!   and the tenant if scoped); an appliance's certificate names no role and counts as none;
//! - a bearer token the authority issued (signed, with a role, a tenant scope and an expiry);
//! - a bearer token configured in `[[api.token]]` by its SHA-256.
//!
//! Every refusal is logged and handed to the API's refusal sink (the authority audits them).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;

use crate::{problem, token_digest, ApiToken, Role};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// Who it is (logged, and audited, with every request).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one tenant it is scoped to; `None`: every tenant.
    pub tenant: Option<String>,
}

impl Caller {
    /// Whether the caller may see or act on something of `tenant`.
    pub fn may_see_tenant(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }
}

/// Credentials the authority issued: signed bearer tokens and operator certificates. The
/// key plane implements it with the CA's public key, so an appliance checks them offline.
pub trait Credentials: Send + Sync + std::fmt::Debug {
    /// The caller a bearer token names, or why it is refused (bad signature, expired,
    /// revoked, not one of the authority's).
    fn bearer(&self, token: &str) -> Result<Caller, String>;
    /// The caller an operator certificate names (it was verified against the CA during the
    /// TLS handshake); `None` for a certificate that names no operator role.
    fn certificate(&self, der: &[u8]) -> Option<Caller>;
}

/// A refused request, as the refusal sink hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Who asked, if known.
    pub by: Option<String>,
    /// The request (`POST /v1/rotate`).
    pub what: String,
    /// 401 or 403.
    pub status: u16,
    /// Why, in words.
    pub reason: String,
}

type RefusalSink = Arc<dyn Fn(Refusal) + Send + Sync>;

/// An API's access rules: the configured tokens, the authority's credentials if any, and
/// where refusals go.
#[derive(Clone)]
pub struct Access {
    tokens: Arc<Vec<ApiToken>>,
    credentials: Option<Arc<dyn Credentials>>,
    refusals: Option<RefusalSink>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("tokens", &self.tokens.len())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// The client certificate a connection presented (DER), set by [`crate::serve`] on every
/// request of that connection.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Option<Arc<Vec<u8>>>);

impl Access {
    /// Only the configured tokens.
    pub fn new(tokens: Vec<ApiToken>) -> Self {
        Self {
            tokens: Arc::new(tokens),
            credentials: None,
            refusals: None,
        }
    }

    /// Also accepts what the authority issued.
    pub fn with_credentials(mut self, credentials: Arc<dyn Credentials>) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Hands every refusal to `sink` as well as logging it.
    pub fn with_refusals(mut self, sink: impl Fn(Refusal) + Send + Sync + 'static) -> Self {
        self.refusals = Some(Arc::new(sink));
        self
    }

    /// Who is calling, from the connection's certificate or the bearer token; the reason if
    /// nobody known is.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        certificate: Option<&[u8]>,
    ) -> Result<Caller, String> {
        if let (Some(der), Some(credentials)) = (certificate, &self.credentials) {
            if let Some(caller) = credentials.certificate(der) {
                return Ok(caller);
            }
        }
        let Some(token) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return Err(
                "send Authorization: Bearer <token>, or a client certificate the authority issued"
                    .into(),
            );
        };
        let digest = token_digest(token);
        if let Some(t) = self.tokens.iter().find(|t| t.sha256 == digest) {
            return Ok(Caller {
                name: t.name.clone(),
                role: t.role,
                tenant: None,
            });
        }
        match &self.credentials {
            Some(credentials) => credentials.bearer(token),
            None => Err("the bearer token is not one this API knows".into()),
        }
    }

    /// Checks that the caller of a request may do `what`, which needs `role`.
    pub fn authorise(
        &self,
        headers: &HeaderMap,
        certificate: Option<&[u8]>,
        role: Role,
        what: &str,
    ) -> Result<Caller, Box<Response>> {
        let caller = match self.identify(headers, certificate) {
            Ok(c) => c,
            Err(reason) => {
                return Err(Box::new(self.refuse(
                    headers,
                    None,
                    what,
                    StatusCode::UNAUTHORIZED,
                    "authentication required",
                    &reason,
                )))
            }
        };
        if caller.role < role {
            let detail = format!(
                "{what} needs the {} role; {} has {}",
                role.as_str(),
                caller.name,
                caller.role.as_str()
            );
            return Err(Box::new(self.refuse(
                headers,
                Some(&caller),
                what,
                StatusCode::FORBIDDEN,
                "forbidden",
                &detail,
            )));
        }
        tracing::info!(
            correlator = correlator(headers),
            "management API: {what} by {}",
            caller.name
        );
        Ok(caller)
    }

    /// The 403 for a caller whose tenant scope does not cover what it asked for, logged and
    /// handed to the refusal sink like every refusal.
    pub fn forbid(&self, headers: &HeaderMap, caller: &Caller, what: &str, why: &str) -> Response {
        self.refuse(
            headers,
            Some(caller),
            what,
            StatusCode::FORBIDDEN,
            "forbidden",
            why,
        )
    }

    fn refuse(
        &self,
        headers: &HeaderMap,
        caller: Option<&Caller>,
        what: &str,
        status: StatusCode,
        title: &str,
        reason: &str,
    ) -> Response {
        let by = caller.map(|c| c.name.clone());
        tracing::warn!(
            correlator = correlator(headers),
            "management API: {what} refused to {}: {reason}",
            by.as_deref().unwrap_or("an unknown caller")
        );
        if let Some(sink) = &self.refusals {
            sink(Refusal {
                by,
                what: what.to_owned(),
                status: status.as_u16(),
                reason: reason.to_owned(),
            });
        }
        problem(headers, status, title, reason)
    }

    /// The middleware every route needing `role` runs behind: the caller is checked and put
    /// in the request's extensions for the handler (`Extension<Caller>`).
    pub(crate) async fn guard(
        self,
        role: Role,
        route: &'static str,
        mut request: Request,
        next: Next,
    ) -> Response {
        let what = format!("{} {}", request.method(), route);
        let certificate = request
            .extensions()
            .get::<PeerCertificate>()
            .and_then(|c| c.0.clone());
        match self.authorise(
            request.headers(),
            certificate.as_deref().map(Vec::as_slice),
            role,
            &what,
        ) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                next.run(request).await
            }
            Err(refused) => *refused,
        }
    }
}

fn correlator(headers: &HeaderMap) -> &str {
    headers
        .get("x-correlator")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::sync::Mutex;

    #[derive(Debug)]
    struct Issued;

    impl Credentials for Issued {
        fn bearer(&self, token: &str) -> Result<Caller, String> {
            match token {
                "signed-acme" => Ok(Caller {
                    name: "acme-noc".into(),
                    role: Role::Operator,
                    tenant: Some("acme".into()),
                }),
                _ => Err("not signed by the authority".into()),
            }
        }
        fn certificate(&self, der: &[u8]) -> Option<Caller> {
            (der == b"operator-cert").then(|| Caller {
                name: "alice".into(),
                role: Role::Admin,
                tenant: None,
            })
        }
    }

    fn bearer(token: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn each_credential_names_its_caller_and_every_refusal_reaches_the_sink() {
        let refused = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&refused);
        let access = Access::new(vec![ApiToken {
            name: "noc".into(),
            role: Role::Operator,
            sha256: token_digest("s3cret"),
        }])
        .with_credentials(Arc::new(Issued))
        .with_refusals(move |r| sink.lock().unwrap().push(r));
        let status = |r: Result<Caller, Box<Response>>| r.map(|c| c.name).map_err(|r| r.status());

        assert_eq!(
            status(access.authorise(&HeaderMap::new(), None, Role::Viewer, "GET /x")),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(access.authorise(&bearer("s3cret"), None, Role::Operator, "POST /x")),
            Ok("noc".into())
        );
        assert_eq!(
            status(access.authorise(&bearer("s3cret"), None, Role::Admin, "POST /y")),
            Err(StatusCode::FORBIDDEN)
        );
        let scoped = access
            .authorise(&bearer("signed-acme"), None, Role::Viewer, "GET /x")
            .unwrap();
        assert!(scoped.may_see_tenant("acme") && !scoped.may_see_tenant("globex"));
        assert_eq!(
            status(access.authorise(&bearer("forged"), None, Role::Viewer, "GET /x")),
            Err(StatusCode::UNAUTHORIZED)
        );
        // A certificate naming an operator wins over no token; another certificate (an
        // appliance's) falls back to the token.
        assert_eq!(
            status(access.authorise(&HeaderMap::new(), Some(b"operator-cert"), Role::Admin, "x")),
            Ok("alice".into())
        );
        assert_eq!(
            status(access.authorise(&bearer("s3cret"), Some(b"appliance"), Role::Viewer, "x")),
            Ok("noc".into())
        );

        let refused = refused.lock().unwrap();
        let seen: Vec<(Option<&str>, &str, u16)> = refused
            .iter()
            .map(|r| (r.by.as_deref(), r.what.as_str(), r.status))
            .collect();
        assert_eq!(
            seen,
            vec![
                (None, "GET /x", 401),
                (Some("noc"), "POST /y", 403),
                (None, "GET /x", 401),
            ]
        );
        assert!(refused[2].reason.contains("not signed"), "{:?}", refused[2]);
    }
}
