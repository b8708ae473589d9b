//! Hardware profiles: what a NIC can do and how cpclink should drive it.
//!
//! A profile is a TOML file (see `profiles/` and README.md). Parsing gives a [`Profile`];
//! [`Profile::validate`] checks every value against the device limits the profile states
//! and reports each problem with the file, the field, its line and the fix.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cpuset::CpuList;
use cpclink_diagnostics::{ConfigText, Diagnostic};

use crate::error::{HwError, Result};

/// Crypto backends the data plane offers (ARCHITECTURE.md, "Crypto backends").
pub const CRYPTO_BACKENDS: [&str; 3] = ["aws-lc-rs", "ring", "rustcrypto"];

/// Kernel feature names a profile may set under `[offloads]`: the names of the ethtool
/// netlink feature bitsets (`rx-gro` is what `ethtool -k` prints as generic-receive-offload).
pub const OFFLOAD_FEATURES: [&str; 12] = [
    "tx-udp-segmentation",
    "rx-gro",
    "rx-gro-hw",
    "rx-udp-gro-forwarding",
    "rx-gro-list",
    "rx-checksum",
    "tx-checksum-ip-generic",
    "tx-checksum-ipv4",
    "tx-checksum-ipv6",
    "tx-generic-segmentation",
    "tx-scatter-gather",
    "rx-hashing",
];

/// The profiles shipped with cpclink, compiled into the binary.
pub const SHIPPED: [(&str, &str); 8] = [
    ("virtio-net", include_str!("../profiles/virtio-net.toml")),
    ("veth", include_str!("../profiles/veth.toml")),
    ("loopback", include_str!("../profiles/loopback.toml")),
    (
        "connectx-6dx",
        include_str!("../profiles/connectx-6dx.toml"),
    ),
    ("connectx-7", include_str!("../profiles/connectx-7.toml")),
    ("e810", include_str!("../profiles/e810.toml")),
    ("bnxt", include_str!("../profiles/bnxt.toml")),
    ("ena", include_str!("../profiles/ena.toml")),
];

/// A hardware profile for one NIC family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name, equal to the file stem (`e810` for `e810.toml`).
    pub name: String,
    /// One line for humans: vendor, model, driver.
    pub description: String,
    /// Which devices this profile is for.
    #[serde(rename = "match")]
    pub matcher: NicMatch,
    /// Hardware maxima from the vendor's documentation; values are validated against them.
    pub limits: DeviceLimits,
    /// Link settings.
    #[serde(default)]
    pub link: Link,
    /// Queue (channel) counts.
    #[serde(default)]
    pub channels: Channels,
    /// Descriptor ring sizes.
    #[serde(default)]
    pub rings: Rings,
    /// Kernel features to switch on or off, by their `ethtool -k` names.
    #[serde(default)]
    pub offloads: BTreeMap<String, bool>,
    /// Crypto offloads the hardware has (informational; checked against the live device).
    #[serde(default)]
    pub crypto_offload: CryptoOffload,
    /// Interrupt coalescing.
    #[serde(default)]
    pub coalesce: Coalesce,
    /// Which cores run workers and take the device's interrupts.
    pub cpu: CpuLayout,
    /// io_uring sizing for each worker.
    pub io_uring: IoUring,
    /// Batching and crypto for the data plane.
    pub dataplane: Dataplane,
    /// Present in profiles written by `cpclink hw tune`: what was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned: Option<crate::tune::TunedRecord>,
}

/// How a profile recognises a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicMatch {
    /// Kernel driver (`/sys/class/net/DEV/device/driver`), or `veth` / `loopback`.
    pub driver: String,
    /// PCI vendor id, if the profile is for PCI devices of one vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_vendor: Option<u16>,
    /// PCI device ids; empty means any device of the driver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pci_devices: Vec<u16>,
    /// Marketing model name, for humans.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
}

/// Hardware maxima used for validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceLimits {
    /// Smallest ring size the driver accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_min: Option<u32>,
    /// Largest receive ring; absent when the device has no configurable rings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_ring_max: Option<u32>,
    /// Largest transmit ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_ring_max: Option<u32>,
    /// Most combined channels (queue pairs) per port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels_max: Option<u32>,
    /// Largest MTU.
    pub mtu_max: u32,
}

/// Link settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// MTU in bytes; absent leaves it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Queue counts (`ethtool -l`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channels {
    /// Combined rx/tx channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined: Option<u32>,
}

/// Ring sizes (`ethtool -g`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rings {
    /// Receive descriptors per queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx: Option<u32>,
    /// Transmit descriptors per queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<u32>,
}

/// Crypto offload capabilities of the hardware.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoOffload {
    /// Inline PSP encryption/decryption.
    #[serde(default)]
    pub psp: bool,
    /// Inline IPsec (ESP) crypto offload (`esp-hw-offload`).
    #[serde(default)]
    pub ipsec: bool,
    /// Inline kTLS offload (`tls-hw-tx-offload`).
    #[serde(default)]
    pub tls: bool,
}

/// Interrupt coalescing (`ethtool -c`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coalesce {
    /// Adaptive receive moderation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_rx: Option<bool>,
    /// Adaptive transmit moderation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_tx: Option<bool>,
    /// Microseconds to delay a receive interrupt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_usecs: Option<u32>,
    /// Microseconds to delay a transmit interrupt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_usecs: Option<u32>,
}

/// Core layout for workers, queue interrupts and software steering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuLayout {
    /// `"nic-node"` (online cores of the NIC's NUMA node), `"all"`, or a Linux cpulist
    /// such as `"2-7,10"`.
    pub cores: String,
    /// Number of workers; absent means one per selected core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Spread the device's queue interrupts over the worker cores, one per core in turn.
    #[serde(default)]
    pub irq_affinity: bool,
    /// Receive packet steering: every rx queue may hand packets to any worker core.
    #[serde(default)]
    pub rps: bool,
    /// Transmit packet steering: tx queue `i` serves worker core `i mod workers`.
    #[serde(default)]
    pub xps: bool,
}

/// io_uring sizing per worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoUring {
    /// Submission queue entries (power of two).
    pub entries: u32,
    /// Buffers in the provided-buffer ring (power of two).
    pub provided_buffers: u32,
}

/// Data plane batching and crypto.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataplane {
    /// Packets a worker handles per turn of its loop.
    pub batch: u32,
    /// Segments per UDP GSO send (UDP_SEGMENT).
    pub gso_segments: u16,
    /// AEAD backend: one of [`CRYPTO_BACKENDS`].
    pub crypto_backend: String,
    /// `"throughput"` (the default: the largest batches) or `"latency"` (a packet waits
    /// for its batch at most `max_hold_us`, and workers poll `busy_poll_us` before they
    /// sleep), for operators who prefer the latency the tunnel adds to its peak rate.
    #[serde(default)]
    pub mode: DataplaneMode,
    /// Latency mode: the longest a transmit batch's first packet waits for the rest,
    /// microseconds (1..=1000; default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hold_us: Option<u32>,
    /// Latency mode: how long a worker polls without sleeping after its last packet,
    /// microseconds (0..=10000; default 100). Each busy worker's core then stays busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_poll_us: Option<u32>,
}

/// What a profile's data plane favours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataplaneMode {
    /// The largest batches, no busy polling.
    #[default]
    Throughput,
    /// Bounded batch waits and busy polling.
    Latency,
}

/// The latency mode's settings, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LatencyFirst {
    /// The longest a transmit batch's first packet waits for the rest, microseconds.
    pub max_hold_us: u32,
    /// Polling after the last packet before sleeping, microseconds.
    pub busy_poll_us: u32,
    /// TUN reads per transmit batch at most.
    pub max_reads: u32,
}

impl LatencyFirst {
    /// The default hold bound, microseconds (the engine's latency-first mode).
    pub const DEFAULT_MAX_HOLD_US: u32 = 20;
    /// The default busy poll, microseconds.
    pub const DEFAULT_BUSY_POLL_US: u32 = 100;
    /// Reads per batch in latency mode.
    pub const MAX_READS: u32 = 32;
    /// The largest hold bound a profile may give, microseconds.
    pub const MAX_HOLD_US_LIMIT: u32 = 1_000;
    /// The longest busy poll a profile may give, microseconds.
    pub const BUSY_POLL_US_LIMIT: u32 = 10_000;
}

/// What the data plane engine takes from a profile, resolved for this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataplaneTuning {
    /// Worker threads, one per core in `worker_cores`.
    pub workers: usize,
    /// Cores to pin the workers to, in order.
    pub worker_cores: Vec<usize>,
    /// Packets per batch.
    pub batch: usize,
    /// Segments per UDP GSO send.
    pub gso_segments: u16,
    /// io_uring submission queue entries.
    pub io_uring_entries: u32,
    /// Provided-buffer ring entries.
    pub provided_buffers: u32,
    /// `"aws-lc-rs"`, `"ring"` or `"rustcrypto"`.
    pub crypto_backend: String,
    /// The latency mode's settings when the profile asks for it; `None`: throughput first.
    pub latency_first: Option<LatencyFirst>,
}

/// UDP's largest GSO segment count (`UDP_MAX_SEGMENTS` in include/linux/udp.h).
pub const UDP_MAX_SEGMENTS: u16 = 64;
/// Largest io_uring submission queue (`IORING_MAX_ENTRIES`).
pub const IORING_MAX_ENTRIES: u32 = 32768;
/// Largest provided-buffer ring (`io_uring_register_buf_ring`: entries < 65536, power of two).
pub const BUF_RING_MAX_ENTRIES: u32 = 32768;

impl Profile {
    /// Parses and validates a profile; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self> {
        let text = ConfigText::new(file, text);
        let profile: Profile = text.parse()?;
        let issues = profile.validate(&text);
        if issues.is_empty() {
            Ok(profile)
        } else {
            Err(HwError::ProfileInvalid(issues))
        }
    }

    /// Reads, parses and validates a profile file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = ConfigText::read(path)?;
        Self::parse(text.file(), text.text())
    }

    /// Every problem with this profile, each naming the file, the field, its line in
    /// `text` (the profile's source) and the fix.
    pub fn validate(&self, text: &ConfigText) -> Vec<Diagnostic> {
        let file = text.file();
        let mut out = Vec::new();
        let mut issue = |field: &str, reason: String, fix: String| {
            out.push(text.error_fix(field, reason, fix));
        };
        let driver = &self.matcher.driver;
        let stem = Path::new(file)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if !file.starts_with('<') && !stem.is_empty() && self.name != stem && self.tuned.is_none() {
            issue(
                "name",
                format!("{:?} differs from the file name", self.name),
                format!("write name = {stem:?}, or rename the file"),
            );
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            issue(
                "name",
                format!("{:?} is not a profile name", self.name),
                "use ASCII letters, digits and '-' (at least one)".into(),
            );
        }
        if driver.is_empty() {
            issue(
                "[match].driver",
                "is empty".into(),
                "write the kernel driver, e.g. \"ice\"".into(),
            );
        }
        if !self.matcher.pci_devices.is_empty() && self.matcher.pci_vendor.is_none() {
            issue(
                "[match].pci_vendor",
                "is missing but [match].pci_devices is given".into(),
                "add the vendor id, e.g. pci_vendor = 0x8086, or remove pci_devices".into(),
            );
        }
        let ring_min = self.limits.ring_min.unwrap_or(1);
        for (field, value, max) in [
            ("rx", self.rings.rx, self.limits.rx_ring_max),
            ("tx", self.rings.tx, self.limits.tx_ring_max),
        ] {
            let Some(value) = value else { continue };
            let field = format!("[rings].{field}");
            let range = |max| format!("write a value in {ring_min}..={max}");
            match max {
                None => issue(
                    &field,
                    format!("{driver} has no configurable rings ([limits] gives no maximum)"),
                    "remove it".into(),
                ),
                Some(max) if value > max => issue(
                    &field,
                    format!("{value} exceeds the maximum {max} for {driver}"),
                    range(max),
                ),
                Some(max) if value < ring_min => issue(
                    &field,
                    format!("{value} is below the minimum {ring_min} for {driver}"),
                    range(max),
                ),
                Some(_) => {}
            }
        }
        if let Some(combined) = self.channels.combined {
            match self.limits.channels_max {
                None => issue(
                    "[channels].combined",
                    format!(
                        "{driver} has no configurable channels ([limits].channels_max is absent)"
                    ),
                    "remove it".into(),
                ),
                Some(max) if combined == 0 || combined > max => issue(
                    "[channels].combined",
                    format!("{combined} is outside 1..={max} for {driver}"),
                    format!("write a value in 1..={max}"),
                ),
                Some(_) => {}
            }
        }
        if let Some(mtu) = self.link.mtu {
            let max = self.limits.mtu_max;
            if !(68..=max).contains(&mtu) {
                issue(
                    "[link].mtu",
                    format!("{mtu} is outside 68..={max} for {driver}"),
                    format!("write a value in 68..={max} (IPv4's minimum, [limits].mtu_max)"),
                );
            }
        }
        for name in self.offloads.keys() {
            if !OFFLOAD_FEATURES.contains(&name.as_str()) {
                issue(
                    &format!("[offloads].{name}"),
                    "unknown feature".into(),
                    format!("use one of: {}", OFFLOAD_FEATURES.join(", ")),
                );
            }
        }
        if self.offloads.get("rx-udp-gro-forwarding") == Some(&true)
            && self.offloads.get("rx-gro") == Some(&false)
        {
            issue(
                "[offloads].rx-udp-gro-forwarding",
                "needs rx-gro, which is off".into(),
                "set rx-gro = true, or remove this line".into(),
            );
        }
        if let Err(e) = CpuList::parse_selector(&self.cpu.cores) {
            issue(
                "[cpu].cores",
                e,
                "write \"nic-node\", \"all\" or a cpulist like \"2-7\"".into(),
            );
        }
        if self.cpu.workers == Some(0) {
            issue(
                "[cpu].workers",
                "0 workers".into(),
                "write at least 1, or leave it out for one per core".into(),
            );
        }
        let io = &self.io_uring;
        if !io.entries.is_power_of_two() || io.entries > IORING_MAX_ENTRIES {
            issue(
                "[io_uring].entries",
                format!(
                    "{} is not a power of two up to {IORING_MAX_ENTRIES}",
                    io.entries
                ),
                format!("write a power of two in 1..={IORING_MAX_ENTRIES}, e.g. 4096"),
            );
        }
        if !io.provided_buffers.is_power_of_two() || io.provided_buffers > BUF_RING_MAX_ENTRIES {
            issue(
                "[io_uring].provided_buffers",
                format!(
                    "{} is not a power of two up to {BUF_RING_MAX_ENTRIES}",
                    io.provided_buffers
                ),
                format!("write a power of two in 1..={BUF_RING_MAX_ENTRIES}, e.g. 4096"),
            );
        }
        let dp = &self.dataplane;
        if dp.batch == 0 || dp.batch > 1024 {
            issue(
                "[dataplane].batch",
                format!("{} is outside 1..=1024", dp.batch),
                "write a value in 1..=1024".into(),
            );
        }
        // The engine keeps one submission entry for the receive; the batch's sends take
        // the rest.
        if dp.batch >= io.entries {
            issue(
                "[dataplane].batch",
                format!(
                    "{} does not fit [io_uring].entries {} (a batch takes all entries but the receive's)",
                    dp.batch, io.entries
                ),
                "raise [io_uring].entries above the batch, or lower the batch".into(),
            );
        }
        if dp.gso_segments == 0 || dp.gso_segments > UDP_MAX_SEGMENTS {
            issue(
                "[dataplane].gso_segments",
                format!("{} is outside 1..={UDP_MAX_SEGMENTS}", dp.gso_segments),
                format!("write a value in 1..={UDP_MAX_SEGMENTS} (the kernel's UDP_MAX_SEGMENTS)"),
            );
        }
        let latency = dp.mode == DataplaneMode::Latency;
        for (field, value, range) in [
            (
                "max_hold_us",
                dp.max_hold_us,
                1..=LatencyFirst::MAX_HOLD_US_LIMIT,
            ),
            (
                "busy_poll_us",
                dp.busy_poll_us,
                0..=LatencyFirst::BUSY_POLL_US_LIMIT,
            ),
        ] {
            let Some(value) = value else { continue };
            let field = format!("[dataplane].{field}");
            if !latency {
                issue(
                    &field,
                    "applies only in latency mode".into(),
                    "add mode = \"latency\" to [dataplane], or remove this line".into(),
                );
            } else if !range.contains(&value) {
                issue(
                    &field,
                    format!("{value} is outside {}..={}", range.start(), range.end()),
                    format!("write a value in {}..={}", range.start(), range.end()),
                );
            }
        }
        if !CRYPTO_BACKENDS.contains(&dp.crypto_backend.as_str()) {
            issue(
                "[dataplane].crypto_backend",
                format!("{:?} is not a backend", dp.crypto_backend),
                format!("use one of: {}", CRYPTO_BACKENDS.join(", ")),
            );
        }
        out
    }

    /// How well this profile matches a device: `None` if it does not, higher is more specific.
    pub fn match_score(&self, driver: &str, pci: Option<(u16, u16)>) -> Option<u8> {
        if self.matcher.driver != driver {
            return None;
        }
        match (self.matcher.pci_vendor, pci) {
            (None, _) => Some(1),
            (Some(_), None) => None,
            (Some(v), Some((vendor, device))) => {
                if v != vendor {
                    None
                } else if self.matcher.pci_devices.is_empty() {
                    Some(2)
                } else if self.matcher.pci_devices.contains(&device) {
                    Some(3)
                } else {
                    None
                }
            }
        }
    }

    /// Worker cores for this profile on a host, given the NIC's NUMA node.
    pub fn worker_cores(
        &self,
        online: &CpuList,
        nodes: &[(u32, CpuList)],
        nic_node: Option<u32>,
    ) -> Vec<usize> {
        let selected = CpuList::select(&self.cpu.cores, online, nodes, nic_node);
        let n = self
            .cpu
            .workers
            .unwrap_or(selected.len())
            .min(selected.len())
            .max(1);
        let mut cores: Vec<usize> = selected.iter().take(n).collect();
        if cores.is_empty() {
            // A host always has a core online; fall back to core 0 if the list was empty.
            cores.push(online.iter().next().unwrap_or(0));
        }
        cores
    }

    /// What the data plane takes from this profile on a host.
    pub fn dataplane_tuning(
        &self,
        online: &CpuList,
        nodes: &[(u32, CpuList)],
        nic_node: Option<u32>,
    ) -> DataplaneTuning {
        let worker_cores = self.worker_cores(online, nodes, nic_node);
        DataplaneTuning {
            workers: worker_cores.len(),
            worker_cores,
            batch: self.dataplane.batch as usize,
            gso_segments: self.dataplane.gso_segments,
            io_uring_entries: self.io_uring.entries,
            provided_buffers: self.io_uring.provided_buffers,
            crypto_backend: self.dataplane.crypto_backend.clone(),
            latency_first: (self.dataplane.mode == DataplaneMode::Latency).then(|| LatencyFirst {
                max_hold_us: self
                    .dataplane
                    .max_hold_us
                    .unwrap_or(LatencyFirst::DEFAULT_MAX_HOLD_US),
                busy_poll_us: self
                    .dataplane
                    .busy_poll_us
                    .unwrap_or(LatencyFirst::DEFAULT_BUSY_POLL_US),
                max_reads: LatencyFirst::MAX_READS,
            }),
        }
    }
}

/// The shipped profiles plus those in an operator's directory (which win on equal names).
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    profiles: Vec<Profile>,
}

impl ProfileSet {
    /// The profiles compiled into the binary.
    pub fn shipped() -> Result<Self> {
        let mut profiles = Vec::new();
        for (name, text) in SHIPPED {
            profiles.push(Profile::parse(&format!("profiles/{name}.toml"), text)?);
        }
        Ok(Self { profiles })
    }

    /// Shipped profiles, then every `*.toml` in `dir` replacing or adding to them.
    pub fn with_dir(dir: Option<&Path>) -> Result<Self> {
        let mut set = Self::shipped()?;
        let Some(dir) = dir else { return Ok(set) };
        let entries = std::fs::read_dir(dir).map_err(|e| HwError::io(dir, e))?;
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let p = Profile::load(&path)?;
            set.profiles.retain(|q| q.name != p.name);
            set.profiles.push(p);
        }
        Ok(set)
    }

    /// All profiles.
    pub fn all(&self) -> &[Profile] {
        &self.profiles
    }

    /// The profile called `name`.
    pub fn get(&self, name: &str) -> Result<&Profile> {
        self.profiles
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| HwError::UnknownProfile {
                name: name.to_owned(),
                known: self
                    .profiles
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The most specific profile for a device, if any matches.
    pub fn best_match(&self, driver: &str, pci: Option<(u16, u16)>) -> Option<&Profile> {
        self.profiles
            .iter()
            .filter_map(|p| p.match_score(driver, pci).map(|s| (s, p)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e810() -> String {
        SHIPPED
            .iter()
            .find(|(n, _)| *n == "e810")
            .map(|(_, t)| t.to_string())
            .unwrap()
    }

    #[test]
    fn every_shipped_profile_parses_and_validates() {
        for (name, text) in SHIPPED {
            let p = Profile::parse(&format!("profiles/{name}.toml"), text).unwrap();
            assert_eq!(p.name, name);
            assert!(!p.description.is_empty());
        }
        assert_eq!(ProfileSet::shipped().unwrap().all().len(), SHIPPED.len());
    }

    #[test]
    fn every_shipped_capability_cites_a_source() {
        for (name, text) in SHIPPED {
            let mut section = String::new();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let t = line.trim();
                if t.starts_with('[') {
                    section = t.to_owned();
                }
                let is_value =
                    !t.is_empty() && !t.starts_with('#') && !t.starts_with('[') && t.contains('=');
                let capability =
                    ["[limits]", "[crypto_offload]", "[offloads]"].contains(&section.as_str());
                if is_value && capability {
                    // A source comment sits on the line or earlier in its block (no blank line between).
                    let mut j = i;
                    let mut cited = t.contains("# source:");
                    while !cited
                        && j > 0
                        && !lines[j - 1].trim().is_empty()
                        && !lines[j - 1].trim().starts_with('[')
                    {
                        j -= 1;
                        cited = lines[j].trim().starts_with('#') && lines[j].contains("source:");
                    }
                    assert!(
                        cited,
                        "{name}.toml line {}: {t:?} has no `source:` comment",
                        i + 1
                    );
                }
            }
        }
    }

    /// The 1-based line of the first line of `text` that starts with `prefix`.
    fn line_of(text: &str, prefix: &str) -> usize {
        text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
    }

    #[test]
    fn ring_above_the_driver_maximum_names_file_field_line_and_range() {
        let text = e810().replace("rx = 4096", "rx = 70000");
        let err = Profile::parse("profiles/e810.toml", &text)
            .unwrap_err()
            .to_string();
        let line = line_of(&text, "rx = 70000");
        assert_eq!(err, format!("profiles/e810.toml:{line}: [rings].rx: 70000 exceeds the maximum 8160 for ice; write a value in 64..=8160"));
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let text = e810()
            .replace(
                "crypto_backend = \"aws-lc-rs\"",
                "crypto_backend = \"openssl\"",
            )
            .replace("gso_segments = 44", "gso_segments = 65")
            .replace("entries = 4096", "entries = 3000");
        let HwError::ProfileInvalid(issues) = Profile::parse("x/e810.toml", &text).unwrap_err()
        else {
            panic!("expected validation errors");
        };
        let fields: Vec<(&str, Option<usize>)> =
            issues.iter().map(|i| (i.field.as_str(), i.line)).collect();
        assert_eq!(
            fields,
            [
                ("[io_uring].entries", Some(line_of(&text, "entries = 3000"))),
                (
                    "[dataplane].gso_segments",
                    Some(line_of(&text, "gso_segments = 65"))
                ),
                (
                    "[dataplane].crypto_backend",
                    Some(line_of(&text, "crypto_backend = \"openssl\""))
                )
            ]
        );
        assert!(issues.iter().all(|i| i.file == "x/e810.toml"));
        assert!(issues.iter().all(|i| i.fix.is_some()));
        assert!(issues[2]
            .fix
            .as_deref()
            .unwrap()
            .contains("aws-lc-rs, ring, rustcrypto"));
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = e810().replace("[rings]\n", "[rings]\nrx_size = 5\n");
        let Err(HwError::Config(d)) = Profile::parse("profiles/e810.toml", &text) else {
            panic!("expected a config diagnostic");
        };
        assert_eq!(d.file, "profiles/e810.toml");
        assert_eq!(d.field, "[rings].rx_size");
        assert_eq!(d.line, Some(line_of(&text, "rx_size = 5")));
        assert!(d.reason.contains("unknown field `rx_size`"), "{d}");
        assert!(d.fix.as_deref().unwrap().contains("`rx`"), "{d}");
        let text = e810().replace("batch = 64", "batch = \"64\"");
        let Err(HwError::Config(d)) = Profile::parse("profiles/e810.toml", &text) else {
            panic!("expected a config diagnostic");
        };
        assert_eq!(d.field, "[dataplane].batch");
        assert_eq!(d.line, Some(line_of(&text, "batch = ")));
        assert!(d.fix.as_deref().unwrap().contains("whole number"), "{d}");
    }

    #[test]
    fn rings_on_a_device_without_rings_are_refused() {
        let veth = SHIPPED[1].1.replace("[cpu]", "[rings]\nrx = 512\n\n[cpu]");
        let err = Profile::parse("profiles/veth.toml", &veth)
            .unwrap_err()
            .to_string();
        let line = line_of(&veth, "rx = 512");
        assert!(
            err.contains(&format!(
                "profiles/veth.toml:{line}: [rings].rx: veth has no configurable rings"
            )),
            "{err}"
        );
        assert!(err.ends_with("; remove it"), "{err}");
    }

    #[test]
    fn unknown_offload_and_bad_cpulist_are_named() {
        let text = e810()
            .replace("[offloads]\n", "[offloads]\nrx-magic = true\n")
            .replace("cores = \"nic-node\"", "cores = \"3-1\"");
        let err = Profile::parse("p/e810.toml", &text)
            .unwrap_err()
            .to_string();
        let magic = line_of(&text, "rx-magic");
        assert!(
            err.contains(&format!(
                "p/e810.toml:{magic}: [offloads].rx-magic: unknown feature; use one of: "
            )),
            "{err}"
        );
        let cores = line_of(&text, "cores = ");
        assert!(
            err.contains(&format!("p/e810.toml:{cores}: [cpu].cores: ")),
            "{err}"
        );
    }

    #[test]
    fn most_specific_profile_wins() {
        let set = ProfileSet::shipped().unwrap();
        assert_eq!(
            set.best_match("mlx5_core", Some((0x15b3, 0x1021)))
                .unwrap()
                .name,
            "connectx-7"
        );
        assert_eq!(
            set.best_match("mlx5_core", Some((0x15b3, 0x101d)))
                .unwrap()
                .name,
            "connectx-6dx"
        );
        assert!(set
            .best_match("mlx5_core", Some((0x15b3, 0x1017)))
            .is_none());
        assert_eq!(
            set.best_match("ice", Some((0x8086, 0x1592))).unwrap().name,
            "e810"
        );
        assert_eq!(
            set.best_match("virtio_net", Some((0x1af4, 0x1041)))
                .unwrap()
                .name,
            "virtio-net"
        );
        assert_eq!(set.best_match("veth", None).unwrap().name, "veth");
        assert_eq!(set.best_match("loopback", None).unwrap().name, "loopback");
        assert!(set.best_match("e1000e", Some((0x8086, 0x10d3))).is_none());
    }

    #[test]
    fn tuning_resolves_cores_on_the_nic_node() {
        let p = Profile::parse("profiles/e810.toml", &e810()).unwrap();
        let online = CpuList::parse("0-7").unwrap();
        let nodes = vec![
            (0, CpuList::parse("0-3").unwrap()),
            (1, CpuList::parse("4-7").unwrap()),
        ];
        let t = p.dataplane_tuning(&online, &nodes, Some(1));
        assert_eq!(t.worker_cores, vec![4, 5, 6, 7]);
        assert_eq!(t.workers, 4);
        assert_eq!(t.batch, p.dataplane.batch as usize);
        assert_eq!(t.crypto_backend, "aws-lc-rs");
    }

    #[test]
    fn latency_mode_is_off_unless_asked_and_its_values_are_checked() {
        let p = Profile::parse("profiles/e810.toml", &e810()).unwrap();
        let online = CpuList::parse("0-3").unwrap();
        assert_eq!(p.dataplane.mode, DataplaneMode::Throughput);
        assert_eq!(p.dataplane_tuning(&online, &[], None).latency_first, None);

        let latency = e810().replace(
            "[dataplane]\n",
            "[dataplane]\nmode = \"latency\"\nbusy_poll_us = 50\n",
        );
        let p = Profile::parse("profiles/e810.toml", &latency).unwrap();
        assert_eq!(
            p.dataplane_tuning(&online, &[], None).latency_first,
            Some(LatencyFirst {
                max_hold_us: LatencyFirst::DEFAULT_MAX_HOLD_US,
                busy_poll_us: 50,
                max_reads: LatencyFirst::MAX_READS,
            })
        );

        let out_of_range = latency.replace("busy_poll_us = 50", "max_hold_us = 0");
        let err = Profile::parse("profiles/e810.toml", &out_of_range)
            .unwrap_err()
            .to_string();
        let line = line_of(&out_of_range, "max_hold_us = ");
        assert!(
            err.contains(&format!(
                "profiles/e810.toml:{line}: [dataplane].max_hold_us: 0 is outside 1..=1000"
            )),
            "{err}"
        );

        let without_mode = e810().replace("[dataplane]\n", "[dataplane]\nbusy_poll_us = 50\n");
        let err = Profile::parse("profiles/e810.toml", &without_mode)
            .unwrap_err()
            .to_string();
        assert!(err.contains("applies only in latency mode"), "{err}");

        let unknown = e810().replace("[dataplane]\n", "[dataplane]\nmode = \"fast\"\n");
        assert!(Profile::parse("profiles/e810.toml", &unknown).is_err());
    }

    #[test]
    fn operator_directory_overrides_a_shipped_profile() {
        let dir = std::env::temp_dir().join(format!("cpclink-hw-profiles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("e810.toml"),
            e810().replace("batch = 64", "batch = 16"),
        )
        .unwrap();
        let set = ProfileSet::with_dir(Some(&dir)).unwrap();
        assert_eq!(set.get("e810").unwrap().dataplane.batch, 16);
        assert_eq!(set.all().len(), SHIPPED.len());
        std::fs::write(dir.join("bad.toml"), e810()).unwrap();
        let err = ProfileSet::with_dir(Some(&dir)).unwrap_err().to_string();
        let line = line_of(&e810(), "name = ");
        assert!(
            err.contains(&format!(
                "bad.toml:{line}: name: \"e810\" differs from the file name; write name = \"bad\""
            )),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
