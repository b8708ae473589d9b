//! IPv6 routes over rtnetlink with seg6 and seg6local encapsulation, which
//! `netlink-packet-route` does not model byte for byte (it re-encodes the SRH, losing its
//! TLVs, and has no seg6local). Constants are from include/uapi/linux/{rtnetlink,
//! lwtunnel,seg6_iptunnel,seg6_local}.h.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use crate::attr::{self, AttrWriter};
use crate::{Error, Socket, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const AF_INET6: u8 = 10;
const RTN_UNICAST: u8 = 1;
const RTN_UNREACHABLE: u8 = 7;
const RTA_PRIORITY: u16 = 6;
/// `rtm_table` holds one byte; larger tables say `RT_TABLE_COMPAT` there and the real id in
/// `RTA_TABLE`.
const RT_TABLE_COMPAT: u8 = 252;
const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTA_ENCAP_TYPE: u16 = 21;
const RTA_ENCAP: u16 = 22;
const LWTUNNEL_ENCAP_SEG6: u16 = 5;
const LWTUNNEL_ENCAP_SEG6_LOCAL: u16 = 7;
const SEG6_IPTUNNEL_SRH: u16 = 1;
const SEG6_LOCAL_ACTION: u16 = 1;
const SEG6_LOCAL_TABLE: u16 = 3;
const SEG6_LOCAL_NH6: u16 = 5;
const SEG6_LOCAL_VRFTABLE: u16 = 9;

/// How a route encapsulates, as the kernel stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encap {
    /// `encap seg6`: `struct seg6_iptunnel_encap { int mode; struct ipv6_sr_hdr srh[]; }`.
    Seg6 {
        /// `SEG6_IPTUN_MODE_*` (0 inline, 1 encap).
        mode: i32,
        /// The SRH template, copied into packets as is.
        srh: Vec<u8>,
    },
    /// `encap seg6local`: a behaviour and its parameters.
    Seg6Local(Seg6Local),
}

/// seg6local attributes: `SEG6_LOCAL_ACTION_*` and the parameters this project uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seg6Local {
    /// `SEG6_LOCAL_ACTION_*` (1 End, 2 End.X, 7 End.DT6, 8 End.DT4).
    pub action: u32,
    /// `SEG6_LOCAL_TABLE` (End.DT6).
    pub table: Option<u32>,
    /// `SEG6_LOCAL_NH6` (End.X).
    pub nh6: Option<Ipv6Addr>,
    /// `SEG6_LOCAL_VRFTABLE` (End.DT4).
    pub vrf_table: Option<u32>,
}

/// A unicast IPv6 route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Route {
    /// Destination prefix.
    pub dst: Ipv6Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Routing table (254 = main).
    pub table: u32,
    /// Output interface index.
    pub oif: u32,
    /// `rtm_protocol`: who installed the route.
    pub protocol: u8,
    /// Lightweight-tunnel encapsulation, if any this crate decodes.
    pub encap: Option<Encap>,
    /// The metric (`RTA_PRIORITY`); 0 leaves it to the kernel (1024 for IPv6).
    pub metric: u32,
    /// An `unreachable` route: matching packets are dropped with an ICMP error.
    pub unreachable: bool,
}

impl Ipv6Route {
    fn rtmsg(&self) -> [u8; RTMSG_LEN] {
        let table = u8::try_from(self.table).unwrap_or(RT_TABLE_COMPAT);
        let mut h = [0u8; RTMSG_LEN];
        h[0] = AF_INET6;
        h[1] = self.prefix_len;
        h[4] = table;
        h[5] = self.protocol;
        h[7] = if self.unreachable {
            RTN_UNREACHABLE
        } else {
            RTN_UNICAST
        };
        h
    }

    /// The `RTM_NEWROUTE` body: rtmsg, destination, table, interface, encapsulation.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = AttrWriter::new(&self.rtmsg());
        w.attr(RTA_DST, &self.dst.octets());
        w.u32(RTA_TABLE, self.table);
        if self.oif != 0 {
            w.u32(RTA_OIF, self.oif);
        }
        if self.metric != 0 {
            w.u32(RTA_PRIORITY, self.metric);
        }
        match &self.encap {
            None => {}
            Some(Encap::Seg6 { mode, srh }) => {
                w.u16(RTA_ENCAP_TYPE, LWTUNNEL_ENCAP_SEG6);
                let mut v = mode.to_ne_bytes().to_vec();
                v.extend_from_slice(srh);
                w.begin(RTA_ENCAP).attr(SEG6_IPTUNNEL_SRH, &v).end();
            }
            Some(Encap::Seg6Local(l)) => {
                w.u16(RTA_ENCAP_TYPE, LWTUNNEL_ENCAP_SEG6_LOCAL);
                w.begin(RTA_ENCAP).u32(SEG6_LOCAL_ACTION, l.action);
                if let Some(t) = l.table {
                    w.u32(SEG6_LOCAL_TABLE, t);
                }
                if let Some(nh6) = l.nh6 {
                    w.attr(SEG6_LOCAL_NH6, &nh6.octets());
                }
                if let Some(t) = l.vrf_table {
                    w.u32(SEG6_LOCAL_VRFTABLE, t);
                }
                w.end();
            }
        }
        w.finish()
    }

    /// The `RTM_DELROUTE` body: what identifies the route.
    fn to_delete_bytes(&self) -> Vec<u8> {
        let mut w = AttrWriter::new(&self.rtmsg());
        w.attr(RTA_DST, &self.dst.octets());
        w.u32(RTA_TABLE, self.table);
        if self.metric != 0 {
            w.u32(RTA_PRIORITY, self.metric);
        }
        w.finish()
    }

    /// Parses an `RTM_NEWROUTE` payload; `None` for non-IPv6 or malformed routes. Routes
    /// with an encapsulation other than seg6/seg6local come back with `encap: None`.
    pub fn parse(p: &[u8]) -> Option<Self> {
        let hdr = p.get(..RTMSG_LEN)?;
        if hdr[0] != AF_INET6 {
            return None;
        }
        let mut r = Self {
            dst: Ipv6Addr::UNSPECIFIED,
            prefix_len: hdr[1],
            table: u32::from(hdr[4]),
            oif: 0,
            protocol: hdr[5],
            encap: None,
            metric: 0,
            unreachable: hdr[7] == RTN_UNREACHABLE,
        };
        let (mut encap_type, mut encap) = (0u16, &[][..]);
        for (kind, v) in attr::attrs(&p[RTMSG_LEN..]) {
            match kind {
                RTA_DST => r.dst = attr::as_ipv6(v)?,
                RTA_TABLE => r.table = attr::as_u32(v)?,
                RTA_OIF => r.oif = attr::as_u32(v)?,
                RTA_PRIORITY => r.metric = attr::as_u32(v)?,
                RTA_ENCAP_TYPE => encap_type = attr::as_u16(v)?,
                RTA_ENCAP => encap = v,
                _ => {}
            }
        }
        r.encap = match encap_type {
            LWTUNNEL_ENCAP_SEG6 => {
                let v = attr::find(encap, SEG6_IPTUNNEL_SRH)?;
                Some(Encap::Seg6 {
                    mode: i32::from_ne_bytes(v.get(..4)?.try_into().ok()?),
                    srh: v[4..].to_vec(),
                })
            }
            LWTUNNEL_ENCAP_SEG6_LOCAL => {
                let a: BTreeMap<u16, &[u8]> = attr::attrs(encap).collect();
                Some(Encap::Seg6Local(Seg6Local {
                    action: attr::as_u32(a.get(&SEG6_LOCAL_ACTION)?)?,
                    table: a.get(&SEG6_LOCAL_TABLE).and_then(|v| attr::as_u32(v)),
                    nh6: a.get(&SEG6_LOCAL_NH6).and_then(|v| attr::as_ipv6(v)),
                    vrf_table: a.get(&SEG6_LOCAL_VRFTABLE).and_then(|v| attr::as_u32(v)),
                }))
            }
            _ => None,
        };
        Some(r)
    }
}

/// Adds `route`, failing if the kernel has one for the same prefix.
pub fn add(socket: &mut Socket, route: &Ipv6Route, op: &str) -> Result<(), Error> {
    socket
        .request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            &route.to_bytes(),
            op,
        )
        .map(drop)
}

/// Adds `route` or replaces the one for the same prefix.
pub fn replace(socket: &mut Socket, route: &Ipv6Route, op: &str) -> Result<(), Error> {
    socket
        .request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_REPLACE,
            &route.to_bytes(),
            op,
        )
        .map(drop)
}

/// Deletes the route for `route`'s prefix and table.
pub fn delete(socket: &mut Socket, route: &Ipv6Route, op: &str) -> Result<(), Error> {
    socket
        .request(RTM_DELROUTE, 0, &route.to_delete_bytes(), op)
        .map(drop)
}

/// Every IPv6 route the kernel reports (all tables).
pub fn dump_ipv6(socket: &mut Socket) -> Result<Vec<Ipv6Route>, Error> {
    let mut req = [0u8; RTMSG_LEN];
    req[0] = AF_INET6;
    let replies = socket.request(RTM_GETROUTE, NLM_F_DUMP, &req, "dump IPv6 routes")?;
    Ok(replies
        .iter()
        .filter(|r| r.msg_type == RTM_NEWROUTE)
        .filter_map(|r| Ipv6Route::parse(&r.payload))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seg6_and_seg6local_routes_parse_back_byte_for_byte() {
        let base = Ipv6Route {
            dst: "fd00:5e::1".parse().unwrap(),
            prefix_len: 128,
            table: 254,
            oif: 3,
            protocol: 211,
            encap: None,
            metric: 1024,
            unreachable: false,
        };
        let cases = [
            Encap::Seg6 {
                mode: 1,
                // An SRH with an HMAC TLV: the bytes must survive untouched.
                srh: (0u8..56).collect(),
            },
            Encap::Seg6Local(Seg6Local {
                action: 2,
                nh6: Some("fd00:31::2".parse().unwrap()),
                ..Seg6Local::default()
            }),
            Encap::Seg6Local(Seg6Local {
                action: 8,
                vrf_table: Some(10),
                ..Seg6Local::default()
            }),
        ];
        for encap in cases {
            let r = Ipv6Route {
                encap: Some(encap),
                ..base.clone()
            };
            assert_eq!(Ipv6Route::parse(&r.to_bytes()), Some(r));
        }
        let guard = Ipv6Route {
            oif: 0,
            metric: 4096,
            unreachable: true,
            ..base.clone()
        };
        assert_eq!(Ipv6Route::parse(&guard.to_bytes()), Some(guard));
        let big = Ipv6Route {
            table: 1000,
            ..base
        };
        let bytes = big.to_bytes();
        assert_eq!(bytes[4], RT_TABLE_COMPAT);
        assert_eq!(Ipv6Route::parse(&bytes).unwrap().table, 1000);
    }
}
