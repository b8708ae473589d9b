//! Hardware profiles: what a NIC can do and how cpclink should drive it.
//!
//! A profile is a TOML file (see `profiles/` and README.md). Parsing gives a [`Profile`];
//! [`Profile::validate`] checks every value against the device limits the profile states
//! and reports each problem with the file, the field and the range expected.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cpuset::CpuList;
use crate::error::{HwError, ProfileIssue, Result};

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
        let profile: Profile = toml::from_str(text).map_err(|e| HwError::ProfileSyntax {
            file: file.to_owned(),
            message: syntax_message(text, &e),
        })?;
        let issues = profile.validate(file);
        if issues.is_empty() {
            Ok(profile)
        } else {
            Err(HwError::ProfileInvalid(issues))
        }
    }

    /// Reads, parses and validates a profile file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| HwError::io(path, e))?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Every problem with this profile, each naming `file` and the field.
    pub fn validate(&self, file: &str) -> Vec<ProfileIssue> {
        let mut out = Vec::new();
        let mut issue = |field: &str, problem: String| {
            out.push(ProfileIssue {
                file: file.to_owned(),
                field: field.to_owned(),
                problem,
            });
        };
        let driver = &self.matcher.driver;
        let stem = Path::new(file)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if !file.starts_with('<') && !stem.is_empty() && self.name != stem && self.tuned.is_none() {
            issue(
                "name",
                format!(
                    "{:?} differs from the file name (expected {stem:?})",
                    self.name
                ),
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
                format!(
                    "{:?} must be non-empty ASCII letters, digits and '-'",
                    self.name
                ),
            );
        }
        if driver.is_empty() {
            issue(
                "match.driver",
                "is empty (expected the kernel driver, e.g. \"ice\")".into(),
            );
        }
        if !self.matcher.pci_devices.is_empty() && self.matcher.pci_vendor.is_none() {
            issue(
                "match.pci_vendor",
                "is required when match.pci_devices is given".into(),
            );
        }
        let ring_min = self.limits.ring_min.unwrap_or(1);
        for (field, value, max) in [
            ("rings.rx", self.rings.rx, self.limits.rx_ring_max),
            ("rings.tx", self.rings.tx, self.limits.tx_ring_max),
        ] {
            let Some(value) = value else { continue };
            match max {
                None => issue(field, format!("{driver} has no configurable rings (limits.{}_ring_max is absent); remove {field}", &field[6..])),
                Some(max) if value > max => issue(
                    field,
                    format!("{value} exceeds the maximum {max} for {driver} (expected {ring_min}..={max})"),
                ),
                Some(max) if value < ring_min => issue(
                    field,
                    format!("{value} is below the minimum {ring_min} for {driver} (expected {ring_min}..={max})"),
                ),
                Some(_) => {}
            }
        }
        if let Some(combined) = self.channels.combined {
            match self.limits.channels_max {
                None => issue("channels.combined", format!("{driver} has no configurable channels (limits.channels_max is absent); remove it")),
                Some(max) if combined == 0 || combined > max => issue(
                    "channels.combined",
                    format!("{combined} is outside 1..={max} for {driver}"),
                ),
                Some(_) => {}
            }
        }
        if let Some(mtu) = self.link.mtu {
            let max = self.limits.mtu_max;
            if !(68..=max).contains(&mtu) {
                issue("link.mtu", format!("{mtu} is outside 68..={max} for {driver} (IPv4 minimum 68, device maximum limits.mtu_max)"));
            }
        }
        for name in self.offloads.keys() {
            if !OFFLOAD_FEATURES.contains(&name.as_str()) {
                issue(
                    &format!("offloads.{name}"),
                    format!(
                        "unknown feature (expected one of: {})",
                        OFFLOAD_FEATURES.join(", ")
                    ),
                );
            }
        }
        if self.offloads.get("rx-udp-gro-forwarding") == Some(&true)
            && self.offloads.get("rx-gro") == Some(&false)
        {
            issue(
                "offloads.rx-udp-gro-forwarding",
                "needs rx-gro = true".into(),
            );
        }
        if let Err(e) = CpuList::parse_selector(&self.cpu.cores) {
            issue("cpu.cores", e);
        }
        if self.cpu.workers == Some(0) {
            issue(
                "cpu.workers",
                "0 workers (expected at least 1, or leave it out for one per core)".into(),
            );
        }
        let io = &self.io_uring;
        if !io.entries.is_power_of_two() || io.entries > IORING_MAX_ENTRIES {
            issue(
                "io_uring.entries",
                format!(
                    "{} must be a power of two in 1..={IORING_MAX_ENTRIES}",
                    io.entries
                ),
            );
        }
        if !io.provided_buffers.is_power_of_two() || io.provided_buffers > BUF_RING_MAX_ENTRIES {
            issue(
                "io_uring.provided_buffers",
                format!(
                    "{} must be a power of two in 1..={BUF_RING_MAX_ENTRIES}",
                    io.provided_buffers
                ),
            );
        }
        let dp = &self.dataplane;
        if dp.batch == 0 || dp.batch > 1024 {
            issue(
                "dataplane.batch",
                format!("{} is outside 1..=1024", dp.batch),
            );
        }
        // The engine keeps one submission entry for the receive; the batch's sends take
        // the rest.
        if dp.batch >= io.entries {
            issue(
                "dataplane.batch",
                format!(
                    "{} does not fit io_uring.entries {} (a batch takes all entries but the receive's: raise entries above the batch)",
                    dp.batch, io.entries
                ),
            );
        }
        if dp.gso_segments == 0 || dp.gso_segments > UDP_MAX_SEGMENTS {
            issue(
                "dataplane.gso_segments",
                format!(
                    "{} is outside 1..={UDP_MAX_SEGMENTS} (UDP_MAX_SEGMENTS)",
                    dp.gso_segments
                ),
            );
        }
        if !CRYPTO_BACKENDS.contains(&dp.crypto_backend.as_str()) {
            issue(
                "dataplane.crypto_backend",
                format!(
                    "{:?} is not a backend (expected one of: {})",
                    dp.crypto_backend,
                    CRYPTO_BACKENDS.join(", ")
                ),
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
        }
    }
}

/// Turns a TOML error into `line L, column C: message` (the field is in the message).
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_owned();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, str::len) + 1;
            let key = text[span.start.min(text.len())..span.end.min(text.len())].trim();
            format!("line {line}, column {col} ({key}): {msg}")
        }
        None => msg,
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

    #[test]
    fn ring_above_the_driver_maximum_names_file_field_and_range() {
        let text = e810().replace("rx = 4096", "rx = 70000");
        let err = Profile::parse("profiles/e810.toml", &text)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "profiles/e810.toml: rings.rx: 70000 exceeds the maximum 8160 for ice (expected 64..=8160)");
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
        let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "io_uring.entries",
                "dataplane.gso_segments",
                "dataplane.crypto_backend"
            ]
        );
        assert!(issues.iter().all(|i| i.file == "x/e810.toml"));
        assert!(issues[2].problem.contains("aws-lc-rs, ring, rustcrypto"));
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = e810().replace("[rings]\n", "[rings]\nrx_size = 5\n");
        let err = Profile::parse("profiles/e810.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("profiles/e810.toml: line "), "{err}");
        assert!(err.contains("unknown field `rx_size`"), "{err}");
    }

    #[test]
    fn rings_on_a_device_without_rings_are_refused() {
        let veth = SHIPPED[1].1.replace("[cpu]", "[rings]\nrx = 512\n\n[cpu]");
        let err = Profile::parse("profiles/veth.toml", &veth)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("profiles/veth.toml: rings.rx: veth has no configurable rings"),
            "{err}"
        );
    }

    #[test]
    fn unknown_offload_and_bad_cpulist_are_named() {
        let text = e810()
            .replace("[offloads]\n", "[offloads]\nrx-magic = true\n")
            .replace("cores = \"nic-node\"", "cores = \"3-1\"");
        let err = Profile::parse("p/e810.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p/e810.toml: offloads.rx-magic: unknown feature"),
            "{err}"
        );
        assert!(err.contains("p/e810.toml: cpu.cores: "), "{err}");
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
        assert!(
            err.contains("bad.toml: name: \"e810\" differs from the file name"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
