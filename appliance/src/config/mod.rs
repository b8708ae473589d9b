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
//! # batch (GSO sends per transmit batch), gso_segments, io_uring_entries, provided_buffers.
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
//! [[keymgr.peer]]                     # inner prefixes routed to a peer, by appliance id
//! id = "dc2-edge"
//! prefixes = ["10.2.0.0/16"]
//! ```
//!
//! Peers, their endpoints and SAs come from the key plane; the directory carries no inner
//! prefixes, so a peer that is not listed under `[[keymgr.peer]]` gets no routed traffic.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use cpclink_dataplane::crypto::{Backend, Suite};
use cpclink_dataplane::engine::{EngineConfig, PeerConfig};
use cpclink_dataplane::io::{udp::MAX_GSO_SEGMENTS, IoKind, IoSizing};
use cpclink_dataplane::sa::MasterKeys;
use cpclink_keymgr::agent::AgentOptions;
use cpclink_keymgr::config::AgentConfig;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    appliance: RawAppliance,
    hardware: Option<RawHardware>,
    tun: Option<RawTun>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    keymgr: Option<RawKeymgr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeymgr {
    appliance: String,
    authority: String,
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
    #[serde(default)]
    peer: Vec<RawKeymgrPeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeymgrPeer {
    id: String,
    #[serde(default)]
    prefixes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppliance {
    listen: String,
    workers: Option<usize>,
    cores: Option<Vec<usize>>,
    #[serde(default = "auto")]
    io: String,
    #[serde(default = "default_suite")]
    suite: String,
    crypto: Option<String>,
    batch: Option<usize>,
    gso_segments: Option<usize>,
    io_uring_entries: Option<u32>,
    provided_buffers: Option<u32>,
    master_keys: Option<Vec<String>>,
    #[serde(default)]
    current_generation: u8,
    source_port_base: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHardware {
    profile: String,
    device: Option<String>,
    profile_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTun {
    name: String,
    #[serde(default = "default_path_mtu")]
    path_mtu: u32,
    #[serde(default = "yes")]
    offloads: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    endpoint: String,
    #[serde(default)]
    prefixes: Vec<String>,
    master_keys: Vec<String>,
    #[serde(default)]
    current_generation: u8,
}

fn yes() -> bool {
    true
}
fn auto() -> String {
    "auto".into()
}
fn default_suite() -> String {
    "aes-gcm-256".into()
}
fn default_path_mtu() -> u32 {
    1500
}
fn default_sa_lifetime() -> u64 {
    3_600
}
fn default_rekey_grace() -> u64 {
    2_000
}

/// A validated appliance configuration.
#[derive(Debug)]
pub struct ApplianceConfig {
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
    /// The hardware profile the data plane was sized from, if one was named.
    pub hardware: Option<HardwareSource>,
    /// Where the SA keys come from.
    pub keying: Keying,
    /// The TUN device, if the appliance tunnels.
    pub tun: Option<TunConfig>,
    /// Worker i sends from UDP port `source_port_base + i`; `None`: ports the kernel picks.
    pub source_port_base: Option<u16>,
    /// The lab-mode peers, in order ([`cpclink_dataplane::engine::PeerId`] indexes them);
    /// none when the key plane keys the appliance (it finds the peers).
    pub peers: Vec<Peer>,
}

/// Where an appliance's SA keys come from.
#[derive(Debug)]
pub enum Keying {
    /// Lab mode: static master keys in the configuration.
    Lab {
        /// This appliance's master keys.
        master_keys: MasterKeys,
    },
    /// The key plane: a key agent enrolled with the authority.
    KeyPlane(Box<KeymgrConfig>),
}

/// The `[keymgr]` section: this appliance's key agent.
#[derive(Debug)]
pub struct KeymgrConfig {
    /// The agent's settings, paths resolved against the configuration's directory.
    pub agent: AgentConfig,
    /// An enrolment token given inline (instead of `token_file`).
    pub token: Option<Zeroizing<String>>,
    /// The data-plane endpoint to publish, if not `[appliance].listen`.
    pub endpoint: Option<SocketAddr>,
    /// Inner prefixes routed to peers, by appliance id.
    pub prefixes: BTreeMap<String, Vec<(IpAddr, u8)>>,
    file: String,
}

impl KeymgrConfig {
    /// The key agent's options (its data-plane endpoints left for the caller to publish).
    /// Reads the KEK, the CA certificate and the enrolment token file.
    pub fn agent_options(&self) -> Result<AgentOptions, Error> {
        let mut options = AgentOptions::from_config(&self.agent).map_err(|e| match e {
            cpclink_keymgr::Error::Config {
                file: at,
                field,
                reason,
            } => Error::Config {
                file: self.file.clone(),
                field: format!("[keymgr].{field}"),
                reason: format!("{}: {reason}", at.display()),
            },
            other => Error::Config {
                file: self.file.clone(),
                field: "[keymgr]".into(),
                reason: other.to_string(),
            },
        })?;
        if let Some(token) = &self.token {
            options.token = Some(token.clone());
        }
        Ok(options)
    }
}

/// Which hardware profile sized the data plane, and which settings it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardwareSource {
    /// The profile's name.
    pub profile: String,
    /// The NIC whose NUMA node chose the worker cores, if named.
    pub device: Option<String>,
    /// `(setting, value)` for every setting taken from the profile (not overridden).
    pub from_profile: Vec<(&'static str, String)>,
    /// Settings the configuration set itself, overriding the profile's.
    pub overridden: Vec<&'static str>,
}

/// Where each data plane setting came from, for the log line and for errors.
#[derive(Default)]
struct Origin {
    from_profile: Vec<(&'static str, String)>,
    overridden: Vec<&'static str>,
}

impl Origin {
    /// The explicit value if set (noting that it overrides the profile's), else the
    /// profile's (noting it), else `None`.
    fn choose<T: std::fmt::Debug>(
        &mut self,
        name: &'static str,
        explicit: Option<T>,
        profile: Option<T>,
    ) -> Option<T> {
        match (explicit, profile) {
            (Some(v), p) => {
                if p.is_some() {
                    self.overridden.push(name);
                }
                Some(v)
            }
            (None, Some(p)) => {
                self.from_profile.push((name, format!("{p:?}")));
                Some(p)
            }
            (None, None) => None,
        }
    }

    /// The field an error about `name` points at: the profile's, if the value came from it.
    fn field(&self, name: &str) -> String {
        if self.from_profile.iter().any(|(n, _)| *n == name) {
            format!("[hardware].profile ({name})")
        } else {
            format!("[appliance].{name}")
        }
    }
}

/// The data plane settings a profile can give, resolved against explicit ones.
struct Sizing {
    workers: usize,
    cores: Vec<usize>,
    crypto: Backend,
    batch_sends: usize,
    gso_segments: usize,
    io_sizing: IoSizing,
    hardware: Option<HardwareSource>,
}

/// The TUN device.
#[derive(Debug)]
pub struct TunConfig {
    /// Interface name.
    pub name: String,
    /// MTU of the path between appliances; the TUN MTU is this less the PSP overhead.
    pub path_mtu: u32,
    /// Virtio-net header with TSO/USO and checksum offloads.
    pub offloads: bool,
}

/// A peer appliance.
#[derive(Debug)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Where it listens.
    pub endpoint: SocketAddr,
    /// Inner prefixes routed to it.
    pub prefixes: Vec<(IpAddr, u8)>,
    /// Its master keys (lab mode: the sender derives its SAs from them).
    pub master_keys: MasterKeys,
}

/// Worker i sends from `base + i`: the range must fit in the port space and leave the
/// listen port alone (the listen group would share its datagrams with a worker's sender).
fn check_source_ports(
    ctx: &Ctx<'_>,
    base: u16,
    workers: usize,
    listen: SocketAddr,
) -> Result<(), Error> {
    let field = "[appliance].source_port_base";
    if base == 0 {
        return Err(ctx.err(field, "0 is no port: give the first of the workers' source ports, or leave it out to let the kernel pick them"));
    }
    let last = u32::from(base) + workers as u32 - 1;
    if last > u32::from(u16::MAX) {
        return Err(ctx.err(
            field,
            format!(
                "{base} + {workers} workers runs past port 65535: give a base of at most {}",
                u32::from(u16::MAX) + 1 - workers as u32
            ),
        ));
    }
    let port = u32::from(listen.port());
    if (u32::from(base)..=last).contains(&port) {
        return Err(ctx.err(
            field,
            format!(
                "ports {base}..={last} include the listen port {port}: move the range clear of it"
            ),
        ));
    }
    Ok(())
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Config {
            file: self.file.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn endpoint(&self, field: &str, value: &str) -> Result<SocketAddr, Error> {
        value.parse().map_err(|_| {
            let reason = if value.parse::<IpAddr>().is_ok() {
                format!("{value:?} has no port (expected host:port, e.g. \"{value}:1000\", or \"[{value}]:1000\" for IPv6)")
            } else {
                format!("{value:?} is not an address with a port (expected e.g. \"192.0.2.1:1000\" or \"[2001:db8::1]:1000\")")
            };
            self.err(field, reason)
        })
    }

    fn keys(&self, field: &str, keys: &[String], current: u8) -> Result<MasterKeys, Error> {
        if keys.len() != 2 {
            return Err(self.err(
                field,
                format!(
                    "{} keys given; expected two generations, [\"<64 hex>\", \"<64 hex>\"]",
                    keys.len()
                ),
            ));
        }
        let mut parsed = [[0u8; 32]; 2];
        for (i, key) in keys.iter().enumerate() {
            let bytes = hex::decode(key.trim()).map_err(|_| {
                self.err(
                    format!("{field}[{i}]"),
                    "is not hex (expected 64 hex digits)",
                )
            })?;
            if bytes.len() != 32 {
                return Err(self.err(
                    format!("{field}[{i}]"),
                    format!("has {} bytes; expected 32 (64 hex digits)", bytes.len()),
                ));
            }
            parsed[i].copy_from_slice(&bytes);
        }
        if current > 1 {
            return Err(self.err(
                field.replace("master_keys", "current_generation"),
                format!("{current} is not a generation (expected 0 or 1)"),
            ));
        }
        Ok(MasterKeys::with_generations(parsed[0], parsed[1], current))
    }

    /// Worker layout, batching, io_uring sizing and crypto backend: the explicit settings
    /// of `[appliance]`, then the profile `[hardware]` names, then the defaults.
    fn sizing(&self, a: &RawAppliance, hardware: Option<&RawHardware>) -> Result<Sizing, Error> {
        let tuning = match hardware {
            Some(h) => Some(self.tuning(h)?),
            None => None,
        };
        let t = tuning.as_ref();
        let mut origin = Origin::default();
        let workers = origin
            .choose("workers", a.workers, t.map(|t| t.workers))
            .unwrap_or(1);
        if workers == 0 || workers > 256 {
            return Err(self.err(
                "[appliance].workers",
                format!("{workers} is out of range (expected 1..=256)"),
            ));
        }
        let cores = origin
            .choose(
                "cores",
                a.cores.clone().filter(|c| !c.is_empty()),
                t.map(|t| t.worker_cores.clone()),
            )
            .unwrap_or_default();
        let crypto_name = origin
            .choose(
                "crypto",
                a.crypto.clone(),
                t.map(|t| t.crypto_backend.clone()),
            )
            .unwrap_or_else(|| "aws-lc-rs".into());
        let crypto = crypto_name
            .parse()
            .map_err(|e: String| self.err(origin.field("crypto"), e))?;
        let batch_sends = origin
            .choose("batch", a.batch, t.map(|t| t.batch))
            .unwrap_or(EngineConfig::new(SocketAddr::from(([0, 0, 0, 0], 0))).batch_sends);
        if !(1..=1024).contains(&batch_sends) {
            return Err(self.err(
                origin.field("batch"),
                format!("{batch_sends} GSO sends per batch is out of range (expected 1..=1024)"),
            ));
        }
        let gso_segments = origin
            .choose(
                "gso_segments",
                a.gso_segments,
                t.map(|t| usize::from(t.gso_segments)),
            )
            .unwrap_or(MAX_GSO_SEGMENTS);
        if !(1..=MAX_GSO_SEGMENTS).contains(&gso_segments) {
            return Err(self.err(
                origin.field("gso_segments"),
                format!("{gso_segments} is out of range (expected 1..={MAX_GSO_SEGMENTS}, the kernel's UDP GSO limit)"),
            ));
        }
        let defaults = IoSizing::default();
        let ring_entries = origin
            .choose(
                "io_uring_entries",
                a.io_uring_entries,
                t.map(|t| t.io_uring_entries),
            )
            .unwrap_or(defaults.ring_entries);
        let buffers = origin
            .choose(
                "provided_buffers",
                a.provided_buffers,
                t.map(|t| t.provided_buffers),
            )
            .unwrap_or(u32::from(defaults.provided_buffers));
        let provided_buffers = u16::try_from(buffers)
            .ok()
            .filter(|b| b.is_power_of_two() && *b <= IoSizing::MAX_PROVIDED_BUFFERS)
            .ok_or_else(|| {
                self.err(
                    origin.field("provided_buffers"),
                    format!(
                        "{buffers} must be a power of two in 1..={}",
                        IoSizing::MAX_PROVIDED_BUFFERS
                    ),
                )
            })?;
        let io_sizing = IoSizing {
            ring_entries,
            provided_buffers,
        }
        .checked()
        .map_err(|e| self.err(origin.field("io_uring_entries"), e.to_string()))?;
        if batch_sends >= ring_entries as usize {
            return Err(self.err(
                origin.field("batch"),
                format!("{batch_sends} GSO sends per batch do not fit an io_uring of {ring_entries} entries (one is the receive's): lower batch or raise io_uring_entries"),
            ));
        }
        let hardware = hardware.map(|h| HardwareSource {
            profile: h.profile.clone(),
            device: h.device.clone(),
            from_profile: origin.from_profile,
            overridden: origin.overridden,
        });
        Ok(Sizing {
            workers,
            cores,
            crypto,
            batch_sends,
            gso_segments,
            io_sizing,
            hardware,
        })
    }

    /// What the named profile gives the data plane on this host.
    fn tuning(&self, h: &RawHardware) -> Result<cpclink_hw::DataplaneTuning, Error> {
        if let Some(dev) = &h.device {
            if dev.is_empty()
                || dev.contains('/')
                || !Path::new("/sys/class/net").join(dev).exists()
            {
                return Err(self.err(
                    "[hardware].device",
                    format!("no network interface {dev:?} here (see `ip link`; leave device out to use any core the profile selects)"),
                ));
            }
        }
        let dir = h.profile_dir.as_ref().map(|d| {
            if d.is_relative() {
                Path::new(self.file)
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(d)
            } else {
                d.clone()
            }
        });
        if let Some(d) = &dir {
            if !d.is_dir() {
                return Err(self.err(
                    "[hardware].profile_dir",
                    format!("{} is not a directory (a relative path is taken from this file's directory)", d.display()),
                ));
            }
        }
        cpclink_hw::dataplane_tuning(&h.profile, dir.as_deref(), h.device.as_deref()).map_err(|e| {
            let field = match e {
                cpclink_hw::HwError::UnknownProfile { .. } => "[hardware].profile",
                _ => "[hardware]",
            };
            self.err(field, e.to_string())
        })
    }

    /// A path as written, or taken from the configuration's directory if relative.
    fn path(&self, path: &Path) -> PathBuf {
        if path.is_relative() {
            Path::new(self.file)
                .parent()
                .unwrap_or(Path::new("."))
                .join(path)
        } else {
            path.to_owned()
        }
    }

    fn keymgr(
        &self,
        k: RawKeymgr,
        listen: SocketAddr,
        suite: Suite,
    ) -> Result<KeymgrConfig, Error> {
        if !cpclink_keymgr::pki::valid_id(&k.appliance) {
            return Err(self.err(
                "[keymgr].appliance",
                format!("{:?} is not an appliance id: use 1-63 of a-z, 0-9 and '-', as the enrolment token names it", k.appliance),
            ));
        }
        let authority = self.endpoint("[keymgr].authority", &k.authority)?;
        let agent_listen = self.endpoint("[keymgr].listen", &k.listen)?;
        let endpoint = match &k.endpoint {
            Some(e) => {
                let e = self.endpoint("[keymgr].endpoint", e)?;
                if e.ip().is_unspecified() || e.port() == 0 {
                    return Err(self.err(
                        "[keymgr].endpoint",
                        format!("{e} is no address peers can send to (give this appliance's address and PSP port)"),
                    ));
                }
                if e.is_ipv4() != listen.is_ipv4() {
                    return Err(self.err(
                        "[keymgr].endpoint",
                        format!("{e} is not of the same address family as [appliance].listen {listen}"),
                    ));
                }
                Some(e)
            }
            None if listen.ip().is_unspecified() => {
                return Err(self.err(
                    "[keymgr].endpoint",
                    format!("missing: [appliance].listen {listen} is no address peers can send to; give endpoint = \"<this appliance's address>:{}\"", listen.port()),
                ))
            }
            None => None,
        };
        if k.token.is_some() && k.token_file.is_some() {
            return Err(self.err(
                "[keymgr].token",
                "given with token_file; keep one of the two",
            ));
        }
        if k.sa_lifetime_secs < 10 {
            return Err(self.err(
                "[keymgr].sa_lifetime_secs",
                format!(
                    "{} is too short (expected at least 10 seconds; 3600 is the default)",
                    k.sa_lifetime_secs
                ),
            ));
        }
        let mut prefixes = BTreeMap::new();
        for (i, p) in k.peer.iter().enumerate() {
            let at = format!("[[keymgr.peer]][{i}]");
            if !cpclink_keymgr::pki::valid_id(&p.id) {
                return Err(self.err(
                    format!("{at}.id"),
                    format!(
                        "{:?} is not an appliance id: use 1-63 of a-z, 0-9 and '-'",
                        p.id
                    ),
                ));
            }
            let parsed = p
                .prefixes
                .iter()
                .enumerate()
                .map(|(j, v)| self.prefix(&format!("{at}.prefixes[{j}]"), v))
                .collect::<Result<Vec<_>, _>>()?;
            if prefixes.insert(p.id.clone(), parsed).is_some() {
                return Err(self.err(
                    format!("{at}.id"),
                    format!("{:?} appears twice; list each peer once", p.id),
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
            },
            token: k.token.map(|t| Zeroizing::new(t.trim().to_owned())),
            endpoint,
            prefixes,
            file: self.file.to_owned(),
        })
    }

    fn prefix(&self, field: &str, value: &str) -> Result<(IpAddr, u8), Error> {
        let bad = || {
            self.err(
                field,
                format!(
                    "{value:?} is not a prefix (expected e.g. \"10.2.0.0/16\" or \"fd00:2::/64\")"
                ),
            )
        };
        let (addr, len) = value.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(self.err(
                field,
                format!("{value:?}: prefix length {len} exceeds {max}"),
            ));
        }
        Ok((addr, len))
    }
}

impl ApplianceConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: file.clone(),
            field: "(file)".into(),
            reason: format!("cannot read it: {e}"),
        })?;
        Self::parse(&file, &text)
    }

    /// Validates a configuration held in `text`, read from `file`.
    pub fn parse(file: &str, text: &str) -> Result<Self, Error> {
        let ctx = Ctx { file };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "(document)".into());
            ctx.err(at, message)
        })?;
        let a = raw.appliance;
        let listen = ctx.endpoint("[appliance].listen", &a.listen)?;
        let sizing = ctx.sizing(&a, raw.hardware.as_ref())?;
        if let Some(base) = a.source_port_base {
            check_source_ports(&ctx, base, sizing.workers, listen)?;
        }
        let io =
            a.io.parse()
                .map_err(|e: String| ctx.err("[appliance].io", e))?;
        let suite: Suite = a
            .suite
            .parse()
            .map_err(|e: String| ctx.err("[appliance].suite", e))?;
        if !suite.encrypts() {
            return Err(ctx.err(
                "[appliance].suite",
                format!("{suite} authenticates without encrypting; tunnels need aes-gcm-128, aes-gcm-256 or chacha20-poly1305"),
            ));
        }
        let keying = match (a.master_keys, raw.keymgr) {
            (Some(keys), None) => Keying::Lab {
                master_keys: ctx.keys("[appliance].master_keys", &keys, a.current_generation)?,
            },
            (None, Some(k)) => {
                if !raw.peers.is_empty() {
                    return Err(ctx.err(
                        format!("[peers.{}]", raw.peers[0].name),
                        "lab-mode peers with [keymgr]: the key plane finds the peers; remove [[peers]] and list their prefixes under [[keymgr.peer]] (id, prefixes)",
                    ));
                }
                Keying::KeyPlane(Box::new(ctx.keymgr(k, listen, suite)?))
            }
            (Some(_), Some(_)) => {
                return Err(ctx.err(
                    "[appliance].master_keys",
                    "lab keys given with [keymgr]: keep one; remove master_keys (and [[peers]]) to be keyed by the key plane, or [keymgr] for lab mode",
                ))
            }
            (None, None) => {
                return Err(ctx.err(
                    "[appliance].master_keys",
                    "missing: give lab keys (master_keys = [\"<64 hex>\", \"<64 hex>\"] and [[peers]]) or a [keymgr] section to be keyed by the key plane",
                ))
            }
        };
        let tun = match raw.tun {
            Some(t) => {
                if t.name.is_empty() || t.name.len() > 15 {
                    return Err(
                        ctx.err("[tun].name", format!("{:?} must be 1 to 15 bytes", t.name))
                    );
                }
                if !(576..=65_535).contains(&t.path_mtu) {
                    return Err(ctx.err(
                        "[tun].path_mtu",
                        format!("{} is out of range (expected 576..=65535)", t.path_mtu),
                    ));
                }
                Some(TunConfig {
                    name: t.name,
                    path_mtu: t.path_mtu,
                    offloads: t.offloads,
                })
            }
            None => None,
        };
        let mut peers = Vec::with_capacity(raw.peers.len());
        for p in raw.peers {
            let at = format!("[peers.{}]", p.name);
            if peers.iter().any(|q: &Peer| q.name == p.name) {
                return Err(ctx.err(at, "this peer name appears twice; names must be unique"));
            }
            let endpoint = ctx.endpoint(&format!("{at}.endpoint"), &p.endpoint)?;
            if endpoint.is_ipv4() != listen.is_ipv4() {
                return Err(ctx.err(
                    format!("{at}.endpoint"),
                    format!("{endpoint} is not of the same address family as [appliance].listen {listen}"),
                ));
            }
            let prefixes = p
                .prefixes
                .iter()
                .enumerate()
                .map(|(i, v)| ctx.prefix(&format!("{at}.prefixes[{i}]"), v))
                .collect::<Result<Vec<_>, _>>()?;
            let master_keys = ctx.keys(
                &format!("{at}.master_keys"),
                &p.master_keys,
                p.current_generation,
            )?;
            peers.push(Peer {
                name: p.name,
                endpoint,
                prefixes,
                master_keys,
            });
        }
        Ok(Self {
            listen,
            workers: sizing.workers,
            cores: sizing.cores,
            io,
            suite,
            crypto: sizing.crypto,
            batch_sends: sizing.batch_sends,
            gso_segments: sizing.gso_segments,
            io_sizing: sizing.io_sizing,
            hardware: sizing.hardware,
            keying,
            tun,
            source_port_base: a.source_port_base,
            peers,
        })
    }

    /// The engine settings this configuration asks for (the egress is left to the caller:
    /// TUN queues are opened by `cpclink run`).
    pub fn engine_config(&self) -> EngineConfig {
        let mut engine = EngineConfig::new(self.listen);
        engine.workers = self.workers;
        engine.cores = self.cores.clone();
        engine.io = self.io;
        engine.crypto = self.crypto;
        engine.batch_sends = self.batch_sends;
        engine.gso_segments = self.gso_segments;
        engine.io_sizing = self.io_sizing;
        engine.tx_port_base = self.source_port_base;
        engine.peers = self
            .peers
            .iter()
            .map(|p| PeerConfig {
                endpoint: p.endpoint,
            })
            .collect();
        engine
    }

    /// The TUN MTU: the path MTU less the outer IP and UDP headers and the PSP overhead.
    pub fn tun_mtu(&self) -> Option<u32> {
        let tun = self.tun.as_ref()?;
        let ip = if self.listen.is_ipv4() { 20 } else { 40 };
        Some(tun.path_mtu - ip - 8 - cpclink_dataplane::psp::PSP_OVERHEAD as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";

    fn config(appliance_extra: &str, peer_endpoint: &str) -> String {
        format!(
            "[appliance]\nlisten = \"192.0.2.1:1000\"\nmaster_keys = [\"{KEY}\", \"{KEY}\"]\n{appliance_extra}\n\
             [tun]\nname = \"cpc0\"\npath_mtu = 1500\n\
             [[peers]]\nname = \"b\"\nendpoint = \"{peer_endpoint}\"\nprefixes = [\"10.2.0.0/16\"]\n\
             master_keys = [\"{KEY}\", \"{KEY}\"]\n"
        )
    }

    #[test]
    fn a_valid_config_is_read_with_defaults() {
        let c = ApplianceConfig::parse("a.toml", &config("workers = 2", "192.0.2.2:1000")).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.io, IoKind::Auto);
        assert_eq!(c.suite, Suite::AesGcm256);
        assert_eq!(c.peers[0].prefixes, vec![("10.2.0.0".parse().unwrap(), 16)]);
        assert_eq!(c.tun_mtu(), Some(1500 - 20 - 8 - 32));
    }

    #[test]
    fn source_ports_reach_the_engine_and_bad_ranges_are_refused() {
        let c = ApplianceConfig::parse(
            "a.toml",
            &config("workers = 2\nsource_port_base = 41000", "192.0.2.2:1000"),
        )
        .unwrap();
        assert_eq!(c.engine_config().tx_port_base, Some(41000));
        let default = ApplianceConfig::parse("a.toml", &config("", "192.0.2.2:1000")).unwrap();
        assert_eq!(default.engine_config().tx_port_base, None);
        for (extra, expect) in [
            ("source_port_base = 0", "0 is no port"),
            (
                "workers = 2\nsource_port_base = 65535",
                "runs past port 65535: give a base of at most 65534",
            ),
            (
                "workers = 2\nsource_port_base = 999",
                "include the listen port 1000",
            ),
        ] {
            let e = ApplianceConfig::parse("a.toml", &config(extra, "192.0.2.2:1000"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("a.toml: [appliance].source_port_base: "),
                "{e}"
            );
            assert!(e.contains(expect), "{extra}: {e}");
        }
    }

    #[test]
    fn errors_name_the_file_the_field_and_the_fix() {
        let e = ApplianceConfig::parse("a.toml", &config("", "192.0.2.2"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("a.toml: [peers.b].endpoint: \"192.0.2.2\" has no port"),
            "{e}"
        );
        let e = ApplianceConfig::parse("a.toml", &config("io = \"poll\"", "192.0.2.2:1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[appliance].io") && e.contains("expected auto, io_uring or epoll"),
            "{e}"
        );
        let e =
            ApplianceConfig::parse("a.toml", &config("suite = \"aes-gmac-256\"", "192.0.2.2:1"))
                .unwrap_err()
                .to_string();
        assert!(e.contains("[appliance].suite"), "{e}");
        let text = config("", "192.0.2.2:1").replacen(KEY, "abcd", 1);
        let e = ApplianceConfig::parse("a.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[appliance].master_keys[0]: has 2 bytes; expected 32"),
            "{e}"
        );
        let e = ApplianceConfig::parse("a.toml", &config("colour = 1", "192.0.2.2:1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("a.toml: line ") && e.contains("colour"),
            "{e}"
        );
    }

    fn keyed(extra: &str) -> String {
        format!(
            "[appliance]\nlisten = \"192.0.2.1:1000\"\nsuite = \"aes-gcm-128\"\n\
             [keymgr]\nappliance = \"dc1-edge\"\nauthority = \"192.0.2.10:7000\"\n\
             listen = \"192.0.2.1:7001\"\nstate_dir = \"agent\"\nkek_file = \"/etc/cpclink/kek\"\n\
             ca_cert = \"ca.pem\"\n{extra}\n\
             [[keymgr.peer]]\nid = \"dc2-edge\"\nprefixes = [\"10.2.0.0/16\", \"fd00:2::/64\"]\n"
        )
    }

    #[test]
    fn a_keymgr_section_keys_the_appliance_instead_of_lab_keys() {
        let c = ApplianceConfig::parse("/etc/cpclink/a.toml", &keyed("token = \" t0k \"")).unwrap();
        assert!(c.peers.is_empty());
        let Keying::KeyPlane(k) = c.keying else {
            panic!("keyed by the key plane")
        };
        assert_eq!(k.agent.appliance, "dc1-edge");
        assert_eq!(k.agent.authority, "192.0.2.10:7000".parse().unwrap());
        // Relative paths are taken from the configuration's directory.
        assert_eq!(k.agent.state_dir, Path::new("/etc/cpclink/agent"));
        assert_eq!(k.agent.ca_cert, Path::new("/etc/cpclink/ca.pem"));
        assert_eq!(k.agent.kek_file, Path::new("/etc/cpclink/kek"));
        assert_eq!(
            k.agent.suite,
            Suite::AesGcm128.version(),
            "[appliance].suite"
        );
        assert_eq!(k.agent.sa_lifetime_secs, 3600);
        assert_eq!(k.token.as_deref().map(String::as_str), Some("t0k"));
        assert_eq!(k.endpoint, None, "[appliance].listen is published");
        assert_eq!(
            k.prefixes["dc2-edge"],
            vec![
                ("10.2.0.0".parse().unwrap(), 16),
                ("fd00:2::".parse().unwrap(), 64)
            ]
        );
    }

    #[test]
    fn the_example_keyed_config_is_valid() {
        let c = ApplianceConfig::parse(
            "control/examples/appliance-keyed.toml",
            include_str!("../examples/appliance-keyed.toml"),
        )
        .unwrap();
        let Keying::KeyPlane(k) = c.keying else {
            panic!("keyed by the key plane")
        };
        assert_eq!(k.prefixes["dc2-edge"].len(), 1);
        assert!(c.tun.is_some());
    }

    #[test]
    fn keymgr_errors_name_the_file_the_field_and_the_fix() {
        let err = |text: &str| {
            ApplianceConfig::parse("a.toml", text)
                .unwrap_err()
                .to_string()
        };
        let both = keyed("").replace(
            "suite = \"aes-gcm-128\"",
            &format!("master_keys = [\"{KEY}\", \"{KEY}\"]"),
        );
        let e = err(&both);
        assert!(
            e.starts_with(
                "a.toml: [appliance].master_keys: lab keys given with [keymgr]: keep one"
            ),
            "{e}"
        );
        let e = err("[appliance]\nlisten = \"192.0.2.1:1000\"\n");
        assert!(
            e.starts_with("a.toml: [appliance].master_keys: missing: give lab keys"),
            "{e}"
        );
        let e = err(&format!(
            "{}[[peers]]\nname = \"b\"\nendpoint = \"192.0.2.2:1000\"\nmaster_keys = [\"{KEY}\", \"{KEY}\"]\n",
            keyed("")
        ));
        assert!(
            e.starts_with("a.toml: [peers.b]: lab-mode peers with [keymgr]"),
            "{e}"
        );
        let e = err(&keyed("").replace("dc1-edge", "DC1 Edge"));
        assert!(
            e.starts_with("a.toml: [keymgr].appliance: \"DC1 Edge\" is not an appliance id"),
            "{e}"
        );
        let e = err(&keyed("").replace("192.0.2.1:1000", "0.0.0.0:1000"));
        assert!(
            e.starts_with("a.toml: [keymgr].endpoint: missing: [appliance].listen 0.0.0.0:1000 is no address peers can send to"),
            "{e}"
        );
        let e = err(&keyed("token = \"x\"\ntoken_file = \"t\""));
        assert!(
            e.starts_with("a.toml: [keymgr].token: given with token_file"),
            "{e}"
        );
        let e = err(&keyed("endpoint = \"[2001:db8::1]:1000\""));
        assert!(
            e.contains("[keymgr].endpoint: [2001:db8::1]:1000 is not of the same address family"),
            "{e}"
        );
        let e = err(&keyed("sa_lifetime_secs = 2"));
        assert!(
            e.contains("[keymgr].sa_lifetime_secs: 2 is too short"),
            "{e}"
        );
        let e = err(&keyed("").replace("10.2.0.0/16", "10.2.0.0/33"));
        assert!(e.contains("[[keymgr.peer]][0].prefixes[0]"), "{e}");
        let e = err(&keyed("").replace(
            "authority = \"192.0.2.10:7000\"",
            "authority = \"192.0.2.10\"",
        ));
        assert!(
            e.contains("[keymgr].authority: \"192.0.2.10\" has no port"),
            "{e}"
        );
    }

    #[test]
    fn unreadable_keymgr_files_are_named_with_their_field() {
        let c = ApplianceConfig::parse("/nowhere/a.toml", &keyed("")).unwrap();
        let Keying::KeyPlane(k) = c.keying else {
            panic!("keyed by the key plane")
        };
        let e = k.agent_options().unwrap_err().to_string();
        assert!(
            e.starts_with("/nowhere/a.toml: [keymgr].ca_cert: /nowhere/ca.pem: cannot read"),
            "{e}"
        );
    }

    fn hardware(extra_appliance: &str, hardware: &str) -> String {
        format!(
            "[appliance]\nlisten = \"127.0.0.1:0\"\nmaster_keys = [\"{KEY}\", \"{KEY}\"]\n{extra_appliance}\n\
             [hardware]\n{hardware}\n"
        )
    }

    #[test]
    fn a_named_profile_sizes_the_engine() {
        let c =
            ApplianceConfig::parse("a.toml", &hardware("", "profile = \"virtio-net\"")).unwrap();
        let t = cpclink_hw::dataplane_tuning("virtio-net", None, None).unwrap();
        let e = c.engine_config();
        assert_eq!(e.workers, t.workers);
        assert_eq!(e.cores, t.worker_cores);
        assert_eq!(e.batch_sends, t.batch);
        assert_eq!(e.gso_segments, usize::from(t.gso_segments));
        assert_eq!(e.io_sizing.ring_entries, t.io_uring_entries);
        assert_eq!(u32::from(e.io_sizing.provided_buffers), t.provided_buffers);
        assert_eq!(e.crypto.to_string(), t.crypto_backend);
        // The profile's values differ from the defaults, so this could not pass without it.
        let plain = EngineConfig::new(e.listen);
        assert_ne!(
            (e.batch_sends, e.gso_segments, e.io_sizing),
            (plain.batch_sends, plain.gso_segments, plain.io_sizing)
        );
        let hw = c.hardware.unwrap();
        let names: Vec<_> = hw.from_profile.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "workers",
                "cores",
                "crypto",
                "batch",
                "gso_segments",
                "io_uring_entries",
                "provided_buffers"
            ]
        );
        assert!(hw.overridden.is_empty());
    }

    #[test]
    fn explicit_settings_override_the_profile() {
        let c = ApplianceConfig::parse(
            "a.toml",
            &hardware(
                "workers = 1\ncores = [0]\ncrypto = \"ring\"\nbatch = 4\ngso_segments = 8\nio_uring_entries = 64",
                "profile = \"loopback\"\ndevice = \"lo\"",
            ),
        )
        .unwrap();
        let e = c.engine_config();
        assert_eq!((e.workers, e.cores.as_slice()), (1, &[0][..]));
        assert_eq!(e.crypto, Backend::Ring);
        assert_eq!((e.batch_sends, e.gso_segments), (4, 8));
        assert_eq!(e.io_sizing.ring_entries, 64);
        // Not overridden: still the profile's.
        let t = cpclink_hw::dataplane_tuning("loopback", None, Some("lo")).unwrap();
        assert_eq!(u32::from(e.io_sizing.provided_buffers), t.provided_buffers);
        let hw = c.hardware.unwrap();
        assert_eq!(hw.device.as_deref(), Some("lo"));
        assert_eq!(
            hw.overridden,
            [
                "workers",
                "cores",
                "crypto",
                "batch",
                "gso_segments",
                "io_uring_entries"
            ]
        );
        assert_eq!(hw.from_profile.len(), 1);
    }

    #[test]
    fn hardware_errors_name_the_file_the_field_and_the_fix() {
        let e = ApplianceConfig::parse("a.toml", &hardware("", "profile = \"virtio\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("a.toml: [hardware].profile: no profile named \"virtio\" (known: virtio-net, veth, loopback, connectx-6dx"),
            "{e}"
        );
        let e = ApplianceConfig::parse(
            "a.toml",
            &hardware("", "profile = \"veth\"\ndevice = \"no-such-nic0\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("a.toml: [hardware].device: no network interface \"no-such-nic0\""),
            "{e}"
        );
        let e = ApplianceConfig::parse(
            "/nowhere/a.toml",
            &hardware("", "profile = \"veth\"\nprofile_dir = \"profiles\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("[hardware].profile_dir: /nowhere/profiles is not a directory"),
            "{e}"
        );
        let e = ApplianceConfig::parse(
            "a.toml",
            &hardware("gso_segments = 65", "profile = \"veth\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("a.toml: [appliance].gso_segments: 65 is out of range (expected 1..=64"),
            "{e}"
        );
        let e = ApplianceConfig::parse(
            "a.toml",
            &hardware("io_uring_entries = 16", "profile = \"veth\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("[hardware].profile (batch): 32 GSO sends per batch do not fit an io_uring of 16 entries"),
            "{e}"
        );
    }

    #[test]
    fn a_profile_in_the_profile_dir_is_found_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("cpclink-hwcfg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("profiles")).unwrap();
        let shipped = include_str!("../../hw-profiles/profiles/veth.toml");
        let text = shipped
            .replace("name = \"veth\"", "name = \"lab-veth\"")
            .replace("gso_segments = 44", "gso_segments = 12");
        assert_ne!(text, shipped);
        std::fs::write(dir.join("profiles/lab-veth.toml"), text).unwrap();
        let file = dir.join("a.toml");
        let c = ApplianceConfig::parse(
            &file.display().to_string(),
            &hardware("", "profile = \"lab-veth\"\nprofile_dir = \"profiles\""),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.unwrap().engine_config().gso_segments, 12);
    }

    /// Two appliances sized by the loopback profile exchange encrypted synthetic traffic;
    /// a profile with small GSO sends shows in the sends the kernel was handed.
    #[test]
    fn an_engine_sized_by_a_profile_carries_traffic() {
        use cpclink_dataplane::engine::{
            lab, Egress, Engine, PeerConfig, PeerId, SaProfile, TrafficSpec,
        };
        use std::time::{Duration, Instant};

        const FLOWS: u32 = 16;
        let appliance = |source: bool| {
            let c = ApplianceConfig::parse(
                "a.toml",
                &hardware(
                    "gso_segments = 4\nio = \"io_uring\"",
                    "profile = \"loopback\"\ndevice = \"lo\"",
                ),
            )
            .unwrap();
            let mut e = c.engine_config();
            e.source = source.then_some(TrafficSpec {
                flows: FLOWS,
                packet_len: 1000,
            });
            e.egress = Egress::Sink { flows: FLOWS };
            let Keying::Lab { master_keys } = c.keying else {
                panic!("lab keys")
            };
            (Engine::start(e).unwrap(), master_keys)
        };
        let (a, _) = appliance(true);
        let (b, keys_b) = appliance(false);
        let t = cpclink_hw::dataplane_tuning("loopback", None, Some("lo")).unwrap();
        assert_eq!((a.workers(), b.workers()), (t.workers, t.workers));
        // Worker i runs pinned to the profile's core i.
        let mut pinned = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            let Some(i) = comm.trim().strip_prefix("cpclink-w") else {
                continue;
            };
            let i: usize = i.parse().unwrap();
            let status = std::fs::read_to_string(task.join("status")).unwrap();
            let allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim();
            assert_eq!(allowed, t.worker_cores[i].to_string(), "worker {i}");
            pinned += 1;
        }
        assert_eq!(pinned, 2 * t.workers, "every worker of both engines seen");
        let peer = |endpoint| PeerConfig { endpoint };
        a.set_peer(PeerId(0), peer(b.local_addr())).unwrap();
        b.set_peer(PeerId(0), peer(a.local_addr())).unwrap();
        lab::enable_rx_derivation(&b, &keys_b, Suite::AesGcm256).unwrap();
        b.snapshot().unwrap();
        lab::install_tx_sas(&a, PeerId(0), &keys_b, SaProfile::default()).unwrap();
        let start = Instant::now();
        while b.snapshot().unwrap().total().sink.verified_bytes < 16 << 20 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "16 MiB did not arrive"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (sa, sb) = (a.shutdown().unwrap().total(), b.shutdown().unwrap().total());
        assert_eq!(sb.sink.corrupt, 0);
        assert_eq!(sb.rx_auth_failed, 0);
        assert!(sa.io.gso_sends > 0);
        // At most 4 datagrams per GSO send: the profile's 44 was overridden and reached
        // the transmit batch.
        assert!(
            sa.tx_packets <= 4 * (sa.io.gso_sends + sa.io.send_errors),
            "{sa:?}"
        );
        assert!(
            sa.tx_packets > 2 * sa.io.gso_sends,
            "sends do carry several datagrams: {sa:?}"
        );
    }
}
