//! `[appliance]` and `[hardware]`: the data plane's shape, from explicit settings, a
//! hardware profile and the defaults, in that order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cpclink_dataplane::crypto::Backend;
use cpclink_dataplane::engine::{BatchPolicy, BatchingMode, EngineConfig};
use cpclink_dataplane::io::{udp::MAX_GSO_SEGMENTS, IoSizing};
use cpclink_hw::{DataplaneMode, LatencyFirst};
use serde::Deserialize;

use super::Ctx;
use crate::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAppliance {
    pub(super) listen: String,
    pub(super) workers: Option<usize>,
    pub(super) cores: Option<Vec<usize>>,
    #[serde(default = "auto")]
    pub(super) io: String,
    #[serde(default = "default_suite")]
    pub(super) suite: String,
    pub(super) crypto: Option<String>,
    pub(super) batch: Option<usize>,
    pub(super) gso_segments: Option<usize>,
    pub(super) io_uring_entries: Option<u32>,
    pub(super) provided_buffers: Option<u32>,
    pub(super) master_keys: Option<Vec<String>>,
    #[serde(default)]
    pub(super) current_generation: u8,
    pub(super) source_port_base: Option<u16>,
    pub(super) mode: Option<String>,
    pub(super) max_hold_us: Option<u32>,
    pub(super) busy_poll_us: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHardware {
    pub(super) profile: String,
    pub(super) device: Option<String>,
    pub(super) profile_dir: Option<PathBuf>,
}

fn auto() -> String {
    "auto".into()
}

fn default_suite() -> String {
    "aes-gcm-256".into()
}

/// Which hardware profile sized the data plane, and which settings it gave.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
pub(super) struct Sizing {
    pub(super) workers: usize,
    pub(super) cores: Vec<usize>,
    pub(super) crypto: Backend,
    pub(super) batch_sends: usize,
    pub(super) gso_segments: usize,
    pub(super) io_sizing: IoSizing,
    pub(super) batching: BatchingMode,
    pub(super) hardware: Option<HardwareSource>,
}

impl Ctx<'_> {
    /// Worker layout, batching, io_uring sizing and crypto backend: the explicit settings
    /// of `[appliance]`, then the profile `[hardware]` names, then the defaults.
    pub(super) fn sizing(
        &self,
        a: &RawAppliance,
        hardware: Option<&RawHardware>,
    ) -> Result<Sizing, Error> {
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
        if cores.len() > workers {
            return Err(self.err_fix(
                origin.field("cores"),
                format!("{} cores listed for {workers} worker(s)", cores.len()),
                "list one core per worker, or raise workers",
            ));
        }
        let online = online_cores();
        if let Some(bad) = cores.iter().find(|&&c| online.is_some_and(|n| c >= n)) {
            return Err(self.err_fix(
                origin.field("cores"),
                format!(
                    "core {bad} does not exist here ({} cores online)",
                    online.unwrap_or(0)
                ),
                "list cores this machine has (see `nproc --all` or `lscpu`)",
            ));
        }
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
        let batching = self.batching(a, t.and_then(|t| t.latency_first), &mut origin)?;
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
            batching,
            hardware,
        })
    }

    /// Throughput or latency first: `[appliance].mode` and its two bounds, then the
    /// profile's `[dataplane]` mode, then throughput first. The bounds apply only in
    /// latency mode; an explicit mode of `"throughput"` leaves a latency profile's unused.
    fn batching(
        &self,
        a: &RawAppliance,
        profile: Option<LatencyFirst>,
        origin: &mut Origin,
    ) -> Result<BatchingMode, Error> {
        let explicit = match a.mode.as_deref() {
            None => None,
            Some("throughput") => Some(DataplaneMode::Throughput),
            Some("latency") => Some(DataplaneMode::Latency),
            Some(other) => {
                return Err(self.err_fix(
                    "[appliance].mode",
                    format!("{other:?} is not a data plane mode"),
                    "give \"throughput\" (the largest batches, the default) or \"latency\" (bounded batch waits, busy polling)",
                ))
            }
        };
        // A profile in throughput mode says nothing the default does not.
        let from_profile = profile.map(|_| DataplaneMode::Latency);
        let mode = origin
            .choose("mode", explicit, from_profile)
            .unwrap_or_default();
        if mode == DataplaneMode::Throughput {
            for (field, set) in [
                ("[appliance].max_hold_us", a.max_hold_us.is_some()),
                ("[appliance].busy_poll_us", a.busy_poll_us.is_some()),
            ] {
                if set {
                    return Err(self.err_fix(
                        field,
                        "applies only in latency mode",
                        "add mode = \"latency\" to [appliance], or remove this line",
                    ));
                }
            }
            return Ok(BatchingMode::THROUGHPUT);
        }
        let max_hold_us = origin
            .choose("max_hold_us", a.max_hold_us, profile.map(|l| l.max_hold_us))
            .unwrap_or(LatencyFirst::DEFAULT_MAX_HOLD_US);
        if !(1..=LatencyFirst::MAX_HOLD_US_LIMIT).contains(&max_hold_us) {
            return Err(self.err_fix(
                origin.field("max_hold_us"),
                format!(
                    "{max_hold_us} µs is out of range (expected 1..={})",
                    LatencyFirst::MAX_HOLD_US_LIMIT
                ),
                format!(
                    "give the longest a batch's first packet may wait for the rest, e.g. {} (0 would send every packet alone; leave it out for the default)",
                    LatencyFirst::DEFAULT_MAX_HOLD_US
                ),
            ));
        }
        let busy_poll_us = origin
            .choose(
                "busy_poll_us",
                a.busy_poll_us,
                profile.map(|l| l.busy_poll_us),
            )
            .unwrap_or(LatencyFirst::DEFAULT_BUSY_POLL_US);
        if busy_poll_us > LatencyFirst::BUSY_POLL_US_LIMIT {
            return Err(self.err_fix(
                origin.field("busy_poll_us"),
                format!(
                    "{busy_poll_us} µs is out of range (expected 0..={})",
                    LatencyFirst::BUSY_POLL_US_LIMIT
                ),
                format!(
                    "give how long a worker polls before it sleeps, e.g. {} (0: it sleeps at once); past the limit a worker only spins",
                    LatencyFirst::DEFAULT_BUSY_POLL_US
                ),
            ));
        }
        let max_packets = profile.map_or(BatchingMode::LATENCY_FIRST.policy.max_packets, |l| {
            l.max_reads as usize
        });
        BatchingMode {
            policy: BatchPolicy {
                max_hold: Some(Duration::from_micros(u64::from(max_hold_us))),
                max_packets,
            },
            busy_poll: Duration::from_micros(u64::from(busy_poll_us)),
        }
        .checked()
        .map_err(|e| self.err(origin.field("max_hold_us"), e.to_string()))
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
                self.dir().join(d)
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
}

/// Worker i sends from `base + i`: the range must fit in the port space and leave the
/// listen port alone (the listen group would share its datagrams with a worker's sender).
pub(super) fn check_source_ports(
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

/// How many cores the machine has (the highest online core plus one), if it says.
fn online_cores() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let last = text
        .trim()
        .split([',', '-'])
        .filter_map(|n| n.parse::<usize>().ok())
        .max()?;
    Some(last + 1)
}
