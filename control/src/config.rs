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
//! master_keys = ["<64 hex>", "<64 hex>"]   # this appliance's two generations
//! current_generation = 0
//!
//! [tun]
//! name = "cpc0"
//! path_mtu = 1500                     # MTU of the path between appliances
//! offloads = true                     # virtio-net header, TSO/USO: 64 KiB reads
//!
//! [[peers]]
//! name = "b"
//! endpoint = "192.0.2.2:1000"
//! prefixes = ["10.2.0.0/16"]
//! master_keys = ["<64 hex>", "<64 hex>"]   # the peer's, as in its own [appliance]
//! current_generation = 0
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use cpclink_dataplane::crypto::{Backend, Suite};
use cpclink_dataplane::io::IoKind;
use cpclink_dataplane::sa::MasterKeys;
use serde::Deserialize;

use crate::error::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    appliance: RawAppliance,
    tun: Option<RawTun>,
    #[serde(default)]
    peers: Vec<RawPeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppliance {
    listen: String,
    #[serde(default = "one")]
    workers: usize,
    #[serde(default)]
    cores: Vec<usize>,
    #[serde(default = "auto")]
    io: String,
    #[serde(default = "default_suite")]
    suite: String,
    #[serde(default = "default_crypto")]
    crypto: String,
    master_keys: Vec<String>,
    #[serde(default)]
    current_generation: u8,
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
fn one() -> usize {
    1
}
fn auto() -> String {
    "auto".into()
}
fn default_suite() -> String {
    "aes-gcm-256".into()
}
fn default_crypto() -> String {
    "aws-lc-rs".into()
}
fn default_path_mtu() -> u32 {
    1500
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
    /// This appliance's master keys.
    pub master_keys: MasterKeys,
    /// The TUN device, if the appliance tunnels.
    pub tun: Option<TunConfig>,
    /// The peers, in order ([`cpclink_dataplane::engine::PeerId`] indexes them).
    pub peers: Vec<Peer>,
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
        if a.workers == 0 || a.workers > 256 {
            return Err(ctx.err(
                "[appliance].workers",
                format!("{} is out of range (expected 1..=256)", a.workers),
            ));
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
        let crypto = a
            .crypto
            .parse()
            .map_err(|e: String| ctx.err("[appliance].crypto", e))?;
        let master_keys = ctx.keys(
            "[appliance].master_keys",
            &a.master_keys,
            a.current_generation,
        )?;
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
            workers: a.workers,
            cores: a.cores,
            io,
            suite,
            crypto,
            master_keys,
            tun,
            peers,
        })
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
}
