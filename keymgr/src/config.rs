//! TOML configuration of the authority and of a standalone key agent. Every error names the
//! file, the field and what to do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::directory::Rule;
use crate::pki::valid_id;
use crate::{Error, Result};

/// Where the authority keeps its state.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// An embedded redb file.
    Redb {
        /// The database file; defaults to `<state_dir>/authority.redb`.
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// An etcd cluster.
    Etcd {
        /// Client URLs, e.g. `http://127.0.0.1:2379`.
        endpoints: Vec<String>,
        /// Key prefix for this authority's records.
        #[serde(default = "default_prefix")]
        prefix: String,
    },
}

fn default_prefix() -> String {
    "/cpclink/keymgr/".into()
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self::Redb { path: None }
    }
}

/// The authority daemon's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    /// The QUIC control address, `host:port`.
    pub listen: SocketAddr,
    /// Directory for the CA, the audit log, the admin socket and (by default) the store.
    pub state_dir: PathBuf,
    /// File holding the key-encryption key (64 hex digits).
    pub kek_file: PathBuf,
    /// Seconds between scheduled master-key rotations (default one day).
    #[serde(default = "default_rotation")]
    pub rotation_interval_secs: u64,
    /// Lifetime of appliance certificates in days.
    #[serde(default = "default_cert_days")]
    pub cert_days: u64,
    /// Default lifetime of enrolment tokens in seconds.
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
    /// The store.
    #[serde(default)]
    pub store: StoreConfig,
    /// Policy: which appliances may talk. Empty means appliances of the same tenant.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn default_rotation() -> u64 {
    86_400
}
fn default_cert_days() -> u64 {
    365
}
fn default_token_ttl() -> u64 {
    3_600
}

/// A key agent's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This appliance's id (as its enrolment token names it).
    pub appliance: String,
    /// The authority's control address.
    pub authority: SocketAddr,
    /// Where this agent accepts SA requests from peers (QUIC), `host:port`.
    pub listen: SocketAddr,
    /// Directory for the agent's store (wrapped master keys, SPI counters, certificate).
    pub state_dir: PathBuf,
    /// File holding the key-encryption key (64 hex digits).
    pub kek_file: PathBuf,
    /// The authority's CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// File holding the one-time enrolment token; needed only until the agent is enrolled.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Data-plane endpoints to publish in the directory.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Capabilities to publish in the directory.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Inner prefixes this centre serves, announced to the authority (CIDR, host bits clear).
    #[serde(default)]
    pub prefixes: Vec<crate::prefix::InnerPrefix>,
    /// PSP version of the SAs this agent asks for (1 = AES-GCM-256).
    #[serde(default = "default_suite")]
    pub suite: u8,
    /// Seconds an SA this agent grants may be used before the holder replaces it.
    #[serde(default = "default_sa_lifetime")]
    pub sa_lifetime_secs: u64,
    /// How long a rotation waits for peers to move off the generation it is about to
    /// overwrite, in milliseconds.
    #[serde(default = "default_grace")]
    pub rekey_grace_ms: u64,
}

fn default_suite() -> u8 {
    1
}
fn default_sa_lifetime() -> u64 {
    3_600
}
fn default_grace() -> u64 {
    2_000
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Config {
        file: path.to_owned(),
        field: "-".into(),
        reason: format!("cannot read ({e}); pass the path of an existing TOML file"),
    })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let field = e.span().and_then(|s| text.get(..s.start)).map_or_else(
            || "-".to_owned(),
            |before| format!("line {}", before.lines().count().max(1)),
        );
        Error::Config {
            file: path.to_owned(),
            field,
            reason: e.message().to_owned(),
        }
    })
}

impl AuthorityConfig {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self> {
        let cfg: Self = parse(path, &read(path)?)?;
        let bad = |field: &str, reason: &str| Error::Config {
            file: path.to_owned(),
            field: field.into(),
            reason: reason.into(),
        };
        if cfg.rotation_interval_secs == 0 {
            return Err(bad(
                "rotation_interval_secs",
                "must be at least 1 (86400 = daily)",
            ));
        }
        if cfg.cert_days == 0 {
            return Err(bad("cert_days", "must be at least 1"));
        }
        if let StoreConfig::Etcd { endpoints, .. } = &cfg.store {
            if endpoints.is_empty() {
                return Err(bad(
                    "store.endpoints",
                    "list at least one etcd client URL, e.g. [\"http://127.0.0.1:2379\"]",
                ));
            }
        }
        Ok(cfg)
    }

    /// The policy in force: the configured rules, or same-tenant when none are given.
    pub fn policy(&self) -> Vec<Rule> {
        if self.rules.is_empty() {
            vec![Rule::same_tenant()]
        } else {
            self.rules.clone()
        }
    }
}

impl AgentConfig {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self> {
        let cfg: Self = parse(path, &read(path)?)?;
        if !valid_id(&cfg.appliance) {
            return Err(Error::Config {
                file: path.to_owned(),
                field: "appliance".into(),
                reason: format!(
                    "{:?} is not an appliance id: use 1-63 of a-z, 0-9 and '-'",
                    cfg.appliance
                ),
            });
        }
        if cpclink_dataplane::crypto::Suite::from_version(cfg.suite).is_err() {
            return Err(Error::Config {
                file: path.to_owned(),
                field: "suite".into(),
                reason: format!("{} is no PSP version; use 0, 1, 2, 3 or 8", cfg.suite),
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn errors_name_file_and_field() {
        let (_d, p) = write("listen = \"nope\"\nstate_dir = \"/x\"\nkek_file = \"/k\"\n");
        let e = AuthorityConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("line 1"), "{e}");
        let (_d, p) = write(
            "listen = \"127.0.0.1:1\"\nstate_dir = \"/x\"\nkek_file = \"/k\"\nrotation_interval_secs = 0\n",
        );
        let e = AuthorityConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("rotation_interval_secs"), "{e}");
        let (_d, p) = write(
            "appliance = \"Bad Id\"\nauthority = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\nstate_dir = \"/x\"\nkek_file = \"/k\"\nca_cert = \"/c\"\n",
        );
        let e = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("appliance") && e.contains("a-z"), "{e}");
    }

    #[test]
    fn defaults_and_store_kinds() {
        let (_d, p) = write(
            "listen = \"127.0.0.1:1\"\nstate_dir = \"/x\"\nkek_file = \"/k\"\n[store]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n",
        );
        let c = AuthorityConfig::load(&p).unwrap();
        assert_eq!(c.rotation_interval_secs, 86_400);
        assert_eq!(c.policy(), vec![Rule::same_tenant()]);
        assert!(
            matches!(c.store, StoreConfig::Etcd { ref prefix, .. } if prefix == "/cpclink/keymgr/")
        );
    }
}
