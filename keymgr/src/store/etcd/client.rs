//! HTTP/1.1 to etcd's JSON gateway, which every etcd member serves on its client port.
//!
//! Each request is one `POST` of a JSON body (see [`super::messages`]) answered by one JSON
//! body. Connections are kept open and reused; each carries one request at a time, so
//! concurrent requests open more of them, and at most [`MAX_IDLE`] wait for reuse.
//!
//! Failover: a request goes to the endpoint that answered last. When no connection to it can
//! be made (nothing was sent, so nothing can have been applied) the next endpoint is tried. A
//! request that was sent and got no answer (a member that is stopped still accepts
//! connections) is repeated elsewhere only when repeating it does no harm
//! ([`Rpc::RETRY_ELSEWHERE`]: reads, lease renewals); a repeated transaction could apply twice
//! or report a guard as taken by itself. Either way the next request starts at the next
//! endpoint, so one silent member does not stall every request after it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::messages::{GatewayError, Rpc};
use crate::{Error, Result};

/// How long a TCP connection to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest reply read; etcd's own request limit is 1.5 MiB, replies to scans are larger.
const MAX_REPLY: usize = 64 << 20;
/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 16;
/// The client port when a URL names none.
const DEFAULT_PORT: u16 = 2379;

/// A client of one etcd cluster, reached through any of its members' client URLs.
#[derive(Debug)]
pub(crate) struct EtcdClient {
    endpoints: Vec<Endpoint>,
    /// The index of the endpoint that answered last: requests start there.
    preferred: AtomicUsize,
}

impl EtcdClient {
    /// A client for the cluster at `urls` (`http://host:port`); connects lazily.
    pub(crate) fn new(urls: &[String]) -> Result<Self> {
        if urls.is_empty() {
            return Err(Error::Etcd {
                endpoint: "(none)".into(),
                operation: "connect".into(),
                reason:
                    "no endpoints given; list at least one client URL, e.g. http://127.0.0.1:2379"
                        .into(),
            });
        }
        let endpoints = urls
            .iter()
            .map(|url| {
                Endpoint::parse(url).map_err(|reason| Error::Etcd {
                    endpoint: url.clone(),
                    operation: "connect".into(),
                    reason,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            endpoints,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The client URLs, for messages.
    pub(crate) fn urls(&self) -> String {
        let urls: Vec<&str> = self.endpoints.iter().map(|e| e.url.as_str()).collect();
        urls.join(", ")
    }

    /// Sends `request` and decodes etcd's reply.
    pub(crate) async fn call<R: Rpc>(&self, request: &R) -> Result<R::Reply> {
        self.call_within(request, REQUEST_TIMEOUT).await
    }

    /// Sends `request`, waiting at most `timeout` for each endpoint's answer.
    pub(crate) async fn call_within<R: Rpc>(
        &self,
        request: &R,
        timeout: Duration,
    ) -> Result<R::Reply> {
        let fail = |endpoint: &str, reason: String| Error::Etcd {
            endpoint: endpoint.to_owned(),
            operation: request.describe(),
            reason,
        };
        let body = serde_json::to_vec(request)
            .map(Bytes::from)
            .map_err(|e| fail(&self.endpoints[0].url, format!("encoding the request: {e}")))?;
        let start = self.preferred.load(Ordering::Relaxed);
        let mut unreachable = Vec::new();
        for i in 0..self.endpoints.len() {
            let index = (start + i) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            match endpoint.exchange(R::PATH, body.clone(), timeout).await {
                Ok(reply) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return serde_json::from_slice(&reply).map_err(|e| {
                        fail(
                            &endpoint.url,
                            format!("undecodable reply ({e}): {}", excerpt(&reply)),
                        )
                    });
                }
                Err(Failure::Unreachable(reason)) => unreachable.push((endpoint, reason)),
                Err(Failure::Silent(reason)) => {
                    let next = (index + 1) % self.endpoints.len();
                    self.preferred.store(next, Ordering::Relaxed);
                    if !R::RETRY_ELSEWHERE || i + 1 == self.endpoints.len() {
                        return Err(fail(&endpoint.url, reason));
                    }
                    tracing::debug!(etcd = %endpoint.url, %reason, "trying the next etcd member");
                }
                Err(Failure::Failed(reason)) => return Err(fail(&endpoint.url, reason)),
            }
        }
        Err(match unreachable.as_slice() {
            [(endpoint, reason)] => fail(&endpoint.url, format!("{reason}; is etcd running?")),
            all => {
                let urls: Vec<&str> = all.iter().map(|(e, _)| e.url.as_str()).collect();
                let each: Vec<String> =
                    all.iter().map(|(e, r)| format!("{}: {r}", e.url)).collect();
                fail(
                    &urls.join(", "),
                    format!(
                        "no endpoint reachable ({}); is etcd running?",
                        each.join("; ")
                    ),
                )
            }
        })
    }
}

/// Why one endpoint did not answer.
enum Failure {
    /// No connection could be made: nothing was sent, another endpoint may be tried.
    Unreachable(String),
    /// The request was sent and no reply came: it may or may not have been applied.
    Silent(String),
    /// The request was sent, or etcd refused it: final.
    Failed(String),
}

/// One member's client URL with its idle connections.
#[derive(Debug)]
struct Endpoint {
    /// The URL as configured, for messages.
    url: String,
    /// `host:port`, to connect to and for the `Host` header.
    authority: String,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Endpoint {
    fn parse(url: &str) -> std::result::Result<Self, String> {
        let trimmed = url.trim();
        let rest =
            match trimmed.split_once("://") {
                Some(("http", rest)) => rest,
                Some(("https", _)) => return Err(
                    "https:// is not supported (no TLS to etcd yet); use the http:// client URL"
                        .into(),
                ),
                Some((scheme, _)) => {
                    return Err(format!("unknown scheme {scheme:?}; use http://host:port"))
                }
                None => trimmed,
            };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err("expected http://host:port".into());
        }
        let authority: hyper::http::uri::Authority = rest
            .parse()
            .map_err(|e| format!("{e}; expected http://host:port"))?;
        Ok(Self {
            url: url.to_owned(),
            authority: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(DEFAULT_PORT)
            ),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Posts `body` to `path`; the reply body when etcd answered 2xx.
    async fn exchange(
        &self,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> std::result::Result<Bytes, Failure> {
        let attempt = async {
            let mut request = self.request(path, body)?;
            // An idle connection the server has meanwhile closed hands the request back
            // unsent; then the next one, or a new one, carries it.
            while let Some(mut sender) = self.take_idle() {
                match sender.try_send_request(request).await {
                    Ok(response) => return self.finish(sender, response).await,
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => request = unsent,
                        None => return Err(lost(e.error())),
                    },
                }
            }
            let mut sender = self.connect().await?;
            match sender.send_request(request).await {
                Ok(response) => self.finish(sender, response).await,
                Err(e) => Err(lost(&e)),
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::Silent(format!(
                    "no reply within {:.1}s; a write may or may not have been applied",
                    timeout.as_secs_f64()
                )))
            })
    }

    fn request(
        &self,
        path: &str,
        body: Bytes,
    ) -> std::result::Result<Request<Full<Bytes>>, Failure> {
        Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| Failure::Failed(format!("building the request: {e}")))
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> std::result::Result<SendRequest<Full<Bytes>>, Failure> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| {
                Failure::Unreachable(format!(
                    "no connection within {}s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| Failure::Unreachable(connect_error(&e)))?;
        // Requests are single small writes; waiting to coalesce them only adds latency.
        // Failing to set the option costs latency, not correctness.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        let authority = self.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(etcd = %authority, error = %e, "etcd connection closed");
            }
        });
        Ok(sender)
    }

    /// Reads the reply, and keeps the connection for reuse once it is free again.
    async fn finish(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        response: Response<hyper::body::Incoming>,
    ) -> std::result::Result<Bytes, Failure> {
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| Failure::Failed(format!("reading the reply: {e}")))?
            .to_bytes();
        if sender.ready().await.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
        if status.is_success() {
            return Ok(body);
        }
        Err(Failure::Failed(
            match serde_json::from_slice::<GatewayError>(&body) {
                Ok(e) if !(e.message.is_empty() && e.error.is_empty()) => e.reason(),
                _ => format!("HTTP {status}: {}", excerpt(&body)),
            },
        ))
    }
}

/// A connection failure as a person reads it: `connection refused`, not `os error 111`.
fn connect_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused
        | ErrorKind::ConnectionReset
        | ErrorKind::TimedOut
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::AddrNotAvailable => e.kind().to_string(),
        _ => e.to_string(),
    }
}

/// A request that was sent (or may have been) and got no reply.
fn lost(e: &hyper::Error) -> Failure {
    Failure::Silent(format!(
        "connection lost before the reply ({e}); a write may or may not have been applied"
    ))
}

/// The start of a body, for an error message.
fn excerpt(body: &[u8]) -> String {
    const SHOWN: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN)]);
    let text = text.trim();
    if body.len() > SHOWN {
        format!("{text}…")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_or_without_scheme_and_port() {
        let e = Endpoint::parse("http://127.0.0.1:2379/").unwrap();
        assert_eq!(e.authority, "127.0.0.1:2379");
        assert_eq!(Endpoint::parse("etcd-1").unwrap().authority, "etcd-1:2379");
        assert_eq!(
            Endpoint::parse("http://[::1]:2380").unwrap().authority,
            "[::1]:2380"
        );
        assert!(Endpoint::parse("https://etcd:2379")
            .unwrap_err()
            .contains("http://"));
        assert!(Endpoint::parse("http://etcd:2379/v3").is_err());
        assert!(Endpoint::parse("ftp://etcd").is_err());
        assert!(Endpoint::parse("http://").is_err());
    }

    #[test]
    fn no_endpoints_is_an_error_that_says_what_to_list() {
        let e = EtcdClient::new(&[]).unwrap_err().to_string();
        assert!(e.contains("http://127.0.0.1:2379"), "{e}");
    }
}
