//! `[keymgr]`: this appliance's key agent, and per-peer prefix overrides.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use cpclink_dataplane::crypto::Suite;
use cpclink_keymgr::agent::AgentOptions;
use cpclink_keymgr::config::{AgentConfig, REKEY_GRACE_MS, SA_LIFETIME_SECS};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{Ctx, Prefix};
use crate::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeymgr {
    appliance: String,
    authority: RawAuthority,
    listen: String,
    state_dir: PathBuf,
    kek_file: PathBuf,
    ca_cert: PathBuf,
    token_file: Option<PathBuf>,
    token: Option<String>,
    endpoint: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default = "default_sa_lifetime")]
    sa_lifetime_secs: u64,
    #[serde(default = "default_rekey_grace")]
    rekey_grace_ms: u64,
    /// Inner prefixes this appliance's centre serves, announced in the directory.
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    peer: Vec<RawKeymgrPeer>,
}

/// `[keymgr].authority`: one control address, or one per authority replica.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAuthority {
    One(String),
    Replicas(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeymgrPeer {
    id: String,
    #[serde(default)]
    prefixes: Vec<String>,
}

fn default_sa_lifetime() -> u64 {
    3_600
}

fn default_rekey_grace() -> u64 {
    2_000
}

/// The `[keymgr]` section: this appliance's key agent.
#[derive(Debug, Clone)]
pub struct KeymgrConfig {
    /// The agent's settings, paths resolved against the configuration's directory.
    pub agent: AgentConfig,
    /// An enrolment token given inline (instead of `token_file`).
    pub token: Option<Zeroizing<String>>,
    /// The data-plane endpoint to publish, if not `[appliance].listen`.
    pub endpoint: Option<SocketAddr>,
    /// Inner prefixes this appliance's centre serves, announced to the authority.
    pub announce: Vec<Prefix>,
    /// Prefix overrides by peer id: routed to that peer instead of what the directory says.
    pub prefixes: BTreeMap<String, Vec<Prefix>>,
    file: String,
}

impl KeymgrConfig {
    /// The key agent's options (its data-plane endpoints left for the caller to publish).
    /// Reads the KEK, the CA certificate and the enrolment token file.
    pub fn agent_options(&self) -> Result<AgentOptions, Error> {
        let text = cpclink_diagnostics::ConfigText::read(std::path::Path::new(&self.file))
            .unwrap_or_else(|_| cpclink_diagnostics::ConfigText::new(self.file.clone(), ""));
        let files = [
            (
                "[keymgr].ca_cert",
                &self.agent.ca_cert,
                "copy the authority's ca.pem (in its state_dir) there",
            ),
            (
                "[keymgr].kek_file",
                &self.agent.kek_file,
                "write the key-encryption key there, 64 hex digits (e.g. `openssl rand -hex 32`)",
            ),
        ];
        for (field, path, fix) in files {
            if let Err(e) = std::fs::read(path) {
                return Err(Error::Config(text.error_fix(
                    field,
                    format!("{}: cannot read ({e})", path.display()),
                    fix,
                )));
            }
        }
        let mut options = AgentOptions::from_config(&self.agent).map_err(|e| {
            Error::Config(cpclink_diagnostics::Diagnostic {
                file: self.file.clone(),
                field: "[keymgr]".into(),
                line: None,
                reason: e.to_string(),
                fix: Some("check the files [keymgr] names (kek_file, ca_cert, token_file)".into()),
            })
        })?;
        if let Some(token) = &self.token {
            options.token = Some(token.clone());
        }
        Ok(options)
    }

    /// Whether `other` runs the same agent (identity, addresses, files, lifetimes): what a
    /// reload cannot change without a restart.
    pub fn same_agent(&self, other: &KeymgrConfig) -> bool {
        let a = &self.agent;
        let b = &other.agent;
        (
            &a.appliance,
            &a.authority,
            a.listen,
            &a.state_dir,
            &a.kek_file,
            &a.ca_cert,
            a.sa_lifetime_secs,
            a.rekey_grace_ms,
            self.endpoint,
        ) == (
            &b.appliance,
            &b.authority,
            b.listen,
            &b.state_dir,
            &b.kek_file,
            &b.ca_cert,
            b.sa_lifetime_secs,
            b.rekey_grace_ms,
            other.endpoint,
        )
    }
}

impl Ctx<'_> {
    pub(super) fn keymgr(
        &self,
        k: RawKeymgr,
        listen: SocketAddr,
        suite: Suite,
    ) -> Result<KeymgrConfig, Error> {
        if !cpclink_keymgr::pki::valid_id(&k.appliance) {
            return Err(self.err_fix(
                "[keymgr].appliance",
                format!("{:?} is not an appliance id", k.appliance),
                "use 1-63 of a-z, 0-9 and '-', as the enrolment token names it",
            ));
        }
        let authority = match &k.authority {
            RawAuthority::One(a) => vec![self.endpoint("[keymgr].authority", a)?],
            RawAuthority::Replicas(list) => {
                if list.is_empty() {
                    return Err(self.err_fix(
                        "[keymgr].authority",
                        "an empty list",
                        "name the authority's control address, or one per replica: [\"192.0.2.10:7000\", \"192.0.2.11:7000\"]",
                    ));
                }
                let mut out: Vec<SocketAddr> = Vec::with_capacity(list.len());
                for (i, a) in list.iter().enumerate() {
                    let field = format!("[keymgr].authority[{i}]");
                    let addr = self.endpoint(&field, a)?;
                    if out.contains(&addr) {
                        return Err(self.err_fix(
                            field,
                            format!("{a:?} is listed twice"),
                            "list each replica once",
                        ));
                    }
                    out.push(addr);
                }
                out
            }
        };
        let agent_listen = self.endpoint("[keymgr].listen", &k.listen)?;
        let endpoint = match &k.endpoint {
            Some(e) => {
                let e = self.endpoint("[keymgr].endpoint", e)?;
                if e.ip().is_unspecified() || e.port() == 0 {
                    return Err(self.err_fix(
                        "[keymgr].endpoint",
                        format!("{e} is no address peers can send to"),
                        "give this appliance's address and PSP port",
                    ));
                }
                if e.is_ipv4() != listen.is_ipv4() {
                    return Err(self.err_fix(
                        "[keymgr].endpoint",
                        format!("{e} is not of the address family of [appliance].listen {listen}"),
                        "give an address of the same family",
                    ));
                }
                Some(e)
            }
            None if listen.ip().is_unspecified() => {
                return Err(self.err_fix(
                    "[keymgr].endpoint",
                    format!("missing: [appliance].listen {listen} is no address peers can send to"),
                    format!(
                        "give endpoint = \"<this appliance's address>:{}\"",
                        listen.port()
                    ),
                ))
            }
            None => None,
        };
        if k.token.is_some() && k.token_file.is_some() {
            return Err(self.err_fix(
                "[keymgr].token",
                "given with token_file",
                "keep one of the two",
            ));
        }
        self.text.check_range(
            "[keymgr].sa_lifetime_secs",
            k.sa_lifetime_secs,
            SA_LIFETIME_SECS,
            "seconds",
            "3600 is the default",
        )?;
        self.text.check_range(
            "[keymgr].rekey_grace_ms",
            k.rekey_grace_ms,
            REKEY_GRACE_MS,
            "milliseconds",
            "2000 is the default",
        )?;
        let announce = self.prefixes("[keymgr].prefixes", &k.prefixes)?;
        let mut prefixes = BTreeMap::new();
        for (i, p) in k.peer.iter().enumerate() {
            let at = format!("[[keymgr.peer]][{i}]");
            if !cpclink_keymgr::pki::valid_id(&p.id) {
                return Err(self.err_fix(
                    format!("{at}.id"),
                    format!("{:?} is not an appliance id", p.id),
                    "use 1-63 of a-z, 0-9 and '-'",
                ));
            }
            if p.id == k.appliance {
                return Err(self.err_fix(
                    format!("{at}.id"),
                    format!("{:?} is this appliance", p.id),
                    "list peers here; this appliance's own prefixes go in [keymgr].prefixes",
                ));
            }
            let parsed = self.prefixes(&format!("{at}.prefixes"), &p.prefixes)?;
            if prefixes.insert(p.id.clone(), parsed).is_some() {
                return Err(self.err_fix(
                    format!("{at}.id"),
                    format!("{:?} appears twice", p.id),
                    "list each peer once",
                ));
            }
        }
        Ok(KeymgrConfig {
            agent: AgentConfig {
                appliance: k.appliance,
                authority,
                listen: agent_listen,
                state_dir: self.path(&k.state_dir),
                kek_file: self.path(&k.kek_file),
                ca_cert: self.path(&k.ca_cert),
                token_file: k.token_file.as_deref().map(|p| self.path(p)),
                endpoints: Vec::new(),
                capabilities: k.capabilities,
                suite: suite.version(),
                sa_lifetime_secs: k.sa_lifetime_secs,
                rekey_grace_ms: k.rekey_grace_ms,
                prefixes: announce.clone(),
            },
            token: k.token.map(|t| Zeroizing::new(t.trim().to_owned())),
            endpoint,
            announce,
            prefixes,
            file: self.text.file().to_owned(),
        })
    }
}
