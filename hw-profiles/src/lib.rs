//! Hardware profiles for cpclink (SPEC H1): detect the NIC and CPU, match a profile, show
//! and apply the difference, and tune batching and worker counts by measurement.
//!
//! All system access goes through safe interfaces (`cpclink-netlink`, `nix`, std), so this
//! crate has no `unsafe` of its own.

#![forbid(unsafe_code)]

pub mod apply;
pub mod cpuset;
mod error;
pub mod ethtool;
pub mod host;
pub mod profile;
pub mod tune;
pub mod udp_runner;

pub use error::{HwError, Result};
pub use profile::{DataplaneMode, DataplaneTuning, LatencyFirst, Profile, ProfileSet};

use std::path::Path;

/// What the data plane takes from the profile a config names (`[hardware] profile = NAME`), resolved
/// for this host: worker cores on the NUMA node of `dev` when the profile says `nic-node`.
pub fn dataplane_tuning(
    profile: &str,
    profile_dir: Option<&Path>,
    dev: Option<&str>,
) -> Result<DataplaneTuning> {
    let profiles = ProfileSet::with_dir(profile_dir)?;
    let profile = profiles.get(profile)?;
    let cpu = host::cpu()?;
    let nic_node = dev.and_then(host::numa_node_of);
    Ok(profile.dataplane_tuning(&cpu.online, &cpu.numa_nodes, nic_node))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_tuning_uses_every_online_core() {
        let t = super::dataplane_tuning("loopback", None, Some("lo")).unwrap();
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        let cpus = super::cpuset::CpuList::parse(&online).unwrap();
        assert_eq!(t.worker_cores, cpus.iter().collect::<Vec<_>>());
        assert_eq!(t.workers, cpus.len());
        assert_eq!(
            (t.batch, t.gso_segments, t.crypto_backend.as_str()),
            (32, 44, "aws-lc-rs")
        );
        assert!(super::dataplane_tuning("no-such", None, None)
            .unwrap_err()
            .to_string()
            .contains("known: virtio-net, veth"));
    }
}
