//! `cpclink ctl`: the command line over an appliance's management API (HTTPS, bearer
//! token). The address, the CA, the server's name and the token come from flags or from
//! `CPCLINK_API_URL`, `CPCLINK_API_CA`, `CPCLINK_API_NAME` and `CPCLINK_API_TOKEN`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use serde_json::Value;

use crate::error::Error;

/// Arguments of `cpclink ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The API, e.g. https://192.0.2.1:7443 (or CPCLINK_API_URL).
    #[arg(long, global = true)]
    url: Option<String>,
    /// The authority's CA certificate, PEM (or CPCLINK_API_CA).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// The name the appliance's certificate carries: its appliance id (or CPCLINK_API_NAME).
    #[arg(long, global = true)]
    name: Option<String>,
    /// A bearer token listed in the appliance's [[api.token]] (or CPCLINK_API_TOKEN).
    #[arg(long, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Peers, their endpoints and SAs, routes, counters and services, like `wg show`.
    Status,
    /// Services, where each goes, the last decisions and the metric counters.
    Services,
    /// One service and the selector's explanation of its last decision.
    Explain {
        /// The service's name.
        service: String,
    },
    /// Re-read the appliance's configuration file (needs the operator role).
    Reload,
    /// The Prometheus exposition, as a scraper reads it.
    Metrics,
    /// The API's OpenAPI 3.1 document (appliance or authority).
    Openapi,
    /// Authority: every appliance in the directory, its state and prefixes.
    Appliances,
    /// Authority: prefix assignments.
    Prefixes,
    /// Authority: mint an enrolment token (admin); the same order as `keymgr token create`.
    Token(super::keymgr::TokenOrder),
    /// Authority: revoke an appliance everywhere (admin).
    Revoke {
        /// The appliance id.
        appliance: String,
    },
    /// Authority: order every appliance to rotate now (operator).
    Rotate,
    /// Authority: verify the audit log's hash chain.
    AuditVerify,
}

struct Client {
    url: String,
    host: String,
    port: u16,
    name: String,
    ca: PathBuf,
    token: String,
}

fn setting(flag: Option<String>, env: &str, arg: &'static str) -> Result<String, Error> {
    flag.or_else(|| std::env::var(env).ok())
        .ok_or_else(|| Error::BadArgument {
            arg,
            reason: format!("missing; give {arg} or set {env}"),
        })
}

impl Client {
    fn from(args: &CtlArgs) -> Result<Self, Error> {
        let url = setting(args.url.clone(), "CPCLINK_API_URL", "--url")?;
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| Error::BadArgument {
                arg: "--url",
                reason: format!("{url:?}: the API speaks HTTPS only; write https://HOST:PORT"),
            })?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let addr: std::net::SocketAddr = authority.parse().map_err(|_| Error::BadArgument {
            arg: "--url",
            reason: format!("{authority:?} is not ADDRESS:PORT (IPv6 in brackets)"),
        })?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            host: addr.ip().to_string(),
            port: addr.port(),
            name: setting(args.name.clone(), "CPCLINK_API_NAME", "--name")?,
            ca: PathBuf::from(setting(
                args.ca.as_ref().map(|p| p.display().to_string()),
                "CPCLINK_API_CA",
                "--ca",
            )?),
            token: setting(args.token.clone(), "CPCLINK_API_TOKEN", "--token")?,
        })
    }

    /// One request; the body as JSON (or text), or the API's problem as the error.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, Error> {
        let ca_pem = std::fs::read_to_string(&self.ca).map_err(|e| Error::BadArgument {
            arg: "--ca",
            reason: format!("{}: {e}", self.ca.display()),
        })?;
        let ca = cpclink_keymgr::pki::cert_from_pem(&ca_pem)?;
        let tls = cpclink_keymgr::tls::https_client(&ca)?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| Error::Api(format!("{}: {e}", self.url)))?;
        let name = rustls::pki_types::ServerName::try_from(self.name.clone()).map_err(|_| {
            Error::BadArgument {
                arg: "--name",
                reason: format!("{:?} is not a name a certificate can carry", self.name),
            }
        })?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| Error::Api(format!("TLS with {} as {}: {e}", self.url, self.name)))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| Error::Api(e.to_string()))?;
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.name)
            .header("authorization", format!("Bearer {}", self.token))
            .header("x-correlator", format!("ctl-{}", std::process::id()))
            .header("content-type", "application/json")
            .body(Full::new(
                body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
            ))
            .map_err(|e| Error::Api(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Error::Api(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Api(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        if !status.is_success() {
            let detail = value["detail"].as_str().unwrap_or_default();
            let title = value["title"].as_str().unwrap_or(status.as_str());
            return Err(Error::Api(format!("{} {title}: {detail}", status.as_u16())));
        }
        Ok(value)
    }
}

/// Runs `cpclink ctl`.
pub fn run(args: CtlArgs) -> Result<(), Error> {
    let client = Client::from(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut body = None;
    let (method, path) = match &args.command {
        CtlCommand::Status => (Method::GET, "/v1/status".to_owned()),
        CtlCommand::Services => (Method::GET, "/v1/services".to_owned()),
        CtlCommand::Explain { service } => (Method::GET, format!("/v1/services/{service}")),
        CtlCommand::Reload => (Method::POST, "/v1/reload".to_owned()),
        CtlCommand::Metrics => (Method::GET, "/metrics".to_owned()),
        CtlCommand::Openapi => (Method::GET, "/openapi.json".to_owned()),
        CtlCommand::Appliances => (Method::GET, "/v1/appliances".to_owned()),
        CtlCommand::Prefixes => (Method::GET, "/v1/prefixes".to_owned()),
        CtlCommand::Token(order) => {
            let prefixes: Vec<String> = order.prefixes.iter().map(ToString::to_string).collect();
            body = Some(serde_json::json!({
                "appliance": order.appliance, "centre": order.centre, "tenant": order.tenant,
                "ttl_secs": order.ttl, "prefixes": prefixes,
            }));
            (Method::POST, "/v1/tokens".to_owned())
        }
        CtlCommand::Revoke { appliance } => {
            (Method::POST, format!("/v1/appliances/{appliance}/revoke"))
        }
        CtlCommand::Rotate => (Method::POST, "/v1/rotate".to_owned()),
        CtlCommand::AuditVerify => (Method::GET, "/v1/audit/verify".to_owned()),
    };
    let value = runtime.block_on(client.call(method, &path, body))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).map_err(std::io::Error::from)?
        );
        return Ok(());
    }
    let text = match args.command {
        CtlCommand::Appliances
        | CtlCommand::Prefixes
        | CtlCommand::Token(_)
        | CtlCommand::Revoke { .. }
        | CtlCommand::Rotate => {
            // The authority answers what its admin socket answers; one rendering of it.
            let reply: cpclink_keymgr::proto::AdminReply = serde_json::from_value(value)
                .map_err(|e| Error::Api(format!("unexpected reply: {e}")))?;
            super::keymgr::print_reply(reply).map_err(Error::Api)?;
            return Ok(());
        }
        CtlCommand::AuditVerify => format!(
            "audit chain intact: {} lines, head {}",
            value["lines"],
            value["head"].as_str().unwrap_or("?")
        ),
        CtlCommand::Metrics => value.as_str().unwrap_or_default().trim_end().to_owned(),
        CtlCommand::Openapi => {
            serde_json::to_string_pretty(&value).map_err(std::io::Error::from)?
        }
        CtlCommand::Status => status_text(&client.name, &value),
        CtlCommand::Services => services_text(&value),
        CtlCommand::Explain { .. } => explain_text(&value),
        CtlCommand::Reload => format!(
            "reloaded: {}{}",
            if value["changed"].as_bool() == Some(true) {
                "changes applied"
            } else {
                "nothing to change"
            },
            value["needs_restart"]
                .as_array()
                .filter(|a| !a.is_empty())
                .map(|a| format!("; waiting for a restart: {a:?}"))
                .unwrap_or_default()
        ),
    };
    println!("{text}");
    Ok(())
}

fn status_text(name: &str, v: &Value) -> String {
    let a = &v["appliance"];
    let mut out = format!(
        "appliance: {name}\n  listening on: {}\n  workers: {}\n  config: {} (reloads: {})\n",
        a["listen"].as_str().unwrap_or("?"),
        a["workers"],
        a["config_file"].as_str().unwrap_or("?"),
        a["reloads"]
    );
    let total = &v["counters"]["total"];
    out += &format!(
        "  transfer: {} packets ({} B) sent, {} packets ({} B) delivered\n",
        total["tx_packets"], total["tx_bytes"], total["rx_delivered"], total["rx_delivered_bytes"]
    );
    let drops: Vec<String> = total
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, n)| {
            (k.starts_with("tx_no") || k.starts_with("rx_") && !k.starts_with("rx_deliv"))
                && !k.ends_with("bytes")
                && !k.ends_with("packets")
                && n.as_u64().is_some_and(|n| n > 0)
        })
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    out += &format!(
        "  drops: {}\n",
        if drops.is_empty() {
            "none".to_owned()
        } else {
            drops.join(", ")
        }
    );
    for (peer, p) in a["keys"]["peers"].as_object().into_iter().flatten() {
        out += &format!("\npeer: {peer}\n");
        out += &format!(
            "  endpoint: {}\n",
            p["endpoint"].as_str().unwrap_or("(none yet)")
        );
        let prefixes: Vec<&str> = p["prefixes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out += &format!("  allowed prefixes: {}\n", prefixes.join(", "));
        let tx: Vec<String> = p["tx"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(w, spi)| match spi.as_u64() {
                Some(spi) => format!("worker {w} SPI 0x{spi:08x}"),
                None => format!("worker {w} none"),
            })
            .collect();
        out += &format!("  transmit SAs: {}\n", tx.join(", "));
        if p["revoked"].as_bool() == Some(true) {
            out += "  revoked\n";
        }
        if let Some(path) = a["paths"]["peer_paths"][peer].as_str() {
            out += &format!("  path: {path}\n");
        }
    }
    let services = services_text(&a["paths"]);
    if !services.is_empty() {
        out += &format!("\n{services}");
    }
    out.trim_end().to_owned()
}

fn services_text(p: &Value) -> String {
    let mut out = String::new();
    for s in p["services"].as_array().into_iter().flatten() {
        out += &format!(
            "service: {} ({})\n  placed at: {} via {}\n  buckets: {}\n",
            s["name"].as_str().unwrap_or("?"),
            s["prefixes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            s["site"].as_str().unwrap_or("nowhere (no feasible site)"),
            s["path"].as_str().unwrap_or("-"),
            s["buckets"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(site, n)| format!("{site} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(m) = p["metrics"].as_object() {
        out += &format!(
            "metric advertisements: {}\n",
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out
}

fn explain_text(v: &Value) -> String {
    let d = &v["last_decision"];
    format!(
        "{}last decision: {} → {} ({})\n{}",
        services_text(&serde_json::json!({ "services": [v["service"]] })),
        d["service"].as_str().unwrap_or("?"),
        d["site"].as_str().unwrap_or("nowhere"),
        d["reason"].as_str().unwrap_or("?"),
        d["explanation"].as_str().unwrap_or("")
    )
}
