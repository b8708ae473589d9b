//! Inner prefixes: the IPv4/IPv6 networks behind an appliance, which the operator assigns
//! at the authority and each appliance's agent announces.
//!
//! The authority lists in the directory only what an appliance announced *and* was
//! assigned, so no appliance can draw another centre's traffic by announcing its prefix.
//! Assignments never overlap between appliances, which makes every accepted prefix
//! routable to exactly one appliance.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 or IPv6 network in CIDR form with its host bits clear, e.g. `10.1.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InnerPrefix {
    addr: IpAddr,
    len: u8,
}

impl InnerPrefix {
    /// The prefix `addr/len`; refused when `len` is too long or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("{addr}/{len}: length above {max}"));
        }
        let p = Self { addr, len };
        if p.masked(addr) != bits(addr) {
            return Err(format!(
                "{addr}/{len} has host bits set (the network is {}/{len})",
                from_bits(addr, p.masked(addr))
            ));
        }
        Ok(p)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// `addr`'s bits with everything past this prefix's length cleared.
    fn masked(&self, addr: IpAddr) -> u128 {
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let host = u32::from(width - self.len);
        bits(addr)
            .checked_shr(host)
            .unwrap_or(0)
            .checked_shl(host)
            .unwrap_or(0)
    }

    /// Whether `other` lies wholly inside this prefix (same family, no shorter).
    pub fn covers(&self, other: &InnerPrefix) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && self.len <= other.len
            && self.masked(other.addr) == bits(self.addr)
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &InnerPrefix) -> bool {
        self.covers(other) || other.covers(self)
    }
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_bits(family: IpAddr, bits: u128) -> IpAddr {
    match family {
        // A v4 prefix's bits never exceed 32 (they came from a v4 address).
        IpAddr::V4(_) => IpAddr::V4(u32::try_from(bits).unwrap_or(0).into()),
        IpAddr::V6(_) => IpAddr::V6(bits.into()),
    }
}

impl fmt::Display for InnerPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for InnerPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a prefix: write it as ADDRESS/LENGTH"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 or IPv6 address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{s:?}: {len:?} is not a prefix length"))?;
        Self::new(addr, len)
    }
}

impl TryFrom<String> for InnerPrefix {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<InnerPrefix> for String {
    fn from(p: InnerPrefix) -> Self {
        p.to_string()
    }
}

/// The operator's assignments: which inner prefixes each appliance may announce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignments {
    by_appliance: BTreeMap<String, Vec<InnerPrefix>>,
}

impl Assignments {
    /// Assignments as loaded from the store.
    pub fn new(by_appliance: BTreeMap<String, Vec<InnerPrefix>>) -> Self {
        Self { by_appliance }
    }

    /// What `appliance` was assigned.
    pub fn of(&self, appliance: &str) -> &[InnerPrefix] {
        self.by_appliance.get(appliance).map_or(&[], Vec::as_slice)
    }

    /// Every appliance with an assignment, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<InnerPrefix>)> {
        self.by_appliance.iter()
    }

    /// The appliance other than `appliance` holding a prefix that overlaps `p`, and that prefix.
    pub fn conflict(&self, appliance: &str, p: &InnerPrefix) -> Option<(&str, InnerPrefix)> {
        self.by_appliance
            .iter()
            .filter(|(id, _)| *id != appliance)
            .find_map(|(id, held)| {
                held.iter()
                    .find(|q| q.overlaps(p))
                    .map(|q| (id.as_str(), *q))
            })
    }

    /// `appliance`'s assignment with `add` added: refused, naming both appliances, when
    /// any of them overlaps another appliance's. Nothing changes here; the caller stores
    /// the result and then calls [`Assignments::set`].
    pub fn with_added(
        &self,
        appliance: &str,
        add: &[InnerPrefix],
    ) -> Result<Vec<InnerPrefix>, String> {
        for p in add {
            if let Some((other, q)) = self.conflict(appliance, p) {
                return Err(format!(
                    "cannot assign {p} to {appliance}: it overlaps {q}, assigned to {other}"
                ));
            }
        }
        let mut out = self.of(appliance).to_vec();
        out.extend_from_slice(add);
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// `appliance`'s assignment without `remove` (each must be assigned exactly as written).
    pub fn with_removed(
        &self,
        appliance: &str,
        remove: &[InnerPrefix],
    ) -> Result<Vec<InnerPrefix>, String> {
        let held = self.of(appliance);
        if let Some(p) = remove.iter().find(|p| !held.contains(p)) {
            return Err(format!(
                "{p} is not assigned to {appliance} (assigned: {})",
                list(held)
            ));
        }
        Ok(held
            .iter()
            .filter(|p| !remove.contains(p))
            .copied()
            .collect())
    }

    /// Replaces `appliance`'s assignment.
    pub fn set(&mut self, appliance: &str, prefixes: Vec<InnerPrefix>) {
        if prefixes.is_empty() {
            self.by_appliance.remove(appliance);
        } else {
            self.by_appliance.insert(appliance.to_owned(), prefixes);
        }
    }

    /// Splits what `appliance` announced into the prefixes its assignment covers and the
    /// refused ones, each with the reason to give the appliance and to audit.
    pub fn judge(
        &self,
        appliance: &str,
        announced: &[InnerPrefix],
    ) -> (Vec<InnerPrefix>, Vec<Refusal>) {
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for p in announced {
            if self.of(appliance).iter().any(|a| a.covers(p)) {
                accepted.push(*p);
                continue;
            }
            let reason = match self.conflict(appliance, p) {
                Some((other, q)) => {
                    format!("not assigned to {appliance} (it overlaps {q}, assigned to {other})")
                }
                None => format!("not assigned to {appliance}"),
            };
            refused.push(Refusal { prefix: *p, reason });
        }
        accepted.sort();
        accepted.dedup();
        (accepted, refused)
    }
}

/// An announced prefix the authority refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The prefix announced.
    pub prefix: InnerPrefix,
    /// Why it is not in the directory.
    pub reason: String,
}

/// `p1, p2, …`, or `none`.
pub fn list(prefixes: &[InnerPrefix]) -> String {
    if prefixes.is_empty() {
        return "none".into();
    }
    prefixes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> InnerPrefix {
        s.parse().unwrap()
    }

    #[test]
    fn parses_both_families_and_refuses_host_bits() {
        assert_eq!(p("10.1.0.0/16").to_string(), "10.1.0.0/16");
        assert_eq!(p("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(p("0.0.0.0/0").prefix_len(), 0);
        let e = "10.1.2.3/16".parse::<InnerPrefix>().unwrap_err();
        assert!(e.contains("host bits") && e.contains("10.1.0.0/16"), "{e}");
        assert!("10.0.0.0/33".parse::<InnerPrefix>().is_err());
        assert!("2001:db8::1/64".parse::<InnerPrefix>().is_err());
        assert!("10.0.0.0".parse::<InnerPrefix>().is_err());
        assert!("ten/8".parse::<InnerPrefix>().is_err());
        // The string form is what travels and is stored.
        let json = serde_json::to_string(&p("10.1.0.0/16")).unwrap();
        assert_eq!(json, "\"10.1.0.0/16\"");
        assert!(serde_json::from_str::<InnerPrefix>("\"10.1.0.1/16\"").is_err());
    }

    #[test]
    fn cover_and_overlap() {
        assert!(p("10.0.0.0/8").covers(&p("10.1.0.0/16")));
        assert!(!p("10.1.0.0/16").covers(&p("10.0.0.0/8")));
        assert!(p("10.1.0.0/16").overlaps(&p("10.0.0.0/8")));
        assert!(!p("10.1.0.0/16").overlaps(&p("10.2.0.0/16")));
        assert!(p("0.0.0.0/0").covers(&p("192.168.1.0/24")));
        assert!(!p("0.0.0.0/0").covers(&p("::/0")));
        assert!(p("2001:db8::/32").covers(&p("2001:db8:1::/48")));
        assert!(!p("2001:db8::/32").overlaps(&p("2001:db9::/32")));
    }

    #[test]
    fn assignments_refuse_overlap_and_judge_announcements() {
        let mut a = Assignments::default();
        let dc1 = a.with_added("dc1-edge", &[p("10.1.0.0/16")]).unwrap();
        a.set("dc1-edge", dc1);
        let e = a.with_added("dc2-edge", &[p("10.1.2.0/24")]).unwrap_err();
        assert!(e.contains("dc1-edge") && e.contains("dc2-edge"), "{e}");
        // The same appliance may widen or repeat its own.
        a.set(
            "dc1-edge",
            a.with_added("dc1-edge", &[p("10.1.0.0/16")]).unwrap(),
        );
        assert_eq!(a.of("dc1-edge"), [p("10.1.0.0/16")]);
        a.set(
            "dc2-edge",
            a.with_added("dc2-edge", &[p("10.2.0.0/16")]).unwrap(),
        );

        let (ok, refused) = a.judge(
            "dc2-edge",
            &[p("10.2.5.0/24"), p("10.1.0.0/16"), p("10.9.0.0/16")],
        );
        assert_eq!(ok, [p("10.2.5.0/24")]);
        assert_eq!(refused.len(), 2);
        assert!(refused[0].reason.contains("assigned to dc1-edge"));
        assert_eq!(refused[1].reason, "not assigned to dc2-edge");

        assert!(a.with_removed("dc2-edge", &[p("10.3.0.0/16")]).is_err());
        a.set(
            "dc2-edge",
            a.with_removed("dc2-edge", &[p("10.2.0.0/16")]).unwrap(),
        );
        assert!(a.of("dc2-edge").is_empty());
        assert_eq!(a.iter().count(), 1);
    }
}
