//! `[tun]`: the TUN device inner packets enter and leave by.

use serde::Deserialize;

use super::Ctx;
use crate::Error;

#[derive(Debug, Deserialize, PartialEq, Eq, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTun {
    name: String,
    #[serde(default = "default_path_mtu")]
    path_mtu: u32,
    #[serde(default = "yes")]
    offloads: bool,
}

fn yes() -> bool {
    true
}

fn default_path_mtu() -> u32 {
    1500
}

/// The TUN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name.
    pub name: String,
    /// MTU of the path between appliances; the TUN MTU is this less the PSP overhead.
    pub path_mtu: u32,
    /// Virtio-net header with TSO/USO and checksum offloads.
    pub offloads: bool,
}

impl Ctx<'_> {
    pub(super) fn tun(&self, t: RawTun) -> Result<TunConfig, Error> {
        if t.name.is_empty() || t.name.len() > 15 || t.name.contains(['/', ' ']) {
            return Err(self.err_fix(
                "[tun].name",
                format!("{:?} is not an interface name", t.name),
                "use 1 to 15 bytes without '/' or spaces, e.g. \"cpc0\"",
            ));
        }
        if !(576..=65_535).contains(&t.path_mtu) {
            return Err(self.err_fix(
                "[tun].path_mtu",
                format!("{} is out of range", t.path_mtu),
                "give the MTU of the path between appliances, 576..=65535 (1500 on Ethernet)",
            ));
        }
        Ok(TunConfig {
            name: t.name,
            path_mtu: t.path_mtu,
            offloads: t.offloads,
        })
    }
}
