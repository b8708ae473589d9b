//! Differential test of the directory feed: a subscriber that starts from a snapshot and then
//! applies only the deltas the authority fans out to it (resnapshotting when told to) ends
//! each step deciding exactly as a full snapshot of the authority's live copy would: whom it
//! may talk to, whom it asks for SAs, which inner prefixes it routes where.
//!
//! It found that a copy kept the entry of a peer that moved out of its view (another tenant)
//! and, after a later policy change matching the stale entry's old centre, routed to it;
//! `stale_entry_of_a_peer_that_moved_away_is_not_revived_by_policy` replays that case.

use std::collections::BTreeMap;

use cpclink_keymgr::directory::{
    ApplianceEntry, Change, Delta, Directory, Fanout, Master, Rule, Selector,
};
use cpclink_keymgr::prefix::InnerPrefix;
use proptest::prelude::*;

const IDS: usize = 6;

fn id(i: usize) -> String {
    format!("x{i}")
}

fn entry(i: usize, centre: u8, tenant: u8, joined: bool) -> ApplianceEntry {
    ApplianceEntry {
        id: id(i),
        centre: format!("dc{centre}"),
        tenant: format!("t{tenant}"),
        control: String::new(),
        endpoints: vec![format!("192.0.2.{i}:1000")],
        capabilities: vec![],
        cert_serial: format!("{i:02x}"),
        revoked: false,
        prefixes: vec![format!("10.{i}.{centre}.0/24")
            .parse::<InnerPrefix>()
            .unwrap()],
        joined,
    }
}

/// A policy from a few rule shapes: same tenant, a pair of appliances, a centre to any.
fn rules(picks: &[(u8, usize, usize)]) -> Vec<Rule> {
    picks
        .iter()
        .map(|&(kind, x, y)| match kind % 3 {
            0 => Rule::same_tenant(),
            1 => Rule {
                a: Selector {
                    appliance: Some(id(x)),
                    ..Selector::default()
                },
                b: Selector {
                    appliance: Some(id(y)),
                    ..Selector::default()
                },
                same_tenant: false,
            },
            _ => Rule {
                a: Selector {
                    centre: Some(format!("dc{}", x % 3)),
                    ..Selector::default()
                },
                b: Selector::default(),
                same_tenant: y % 2 == 0,
            },
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Step {
    Upsert {
        i: usize,
        centre: u8,
        tenant: u8,
        joined: bool,
    },
    Revoke(usize),
    Rules(Vec<(u8, usize, usize)>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..IDS, 0..3u8, 0..2u8, any::<bool>())
            .prop_map(|(i, centre, tenant, joined)| Step::Upsert { i, centre, tenant, joined }),
        1 => (0..IDS).prop_map(Step::Revoke),
        1 => proptest::collection::vec((any::<u8>(), 0..IDS, 0..IDS), 0..3).prop_map(Step::Rules),
    ]
}

/// What a subscriber decides from its copy of the directory.
fn decisions(dir: &Directory, me: &str) -> (Vec<String>, Vec<String>, Vec<(InnerPrefix, String)>) {
    let talks = (0..IDS).map(id).filter(|x| dir.allows(me, x)).collect();
    let mut targets: Vec<String> = dir
        .sa_targets(me)
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    targets.sort();
    let mut routes: Vec<_> = dir
        .routes_for(me)
        .into_iter()
        .map(|(p, who)| (p, who.to_owned()))
        .collect();
    routes.sort();
    (talks, targets, routes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn deltas_applied_one_by_one_decide_like_a_full_snapshot(
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let mut master = Master::new(Directory { rules: vec![Rule::same_tenant()], ..Directory::default() });
        // One subscriber per listed, unrevoked appliance: it connects (and takes a snapshot)
        // once enrolled, and stops when revoked.
        let mut copies: BTreeMap<String, Directory> = BTreeMap::new();
        // As the agent does with each delta it receives.
        let deliver = |copy: &mut Directory, me: &str, delta: &Delta| {
            copy.apply_as(me, delta);
        };
        for (n, step) in steps.into_iter().enumerate() {
            let version = n as u64 + 1;
            let change = match step {
                Step::Upsert { i, centre, tenant, joined } => {
                    // A revoked appliance stays revoked: the authority never re-lists it.
                    if master.live().appliances.get(&id(i)).is_some_and(|e| e.revoked) {
                        continue;
                    }
                    Change::Upsert(entry(i, centre, tenant, joined))
                }
                Step::Revoke(i) => {
                    if !master.live().appliances.contains_key(&id(i)) {
                        continue;
                    }
                    Change::Revoke(id(i))
                }
                Step::Rules(picks) => Change::Rules(rules(&picks)),
            };
            let mut resnapshot = Vec::new();
            match master.apply(version, change) {
                Fanout::Everyone(delta) => {
                    for (me, copy) in &mut copies {
                        deliver(copy, me, &delta);
                    }
                }
                Fanout::Only(delta, audience) => {
                    for me in audience {
                        if let Some(copy) = copies.get_mut(&me) {
                            deliver(copy, &me, &delta);
                        }
                    }
                }
                Fanout::Moved { delta, audience, moved } => {
                    for me in audience {
                        if let Some(copy) = copies.get_mut(&me) {
                            deliver(copy, &me, &delta);
                        }
                    }
                    resnapshot.push(moved);
                }
                Fanout::Policy { version, rules, mut allowed, everyone_resnapshots } => {
                    for (me, copy) in &mut copies {
                        if everyone_resnapshots {
                            resnapshot.push(me.clone());
                            continue;
                        }
                        let delta = Delta {
                            version,
                            change: Change::Policy { rules: rules.clone(), allowed: allowed.remove(me).unwrap_or_default() },
                        };
                        deliver(copy, me, &delta);
                    }
                }
            }
            for me in resnapshot {
                copies.insert(me.clone(), master.live().view_for(&me));
            }
            let live = master.live();
            copies.retain(|me, _| live.is_active(me));
            for me in live.appliances.keys().filter(|me| live.is_active(me)) {
                if !copies.contains_key(me) {
                    copies.insert(me.clone(), live.view_for(me));
                }
            }
            for (me, copy) in &copies {
                prop_assert_eq!(
                    decisions(copy, me),
                    decisions(&master.live().view_for(me), me),
                    "{} after step {}", me, n
                );
            }
        }
    }
}

/// The case the property test found, kept as a fixed regression.
#[test]
fn stale_entry_of_a_peer_that_moved_away_is_not_revived_by_policy() {
    let mut master = Master::new(Directory {
        rules: vec![Rule::same_tenant()],
        ..Directory::default()
    });
    master.apply(1, Change::Upsert(entry(0, 0, 0, false)));
    master.apply(2, Change::Upsert(entry(1, 1, 0, false)));
    let mut copy = master.live().view_for("x1");
    assert!(copy.allows("x1", "x0"));
    let mut version = 2;
    // x0 moves to another tenant, then to another centre: x1 hears only of the first.
    for (centre, tenant, hears) in [(0, 1, true), (1, 1, false)] {
        version += 1;
        let fanout = master.apply(version, Change::Upsert(entry(0, centre, tenant, false)));
        let Fanout::Moved {
            delta, audience, ..
        } = fanout
        else {
            panic!("a move")
        };
        assert_eq!(audience.contains(&"x1".to_owned()), hears);
        if hears {
            copy.apply_as("x1", &delta);
        }
    }
    // Centre dc0 may now talk to anyone: nobody is in dc0 any more.
    version += 1;
    let rules = rules(&[(2, 0, 1)]);
    let Fanout::Policy { allowed, .. } = master.apply(version, Change::Rules(rules.clone())) else {
        panic!("a policy change")
    };
    copy.apply_as(
        "x1",
        &Delta {
            version,
            change: Change::Policy {
                rules,
                allowed: allowed.get("x1").cloned().unwrap_or_default(),
            },
        },
    );
    assert!(
        !copy.allows("x1", "x0"),
        "x0's stale entry came back: {copy:?}"
    );
    assert!(copy.routes_for("x1").is_empty());
}
