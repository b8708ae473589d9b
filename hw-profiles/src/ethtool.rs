//! Device settings over netlink: the ethtool generic-netlink family (features, rings,
//! channels, coalescing; Documentation/networking/ethtool-netlink.rst) and rtnetlink
//! (link kind, MTU and its limits).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::error::{HwError, Result};
use cpclink_netlink::attr::{self, AttrWriter};
use cpclink_netlink::{genl, link, Socket};

// include/uapi/linux/ethtool_netlink_generated.h: user-to-kernel message ids.
const MSG_FEATURES_GET: u8 = 11;
const MSG_FEATURES_SET: u8 = 12;
const MSG_RINGS_GET: u8 = 15;
const MSG_RINGS_SET: u8 = 16;
const MSG_CHANNELS_GET: u8 = 17;
const MSG_CHANNELS_SET: u8 = 18;
const MSG_COALESCE_GET: u8 = 19;
const MSG_COALESCE_SET: u8 = 20;

const A_HEADER_DEV_NAME: u16 = 2;
/// Every request's first attribute is the header nest.
const A_HEADER: u16 = 1;

const A_FEATURES_HW: u16 = 2;
const A_FEATURES_WANTED: u16 = 3;
const A_FEATURES_ACTIVE: u16 = 4;
const A_FEATURES_NOCHANGE: u16 = 5;
const A_BITSET_NOMASK: u16 = 1;
const A_BITSET_BITS: u16 = 3;
const A_BITSET_BITS_BIT: u16 = 1;
const A_BITSET_BIT_NAME: u16 = 2;
const A_BITSET_BIT_VALUE: u16 = 3;

const A_RINGS_RX_MAX: u16 = 2;
const A_RINGS_TX_MAX: u16 = 5;
const A_RINGS_RX: u16 = 6;
const A_RINGS_TX: u16 = 9;

const A_CHANNELS_COMBINED_MAX: u16 = 5;
const A_CHANNELS_COMBINED_COUNT: u16 = 9;

const A_COALESCE_RX_USECS: u16 = 2;
const A_COALESCE_TX_USECS: u16 = 6;
const A_COALESCE_USE_ADAPTIVE_RX: u16 = 11;
const A_COALESCE_USE_ADAPTIVE_TX: u16 = 12;

/// Kernel features of a device (`ethtool -k`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Features {
    /// Features the driver lets the user change.
    pub changeable: BTreeSet<String>,
    /// Features that are on.
    pub active: BTreeSet<String>,
    /// Features fixed by the driver.
    pub fixed: BTreeSet<String>,
}

impl Features {
    /// Whether `name` is on.
    pub fn is_on(&self, name: &str) -> bool {
        self.active.contains(name)
    }
}

/// Ring sizes and their maxima (`ethtool -g`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RingState {
    /// Current receive ring size.
    pub rx: u32,
    /// Current transmit ring size.
    pub tx: u32,
    /// Largest receive ring the device accepts.
    pub rx_max: u32,
    /// Largest transmit ring.
    pub tx_max: u32,
}

/// Combined channel count and maximum (`ethtool -l`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChannelState {
    /// Current combined channels.
    pub combined: u32,
    /// Largest combined channel count.
    pub combined_max: u32,
}

/// Interrupt coalescing the device reports; `None` fields are not supported by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CoalesceState {
    /// Adaptive receive moderation.
    pub adaptive_rx: Option<bool>,
    /// Adaptive transmit moderation.
    pub adaptive_tx: Option<bool>,
    /// Receive interrupt delay.
    pub rx_usecs: Option<u32>,
    /// Transmit interrupt delay.
    pub tx_usecs: Option<u32>,
}

/// rtnetlink facts about a link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkInfo {
    /// Interface index.
    pub ifindex: i32,
    /// `IFLA_INFO_KIND` for software devices (`veth`, `bridge`, ...).
    pub kind: Option<String>,
    /// Current MTU.
    pub mtu: u32,
    /// Smallest MTU.
    pub min_mtu: Option<u32>,
    /// Largest MTU.
    pub max_mtu: Option<u32>,
}

/// Coalescing values to set; `None` leaves a value alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoalesceChange {
    /// Adaptive receive moderation.
    pub adaptive_rx: Option<bool>,
    /// Adaptive transmit moderation.
    pub adaptive_tx: Option<bool>,
    /// Receive interrupt delay.
    pub rx_usecs: Option<u32>,
    /// Transmit interrupt delay.
    pub tx_usecs: Option<u32>,
}

/// An ethtool-netlink and rtnetlink session, in the caller's network namespace.
#[derive(Debug)]
pub struct Ethtool {
    genl: Socket,
    family: u16,
    route: Socket,
}

/// `ETHTOOL_GENL_VERSION`.
const ETHTOOL_GENL_VERSION: u8 = 1;

impl Ethtool {
    /// Opens the sockets and resolves the `ethtool` family.
    pub fn open() -> Result<Self> {
        let mut genl = Socket::generic().map_err(|e| netlink_error("socket", "", e))?;
        let family = genl::resolve_family(&mut genl, "ethtool")
            .map_err(|e| netlink_error("CTRL_GETFAMILY", "", e))?;
        let route = Socket::route().map_err(|e| netlink_error("socket", "", e))?;
        Ok(Self {
            genl,
            family,
            route,
        })
    }

    fn request(&self, cmd: u8, dev: &str) -> AttrWriter {
        let mut r = genl::request(cmd, ETHTOOL_GENL_VERSION);
        r.begin(A_HEADER).str(A_HEADER_DEV_NAME, dev).end();
        r
    }

    /// Sends a GET; `Ok(None)` when the driver does not implement it.
    fn get(&mut self, cmd: u8, name: &'static str, dev: &str) -> Result<Option<Vec<u8>>> {
        let req = self.request(cmd, dev);
        match self.genl.request(self.family, 0, req.as_bytes(), name) {
            Ok(answers) => {
                let first = answers
                    .into_iter()
                    .next()
                    .ok_or_else(|| HwError::NetlinkDecode(format!("{name}: empty answer")))?;
                Ok(Some(genl::attributes(&first.payload).to_vec()))
            }
            Err(e) if e.is_unsupported() => Ok(None),
            Err(e) if e.is_no_such_device() => Err(HwError::NoSuchInterface(dev.to_owned())),
            Err(e) => Err(netlink_error(name, dev, e)),
        }
    }

    fn set(&mut self, req: &AttrWriter, name: &'static str, dev: &str) -> Result<()> {
        self.genl
            .request(self.family, 0, req.as_bytes(), name)
            .map(drop)
            .map_err(|e| netlink_error(name, dev, e))
    }

    /// Kernel features; `None` if the device does not report them.
    pub fn features(&mut self, dev: &str) -> Result<Option<Features>> {
        let Some(attrs) = self.get(MSG_FEATURES_GET, "FEATURES_GET", dev)? else {
            return Ok(None);
        };
        let set = |kind| {
            attr::find(&attrs, kind)
                .map(bitset_names)
                .unwrap_or_default()
        };
        Ok(Some(Features {
            changeable: set(A_FEATURES_HW),
            active: set(A_FEATURES_ACTIVE),
            fixed: set(A_FEATURES_NOCHANGE),
        }))
    }

    /// Switches the named features on or off in one request.
    pub fn set_features(&mut self, dev: &str, wanted: &[(String, bool)]) -> Result<()> {
        let mut r = self.request(MSG_FEATURES_SET, dev);
        r.begin(A_FEATURES_WANTED).begin(A_BITSET_BITS);
        for (name, on) in wanted {
            r.begin(A_BITSET_BITS_BIT).str(A_BITSET_BIT_NAME, name);
            if *on {
                r.flag(A_BITSET_BIT_VALUE);
            }
            r.end();
        }
        r.end().end();
        self.set(&r, "FEATURES_SET", dev)
    }

    /// Ring sizes; `None` if the driver has no ring parameters.
    pub fn rings(&mut self, dev: &str) -> Result<Option<RingState>> {
        let Some(a) = self.get(MSG_RINGS_GET, "RINGS_GET", dev)? else {
            return Ok(None);
        };
        let v = |k| attr::get_u32(&a, k).unwrap_or(0);
        Ok(Some(RingState {
            rx: v(A_RINGS_RX),
            tx: v(A_RINGS_TX),
            rx_max: v(A_RINGS_RX_MAX),
            tx_max: v(A_RINGS_TX_MAX),
        }))
    }

    /// Sets ring sizes.
    pub fn set_rings(&mut self, dev: &str, rx: Option<u32>, tx: Option<u32>) -> Result<()> {
        let mut r = self.request(MSG_RINGS_SET, dev);
        if let Some(rx) = rx {
            r.u32(A_RINGS_RX, rx);
        }
        if let Some(tx) = tx {
            r.u32(A_RINGS_TX, tx);
        }
        self.set(&r, "RINGS_SET", dev)
    }

    /// Channel counts; `None` if the driver has no channel parameters.
    pub fn channels(&mut self, dev: &str) -> Result<Option<ChannelState>> {
        let Some(a) = self.get(MSG_CHANNELS_GET, "CHANNELS_GET", dev)? else {
            return Ok(None);
        };
        let v = |k| attr::get_u32(&a, k).unwrap_or(0);
        Ok(Some(ChannelState {
            combined: v(A_CHANNELS_COMBINED_COUNT),
            combined_max: v(A_CHANNELS_COMBINED_MAX),
        }))
    }

    /// Sets the combined channel count.
    pub fn set_channels(&mut self, dev: &str, combined: u32) -> Result<()> {
        let mut r = self.request(MSG_CHANNELS_SET, dev);
        r.u32(A_CHANNELS_COMBINED_COUNT, combined);
        self.set(&r, "CHANNELS_SET", dev)
    }

    /// Coalescing; `None` if the driver has no coalescing parameters.
    pub fn coalesce(&mut self, dev: &str) -> Result<Option<CoalesceState>> {
        let Some(a) = self.get(MSG_COALESCE_GET, "COALESCE_GET", dev)? else {
            return Ok(None);
        };
        Ok(Some(CoalesceState {
            adaptive_rx: attr::get_u8(&a, A_COALESCE_USE_ADAPTIVE_RX).map(|v| v != 0),
            adaptive_tx: attr::get_u8(&a, A_COALESCE_USE_ADAPTIVE_TX).map(|v| v != 0),
            rx_usecs: attr::get_u32(&a, A_COALESCE_RX_USECS),
            tx_usecs: attr::get_u32(&a, A_COALESCE_TX_USECS),
        }))
    }

    /// Sets coalescing values.
    pub fn set_coalesce(&mut self, dev: &str, c: &CoalesceChange) -> Result<()> {
        let mut r = self.request(MSG_COALESCE_SET, dev);
        if let Some(v) = c.rx_usecs {
            r.u32(A_COALESCE_RX_USECS, v);
        }
        if let Some(v) = c.tx_usecs {
            r.u32(A_COALESCE_TX_USECS, v);
        }
        if let Some(v) = c.adaptive_rx {
            r.u8(A_COALESCE_USE_ADAPTIVE_RX, u8::from(v));
        }
        if let Some(v) = c.adaptive_tx {
            r.u8(A_COALESCE_USE_ADAPTIVE_TX, u8::from(v));
        }
        self.set(&r, "COALESCE_SET", dev)
    }

    /// Link kind and MTU limits over rtnetlink.
    pub fn link(&mut self, dev: &str) -> Result<LinkInfo> {
        let l = link::by_name(&mut self.route, dev).map_err(|e| {
            if e.is_no_such_device() {
                HwError::NoSuchInterface(dev.to_owned())
            } else {
                netlink_error("RTM_GETLINK", dev, e)
            }
        })?;
        Ok(LinkInfo {
            ifindex: i32::try_from(l.index)
                .map_err(|_| HwError::NetlinkDecode(format!("{dev}: ifindex {}", l.index)))?,
            kind: l.kind,
            mtu: l.mtu,
            min_mtu: Some(l.min_mtu).filter(|v| *v != 0),
            // Loopback reports 0: no limit beyond its default.
            max_mtu: Some(l.max_mtu).filter(|v| *v != 0),
        })
    }

    /// Sets the MTU over rtnetlink.
    pub fn set_mtu(&mut self, dev: &str, ifindex: i32, mtu: u32) -> Result<()> {
        let index = u32::try_from(ifindex)
            .map_err(|_| HwError::InvalidArgument(format!("{dev}: ifindex {ifindex}")))?;
        link::set_mtu(&mut self.route, index, mtu)
            .map_err(|e| netlink_error("RTM_NEWLINK(mtu)", dev, e))
    }
}

/// A refused or failed netlink request on `dev`, with the kernel's own words.
fn netlink_error(request: &'static str, dev: &str, e: cpclink_netlink::Error) -> HwError {
    HwError::Netlink {
        request,
        dev: dev.to_owned(),
        message: e.kernel_message(),
    }
}

/// Names of the set bits of a verbose bitset (listed bits when NOMASK, else those with VALUE).
fn bitset_names(bitset: &[u8]) -> BTreeSet<String> {
    let nomask = attr::find(bitset, A_BITSET_NOMASK).is_some();
    let Some(bits) = attr::find(bitset, A_BITSET_BITS) else {
        return BTreeSet::new();
    };
    attr::attrs(bits)
        .filter(|(k, _)| *k == A_BITSET_BITS_BIT)
        .filter(|(_, bit)| nomask || attr::find(bit, A_BITSET_BIT_VALUE).is_some())
        .filter_map(|(_, bit)| attr::get_str(bit, A_BITSET_BIT_NAME))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitset(nomask: bool, bits: &[(&str, bool)]) -> Vec<u8> {
        let mut r = AttrWriter::new(&[]);
        if nomask {
            r.flag(A_BITSET_NOMASK);
        }
        r.begin(A_BITSET_BITS);
        for (name, on) in bits {
            r.begin(A_BITSET_BITS_BIT)
                .u32(1, 0)
                .str(A_BITSET_BIT_NAME, name);
            if *on {
                r.flag(A_BITSET_BIT_VALUE);
            }
            r.end();
        }
        r.end();
        r.finish()
    }

    #[test]
    fn verbose_bitsets_decode_by_mode() {
        let listed = bitset(
            true,
            &[("rx-gro-hw", false), ("tx-udp-segmentation", false)],
        );
        assert_eq!(
            bitset_names(&listed),
            BTreeSet::from(["rx-gro-hw".to_owned(), "tx-udp-segmentation".to_owned()])
        );
        let masked = bitset(
            false,
            &[("rx-gro-hw", false), ("tx-udp-segmentation", true)],
        );
        assert_eq!(
            bitset_names(&masked),
            BTreeSet::from(["tx-udp-segmentation".to_owned()])
        );
    }

    #[test]
    fn reads_loopback_over_netlink() {
        let mut e = Ethtool::open().unwrap();
        let link = e.link("lo").unwrap();
        let sysfs_mtu: u32 = std::fs::read_to_string("/sys/class/net/lo/mtu")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let sysfs_index: i32 = std::fs::read_to_string("/sys/class/net/lo/ifindex")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(link.mtu, sysfs_mtu);
        assert_eq!(link.ifindex, sysfs_index);
        let f = e.features("lo").unwrap().unwrap();
        // Loopback needs no checksums and cannot be told otherwise (drivers/net/loopback.c):
        // on, and absent from the changeable set.
        assert!(
            f.is_on("rx-checksum") && !f.changeable.contains("rx-checksum"),
            "{f:?}"
        );
        assert!(f.is_on("loopback"), "{f:?}");
        assert!(f.changeable.contains("rx-udp-gro-forwarding"), "{f:?}");
        assert!(matches!(
            e.link("cpclink-none0"),
            Err(HwError::NoSuchInterface(_))
        ));
    }
}
