//! TOML configuration of the authority and of a standalone key agent. Every error is a
//! [`cpclink_diagnostics::Diagnostic`]: the file, the field, its line and the fix. Every
//! duration is range-checked here, so that nothing later adds an unrepresentable time.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use cpclink_diagnostics::ConfigText;
use serde::Deserialize;

use crate::directory::Rule;
use crate::pki::valid_id;
use crate::Result;

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
        /// This replica's id as a candidate in the authority's leader election (unique among
        /// the replicas sharing `prefix`); none: the authority does not stand for election.
        #[serde(default)]
        candidate: Option<String>,
        /// The leader's lease in seconds: how long a leader that stopped renewing it keeps
        /// the lead, and so about how long a failover takes.
        #[serde(default = "default_election_ttl")]
        election_ttl_secs: u64,
    },
}

fn default_election_ttl() -> u64 {
    10
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
    /// The management API (`[api]`), if it is served; checked by [`AuthorityConfig::parse`].
    #[serde(default)]
    pub api: Option<cpclink_mgmt::RawApi>,
    /// The operator's intermediate CA to issue under (`[ca]`); without it the authority
    /// generates its own self-signed CA on first start.
    #[serde(default)]
    pub ca: Option<CaFiles>,
}

/// An operator's intermediate CA (`[ca]`), read and checked on the authority's first start,
/// its key then sealed under the KEK with the rest of the authority's material.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CaFiles {
    /// The intermediate CA's certificate (PEM, one certificate).
    pub certificate: PathBuf,
    /// Its private key (unencrypted PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The certificates above it, its issuer first, up to and including the operator's
    /// self-signed root (PEM).
    pub chain: PathBuf,
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
    /// The authority's control address, or one per replica (`"host:port"` or a list).
    #[serde(deserialize_with = "crate::agent::failover::one_or_many")]
    pub authority: Vec<SocketAddr>,
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

/// Seconds between scheduled rotations: at most a year, so the due time stays a
/// representable instant and a rotation still happens.
pub const ROTATION_INTERVAL_SECS: RangeInclusive<u64> = 1..=365 * 86_400;
/// Certificate lifetimes: at most ten years, well inside what X.509 dates can hold.
pub const CERT_DAYS: RangeInclusive<u64> = 1..=3_650;
/// Enrolment token lifetimes: at most 30 days; a token is a bearer secret.
pub const TOKEN_TTL_SECS: RangeInclusive<u64> = 1..=30 * 86_400;
/// SA lifetimes: at most a day, so peers rekey at least daily.
pub const SA_LIFETIME_SECS: RangeInclusive<u64> = 1..=86_400;
/// Election leases: etcd's minimum is about 2 s; past ten minutes a dead leader stalls
/// every write too long to be useful.
pub const ELECTION_TTL_SECS: RangeInclusive<u64> = 2..=600;
/// Rotation grace: at most a minute; a rotation holds its keys until the grace ends.
pub const REKEY_GRACE_MS: RangeInclusive<u64> = 0..=60_000;

impl AuthorityConfig {
    /// An authority on an ephemeral loopback port with its state under `state_dir` and its
    /// material sealed under the KEK in `kek_file`: a redb store, daily certificates, no
    /// rotation for a day, tokens valid ten minutes, the default policy, no API and a
    /// generated CA. What benchmarks and tests on one machine start from.
    pub fn on_loopback(state_dir: PathBuf, kek_file: PathBuf) -> Self {
        Self {
            listen: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            state_dir,
            kek_file,
            rotation_interval_secs: 86_400,
            cert_days: 1,
            token_ttl_secs: 600,
            store: StoreConfig::Redb { path: None },
            rules: Vec::new(),
            api: None,
            ca: None,
        }
    }

    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&ConfigText::read(path)?)
    }

    /// Parses and checks a configuration's text.
    pub fn parse(text: &ConfigText) -> Result<Self> {
        let cfg: Self = text.parse()?;
        if let Some(api) = &cfg.api {
            api.clone().check(text)?;
        }
        text.check_range(
            "rotation_interval_secs",
            cfg.rotation_interval_secs,
            ROTATION_INTERVAL_SECS,
            "seconds",
            "86400 = daily, at most a year",
        )?;
        text.check_range(
            "cert_days",
            cfg.cert_days,
            CERT_DAYS,
            "days",
            "365 = a year, at most ten years",
        )?;
        text.check_range(
            "token_ttl_secs",
            cfg.token_ttl_secs,
            TOKEN_TTL_SECS,
            "seconds",
            "3600 = an hour, at most 30 days",
        )?;
        if let StoreConfig::Etcd {
            endpoints,
            candidate,
            election_ttl_secs,
            ..
        } = &cfg.store
        {
            if endpoints.is_empty() {
                return Err(text
                    .error_fix(
                        "[store].endpoints",
                        "lists no etcd server",
                        "list at least one etcd client URL, e.g. [\"http://127.0.0.1:2379\"]",
                    )
                    .into());
            }
            if let Some(id) = candidate.as_deref().filter(|id| !valid_id(id)) {
                return Err(text
                    .error_fix(
                        "[store].candidate",
                        format!("{id:?} is not a candidate id"),
                        "use 1-63 of a-z, 0-9 and '-', unique among the replicas",
                    )
                    .into());
            }
            text.check_range(
                "[store].election_ttl_secs",
                *election_ttl_secs,
                ELECTION_TTL_SECS,
                "seconds",
                "10 = a failover within about ten seconds",
            )?;
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
        Self::parse(&ConfigText::read(path)?)
    }

    /// Parses and checks a configuration's text.
    pub fn parse(text: &ConfigText) -> Result<Self> {
        let cfg: Self = text.parse()?;
        if !valid_id(&cfg.appliance) {
            return Err(text
                .error_fix(
                    "appliance",
                    format!("{:?} is not an appliance id", cfg.appliance),
                    "use 1-63 of a-z, 0-9 and '-'",
                )
                .into());
        }
        if cfg.authority.is_empty() {
            return Err(text
                .error_fix(
                    "authority",
                    "an empty list",
                    "name the authority's control address, or one per replica",
                )
                .into());
        }
        if cpclink_dataplane::crypto::Suite::from_version(cfg.suite).is_err() {
            return Err(text
                .error_fix(
                    "suite",
                    format!("{} is no PSP version", cfg.suite),
                    "use 0, 1, 2, 3 or 8 (1 = AES-GCM-256)",
                )
                .into());
        }
        text.check_range(
            "sa_lifetime_secs",
            cfg.sa_lifetime_secs,
            SA_LIFETIME_SECS,
            "seconds",
            "3600 = an hour, at most a day",
        )?;
        text.check_range(
            "rekey_grace_ms",
            cfg.rekey_grace_ms,
            REKEY_GRACE_MS,
            "ms",
            "2000 = two seconds, at most a minute",
        )?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    const AUTHORITY: &str = "listen = \"127.0.0.1:1\"\nstate_dir = \"/x\"\nkek_file = \"/k\"\n";
    const AGENT: &str = "appliance = \"a1\"\nauthority = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\nstate_dir = \"/x\"\nkek_file = \"/k\"\nca_cert = \"/c\"\n";

    fn authority(text: &str) -> Result<AuthorityConfig> {
        AuthorityConfig::parse(&ConfigText::new("authority.toml", text))
    }

    fn agent(text: &str) -> Result<AgentConfig> {
        AgentConfig::parse(&ConfigText::new("agent.toml", text))
    }

    /// The diagnostic inside a config error.
    fn diagnostic(e: Error) -> cpclink_diagnostics::Diagnostic {
        match e {
            Error::Config(d) => d,
            other => panic!("expected a config diagnostic, got {other}"),
        }
    }

    #[test]
    fn an_operator_ca_is_named_by_three_files_and_nothing_else() {
        let files = "[ca]\ncertificate = \"/c.pem\"\nkey = \"/c.key\"\nchain = \"/chain.pem\"\n";
        let cfg = authority(&format!("{AUTHORITY}{files}")).unwrap();
        assert_eq!(
            cfg.ca,
            Some(CaFiles {
                certificate: "/c.pem".into(),
                key: "/c.key".into(),
                chain: "/chain.pem".into(),
            })
        );
        assert_eq!(authority(AUTHORITY).unwrap().ca, None);
        let d =
            diagnostic(authority(&format!("{AUTHORITY}{files}root = \"/r.pem\"\n")).unwrap_err());
        assert_eq!((d.field.as_str(), d.line), ("[ca].root", Some(8)));
    }

    #[test]
    fn errors_name_file_field_line_and_fix() {
        let d = diagnostic(authority(&AUTHORITY.replace("127.0.0.1:1", "nope")).unwrap_err());
        assert_eq!(
            (d.file.as_str(), d.field.as_str()),
            ("authority.toml", "listen")
        );
        assert_eq!(d.line, Some(1));
        let d = diagnostic(agent(&AGENT.replace("\"a1\"", "\"Bad Id\"")).unwrap_err());
        assert_eq!((d.field.as_str(), d.line), ("appliance", Some(1)));
        assert!(d.fix.as_deref().unwrap().contains("a-z"), "{d}");
        let d = diagnostic(agent(&format!("{AGENT}suite = 7\n")).unwrap_err());
        assert_eq!((d.field.as_str(), d.line), ("suite", Some(7)));
        assert!(d.fix.is_some());
        let d = diagnostic(
            authority(&format!(
                "{AUTHORITY}[store]\nkind = \"etcd\"\nendpoints = []\n"
            ))
            .unwrap_err(),
        );
        assert_eq!((d.field.as_str(), d.line), ("[store].endpoints", Some(6)));
        assert!(
            d.to_string()
                .starts_with("authority.toml:6: [store].endpoints: "),
            "{d}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = AuthorityConfig::load(Path::new("/nonexistent/authority.toml")).unwrap_err();
        let d = diagnostic(e);
        assert_eq!(d.file, "/nonexistent/authority.toml");
        assert!(d.fix.is_some());
    }

    /// Found by a hostile probe: an interval this large overflowed the rotation's due time,
    /// and the overflowed time was persisted.
    #[test]
    fn every_duration_out_of_range_is_refused_with_its_range() {
        let huge = "9223372036854775807";
        for (key, value, max) in [
            ("rotation_interval_secs", huge, "31536000"),
            ("rotation_interval_secs", "0", "31536000"),
            ("cert_days", huge, "3650"),
            ("cert_days", "0", "3650"),
            ("token_ttl_secs", huge, "2592000"),
            ("token_ttl_secs", "0", "2592000"),
        ] {
            let d = diagnostic(authority(&format!("{AUTHORITY}{key} = {value}\n")).unwrap_err());
            assert_eq!(d.field, key);
            assert_eq!(d.line, Some(4), "{d}");
            assert!(d.reason.contains("out of range"), "{d}");
            assert!(d.fix.as_deref().unwrap().contains(max), "{d}");
        }
        for (key, value, max) in [
            ("sa_lifetime_secs", huge, "86400"),
            ("sa_lifetime_secs", "0", "86400"),
            ("rekey_grace_ms", huge, "60000"),
        ] {
            let d = diagnostic(agent(&format!("{AGENT}{key} = {value}\n")).unwrap_err());
            assert_eq!((d.field.as_str(), d.line), (key, Some(7)), "{d}");
            assert!(d.fix.as_deref().unwrap().contains(max), "{d}");
        }
        let d = diagnostic(authority(&format!("{AUTHORITY}cert_days = -1\n")).unwrap_err());
        assert_eq!((d.field.as_str(), d.line), ("cert_days", Some(4)), "{d}");
        assert!(d.fix.is_some(), "{d}");
        // The largest allowed values load.
        authority(&format!(
            "{AUTHORITY}rotation_interval_secs = 31536000\ncert_days = 3650\ntoken_ttl_secs = 2592000\n"
        ))
        .unwrap();
        agent(&format!(
            "{AGENT}sa_lifetime_secs = 86400\nrekey_grace_ms = 60000\n"
        ))
        .unwrap();
    }

    #[test]
    fn a_misspelt_policy_key_is_refused() {
        let rule = format!("{AUTHORITY}[[rules]]\nsame_tenant = true\ntennant = \"x\"\n");
        let d = diagnostic(authority(&rule).unwrap_err());
        assert_eq!(d.file, "authority.toml");
        assert_eq!(
            (d.field.as_str(), d.line),
            ("[[rules]].tennant", Some(6)),
            "{d}"
        );
        assert!(d.reason.contains("unknown field `tennant`"), "{d}");
        assert!(d.fix.as_deref().unwrap().contains("same_tenant"), "{d}");

        let selector =
            format!("{AUTHORITY}[[rules]]\na = {{ tenant = \"t1\" }}\nb = {{ tennant = \"x\" }}\n");
        let d = diagnostic(authority(&selector).unwrap_err());
        assert_eq!((d.field.as_str(), d.line), ("[[rules]].b", Some(6)), "{d}");
        assert!(d.fix.as_deref().unwrap().contains("tenant"), "{d}");

        let table = format!("{AUTHORITY}[[rules]]\n[rules.a]\ntennant = \"x\"\n");
        let d = diagnostic(authority(&table).unwrap_err());
        assert_eq!(
            (d.field.as_str(), d.line),
            ("[rules.a].tennant", Some(6)),
            "{d}"
        );
    }

    #[test]
    fn defaults_and_store_kinds() {
        let c = authority(&format!(
            "{AUTHORITY}[store]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n"
        ))
        .unwrap();
        assert_eq!(c.rotation_interval_secs, 86_400);
        assert_eq!(c.policy(), vec![Rule::same_tenant()]);
        assert!(
            matches!(c.store, StoreConfig::Etcd { ref prefix, .. } if prefix == "/cpclink/keymgr/")
        );
        let a = agent(AGENT).unwrap();
        assert_eq!((a.sa_lifetime_secs, a.rekey_grace_ms), (3_600, 2_000));
    }

    #[test]
    fn an_agent_names_one_authority_or_a_list_of_replicas() {
        assert_eq!(
            agent(AGENT).unwrap().authority,
            ["127.0.0.1:1".parse().unwrap()]
        );
        let listed = AGENT.replace(
            "authority = \"127.0.0.1:1\"",
            "authority = [\"127.0.0.1:1\", \"[::1]:7000\"]",
        );
        let a = agent(&listed).unwrap();
        assert_eq!(
            a.authority,
            [
                "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
                "[::1]:7000".parse().unwrap()
            ]
        );
        let empty = AGENT.replace("authority = \"127.0.0.1:1\"", "authority = []");
        let d = diagnostic(agent(&empty).unwrap_err());
        assert_eq!(d.field, "authority", "{d}");
        let bad = AGENT.replace(
            "authority = \"127.0.0.1:1\"",
            "authority = [\"127.0.0.1:1\", \"nope\"]",
        );
        let d = diagnostic(agent(&bad).unwrap_err());
        assert!(d.to_string().contains("list of them"), "{d}");
    }

    #[test]
    fn election_options_are_checked_where_they_are_written() {
        let etcd =
            format!("{AUTHORITY}[store]\nkind = \"etcd\"\nendpoints = [\"http://e:2379\"]\n");
        let c = authority(&format!(
            "{etcd}candidate = \"auth-1\"\nelection_ttl_secs = 5\n"
        ))
        .unwrap();
        assert!(matches!(
            c.store,
            StoreConfig::Etcd { ref candidate, election_ttl_secs: 5, .. }
                if candidate.as_deref() == Some("auth-1")
        ));
        let c = authority(&etcd).unwrap();
        assert!(matches!(
            c.store,
            StoreConfig::Etcd {
                candidate: None,
                election_ttl_secs: 10,
                ..
            }
        ));
        let d = diagnostic(authority(&format!("{etcd}candidate = \"Auth 1\"\n")).unwrap_err());
        assert_eq!(
            (d.field.as_str(), d.line),
            ("[store].candidate", Some(7)),
            "{d}"
        );
        assert!(d.fix.as_deref().unwrap().contains("a-z"), "{d}");
        for ttl in ["1", "601"] {
            let d =
                diagnostic(authority(&format!("{etcd}election_ttl_secs = {ttl}\n")).unwrap_err());
            assert_eq!(
                (d.field.as_str(), d.line),
                ("[store].election_ttl_secs", Some(7)),
                "{d}"
            );
            assert!(d.fix.as_deref().unwrap().contains("from 2 to 600"), "{d}");
        }
        // The redb store has no election: the options are refused there.
        let d = diagnostic(
            authority(&format!(
                "{AUTHORITY}[store]\nkind = \"redb\"\ncandidate = \"a\"\n"
            ))
            .unwrap_err(),
        );
        assert!(d.reason.contains("unknown field `candidate`"), "{d}");
    }
}
