//! What this host has: CPU crypto features, cores, NUMA nodes, and each network interface
//! as sysfs and the kernel's netlink interfaces describe it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cpuset::CpuList;
use crate::error::{HwError, Result};
use crate::ethtool::{ChannelState, CoalesceState, Ethtool, Features, LinkInfo, RingState};

/// `ARPHRD_LOOPBACK` from include/uapi/linux/if_arp.h, as in `/sys/class/net/*/type`.
const ARPHRD_LOOPBACK: u32 = 772;

/// CPU features that decide the crypto backend (ARCHITECTURE.md, D5).
pub const CRYPTO_CPU_FEATURES: [&str; 4] = ["aes", "vaes", "avx512f", "pclmulqdq"];

/// One CPU feature, from the CPUID instruction and from /proc/cpuinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuFeature {
    /// The /proc/cpuinfo flag name.
    pub name: String,
    /// `is_x86_feature_detected!` says so.
    pub cpuid: bool,
    /// /proc/cpuinfo lists it.
    pub cpuinfo: bool,
}

/// The host's CPUs.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// `model name` from /proc/cpuinfo.
    pub model: String,
    /// Online CPUs (/sys/devices/system/cpu/online).
    #[serde(serialize_with = "as_cpulist")]
    pub online: CpuList,
    /// NUMA nodes and their CPUs (/sys/devices/system/node/node*/cpulist).
    #[serde(serialize_with = "nodes_as_cpulists")]
    pub numa_nodes: Vec<(u32, CpuList)>,
    /// AES-NI, VAES, AVX-512F, PCLMULQDQ.
    pub features: Vec<CpuFeature>,
}

impl CpuReport {
    /// Whether both sources agree that `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.features
            .iter()
            .any(|f| f.name == name && f.cpuid && f.cpuinfo)
    }
}

fn as_cpulist<S: serde::Serializer>(l: &CpuList, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&l.to_string())
}

fn nodes_as_cpulists<S: serde::Serializer>(
    n: &[(u32, CpuList)],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(n.len()))?;
    for (id, cpus) in n {
        m.serialize_entry(id, &cpus.to_string())?;
    }
    m.end()
}

/// A PCI function's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PciId {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
}

/// One network interface.
#[derive(Debug, Clone, Serialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Driver: the bound kernel driver, the link kind for software devices, or `loopback`.
    pub driver: String,
    /// PCI ids of the function behind it (for virtio-net, of the virtio PCI function).
    pub pci: Option<PciId>,
    /// PCI address, e.g. `0000:00:03.0`.
    pub pci_address: Option<String>,
    /// NUMA node of the device, when the platform reports one.
    pub numa_node: Option<u32>,
    /// rtnetlink facts: index, kind, MTU and limits.
    pub link: LinkInfo,
    /// Receive queues in sysfs.
    pub rx_queues: usize,
    /// Transmit queues in sysfs.
    pub tx_queues: usize,
    /// Kernel features.
    pub features: Option<Features>,
    /// Ring sizes.
    pub rings: Option<RingState>,
    /// Channels.
    pub channels: Option<ChannelState>,
    /// Coalescing.
    pub coalesce: Option<CoalesceState>,
    /// Interrupts of the device's queues, in /proc/interrupts order.
    pub queue_irqs: Vec<u32>,
}

impl Interface {
    /// PCI (vendor, device) for profile matching.
    pub fn pci_ids(&self) -> Option<(u16, u16)> {
        self.pci.map(|p| (p.vendor, p.device))
    }
}

/// Reads the CPU report.
pub fn cpu() -> Result<CpuReport> {
    let cpuinfo = read("/proc/cpuinfo")?;
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    let features = CRYPTO_CPU_FEATURES
        .iter()
        .map(|name| CpuFeature {
            name: (*name).to_owned(),
            cpuid: cpuid_has(name),
            cpuinfo: flags.contains(name),
        })
        .collect();
    let online = CpuList::parse(&read("/sys/devices/system/cpu/online")?).map_err(|message| {
        HwError::Malformed {
            path: "/sys/devices/system/cpu/online".into(),
            message,
        }
    })?;
    Ok(CpuReport {
        model,
        online,
        numa_nodes: numa_nodes()?,
        features,
    })
}

#[cfg(target_arch = "x86_64")]
fn cpuid_has(name: &str) -> bool {
    match name {
        "aes" => std::arch::is_x86_feature_detected!("aes"),
        "vaes" => std::arch::is_x86_feature_detected!("vaes"),
        "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
        "pclmulqdq" => std::arch::is_x86_feature_detected!("pclmulqdq"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_has(_name: &str) -> bool {
    false
}

fn numa_nodes() -> Result<Vec<(u32, CpuList)>> {
    let dir = Path::new("/sys/devices/system/node");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut nodes = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_prefix("node")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let list = read(e.path().join("cpulist"))?;
        nodes.push((id, CpuList::parse(&list).unwrap_or_default()));
    }
    nodes.sort_by_key(|(id, _)| *id);
    Ok(nodes)
}

/// Names in /sys/class/net, sorted.
pub fn interface_names() -> Result<Vec<String>> {
    let dir = "/sys/class/net";
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| HwError::io(dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Everything about one interface.
pub fn interface(ethtool: &mut Ethtool, name: &str) -> Result<Interface> {
    let base = PathBuf::from("/sys/class/net").join(name);
    if !base.exists() {
        return Err(HwError::NoSuchInterface(name.to_owned()));
    }
    let link = ethtool.link(name)?;
    let device = base.join("device");
    let bound_driver = std::fs::read_link(device.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
    let arp_type: Option<u32> = read(base.join("type"))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let driver = match (bound_driver, &link.kind) {
        (Some(d), _) => d,
        (None, Some(kind)) => kind.clone(),
        (None, None) if arp_type == Some(ARPHRD_LOOPBACK) => "loopback".to_owned(),
        (None, None) => "unknown".to_owned(),
    };
    let pci_dir = pci_function(&device);
    let pci = pci_dir.as_ref().and_then(|d| {
        Some(PciId {
            vendor: hex_u16(&read(d.join("vendor")).ok()?)?,
            device: hex_u16(&read(d.join("device")).ok()?)?,
        })
    });
    let pci_address = pci_dir
        .as_ref()
        .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()));
    let numa_node = pci_dir
        .as_ref()
        .and_then(|d| read(d.join("numa_node")).ok())
        .and_then(|n| n.trim().parse::<i64>().ok())
        .and_then(|n| u32::try_from(n).ok());
    let queue_count = |prefix: &str| {
        std::fs::read_dir(base.join("queues"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                    .count()
            })
            .unwrap_or(0)
    };
    let virtio_name = std::fs::canonicalize(&device)
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
    let queue_irqs = match &pci_dir {
        Some(d) => queue_irqs(d, name, virtio_name.as_deref())?,
        None => Vec::new(),
    };
    Ok(Interface {
        name: name.to_owned(),
        driver,
        pci,
        pci_address,
        numa_node,
        rx_queues: queue_count("rx-"),
        tx_queues: queue_count("tx-"),
        features: ethtool.features(name)?,
        rings: ethtool.rings(name)?,
        channels: ethtool.channels(name)?,
        coalesce: ethtool.coalesce(name)?,
        link,
        queue_irqs,
    })
}

/// NUMA node of the device behind interface `dev`, when the platform reports one.
pub fn numa_node_of(dev: &str) -> Option<u32> {
    let pci = pci_function(&Path::new("/sys/class/net").join(dev).join("device"))?;
    read(pci.join("numa_node"))
        .ok()?
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

/// The PCI function behind `device`: itself, or its parent for virtio devices.
fn pci_function(device: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(device).ok()?;
    [real.clone(), real.parent()?.to_path_buf()]
        .into_iter()
        .find(|d| {
            std::fs::read_link(d.join("subsystem"))
                .ok()
                .and_then(|s| s.file_name().map(|f| f == "pci"))
                .unwrap_or(false)
        })
}

fn hex_u16(s: &str) -> Option<u16> {
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// MSI interrupts of the PCI function that serve queues, recognised by the action names
/// drivers give them in /proc/interrupts (`virtio2-input.0`, `eth0-TxRx-3`, `mlx5_comp4@...`).
fn queue_irqs(pci: &Path, ifname: &str, virtio: Option<&str>) -> Result<Vec<u32>> {
    let Ok(entries) = std::fs::read_dir(pci.join("msi_irqs")) else {
        return Ok(Vec::new());
    };
    let msi: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    let interrupts = read("/proc/interrupts")?;
    let mut irqs = Vec::new();
    for line in interrupts.lines() {
        let Some((num, rest)) = line.trim_start().split_once(':') else {
            continue;
        };
        let Ok(irq) = num.parse::<u32>() else {
            continue;
        };
        if !msi.contains(&irq) {
            continue;
        }
        let action = rest.split_whitespace().last().unwrap_or_default();
        let virtio_queue = virtio.is_some_and(|v| {
            action.starts_with(v) && (action.contains("-input.") || action.contains("-output."))
        });
        let named = action.contains(ifname) && !action.ends_with(ifname);
        if virtio_queue || named || action.starts_with("mlx5_comp") {
            irqs.push(irq);
        }
    }
    Ok(irqs)
}

pub(crate) fn read(path: impl AsRef<Path>) -> Result<String> {
    std::fs::read_to_string(path.as_ref()).map_err(|e| HwError::io(path.as_ref(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/cpuinfo's flags, read here independently of the code under test.
    fn cpuinfo_flags() -> Vec<String> {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let line = text.lines().find(|l| l.starts_with("flags")).unwrap();
        line.split(':')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn cpu_features_agree_with_proc_cpuinfo() {
        let report = cpu().unwrap();
        let flags = cpuinfo_flags();
        for name in CRYPTO_CPU_FEATURES {
            let f = report.features.iter().find(|f| f.name == name).unwrap();
            assert_eq!(f.cpuinfo, flags.iter().any(|x| x == name), "{name}");
            // The kernel lists a flag only when CPUID has it; CPUID may have more (masked by the kernel).
            if f.cpuinfo {
                assert!(f.cpuid, "{name} in /proc/cpuinfo but not in CPUID");
            }
        }
    }

    #[test]
    fn core_count_agrees_with_sysfs_and_processor_lines() {
        let report = cpu().unwrap();
        let processors = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        assert_eq!(report.online.len(), processors);
        let cpu_dirs = std::fs::read_dir("/sys/devices/system/cpu")
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix("cpu")
                    .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
                    && std::fs::read_to_string(e.path().join("online"))
                        .map(|s| s.trim() == "1")
                        .unwrap_or(true)
            })
            .count();
        assert_eq!(report.online.len(), cpu_dirs);
        let node_total: usize = report.numa_nodes.iter().map(|(_, c)| c.len()).sum();
        if !report.numa_nodes.is_empty() {
            assert!(node_total >= report.online.len());
        }
        assert_eq!(
            report.online.len(),
            std::thread::available_parallelism().unwrap().get()
        );
    }

    #[test]
    fn interfaces_agree_with_sysfs() {
        let mut e = Ethtool::open().unwrap();
        for name in interface_names().unwrap() {
            // Links other software deletes while the test runs are not this test's concern.
            let i = match interface(&mut e, &name) {
                Err(HwError::NoSuchInterface(_)) => continue,
                other => other.unwrap(),
            };
            let base = Path::new("/sys/class/net").join(&name);
            let mtu: u32 = std::fs::read_to_string(base.join("mtu"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert_eq!(i.link.mtu, mtu, "{name}");
            if let Ok(link) = std::fs::read_link(base.join("device/driver")) {
                assert_eq!(
                    i.driver,
                    link.file_name().unwrap().to_string_lossy(),
                    "{name}"
                );
            }
            if name == "lo" {
                assert_eq!(i.driver, "loopback");
            }
            let rx = std::fs::read_dir(base.join("queues"))
                .unwrap()
                .flatten()
                .filter(|q| q.file_name().to_string_lossy().starts_with("rx-"))
                .count();
            assert_eq!(i.rx_queues, rx, "{name}");
            if i.driver == "virtio_net" {
                let pci = i.pci.unwrap();
                assert_eq!(pci.vendor, 0x1af4, "virtio PCI vendor is Red Hat, Inc.");
                let dev_file = std::fs::read_to_string(base.join("device/../device")).unwrap();
                assert_eq!(format!("0x{:04x}", pci.device), dev_file.trim());
            }
        }
    }
}
