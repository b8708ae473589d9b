//! The appliance configuration (TOML). Every error names the file, the field and the fix.
//!
//! ```toml
//! [appliance]
//! listen = "192.0.2.1:1000"          # UDP address PSP arrives on
//! workers = 2                         # one pinned worker per core
//! cores = [0, 1]                      # optional: which cores
//! io = "auto"                         # auto | io_uring | epoll
//! suite = "aes-gcm-256"               # aes-gcm-128 | aes-gcm-256 | chacha20-poly1305
//! crypto = "aws-lc-rs"                # aws-lc-rs | ring | rustcrypto
//! master_keys = ["<64 hex>", "<64 hex>"]   # lab mode: this appliance's two generations
//! current_generation = 0
//! source_port_base = 41000            # optional: worker i sends from port 41000 + i
//!                                     # (default: ports the kernel picks; one per worker)
//!
//! [hardware]                          # optional: size the data plane from a hardware profile
//! profile = "virtio-net"              # a shipped profile or one in profile_dir
//! device = "eth0"                     # optional: workers go to this NIC's NUMA node
//! profile_dir = "profiles"            # optional; relative to this file
//!
//! # Explicit [appliance] settings win over the profile's: workers, cores, crypto and
//! # batch (GSO sends per transmit batch), gso_segments, io_uring_entries, provided_buffers,
//! # and the data plane's mode:
//! # mode = "latency"                  # throughput (default) | latency: bounded batch waits
//! # max_hold_us = 20                  # latency mode: longest a batch's first packet waits
//! # busy_poll_us = 100                # latency mode: polling before a worker sleeps
//!
//! [tun]
//! name = "cpc0"
//! path_mtu = 1500                     # MTU of the path between appliances
//! offloads = true                     # virtio-net header, TSO/USO: 64 KiB reads
//!
//! [[peers]]                           # lab mode only
//! name = "b"
//! endpoint = "192.0.2.2:1000"
//! prefixes = ["10.2.0.0/16"]
//! master_keys = ["<64 hex>", "<64 hex>"]   # the peer's, as in its own [appliance]
//! current_generation = 0
//! ```
//!
//! Instead of lab keys (`master_keys` and `[[peers]]`), the key plane can key the appliance;
//! exactly one of the two must be given:
//!
//! ```toml
//! [keymgr]
//! appliance = "dc1-edge"              # this appliance's id, as its enrolment token names it
//! authority = "192.0.2.10:7000"       # the authority's QUIC address
//! listen = "192.0.2.1:7001"           # where this appliance's key agent serves peers (QUIC)
//! state_dir = "/var/lib/cpclink/agent"    # relative paths are taken from this file's directory
//! kek_file = "/etc/cpclink/kek"       # 64 hex digits wrapping the secrets at rest
//! ca_cert = "/etc/cpclink/ca.pem"     # the authority's CA certificate
//! token_file = "/etc/cpclink/enrol.token"  # or token = "..."; needed only until enrolled
//! endpoint = "192.0.2.1:1000"         # optional: data-plane endpoint peers send to
//!                                     # (default: [appliance].listen)
//! sa_lifetime_secs = 3600             # how long SAs this appliance grants may be used
//! rekey_grace_ms = 2000               # how long a rotation waits for peers to move
//!
//! prefixes = ["10.1.0.0/16"]          # inner prefixes this centre serves, announced in the
//!                                     # directory (the authority accepts what it assigned)
//!
//! [[keymgr.peer]]                     # optional override: route these to that peer
//! id = "dc2-edge"                     # instead of the prefixes its directory entry lists
//! prefixes = ["10.2.0.0/16"]
//! ```
//!
//! Peers, their endpoints, prefixes and SAs come from the key plane. The file is split by
//! section: `[appliance]`/`[hardware]` in [`appliance`](self::appliance), `[tun]`, `[keymgr]`
//! and the lab's `[[peers]]`, each checked where it is parsed; errors are
//! [`cpclink_diagnostics::Diagnostic`]s naming the file, the field, the line and the fix.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use cpclink_dataplane::crypto::{Backend, Suite};
use cpclink_dataplane::engine::{BatchingMode, EngineConfig};
use cpclink_dataplane::io::{IoKind, IoSizing};
use cpclink_dataplane::sa::MasterKeys;
use cpclink_diagnostics::ConfigText;
use serde::Deserialize;

mod api;
mod appliance;
mod keymgr;
mod lab;
mod paths;
mod tun;

pub use api::ApiConfig;
pub use appliance::HardwareSource;
pub use keymgr::KeymgrConfig;
pub use lab::Peer;
pub use paths::{LinkConfig, MetricsConfig, PathsConfig, ServiceConfig};
pub use tun::TunConfig;

use crate::Error;

/// An inner prefix: the key plane's type, so what the directory carries, what this file
/// lists and what is announced are one thing (host bits clear, overlap checks).
pub type Prefix = cpclink_keymgr::prefix::InnerPrefix;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    appliance: appliance::RawAppliance,
    hardware: Option<appliance::RawHardware>,
    tun: Option<tun::RawTun>,
    #[serde(default)]
    peers: Vec<lab::RawPeer>,
    keymgr: Option<keymgr::RawKeymgr>,
    paths: Option<paths::RawPaths>,
    #[serde(default)]
    services: Vec<paths::RawService>,
    metrics: Option<paths::RawMetrics>,
    api: Option<cpclink_mgmt::RawApi>,
}

/// A validated appliance configuration.
#[derive(Debug, Clone)]
pub struct ApplianceConfig {
    /// The file it was read from.
    pub file: PathBuf,
    /// Where PSP arrives.
    pub listen: SocketAddr,
    /// Workers.
    pub workers: usize,
    /// Cores to pin to.
    pub cores: Vec<usize>,
    /// I/O backend.
    pub io: IoKind,
    /// The suite of every SA.
    pub suite: Suite,
    /// The AEAD library.
    pub crypto: Backend,
    /// GSO sends per transmit batch.
    pub batch_sends: usize,
    /// Datagrams per GSO send at most.
    pub gso_segments: usize,
    /// io_uring submission queue and provided-buffer ring sizes.
    pub io_sizing: IoSizing,
    /// Throughput or latency first: transmit batch bounds and busy polling.
    pub batching: BatchingMode,
    /// The hardware profile the data plane was sized from, if one was named.
    pub hardware: Option<HardwareSource>,
    /// Where the SA keys come from.
    pub keying: Keying,
    /// The TUN device, if the appliance tunnels.
    pub tun: Option<TunConfig>,
    /// Worker i sends from UDP port `source_port_base + i`; `None`: ports the kernel picks.
    pub source_port_base: Option<u16>,
    /// The lab-mode peers, in order; none when the key plane keys the appliance (it finds
    /// the peers).
    pub peers: Vec<Peer>,
    /// The topology the path controller steers over, if it steers.
    pub paths: Option<PathsConfig>,
    /// The services it places.
    pub services: Vec<ServiceConfig>,
    /// This centre's metric source and how it is advertised.
    pub metrics: Option<MetricsConfig>,
    /// The management API, if it is served.
    pub api: Option<ApiConfig>,
}

/// Where an appliance's SA keys come from.
#[derive(Debug, Clone)]
pub enum Keying {
    /// Lab mode: static master keys in the configuration.
    Lab {
        /// This appliance's master keys.
        master_keys: MasterKeys,
    },
    /// The key plane: a key agent enrolled with the authority.
    KeyPlane(Box<KeymgrConfig>),
}

/// The checks of one file: its text, for errors that point at a field's line.
pub(crate) struct Ctx<'a> {
    text: &'a ConfigText,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Config(self.text.error(field, reason))
    }

    fn err_fix(
        &self,
        field: impl Into<String>,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) -> Error {
        Error::Config(self.text.error_fix(field, reason, fix))
    }

    /// The directory relative paths are taken from.
    fn dir(&self) -> PathBuf {
        Path::new(self.text.file())
            .parent()
            .unwrap_or(Path::new("."))
            .to_owned()
    }

    /// A path as written, or taken from the configuration's directory if relative.
    fn path(&self, path: &Path) -> PathBuf {
        if path.is_relative() {
            self.dir().join(path)
        } else {
            path.to_owned()
        }
    }

    fn endpoint(&self, field: &str, value: &str) -> Result<SocketAddr, Error> {
        value.parse().map_err(|_| {
            if value.parse::<IpAddr>().is_ok() {
                self.err_fix(
                    field,
                    format!("{value:?} has no port"),
                    format!(
                        "write host:port, e.g. \"{value}:1000\", or \"[{value}]:1000\" for IPv6"
                    ),
                )
            } else {
                self.err_fix(
                    field,
                    format!("{value:?} is not an address with a port"),
                    "write e.g. \"192.0.2.1:1000\" or \"[2001:db8::1]:1000\"",
                )
            }
        })
    }

    /// A list of prefixes, each valid and none given twice or inside another of the list.
    fn prefixes(&self, field: &str, values: &[String]) -> Result<Vec<Prefix>, Error> {
        let mut out: Vec<Prefix> = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            let p = self.prefix(&format!("{field}[{i}]"), v)?;
            if let Some(q) = out.iter().find(|q| q.overlaps(&p)) {
                return Err(self.err_fix(
                    format!("{field}[{i}]"),
                    format!("{v:?} overlaps {q} listed before it"),
                    "list each address range once",
                ));
            }
            out.push(p);
        }
        Ok(out)
    }

    fn prefix(&self, field: &str, value: &str) -> Result<Prefix, Error> {
        value.trim().parse().map_err(|reason: String| {
            self.err_fix(
                field,
                reason,
                "write a network and its length, e.g. \"10.2.0.0/16\" or \"fd00:2::/64\"",
            )
        })
    }

    /// Refuses a prefix routed to two peers (the same or overlapping ranges): which one
    /// would get the traffic is not the operator's intent but an accident of lengths.
    fn disjoint(&self, owners: &[(String, String, Prefix)]) -> Result<(), Error> {
        for (i, (field, owner, p)) in owners.iter().enumerate() {
            if let Some((_, other, q)) = owners[..i]
                .iter()
                .find(|(_, o, q)| o != owner && q.overlaps(p))
            {
                return Err(self.err_fix(
                    field.clone(),
                    format!("{p} of {owner} overlaps {q} of {other}"),
                    "route each address range to one peer only",
                ));
            }
        }
        Ok(())
    }
}

impl ApplianceConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = ConfigText::read(path)?;
        Self::check(&text)
    }

    /// Validates a configuration held in `text`, read from `file`.
    pub fn parse(file: &str, text: &str) -> Result<Self, Error> {
        Self::check(&ConfigText::new(file, text))
    }

    fn check(text: &ConfigText) -> Result<Self, Error> {
        let ctx = Ctx { text };
        let raw: RawConfig = text.parse()?;
        let a = raw.appliance;
        let listen = ctx.endpoint("[appliance].listen", &a.listen)?;
        let sizing = ctx.sizing(&a, raw.hardware.as_ref())?;
        if let Some(base) = a.source_port_base {
            appliance::check_source_ports(&ctx, base, sizing.workers, listen)?;
        }
        let io = a.io.parse().map_err(|e: String| {
            ctx.err_fix("[appliance].io", e, "give auto, io_uring or epoll")
        })?;
        let suite: Suite = a.suite.parse().map_err(|e: String| {
            ctx.err_fix(
                "[appliance].suite",
                e,
                "give aes-gcm-128, aes-gcm-256 or chacha20-poly1305",
            )
        })?;
        if !suite.encrypts() {
            return Err(ctx.err_fix(
                "[appliance].suite",
                format!("{suite} authenticates without encrypting"),
                "tunnels need aes-gcm-128, aes-gcm-256 or chacha20-poly1305",
            ));
        }
        let keying = match (a.master_keys, raw.keymgr) {
            (Some(keys), None) => Keying::Lab {
                master_keys: ctx.keys("[appliance].master_keys", &keys, a.current_generation)?,
            },
            (None, Some(k)) => {
                if let Some(p) = raw.peers.first() {
                    return Err(ctx.err_fix(
                        format!("[peers.{}]", p.name),
                        "lab-mode peers with [keymgr]: the key plane finds the peers",
                        "remove [[peers]]; their prefixes come from the directory (or [[keymgr.peer]] overrides)",
                    ));
                }
                Keying::KeyPlane(Box::new(ctx.keymgr(k, listen, suite)?))
            }
            (Some(_), Some(_)) => {
                return Err(ctx.err_fix(
                    "[appliance].master_keys",
                    "lab keys given with [keymgr]",
                    "keep one: remove master_keys (and [[peers]]) to be keyed by the key plane, or [keymgr] for lab mode",
                ))
            }
            (None, None) => {
                return Err(ctx.err_fix(
                    "[appliance]",
                    "no keys: neither master_keys (lab mode) nor a [keymgr] section",
                    "give lab keys (master_keys = [\"<64 hex>\", \"<64 hex>\"] and [[peers]]) or a [keymgr] section to be keyed by the key plane",
                ))
            }
        };
        let tun = raw.tun.map(|t| ctx.tun(t)).transpose()?;
        let peers = ctx.peers(raw.peers, listen)?;
        let mut owners = Vec::new();
        for p in &peers {
            for (i, prefix) in p.prefixes.iter().enumerate() {
                owners.push((
                    format!("[peers.{}].prefixes[{i}]", p.name),
                    p.name.clone(),
                    *prefix,
                ));
            }
        }
        if let Keying::KeyPlane(k) = &keying {
            for (i, prefix) in k.announce.iter().enumerate() {
                owners.push((
                    format!("[keymgr].prefixes[{i}]"),
                    "this appliance".into(),
                    *prefix,
                ));
            }
            for (n, (id, prefixes)) in k.prefixes.iter().enumerate() {
                for (i, prefix) in prefixes.iter().enumerate() {
                    owners.push((
                        format!("[[keymgr.peer]][{n}].prefixes[{i}]"),
                        id.clone(),
                        *prefix,
                    ));
                }
            }
        }
        ctx.disjoint(&owners)?;
        let paths = raw.paths.map(|p| ctx.paths(p)).transpose()?;
        let services = ctx.services(raw.services, paths.as_ref())?;
        let metrics = raw.metrics.map(|m| ctx.metrics(m)).transpose()?;
        let key_plane = matches!(keying, Keying::KeyPlane(_));
        let api = raw.api.map(|a| ctx.api(a, key_plane)).transpose()?;
        Ok(Self {
            file: PathBuf::from(text.file()),
            listen,
            workers: sizing.workers,
            cores: sizing.cores,
            io,
            suite,
            crypto: sizing.crypto,
            batch_sends: sizing.batch_sends,
            gso_segments: sizing.gso_segments,
            io_sizing: sizing.io_sizing,
            batching: sizing.batching,
            hardware: sizing.hardware,
            keying,
            tun,
            source_port_base: a.source_port_base,
            peers,
            paths,
            services,
            metrics,
            api,
        })
    }

    /// The engine settings this configuration asks for (the egress is left to the caller:
    /// the appliance opens the TUN queues).
    pub fn engine_config(&self) -> EngineConfig {
        let mut engine = EngineConfig::new(self.listen);
        engine.workers = self.workers;
        engine.cores = self.cores.clone();
        engine.io = self.io;
        engine.crypto = self.crypto;
        engine.batch_sends = self.batch_sends;
        engine.gso_segments = self.gso_segments;
        engine.io_sizing = self.io_sizing;
        engine.batching = self.batching;
        engine.tx_port_base = self.source_port_base;
        // Stated, not left to a default: an appliance always seals.
        engine.protection = cpclink_dataplane::engine::Protection::Encrypted;
        engine
    }

    /// The TUN MTU: the path MTU less the outer IP and UDP headers and the PSP overhead.
    pub fn tun_mtu(&self) -> Option<u32> {
        let tun = self.tun.as_ref()?;
        let ip = if self.listen.is_ipv4() { 20 } else { 40 };
        Some(tun.path_mtu - ip - 8 - cpclink_dataplane::psp::PSP_OVERHEAD as u32)
    }

    /// What differs from `running` that only a restart can change, by field; empty when a
    /// reload can apply everything.
    pub fn needs_restart(&self, running: &ApplianceConfig) -> Vec<&'static str> {
        let mut fields = Vec::new();
        let mut differs = |field, changed: bool| {
            if changed {
                fields.push(field);
            }
        };
        differs("[appliance].listen", self.listen != running.listen);
        differs("[appliance].workers", self.workers != running.workers);
        differs("[appliance].cores", self.cores != running.cores);
        differs("[appliance].io", self.io != running.io);
        differs("[appliance].suite", self.suite != running.suite);
        differs("[appliance].crypto", self.crypto != running.crypto);
        differs(
            "[appliance] batching (batch, gso_segments, io_uring_entries, provided_buffers)",
            (self.batch_sends, self.gso_segments, self.io_sizing)
                != (running.batch_sends, running.gso_segments, running.io_sizing),
        );
        differs(
            "[appliance].source_port_base",
            self.source_port_base != running.source_port_base,
        );
        differs("[tun]", self.tun != running.tun);
        differs("[api]", self.api != running.api);
        let keys = |k: &MasterKeys| (k.key(0).copied(), k.key(1).copied(), k.current_generation());
        match (&self.keying, &running.keying) {
            (Keying::Lab { master_keys: a }, Keying::Lab { master_keys: b }) => {
                differs("[appliance].master_keys", keys(a) != keys(b));
            }
            (Keying::KeyPlane(a), Keying::KeyPlane(b)) => {
                differs(
                    "[keymgr] (agent identity, addresses, files, lifetimes)",
                    !a.same_agent(b),
                );
            }
            _ => differs(
                "[appliance].master_keys / [keymgr] (lab or key plane)",
                true,
            ),
        }
        fields
    }
}

#[cfg(test)]
mod tests;
