//! `cpclink ctl`: the command line over the management APIs of appliances and the authority
//! (HTTPS; a bearer token or an operator certificate). The address, the CA, the server's
//! name and the credential come from flags or from `CPCLINK_API_URL`, `CPCLINK_API_CA`,
//! `CPCLINK_API_NAME`, `CPCLINK_API_TOKEN`, `CPCLINK_API_CERT` and `CPCLINK_API_KEY`.

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
    /// A bearer token: one the authority issued, or one listed in [[api.token]] (or
    /// CPCLINK_API_TOKEN).
    #[arg(long, global = true)]
    token: Option<String>,
    /// An operator certificate the authority issued, PEM (or CPCLINK_API_CERT); with --key.
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// The operator certificate's private key, PEM (or CPCLINK_API_KEY).
    #[arg(long, global = true)]
    key: Option<PathBuf>,
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
    /// Peers: endpoint, state, prefixes, transmit SA per worker, outer path.
    Peers,
    /// Every SA the data plane holds: SPI, generation, age, packets, limits (never keys).
    Sas,
    /// Services, where each goes, the last decisions and the metric counters.
    Services,
    /// One service and the selector's explanation of its last decision.
    Explain {
        /// The service's name.
        service: String,
    },
    /// Re-read the appliance's configuration file (needs the operator role).
    Reload,
    /// Time per stage inside each worker (count, p50, p99, p99.9, max in µs), or with
    /// `--sample-every N` turn the sampling on (one packet in N) or off (0; admin role).
    Stages {
        /// Time one packet in N per stage from now on; 0 turns sampling off.
        #[arg(long)]
        sample_every: Option<u32>,
    },
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
    /// Authority: enrolment tokens minted and where each stands (unused, spent, expired,
    /// revoked).
    Tokens,
    /// Authority: revoke an enrolment token before it is redeemed (admin).
    TokenRevoke {
        /// The token's id, as `tokens` lists it.
        id: String,
    },
    /// Authority: revoke an appliance everywhere (admin).
    Revoke {
        /// The appliance id.
        appliance: String,
    },
    /// Authority: order every appliance to rotate now (operator).
    Rotate,
    /// Authority: verify the audit log's hash chain.
    AuditVerify,
    /// Authority: audit log lines, oldest first, a page at a time.
    Audit {
        /// The first line (0-based).
        #[arg(long, default_value_t = 0)]
        from: usize,
        /// Lines at most (up to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Authority: the policy (which appliances may talk).
    Rules,
    /// Authority: replace the policy with the rules in a JSON file (admin):
    /// {"rules": [{"a": {"tenant": "acme"}, "b": {"centre": "dc2"}, "same_tenant": false}]}.
    SetRules {
        /// The JSON file.
        file: PathBuf,
    },
    /// Authority: open an appliance's escrowed master keys (admin; audited).
    Escrow {
        /// The appliance id.
        appliance: String,
    },
    /// Authority: issue an operator credential (admin): a signed token, or with
    /// --certificate a client certificate and key written to --out.
    Credential {
        /// Whom it names.
        #[arg(long = "for")]
        holder: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: cpclink_mgmt::Role,
        /// Scope it to one tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime in seconds (default 12 hours, at most 90 days).
        #[arg(long)]
        ttl: Option<u64>,
        /// Issue a client certificate instead of a token.
        #[arg(long)]
        certificate: bool,
        /// Where to write NAME.pem and NAME.key (with --certificate).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Any request, as `METHOD PATH [JSON]`: the answer printed as JSON.
    Request {
        /// GET, POST or PUT.
        method: Method,
        /// The path, e.g. /v1/status.
        path: String,
        /// A JSON body.
        body: Option<String>,
    },
}

struct Client {
    url: String,
    host: String,
    port: u16,
    name: String,
    ca: PathBuf,
    token: Option<String>,
    identity: Option<cpclink_keymgr::pki::KeyedCert>,
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
            token: args
                .token
                .clone()
                .or_else(|| std::env::var("CPCLINK_API_TOKEN").ok()),
            identity: operator_identity(args)?,
        })
        .and_then(|c| {
            if c.token.is_none() && c.identity.is_none() {
                return Err(Error::BadArgument {
                    arg: "--token",
                    reason: "missing; give --token (or CPCLINK_API_TOKEN), or --cert and --key"
                        .into(),
                });
            }
            Ok(c)
        })
    }

    /// One request; the body as JSON (or text), or the API's problem as the error.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, Error> {
        let ca_pem = std::fs::read_to_string(&self.ca).map_err(|e| Error::BadArgument {
            arg: "--ca",
            reason: format!("{}: {e}", self.ca.display()),
        })?;
        let ca = cpclink_keymgr::pki::cert_from_pem(&ca_pem)?;
        let tls = cpclink_keymgr::tls::https_client(&ca, self.identity.as_ref())?;
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
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .header("host", &self.name)
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
        CtlCommand::Peers => (Method::GET, "/v1/peers".to_owned()),
        CtlCommand::Sas => (Method::GET, "/v1/sas".to_owned()),
        CtlCommand::Services => (Method::GET, "/v1/services".to_owned()),
        CtlCommand::Explain { service } => (Method::GET, format!("/v1/services/{service}")),
        CtlCommand::Reload => (Method::POST, "/v1/reload".to_owned()),
        CtlCommand::Stages { sample_every } => match sample_every {
            Some(n) => {
                body = Some(serde_json::json!({ "sample_every": n }));
                (Method::POST, "/v1/stages".to_owned())
            }
            None => (Method::GET, "/v1/stages".to_owned()),
        },
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
        CtlCommand::Audit { from, limit } => {
            (Method::GET, format!("/v1/audit?from={from}&limit={limit}"))
        }
        CtlCommand::Tokens => (Method::GET, "/v1/tokens".to_owned()),
        CtlCommand::TokenRevoke { id } => (Method::POST, format!("/v1/tokens/{id}/revoke")),
        CtlCommand::Rules => (Method::GET, "/v1/rules".to_owned()),
        CtlCommand::SetRules { file } => {
            let text = std::fs::read_to_string(file).map_err(|e| Error::BadArgument {
                arg: "FILE",
                reason: format!("{}: {e}", file.display()),
            })?;
            body = Some(serde_json::from_str(&text).map_err(|e| Error::BadArgument {
                arg: "FILE",
                reason: format!("{}: not JSON: {e}", file.display()),
            })?);
            (Method::PUT, "/v1/rules".to_owned())
        }
        CtlCommand::Escrow { appliance } => {
            (Method::POST, format!("/v1/appliances/{appliance}/escrow"))
        }
        CtlCommand::Credential {
            holder,
            role,
            tenant,
            ttl,
            certificate,
            ..
        } => {
            body = Some(serde_json::json!({
                "name": holder, "role": role, "tenant": tenant, "ttl_secs": ttl,
                "kind": if *certificate { "certificate" } else { "token" },
            }));
            (Method::POST, "/v1/credentials".to_owned())
        }
        CtlCommand::Request {
            method,
            path,
            body: b,
        } => {
            if let Some(b) = b {
                body = Some(serde_json::from_str(b).map_err(|e| Error::BadArgument {
                    arg: "JSON",
                    reason: format!("not JSON: {e}"),
                })?);
            }
            (method.clone(), path.clone())
        }
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
        CtlCommand::Audit { .. } => audit_text(&value),
        CtlCommand::Tokens => tokens_text(&value),
        CtlCommand::TokenRevoke { id } => format!("token {id} revoked: it can never enrol"),
        CtlCommand::Rules | CtlCommand::Escrow { .. } | CtlCommand::Request { .. } => {
            serde_json::to_string_pretty(&value).map_err(std::io::Error::from)?
        }
        CtlCommand::SetRules { .. } => {
            format!("policy replaced: directory version {}", value["Done"])
        }
        CtlCommand::Credential {
            certificate, out, ..
        } => credential_text(&value, certificate, &out)?,
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
        CtlCommand::Peers => peers_text(&value),
        CtlCommand::Sas => sas_text(&value),
        CtlCommand::Stages {
            sample_every: Some(_),
        } => match value["sample_every"].as_u64() {
            Some(0) => "stage sampling off".to_owned(),
            Some(n) => format!("stage sampling on: one packet in {n} per stage"),
            None => format!("unexpected reply: {value}"),
        },
        CtlCommand::Stages { sample_every: None } => stages_text(&value),
        CtlCommand::Services => services_text(&value),
        CtlCommand::Explain { .. } => explain_text(&value),
        CtlCommand::Reload => format!(
            "reloaded: {}",
            value["applied"]
                .as_str()
                .unwrap_or("(the reply says nothing of what it did)")
        ),
    };
    println!("{text}");
    Ok(())
}

/// The operator certificate and key from flags or the environment, if given.
fn operator_identity(args: &CtlArgs) -> Result<Option<cpclink_keymgr::pki::KeyedCert>, Error> {
    let path = |flag: &Option<PathBuf>, env: &str| {
        flag.clone()
            .or_else(|| std::env::var(env).ok().map(PathBuf::from))
    };
    let (cert, key) = match (
        path(&args.cert, "CPCLINK_API_CERT"),
        path(&args.key, "CPCLINK_API_KEY"),
    ) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(Error::BadArgument {
                arg: "--cert",
                reason: "give --cert and --key together".into(),
            })
        }
    };
    let read = |p: &PathBuf, arg: &'static str| {
        std::fs::read_to_string(p).map_err(|e| Error::BadArgument {
            arg,
            reason: format!("{}: {e}", p.display()),
        })
    };
    Ok(Some(cpclink_keymgr::pki::keyed_cert_from_pem(
        &read(&cert, "--cert")?,
        &read(&key, "--key")?,
    )?))
}

fn tokens_text(v: &Value) -> String {
    let mut out = format!(
        "{:<34} {:<16} {:<10} {:<8} {}\n",
        "token", "appliance", "tenant", "state", "minted by"
    );
    for t in v["tokens"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<34} {:<16} {:<10} {:<8} {}\n",
            t["id"].as_str().unwrap_or("?"),
            t["appliance"].as_str().unwrap_or("?"),
            t["tenant"].as_str().unwrap_or("?"),
            t["state"].as_str().unwrap_or("?"),
            t["created_by"].as_str().unwrap_or("?")
        );
    }
    out.trim_end().to_owned()
}

fn audit_text(v: &Value) -> String {
    let mut out = String::new();
    for line in v["lines"].as_array().into_iter().flatten() {
        let mut event = line["event"].clone();
        let kind = event["kind"].as_str().unwrap_or("?").to_owned();
        if let Some(o) = event.as_object_mut() {
            o.remove("kind");
        }
        out += &format!("{:>6}  {}  {kind}  {event}\n", line["seq"], line["time"]);
    }
    out += &format!(
        "({} lines in all{})",
        v["total"],
        v["next"]
            .as_u64()
            .map(|n| format!("; next page: --from {n}"))
            .unwrap_or_default()
    );
    out
}

/// A token printed, or a certificate and key written (the key readable by its owner only).
fn credential_text(v: &Value, certificate: bool, out: &std::path::Path) -> Result<String, Error> {
    let name = v["name"].as_str().unwrap_or("operator");
    let scope = v["tenant"]
        .as_str()
        .map(|t| format!(", tenant {t}"))
        .unwrap_or_default();
    if !certificate {
        return Ok(format!(
            "{}\n(token {} for {name}: role {}{scope}, expires at unix time {})",
            v["token"].as_str().unwrap_or("?"),
            v["id"].as_str().unwrap_or("?"),
            v["role"].as_str().unwrap_or("?"),
            v["expires"]
        ));
    }
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}.key"));
    let write = |path: &std::path::Path, text: &str, mode: u32| -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?
            .write_all(text.as_bytes())
    };
    write(
        &cert_path,
        v["certificate_pem"].as_str().unwrap_or_default(),
        0o644,
    )
    .and_then(|()| write(&key_path, v["key_pem"].as_str().unwrap_or_default(), 0o600))
    .map_err(|e| Error::Api(format!("writing {}: {e}", key_path.display())))?;
    Ok(format!(
        "certificate {} for {name}: role {}{scope}\n  {}\n  {}\nuse: cpclink ctl --cert {} --key {} …",
        v["id"].as_str().unwrap_or("?"),
        v["role"].as_str().unwrap_or("?"),
        cert_path.display(),
        key_path.display(),
        cert_path.display(),
        key_path.display()
    ))
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
    if let Some(hw) = a["hardware"].as_object() {
        out += &format!(
            "  hardware profile: {}{}\n",
            hw["profile"].as_str().unwrap_or("?"),
            hw["device"]
                .as_str()
                .map(|d| format!(" (NIC {d})"))
                .unwrap_or_default()
        );
    }
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
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
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
                Some(spi) => {
                    // SPIs key the SA table as decimal strings in JSON.
                    let sa = &a["keys"]["sas"][spi.to_string()];
                    let age = sa["installed_ms"]
                        .as_u64()
                        .map(|t| format!(", {} s old", now_ms.saturating_sub(t) / 1000))
                        .unwrap_or_default();
                    let left = sa["lifetime_secs"]
                        .as_u64()
                        .map(|l| format!(", lifetime {l} s"))
                        .unwrap_or_default();
                    format!(
                        "worker {w} SPI 0x{spi:08x} (generation {}{age}{left})",
                        spi >> 31
                    )
                }
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

fn peers_text(peers: &Value) -> String {
    let mut out = String::new();
    for p in peers.as_array().into_iter().flatten() {
        let state = match (p["revoked"].as_bool(), p["active"].as_bool()) {
            (Some(true), _) => "revoked",
            (_, Some(true)) => "active",
            _ => "inactive",
        };
        let prefixes: Vec<&str> = p["prefixes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let keyed = p["tx"]
            .as_array()
            .map_or(0, |tx| tx.iter().filter(|s| !s.is_null()).count());
        let workers = p["tx"].as_array().map_or(0, Vec::len);
        out += &format!(
            "peer: {} ({state})\n  endpoint: {}\n  allowed prefixes: {}\n  transmit SAs: {keyed} of {workers} workers\n",
            p["name"].as_str().unwrap_or("?"),
            p["endpoint"].as_str().unwrap_or("(none yet)"),
            prefixes.join(", "),
        );
        if let Some(path) = p["path"].as_str() {
            out += &format!("  path: {path}\n");
        }
    }
    out.trim_end().to_owned()
}

fn sas_text(sas: &Value) -> String {
    let mut out = format!(
        "{:<10} {:<3} {:<16} {:>6} {:>3} {:>8} {:>10} {:>12} {:>8} {:>12}\n",
        "SPI", "dir", "peer", "worker", "gen", "age", "lifetime", "packets", "refused", "limit"
    );
    let secs = |v: &Value| {
        v.as_u64()
            .map_or_else(|| "-".to_owned(), |s| format!("{s}s"))
    };
    for sa in sas.as_array().into_iter().flatten() {
        out += &format!(
            "{:<10} {:<3} {:<16} {:>6} {:>3} {:>8} {:>10} {:>12} {:>8} {:>12}\n",
            sa["spi"].as_str().unwrap_or("?"),
            sa["direction"].as_str().unwrap_or("?"),
            sa["peer"].as_str().unwrap_or("?"),
            sa["worker"].as_u64().unwrap_or(0),
            sa["generation"].as_u64().unwrap_or(0),
            secs(&sa["age_secs"]),
            secs(&sa["lifetime_secs"]),
            sa["packets"].as_u64().unwrap_or(0),
            sa["refused"].as_u64().unwrap_or(0),
            sa["hard_packets"].as_u64().unwrap_or(0),
        );
    }
    out.trim_end().to_owned()
}

/// `GET /v1/stages` as a table: each worker's stages, then all workers merged.
fn stages_text(v: &Value) -> String {
    let every = v["sample_every"].as_u64().unwrap_or(0);
    if every == 0 {
        return "stage sampling is off; turn it on with `cpclink ctl stages --sample-every 64` (admin)"
            .to_owned();
    }
    let mut out = format!("one packet in {every} timed per stage; µs\n");
    out += &format!(
        "{:<7} {:<11} {:>10} {:>9} {:>9} {:>9} {:>9}\n",
        "worker", "stage", "count", "p50", "p99", "p99.9", "max"
    );
    let mut rows = |worker: &str, stages: &Value| {
        for s in stages.as_array().into_iter().flatten() {
            let us = |k: &str| format!("{:.1}", s[k].as_f64().unwrap_or(0.0));
            out += &format!(
                "{:<7} {:<11} {:>10} {:>9} {:>9} {:>9} {:>9}\n",
                worker,
                s["stage"].as_str().unwrap_or("?"),
                s["count"].as_u64().unwrap_or(0),
                us("p50_us"),
                us("p99_us"),
                us("p999_us"),
                us("max_us"),
            );
        }
    };
    for w in v["workers"].as_array().into_iter().flatten() {
        rows(&w["worker"].as_u64().unwrap_or(0).to_string(), &w["stages"]);
    }
    rows("all", &v["all"]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_table_has_a_row_per_worker_stage_and_the_merged_rows() {
        let view = |stage: &str, count: u64, p50: f64| {
            serde_json::json!({
                "stage": stage, "count": count, "p50_us": p50, "p99_us": 2.0 * p50,
                "p999_us": 3.0 * p50, "max_us": 4.0 * p50,
            })
        };
        let report = serde_json::json!({
            "sample_every": 64,
            "workers": [
                { "worker": 0, "stages": [view("seal", 10, 0.5), view("send", 10, 12.3)] },
                { "worker": 1, "stages": [view("seal", 5, 0.75)] },
            ],
            "all": [view("seal", 15, 0.6)],
        });
        let text = stages_text(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + 3 + 1, "{text}");
        assert!(lines[0].contains("one packet in 64"), "{text}");
        let send: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(send, ["0", "send", "10", "12.3", "24.6", "36.9", "49.2"]);
        assert!(
            lines[5].starts_with("all") && lines[5].contains("seal"),
            "{text}"
        );
        let off = stages_text(&serde_json::json!({ "sample_every": 0, "workers": [], "all": [] }));
        assert!(
            off.contains("off") && off.contains("--sample-every"),
            "{off}"
        );
    }
}
