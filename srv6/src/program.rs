//! Programming Linux SRv6: seg6 encap routes and seg6local behaviours over rtnetlink, HMAC
//! keys and the tunnel source over the SEG6 generic-netlink family, and reconciliation of
//! desired against actual state.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use crate::hmac::HmacKey;
use crate::inspect::IPPROTO_IPV6;
use cpclink_netlink::route::{self, Encap, Ipv6Route, Seg6Local};
use cpclink_netlink::seg6::{Seg6Family, HMAC_ALGO_SHA256};
use cpclink_netlink::{link, Socket};

use crate::sid::SegmentList;
use crate::srh::SrhRepr;
use crate::Error;

const RT_TABLE_MAIN: u32 = 254;

/// Route protocol cpclink marks its routes with, so reconciliation touches only its own.
pub const RTPROT_CPCLINK: u8 = 211;

/// How a seg6 encap route applies the SRH (`SEG6_IPTUN_MODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapMode {
    /// Insert the SRH into the packet (`inline`).
    Inline = 0,
    /// H.Encaps: a new outer IPv6 header with the SRH (`encap`).
    Encap = 1,
}

/// A seg6local behaviour (RFC 8986 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg6LocalAction {
    /// End: decrement Segments Left, go to the next segment (RFC 8986 §4.1).
    End,
    /// End.X: like End, then forward to a layer-3 adjacency (RFC 8986 §4.2).
    EndX {
        /// Next hop.
        nh6: Ipv6Addr,
    },
    /// End.DT6: decapsulate and look the inner IPv6 packet up in a table (RFC 8986 §4.6).
    EndDt6 {
        /// Routing table.
        table: u32,
    },
    /// End.DT4: decapsulate and look the inner IPv4 packet up in a VRF's table (RFC 8986 §4.5).
    EndDt4 {
        /// The VRF's table.
        vrf_table: u32,
    },
}

/// What a route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Steer matching packets along a segment list (`encap seg6`); the SRH bytes are the
    /// template the kernel copies, HMAC field zero (the kernel fills it).
    Seg6Encap {
        /// Mode.
        mode: EncapMode,
        /// SRH template.
        srh: Vec<u8>,
    },
    /// Process packets addressed to a local SID (`encap seg6local`).
    Seg6Local(Seg6LocalAction),
    /// Drop matching packets (`unreachable`): a guard behind a steering route, so what it
    /// steers never falls through to a plain route while the steering route is gone.
    Unreachable,
}

/// An IPv6 route cpclink owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seg6Route {
    /// Destination prefix.
    pub dst: Ipv6Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Table (254 = main).
    pub table: u32,
    /// Output interface index (0 for none).
    pub oif: u32,
    /// The metric: the lowest wins among routes to the same prefix.
    pub metric: u32,
    /// Behaviour.
    pub action: RouteAction,
}

/// The metric of steering and SID routes (the kernel's default for IPv6).
pub const METRIC_STEER: u32 = 1024;

/// The metric of guard routes: behind the steering route, ahead of nothing it replaces.
pub const METRIC_GUARD: u32 = 4096;

impl Seg6Route {
    /// A route that steers `dst/prefix_len` along `list` (H.Encaps), signed with HMAC key
    /// `hmac_key_id` by the kernel when given. This is the data-plane hook: the appliance
    /// installs one for each peer endpoint so its outer packets follow the chosen path.
    pub fn steer(
        dst: Ipv6Addr,
        prefix_len: u8,
        list: &SegmentList,
        hmac_key_id: Option<u32>,
        oif: u32,
    ) -> Result<Self, Error> {
        let mut srh = SrhRepr::from_segment_list(list, IPPROTO_IPV6);
        if let Some(id) = hmac_key_id {
            srh = srh.with_hmac(id);
        }
        Ok(Self {
            dst,
            prefix_len,
            table: RT_TABLE_MAIN,
            oif,
            metric: METRIC_STEER,
            action: RouteAction::Seg6Encap {
                mode: EncapMode::Encap,
                srh: srh.to_bytes()?,
            },
        })
    }

    /// A route for a local SID.
    pub fn local_sid(sid: Ipv6Addr, action: Seg6LocalAction, oif: u32) -> Self {
        Self {
            dst: sid,
            prefix_len: 128,
            table: RT_TABLE_MAIN,
            oif,
            metric: METRIC_STEER,
            action: RouteAction::Seg6Local(action),
        }
    }

    /// A guard for `dst/prefix_len` behind its steering route: when the steering route is
    /// gone (a link going down flushes the routes over its device), packets are dropped
    /// instead of following a plain route.
    pub fn guard(dst: Ipv6Addr, prefix_len: u8) -> Self {
        Self {
            dst,
            prefix_len,
            table: RT_TABLE_MAIN,
            oif: 0,
            metric: METRIC_GUARD,
            action: RouteAction::Unreachable,
        }
    }

    fn describe(&self) -> String {
        format!(
            "route {}/{} table {}",
            self.dst, self.prefix_len, self.table
        )
    }

    /// The kernel's form of this route, marked as cpclink's.
    fn to_kernel(&self) -> Ipv6Route {
        let encap = match &self.action {
            RouteAction::Unreachable => None,
            RouteAction::Seg6Encap { mode, srh } => Some(Encap::Seg6 {
                mode: *mode as i32,
                srh: srh.clone(),
            }),
            RouteAction::Seg6Local(a) => Some(Encap::Seg6Local(match *a {
                Seg6LocalAction::End => Seg6Local {
                    action: 1,
                    ..Seg6Local::default()
                },
                Seg6LocalAction::EndX { nh6 } => Seg6Local {
                    action: 2,
                    nh6: Some(nh6),
                    ..Seg6Local::default()
                },
                Seg6LocalAction::EndDt6 { table } => Seg6Local {
                    action: 7,
                    table: Some(table),
                    ..Seg6Local::default()
                },
                Seg6LocalAction::EndDt4 { vrf_table } => Seg6Local {
                    action: 8,
                    vrf_table: Some(vrf_table),
                    ..Seg6Local::default()
                },
            })),
        };
        Ipv6Route {
            dst: self.dst,
            prefix_len: self.prefix_len,
            table: self.table,
            oif: self.oif,
            protocol: RTPROT_CPCLINK,
            encap,
            metric: self.metric,
            unreachable: matches!(self.action, RouteAction::Unreachable),
        }
    }

    /// The route a kernel route stands for; None for routes that are not seg6/seg6local
    /// or use behaviours this crate does not program.
    fn from_kernel(r: Ipv6Route) -> Option<Self> {
        if r.unreachable {
            return Some(Self {
                dst: r.dst,
                prefix_len: r.prefix_len,
                table: r.table,
                oif: 0,
                metric: r.metric,
                action: RouteAction::Unreachable,
            });
        }
        let action = match r.encap? {
            Encap::Seg6 { mode, srh } => RouteAction::Seg6Encap {
                mode: match mode {
                    0 => EncapMode::Inline,
                    1 => EncapMode::Encap,
                    _ => return None,
                },
                srh,
            },
            Encap::Seg6Local(l) => RouteAction::Seg6Local(match l.action {
                1 => Seg6LocalAction::End,
                2 => Seg6LocalAction::EndX { nh6: l.nh6? },
                7 => Seg6LocalAction::EndDt6 { table: l.table? },
                8 => Seg6LocalAction::EndDt4 {
                    vrf_table: l.vrf_table?,
                },
                _ => return None,
            }),
        };
        Some(Self {
            dst: r.dst,
            prefix_len: r.prefix_len,
            table: r.table,
            oif: r.oif,
            metric: r.metric,
            action,
        })
    }
}

/// What [`Programmer::reconcile_routes`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Routes added.
    pub added: usize,
    /// Routes replaced because they differed.
    pub replaced: usize,
    /// Routes of cpclink's that are no longer wanted, removed.
    pub removed: usize,
    /// Routes already as desired.
    pub unchanged: usize,
}

/// Programs the kernel of the network namespace it was created in.
#[derive(Debug)]
pub struct Programmer {
    route: Socket,
    seg6: Seg6Family,
}

impl Programmer {
    /// Opens rtnetlink and generic netlink in the calling thread's namespace and resolves
    /// the SEG6 family (absent when the kernel lacks IPv6 segment routing).
    pub fn new() -> Result<Self, Error> {
        Ok(Self {
            route: Socket::route()?,
            seg6: Seg6Family::open()?,
        })
    }

    /// Index of an interface by name.
    pub fn link_index(&mut self, name: &str) -> Result<u32, Error> {
        link::by_name(&mut self.route, name)
            .map(|l| l.index)
            .map_err(|e| {
                if e.is_no_such_device() {
                    Error::NoSuchInterface(name.into())
                } else {
                    e.into()
                }
            })
    }

    /// Adds a route, failing if one exists for the same prefix.
    pub fn add_route(&mut self, r: &Seg6Route) -> Result<(), Error> {
        let op = format!("add {}", r.describe());
        Ok(route::add(&mut self.route, &r.to_kernel(), &op)?)
    }

    /// Adds or replaces a route.
    pub fn replace_route(&mut self, r: &Seg6Route) -> Result<(), Error> {
        let op = format!("replace {}", r.describe());
        Ok(route::replace(&mut self.route, &r.to_kernel(), &op)?)
    }

    /// Deletes a route of cpclink's.
    pub fn delete_route(&mut self, r: &Seg6Route) -> Result<(), Error> {
        let op = format!("delete {}", r.describe());
        Ok(route::delete(&mut self.route, &r.to_kernel(), &op)?)
    }

    /// The seg6 and seg6local routes cpclink owns, as the kernel reports them.
    pub fn routes(&mut self) -> Result<Vec<Seg6Route>, Error> {
        Ok(route::dump_ipv6(&mut self.route)?
            .into_iter()
            .filter(|r| r.protocol == RTPROT_CPCLINK)
            .filter_map(Seg6Route::from_kernel)
            .collect())
    }

    /// Makes cpclink's routes equal to `desired`: adds what is missing, replaces what
    /// differs, removes what is no longer wanted. A second call with the same input changes
    /// nothing.
    pub fn reconcile_routes(&mut self, desired: &[Seg6Route]) -> Result<ReconcileReport, Error> {
        // A prefix may hold a steering route and its guard: the metric tells them apart.
        let key = |r: &Seg6Route| (r.table, r.dst, r.prefix_len, r.metric);
        let actual: BTreeMap<_, Seg6Route> =
            self.routes()?.into_iter().map(|r| (key(&r), r)).collect();
        let mut report = ReconcileReport::default();
        for r in desired {
            match actual.get(&key(r)) {
                Some(a) if a == r => report.unchanged += 1,
                Some(_) => {
                    self.replace_route(r)?;
                    report.replaced += 1;
                }
                None => {
                    self.replace_route(r)?;
                    report.added += 1;
                }
            }
        }
        for (k, a) in &actual {
            if !desired.iter().any(|r| key(r) == *k) {
                self.delete_route(a)?;
                report.removed += 1;
            }
        }
        Ok(report)
    }

    /// Installs (or replaces) an HMAC key, HMAC-SHA256 (`ip sr hmac set`).
    pub fn set_hmac_key(&mut self, key: &HmacKey) -> Result<(), Error> {
        Ok(self
            .seg6
            .set_hmac_key(key.key_id, key.secret(), HMAC_ALGO_SHA256)?)
    }

    /// Removes an HMAC key.
    pub fn delete_hmac_key(&mut self, key_id: u32) -> Result<(), Error> {
        Ok(self.seg6.delete_hmac_key(key_id)?)
    }

    /// The HMAC keys the kernel holds: (key id, secret, algorithm id).
    pub fn hmac_keys(&mut self) -> Result<Vec<(u32, Vec<u8>, u8)>, Error> {
        Ok(self
            .seg6
            .hmac_keys()?
            .into_iter()
            .map(|k| (k.key_id, k.secret, k.algorithm))
            .collect())
    }

    /// Makes the kernel's HMAC keys those given: sets missing or different ones; removes others.
    pub fn reconcile_hmac_keys(&mut self, desired: &[HmacKey]) -> Result<ReconcileReport, Error> {
        let actual = self.hmac_keys()?;
        let mut report = ReconcileReport::default();
        for k in desired {
            match actual.iter().find(|(id, _, _)| *id == k.key_id) {
                Some((_, s, alg)) if s == k.secret() && *alg == HMAC_ALGO_SHA256 => {
                    report.unchanged += 1
                }
                found => {
                    self.set_hmac_key(k)?;
                    if found.is_some() {
                        report.replaced += 1;
                    } else {
                        report.added += 1;
                    }
                }
            }
        }
        for (id, _, _) in &actual {
            if !desired.iter().any(|k| k.key_id == *id) {
                self.delete_hmac_key(*id)?;
                report.removed += 1;
            }
        }
        Ok(report)
    }

    /// Sets the source address of seg6 encapsulation (`ip sr tunsrc set`).
    pub fn set_tunnel_source(&mut self, addr: Ipv6Addr) -> Result<(), Error> {
        Ok(self.seg6.set_tunnel_source(addr)?)
    }

    /// The source address of seg6 encapsulation.
    pub fn tunnel_source(&mut self) -> Result<Ipv6Addr, Error> {
        Ok(self.seg6.tunnel_source()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_messages_parse_back() {
        let list = SegmentList::parse("fd00:100:1::1,fd00:200:1::6").unwrap();
        let routes = [
            Seg6Route::steer("fd00:5e::1".parse().unwrap(), 128, &list, Some(7), 3).unwrap(),
            Seg6Route::local_sid("fd00:100:1::1".parse().unwrap(), Seg6LocalAction::End, 2),
            Seg6Route::local_sid(
                "fd00:100:1::2".parse().unwrap(),
                Seg6LocalAction::EndX {
                    nh6: "fd00:31::2".parse().unwrap(),
                },
                2,
            ),
            Seg6Route::local_sid(
                "fd00:200:1::6".parse().unwrap(),
                Seg6LocalAction::EndDt6 { table: 254 },
                2,
            ),
            Seg6Route::local_sid(
                "fd00:200:1::4".parse().unwrap(),
                Seg6LocalAction::EndDt4 { vrf_table: 10 },
                2,
            ),
        ];
        for r in routes {
            let kernel = Ipv6Route::parse(&r.to_kernel().to_bytes()).unwrap();
            assert_eq!(kernel.protocol, RTPROT_CPCLINK);
            assert_eq!(Seg6Route::from_kernel(kernel), Some(r));
        }
    }
}
