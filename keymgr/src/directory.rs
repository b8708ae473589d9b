//! The directory of appliances and the policy of which may talk, with versioned deltas.
//!
//! The authority holds the master copy; every appliance keeps a live copy, brought up to
//! date by a snapshot when it connects and by deltas afterwards. Each delta carries the
//! version it produces, so a copy that sees a gap knows to ask for a fresh snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::prefix::InnerPrefix;

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
    /// The inner prefixes its centre serves: what it announced that its assignment covers.
    /// Entries stored before prefixes existed read as none.
    #[serde(default)]
    pub prefixes: Vec<InnerPrefix>,
    /// Whether its agent has connected with its certificate since enrolling: until then
    /// nobody answers SA requests for it, so it is no SA target.
    #[serde(default)]
    pub joined: bool,
}

/// Which appliances a rule side matches; a field left out matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
    /// A policy change as one subscriber sees it: the new rules and the entries it may
    /// now see that it may not have had. Entries it may no longer see it drops itself
    /// ([`Directory::retain_view`]).
    Policy {
        /// The new policy.
        rules: Vec<Rule>,
        /// Entries newly visible to the subscriber.
        allowed: Vec<ApplianceEntry>,
    },
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

    /// Applies `delta` to `me`'s copy, as [`apply`](Self::apply), then drops what `me` may
    /// no longer see: after a policy change, and after an upsert that moves another appliance
    /// out of its view (to another tenant or centre). A snapshot would not list such an
    /// entry; kept, a later policy change could make its stale copy look allowed.
    pub fn apply_as(&mut self, me: &str, delta: &Delta) -> bool {
        let applied = self.apply(delta);
        if applied && matches!(delta.change, Change::Policy { .. } | Change::Upsert(_)) {
            self.retain_view(me);
        }
        applied
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
            Change::Policy { rules, allowed } => {
                self.rules.clone_from(rules);
                for e in allowed {
                    self.appliances.insert(e.id.clone(), e.clone());
                }
            }
        }
    }

    /// Drops the entries `id` may no longer see under the current rules (revoked entries
    /// stay, so their refusal stays explicit). A copy that does not list `id` is left alone.
    pub fn retain_view(&mut self, id: &str) {
        let Some(me) = self.appliances.get(id).cloned() else {
            return;
        };
        let rules = &self.rules;
        self.appliances.retain(|k, e| {
            k == id || e.revoked || (!me.revoked && rules.iter().any(|r| r.allows(&me, e)))
        });
    }

    /// The inner prefixes `me` may route to, each with the peer that serves it: those of
    /// every peer policy lets `me` talk to.
    pub fn routes_for(&self, me: &str) -> Vec<(InnerPrefix, &str)> {
        self.appliances
            .values()
            .filter(|e| self.allows(me, &e.id))
            .flat_map(|e| e.prefixes.iter().map(|p| (*p, e.id.as_str())))
            .collect()
    }

    /// The peers `me` may ask for SAs: policy allows the pair, neither is revoked, and the
    /// peer's agent has connected since enrolling (a token redeemed by no running agent
    /// leaves an entry nobody answers for).
    pub fn sa_targets(&self, me: &str) -> Vec<&ApplianceEntry> {
        self.appliances
            .values()
            .filter(|e| e.joined && self.allows(me, &e.id))
            .collect()
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
    /// Policy goes to everyone; a revocation to the revoked appliance and those whose rules
    /// let them talk to it.
    pub fn relevant_to(&self, id: &str, change: &Change) -> bool {
        match change {
            Change::Upsert(e) => e.id == id || self.allows(id, &e.id),
            Change::Revoke(r) => {
                r == id
                    || match (self.appliances.get(id), self.appliances.get(r)) {
                        (Some(me), Some(e)) => {
                            !me.revoked && self.rules.iter().any(|rule| rule.allows(me, e))
                        }
                        _ => false,
                    }
            }
            Change::Rules(_) | Change::Policy { .. } => true,
        }
    }
}

/// Whether every rule requires the same tenant: then only an appliance's own tenant can
/// hold its peers, and the tenant index narrows every search to that tenant.
fn tenant_bound(rules: &[Rule]) -> bool {
    rules.iter().all(|r| r.same_tenant)
}

/// Appliance ids by tenant.
type TenantIndex = HashMap<String, Vec<String>>;

fn index_tenants(dir: &Directory) -> TenantIndex {
    let mut index: TenantIndex = HashMap::new();
    for e in dir.appliances.values() {
        index
            .entry(e.tenant.clone())
            .or_default()
            .push(e.id.clone());
    }
    index
}

/// A read-only copy of the master directory, shared (behind an `Arc`) by every task that
/// builds a subscriber's snapshot, so none of them needs the authority's lock.
#[derive(Debug, Default)]
struct Base {
    dir: Directory,
    by_tenant: TenantIndex,
}

/// Who must hear of one change, and what each hears.
#[derive(Debug)]
pub enum Fanout {
    /// Every subscriber gets the same delta.
    Everyone(Arc<Delta>),
    /// Only these appliances get the delta (an upsert goes to the appliance itself and to
    /// those that may talk to it).
    Only(Arc<Delta>, Vec<String>),
    /// An appliance changed tenant or centre: those that could talk to it before or may
    /// now get the delta; the appliance itself, whose set of peers changed, gets a fresh
    /// snapshot.
    Moved {
        /// The upsert.
        delta: Arc<Delta>,
        /// Its peers before and after, not itself.
        audience: Vec<String>,
        /// The appliance that moved.
        moved: String,
    },
    /// A policy change: every subscriber gets the new rules plus the entries it may now
    /// see; the authority sends a fresh snapshot instead to one with more new entries than
    /// fit a frame, and to everyone when `everyone_resnapshots`.
    Policy {
        /// The version the change produces.
        version: u64,
        /// The new rules.
        rules: Vec<Rule>,
        /// Newly visible entries, by subscriber.
        allowed: HashMap<String, Vec<ApplianceEntry>>,
        /// The change touched so many pairs that every subscriber should resnapshot.
        everyone_resnapshots: bool,
    },
}

/// The authority's master copy of the directory.
///
/// Besides the live copy it keeps a shared read-only base and the changes made since, so
/// a subscriber's snapshot is built from `Arc`s outside the authority's lock, and each change
/// costs work in proportion to the appliances it affects rather than to every subscriber's
/// view. The base is rebuilt (one O(N) copy) after a policy change, after an appliance moves
/// tenant or centre, and after N/4 changes, so its cost per change stays constant.
#[derive(Debug, Default)]
pub struct Master {
    live: Directory,
    by_tenant: TenantIndex,
    base: Arc<Base>,
    since: Vec<Arc<Delta>>,
}

/// Most pairs a policy change may enumerate before every subscriber is simply sent a
/// snapshot (each pair checked costs about as much as one entry of a snapshot).
const POLICY_PAIR_BUDGET: usize = 1 << 22;

impl Master {
    /// A master copy holding `dir`.
    pub fn new(dir: Directory) -> Self {
        let by_tenant = index_tenants(&dir);
        let mut m = Self {
            live: dir,
            by_tenant,
            ..Self::default()
        };
        m.rebase();
        m
    }

    /// The live copy.
    pub fn live(&self) -> &Directory {
        &self.live
    }

    fn rebase(&mut self) {
        self.base = Arc::new(Base {
            dir: self.live.clone(),
            by_tenant: self.by_tenant.clone(),
        });
        self.since.clear();
    }

    /// The appliances that may talk to `e` (as listed after the change), `e` itself first.
    fn peers_of(&self, e: &ApplianceEntry) -> Vec<String> {
        let mut out = vec![e.id.clone()];
        if e.revoked {
            return out;
        }
        let allowed = |x: &ApplianceEntry| {
            x.id != e.id && !x.revoked && self.live.rules.iter().any(|r| r.allows(x, e))
        };
        if tenant_bound(&self.live.rules) {
            for id in self.by_tenant.get(&e.tenant).into_iter().flatten() {
                if self.live.appliances.get(id).is_some_and(allowed) {
                    out.push(id.clone());
                }
            }
        } else {
            out.extend(
                self.live
                    .appliances
                    .values()
                    .filter(|x| allowed(x))
                    .map(|x| x.id.clone()),
            );
        }
        out
    }

    /// For a policy change to `rules`: the entries each appliance may see under `rules` but
    /// not under the current ones. Only pairs matched by a rule that is new can have become
    /// allowed, so only those are enumerated. `None` when they are too many to enumerate.
    fn newly_allowed(&self, rules: &[Rule]) -> Option<HashMap<String, Vec<ApplianceEntry>>> {
        let old = &self.live.rules;
        let active = || self.live.appliances.values().filter(|e| !e.revoked);
        let mut out: HashMap<String, Vec<ApplianceEntry>> = HashMap::new();
        let mut budget = POLICY_PAIR_BUDGET;
        let mut seen = std::collections::HashSet::new();
        for rule in rules.iter().filter(|r| !old.contains(r)) {
            let a: Vec<&ApplianceEntry> = active().filter(|e| rule.a.matches(e)).collect();
            let mut b: HashMap<&str, Vec<&ApplianceEntry>> = HashMap::new();
            for e in active().filter(|e| rule.b.matches(e)) {
                let key = if rule.same_tenant {
                    e.tenant.as_str()
                } else {
                    ""
                };
                b.entry(key).or_default().push(e);
            }
            for x in &a {
                let key = if rule.same_tenant {
                    x.tenant.as_str()
                } else {
                    ""
                };
                for y in b.get(key).into_iter().flatten() {
                    budget = budget.checked_sub(1)?;
                    if x.id == y.id || !seen.insert((x.id.as_str(), y.id.as_str())) {
                        continue;
                    }
                    seen.insert((y.id.as_str(), x.id.as_str()));
                    if old.iter().any(|r| r.allows(x, y)) {
                        continue;
                    }
                    out.entry(x.id.clone()).or_default().push((*y).clone());
                    out.entry(y.id.clone()).or_default().push((*x).clone());
                }
            }
        }
        Some(out)
    }

    /// Applies `change` as directory version `version` and says who must hear of it.
    pub fn apply(&mut self, version: u64, change: Change) -> Fanout {
        match change {
            Change::Rules(rules) | Change::Policy { rules, .. } => {
                let allowed = self.newly_allowed(&rules);
                self.live.apply(&Delta {
                    version,
                    change: Change::Rules(rules.clone()),
                });
                self.rebase();
                Fanout::Policy {
                    version,
                    rules,
                    everyone_resnapshots: allowed.is_none(),
                    allowed: allowed.unwrap_or_default(),
                }
            }
            Change::Revoke(id) => {
                // Only the appliance itself and those that may talk to it hold its entry:
                // they must hear at once. Anyone else's copy does not list it, and a later
                // delta's version covers this one.
                let audience = match self.live.appliances.get(&id) {
                    Some(e) => self.peers_of(e),
                    None => vec![id.clone()],
                };
                let delta = Arc::new(Delta {
                    version,
                    change: Change::Revoke(id),
                });
                self.live.apply(&delta);
                self.logged(delta.clone());
                Fanout::Only(delta, audience)
            }
            Change::Upsert(e) => {
                let old = self.live.appliances.get(&e.id).cloned();
                let moved = old
                    .as_ref()
                    .is_some_and(|o| o.tenant != e.tenant || o.centre != e.centre);
                // Those that could talk to it before hear of the move too: their copies
                // then refuse it.
                let mut audience = match &old {
                    Some(o) if moved => self.peers_of(o),
                    _ => Vec::new(),
                };
                if old.as_ref().is_none_or(|o| o.tenant != e.tenant) {
                    if let Some(ids) = old.as_ref().and_then(|o| self.by_tenant.get_mut(&o.tenant))
                    {
                        ids.retain(|i| *i != e.id);
                    }
                    self.by_tenant
                        .entry(e.tenant.clone())
                        .or_default()
                        .push(e.id.clone());
                }
                // The others' entries are the same before and after: ask now.
                for id in self.peers_of(&e) {
                    if !audience.contains(&id) {
                        audience.push(id);
                    }
                }
                let id = e.id.clone();
                let delta = Arc::new(Delta {
                    version,
                    change: Change::Upsert(e),
                });
                self.live.apply(&delta);
                if moved {
                    // Views built from the base assume no appliance changed class.
                    self.rebase();
                    audience.retain(|a| *a != id);
                    return Fanout::Moved {
                        delta,
                        audience,
                        moved: id,
                    };
                }
                self.logged(delta.clone());
                Fanout::Only(delta, audience)
            }
        }
    }

    fn logged(&mut self, delta: Arc<Delta>) {
        self.since.push(delta);
        if self.since.len() > (self.live.appliances.len() / 4).max(256) {
            self.rebase();
        }
    }

    /// What a subscriber's snapshot is built from; cheap to take under a lock.
    pub fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource {
            base: self.base.clone(),
            since: self.since.clone(),
        }
    }
}

/// A shared base and the changes after it: enough to build any subscriber's view.
#[derive(Debug, Clone)]
pub struct SnapshotSource {
    base: Arc<Base>,
    since: Vec<Arc<Delta>>,
}

impl SnapshotSource {
    /// The view of `id` (itself and every appliance it may talk to) at the newest version;
    /// the same as [`Directory::view_for`] on the master copy.
    pub fn view_for(&self, id: &str) -> Directory {
        let base = &self.base.dir;
        let version = self.since.last().map_or(base.version, |d| d.version);
        let mut me = base.appliances.get(id).cloned();
        for d in &self.since {
            match &d.change {
                Change::Upsert(e) if e.id == id => me = Some(e.clone()),
                Change::Revoke(r) if r == id => {
                    if let Some(me) = me.as_mut() {
                        me.revoked = true;
                    }
                }
                _ => {}
            }
        }
        let mut view = Directory {
            version,
            appliances: BTreeMap::new(),
            rules: base.rules.clone(),
        };
        let Some(me) = me else {
            return view;
        };
        if me.revoked {
            view.appliances.insert(me.id.clone(), me);
            return view;
        }
        // Visibility by class only; revocations are applied at the end.
        let sees =
            |e: &ApplianceEntry| e.id == me.id || base.rules.iter().any(|r| r.allows(&me, e));
        let candidates: Box<dyn Iterator<Item = &ApplianceEntry>> = if tenant_bound(&base.rules) {
            Box::new(
                self.base
                    .by_tenant
                    .get(&me.tenant)
                    .into_iter()
                    .flatten()
                    .filter_map(|i| base.appliances.get(i)),
            )
        } else {
            Box::new(base.appliances.values())
        };
        for e in candidates.filter(|e| sees(e)) {
            view.appliances.insert(e.id.clone(), e.clone());
        }
        for d in &self.since {
            match &d.change {
                Change::Upsert(e) if sees(e) => {
                    view.appliances.insert(e.id.clone(), e.clone());
                }
                Change::Revoke(r) => {
                    if let Some(e) = view.appliances.get_mut(r) {
                        e.revoked = true;
                    }
                }
                _ => {}
            }
        }
        view.appliances.insert(me.id.clone(), me);
        view.appliances.retain(|k, e| *k == id || !e.revoked);
        view
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
            prefixes: vec![],
            joined: false,
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

    fn pair_rule(x: &str, y: &str) -> Rule {
        Rule {
            a: Selector {
                appliance: Some(x.into()),
                ..Selector::default()
            },
            b: Selector {
                appliance: Some(y.into()),
                ..Selector::default()
            },
            same_tenant: false,
        }
    }

    /// Builds views from the shared base plus the changes since, through every kind of
    /// change and across rebases: always what the live copy's `view_for` says.
    #[test]
    fn snapshot_views_match_the_live_copy() {
        let mut m = Master::new(Directory {
            rules: vec![Rule::same_tenant()],
            ..Directory::default()
        });
        let mut version = 0;
        let mut step = |m: &mut Master, change: Change| {
            version += 1;
            m.apply(version, change);
            let src = m.snapshot_source();
            for i in 0..12 {
                let id = format!("x{i}");
                assert_eq!(src.view_for(&id), m.live().view_for(&id), "view of {id}");
            }
        };
        for i in 0..12 {
            let e = entry(
                &format!("x{i}"),
                &format!("dc{}", i % 3),
                &format!("t{}", i % 4),
            );
            step(&mut m, Change::Upsert(e));
        }
        step(&mut m, Change::Revoke("x5".into()));
        let mut moved = entry("x2", "dc9", "t1");
        moved.endpoints = vec!["10.0.0.2:1".into()];
        step(&mut m, Change::Upsert(moved));
        let mut updated = m.live().appliances["x3"].clone();
        updated.endpoints = vec!["10.0.0.3:1".into()];
        step(&mut m, Change::Upsert(updated));
        step(
            &mut m,
            Change::Rules(vec![Rule::same_tenant(), pair_rule("x0", "x1")]),
        );
        step(&mut m, Change::Revoke("x1".into()));
        step(&mut m, Change::Upsert(entry("x11", "dc0", "t0")));
        step(&mut m, Change::Rules(vec![pair_rule("x0", "x7")]));
    }

    #[test]
    fn an_upsert_goes_to_its_peers_only_and_policy_sends_only_new_entries() {
        let mut m = Master::new(Directory {
            rules: vec![Rule::same_tenant()],
            ..Directory::default()
        });
        for (i, (id, tenant)) in [("a", "acme"), ("b", "acme"), ("c", "other"), ("d", "other")]
            .into_iter()
            .enumerate()
        {
            m.apply(i as u64 + 1, Change::Upsert(entry(id, "dc1", tenant)));
        }
        let Fanout::Only(_, mut who) = m.apply(5, Change::Upsert(entry("a", "dc1", "acme"))) else {
            panic!("an upsert fans out to some")
        };
        who.sort();
        assert_eq!(who, ["a", "b"]);
        let Fanout::Policy {
            allowed,
            everyone_resnapshots: false,
            ..
        } = m.apply(
            6,
            Change::Rules(vec![Rule::same_tenant(), pair_rule("a", "c")]),
        )
        else {
            panic!("a policy change fans out as a policy")
        };
        let ids = |id: &str| -> Vec<String> {
            allowed
                .get(id)
                .map(|v| v.iter().map(|e| e.id.clone()).collect())
                .unwrap_or_default()
        };
        assert_eq!(ids("a"), ["c"]);
        assert_eq!(ids("c"), ["a"]);
        assert!(ids("b").is_empty() && ids("d").is_empty());
        // After the change, c's upsert reaches a too.
        let Fanout::Only(_, mut who) = m.apply(7, Change::Upsert(entry("c", "dc1", "other")))
        else {
            panic!("an upsert fans out to some")
        };
        who.sort();
        assert_eq!(who, ["a", "c", "d"]);
        // Moving to another tenant: the old peer hears of it (and then refuses it), the new
        // ones too, and the appliance itself gets a fresh view.
        let Fanout::Moved {
            mut audience,
            moved,
            ..
        } = m.apply(8, Change::Upsert(entry("b", "dc1", "other")))
        else {
            panic!("a move fans out as a move")
        };
        audience.sort();
        assert_eq!(moved, "b");
        assert_eq!(audience, ["a", "c", "d"]);
        let mut a_copy = m.live().view_for("a");
        a_copy.apply_change(&Change::Upsert(entry("b", "dc1", "acme")));
        a_copy.apply_change(&Change::Upsert(entry("b", "dc1", "other")));
        assert!(!a_copy.allows("a", "b"));
        m.apply(9, Change::Upsert(entry("b", "dc1", "acme")));
        // An agent's copy, after applying the policy, drops what it may no longer see.
        let mut copy = m.live().view_for("a");
        copy.apply(&Delta {
            version: 10,
            change: Change::Policy {
                rules: vec![pair_rule("a", "b")],
                allowed: vec![],
            },
        });
        copy.retain_view("a");
        assert_eq!(copy.appliances.keys().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn view_keeps_self_and_allowed_peers_only() {
        let d = dir(vec![Rule::same_tenant()]);
        let v = d.view_for("a");
        assert_eq!(v.appliances.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(d.relevant_to("a", &Change::Upsert(entry("b", "x", "acme"))));
        assert!(!d.relevant_to("a", &Change::Upsert(entry("c", "x", "other"))));
        assert!(!d.relevant_to("a", &Change::Revoke("c".into())));
        assert!(d.relevant_to("a", &Change::Revoke("b".into())));
    }

    #[test]
    fn a_revocation_goes_to_the_revoked_appliance_and_its_peers_only() {
        // a and b share a tenant; c is of another and may talk to neither.
        let mut m = Master::new(dir(vec![Rule::same_tenant()]));
        let Fanout::Only(delta, mut who) = m.apply(4, Change::Revoke("a".into())) else {
            panic!("a revocation goes to an audience")
        };
        who.sort();
        assert_eq!(who, ["a", "b"]);
        assert_eq!(delta.change, Change::Revoke("a".into()));
        assert!(m.live().appliances["a"].revoked);
        // c, skipped, learns nothing it needed: its view never listed a, and the next delta
        // it gets (version 5) covers version 4.
        let mut c_copy = m.live().view_for("c");
        assert!(!c_copy.appliances.contains_key("a"));
        let Fanout::Only(next, who) = m.apply(5, Change::Upsert(entry("d", "dc3", "other"))) else {
            panic!("an upsert goes to an audience")
        };
        assert!(who.contains(&"c".to_owned()));
        assert!(c_copy.apply_as("c", &next));
        assert_eq!(c_copy, m.live().view_for("c"));
    }
}
