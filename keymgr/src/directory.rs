//! The directory of appliances and the policy of which may talk, with versioned deltas.
//!
//! The authority holds the master copy; every appliance keeps a live copy, brought up to
//! date by a snapshot when it connects and by deltas afterwards. Each delta carries the
//! version it produces, so a copy that sees a gap knows to ask for a fresh snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One appliance as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplianceEntry {
    /// The appliance id (the certificate's common name).
    pub id: String,
    /// The centre it stands in.
    pub centre: String,
    /// The tenant it serves.
    pub tenant: String,
    /// Its key agent's control address (QUIC), `host:port`; empty until it first connects.
    pub control: String,
    /// Its data-plane endpoints, `host:port`.
    pub endpoints: Vec<String>,
    /// What it can do (suites, offloads), as the appliance reports.
    pub capabilities: Vec<String>,
    /// The serial of its certificate, hex.
    pub cert_serial: String,
    /// Whether it was revoked; revoked entries stay listed so peers keep refusing them.
    pub revoked: bool,
}

/// Which appliances a rule side matches; a field left out matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    /// Exactly this appliance.
    pub appliance: Option<String>,
    /// Appliances in this centre.
    pub centre: Option<String>,
    /// Appliances of this tenant.
    pub tenant: Option<String>,
}

impl Selector {
    fn matches(&self, e: &ApplianceEntry) -> bool {
        self.appliance.as_ref().is_none_or(|a| *a == e.id)
            && self.centre.as_ref().is_none_or(|c| *c == e.centre)
            && self.tenant.as_ref().is_none_or(|t| *t == e.tenant)
    }
}

/// Lets the appliances matched by `a` and by `b` talk, in both directions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// One side.
    #[serde(default)]
    pub a: Selector,
    /// The other side.
    #[serde(default)]
    pub b: Selector,
    /// Further require both sides to serve the same tenant.
    #[serde(default)]
    pub same_tenant: bool,
}

impl Rule {
    /// The default policy: appliances of the same tenant may talk.
    pub fn same_tenant() -> Self {
        Self {
            same_tenant: true,
            ..Self::default()
        }
    }

    fn allows(&self, x: &ApplianceEntry, y: &ApplianceEntry) -> bool {
        (!self.same_tenant || x.tenant == y.tenant)
            && ((self.a.matches(x) && self.b.matches(y))
                || (self.a.matches(y) && self.b.matches(x)))
    }
}

/// One change to the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// An appliance was added or its entry changed.
    Upsert(ApplianceEntry),
    /// An appliance was revoked.
    Revoke(String),
    /// The policy was replaced.
    Rules(Vec<Rule>),
}

/// A change and the directory version it produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The version after this change.
    pub version: u64,
    /// The change.
    pub change: Change,
}

/// A copy of the directory and policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// Bumped by every change.
    pub version: u64,
    /// Appliances by id.
    pub appliances: BTreeMap<String, ApplianceEntry>,
    /// The policy.
    pub rules: Vec<Rule>,
}

impl Directory {
    /// Applies `delta` if it is newer than this copy; returns whether it was applied.
    ///
    /// Deltas arrive in order on one stream, but the authority leaves out changes to
    /// appliances a subscriber may not talk to, so versions may skip.
    pub fn apply(&mut self, delta: &Delta) -> bool {
        if delta.version <= self.version {
            return false;
        }
        self.apply_change(&delta.change);
        self.version = delta.version;
        true
    }

    /// Applies a change without version bookkeeping.
    pub fn apply_change(&mut self, change: &Change) {
        match change {
            Change::Upsert(e) => {
                self.appliances.insert(e.id.clone(), e.clone());
            }
            Change::Revoke(id) => {
                if let Some(e) = self.appliances.get_mut(id) {
                    e.revoked = true;
                }
            }
            Change::Rules(rules) => self.rules.clone_from(rules),
        }
    }

    /// Whether `id` is listed and not revoked.
    pub fn is_active(&self, id: &str) -> bool {
        self.appliances.get(id).is_some_and(|e| !e.revoked)
    }

    /// Whether policy lets `x` and `y` talk: both listed, neither revoked, and a rule
    /// matches the pair.
    pub fn allows(&self, x: &str, y: &str) -> bool {
        let (Some(ex), Some(ey)) = (self.appliances.get(x), self.appliances.get(y)) else {
            return false;
        };
        x != y && !ex.revoked && !ey.revoked && self.rules.iter().any(|r| r.allows(ex, ey))
    }
}

impl Directory {
    /// The part of the directory `id` needs: itself and every appliance it may talk to.
    pub fn view_for(&self, id: &str) -> Directory {
        // One pass with `id`'s entry looked up once: this runs for every subscriber after a
        // policy change, so it is the authority's O(appliances²) step.
        let me = self.appliances.get(id);
        let visible = |e: &ApplianceEntry| match me {
            Some(me) if e.id == me.id => true,
            Some(me) if !me.revoked && !e.revoked => self.rules.iter().any(|r| r.allows(me, e)),
            _ => false,
        };
        Directory {
            version: self.version,
            appliances: self
                .appliances
                .iter()
                .filter(|(_, e)| visible(e))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            rules: self.rules.clone(),
        }
    }

    /// Whether `change` (already applied to this master copy) concerns `id`'s view.
    /// Revocations and policy go to everyone.
    pub fn relevant_to(&self, id: &str, change: &Change) -> bool {
        match change {
            Change::Upsert(e) => e.id == id || self.allows(id, &e.id),
            Change::Revoke(_) | Change::Rules(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, centre: &str, tenant: &str) -> ApplianceEntry {
        ApplianceEntry {
            id: id.into(),
            centre: centre.into(),
            tenant: tenant.into(),
            control: String::new(),
            endpoints: vec![],
            capabilities: vec![],
            cert_serial: String::new(),
            revoked: false,
        }
    }

    fn dir(rules: Vec<Rule>) -> Directory {
        let mut d = Directory {
            rules,
            ..Directory::default()
        };
        for e in [
            entry("a", "dc1", "acme"),
            entry("b", "dc2", "acme"),
            entry("c", "dc2", "other"),
        ] {
            d.apply_change(&Change::Upsert(e));
        }
        d
    }

    #[test]
    fn same_tenant_policy_and_revocation() {
        let mut d = dir(vec![Rule::same_tenant()]);
        assert!(d.allows("a", "b") && d.allows("b", "a"));
        assert!(!d.allows("a", "c"));
        assert!(!d.allows("a", "a"));
        assert!(!d.allows("a", "nobody"));
        d.apply_change(&Change::Revoke("b".into()));
        assert!(!d.allows("a", "b") && !d.is_active("b"));
    }

    #[test]
    fn selector_rules_match_either_direction() {
        let rule = Rule {
            a: Selector {
                centre: Some("dc1".into()),
                ..Selector::default()
            },
            b: Selector {
                appliance: Some("c".into()),
                ..Selector::default()
            },
            same_tenant: false,
        };
        let d = dir(vec![rule]);
        assert!(d.allows("a", "c") && d.allows("c", "a"));
        assert!(!d.allows("a", "b"));
        assert!(!dir(vec![]).allows("a", "b"));
    }

    #[test]
    fn stale_deltas_are_ignored() {
        let mut d = Directory::default();
        let delta = |version, id: &str| Delta {
            version,
            change: Change::Upsert(entry(id, "dc1", "t")),
        };
        assert!(d.apply(&delta(1, "a")));
        assert!(d.apply(&delta(3, "c")));
        assert_eq!(d.version, 3);
        assert!(!d.apply(&delta(2, "stale")));
        assert!(!d.appliances.contains_key("stale"));
        assert_eq!(d.appliances.len(), 2);
    }

    #[test]
    fn view_keeps_self_and_allowed_peers_only() {
        let d = dir(vec![Rule::same_tenant()]);
        let v = d.view_for("a");
        assert_eq!(v.appliances.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(d.relevant_to("a", &Change::Upsert(entry("b", "x", "acme"))));
        assert!(!d.relevant_to("a", &Change::Upsert(entry("c", "x", "other"))));
        assert!(d.relevant_to("a", &Change::Revoke("c".into())));
    }
}
