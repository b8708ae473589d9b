//! Inner prefixes end to end on loopback: the operator assigns them at a real authority,
//! real key agents announce them over real QUIC, and peers' directory copies list what
//! was both announced and assigned, for the peers policy lets see it.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use cpclink_keymgr::agent::{AgentOptions, KeyAgent, SaEvent};
use cpclink_keymgr::audit::{AuditEvent, AuditRecord};
use cpclink_keymgr::authority::Authority;
use cpclink_keymgr::config::AuthorityConfig;
use cpclink_keymgr::prefix::InnerPrefix;
use cpclink_keymgr::seal::Kek;
use tokio::sync::mpsc::UnboundedReceiver;

const OPERATOR: &str = "test operator";

fn p(s: &str) -> InnerPrefix {
    s.parse().unwrap()
}

fn config(dir: &Path) -> AuthorityConfig {
    let kek_file = dir.join("kek");
    std::fs::write(&kek_file, "22".repeat(32)).unwrap();
    AuthorityConfig::on_loopback(dir.join("authority"), kek_file)
}

/// Starts `id`'s agent in `tenant`, announcing `prefixes`, with a token that assigns
/// `assigned` to it.
async fn agent(
    dir: &Path,
    authority: &Authority,
    id: &str,
    tenant: &str,
    assigned: &[InnerPrefix],
    prefixes: &[InnerPrefix],
) -> (KeyAgent, UnboundedReceiver<SaEvent>) {
    let token = authority
        .issue_token(id, "dc1", tenant, None, assigned, OPERATOR)
        .await
        .unwrap();
    let opts = AgentOptions {
        appliance: id.into(),
        authorities: vec![authority.local_addr().unwrap()],
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: dir.join(id),
        kek: Kek::load(&dir.join("kek"), "kek_file").unwrap(),
        ca_cert: authority.ca_cert(),
        token: Some(zeroize::Zeroizing::new(token)),
        endpoints: vec![],
        capabilities: vec![],
        prefixes: prefixes.to_vec(),
        suite: cpclink_dataplane::crypto::Suite::AesGcm256,
        sa_lifetime: Duration::from_secs(3600),
        rekey_grace: Duration::from_secs(5),
    };
    KeyAgent::start(opts).await.unwrap()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The prefixes `viewer`'s directory copy lists for `id`, or `None` if it does not list `id`.
fn seen(viewer: &KeyAgent, id: &str) -> Option<Vec<InnerPrefix>> {
    viewer
        .directory()
        .appliances
        .get(id)
        .map(|e| e.prefixes.clone())
}

fn audit_events(state_dir: &Path) -> Vec<AuditEvent> {
    std::fs::read_to_string(state_dir.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap().event)
        .collect()
}

#[tokio::test]
async fn assigned_and_announced_prefixes_reach_permitted_peers_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let authority = Authority::start(&cfg).await.unwrap();
    let d = dir.path();
    let (a, _ae) = agent(
        d,
        &authority,
        "dc1-edge",
        "acme",
        &[p("10.1.0.0/16")],
        &[p("10.1.0.0/16")],
    )
    .await;
    // Announcing a part of its assignment is enough; v6 travels the same way.
    let (b, _be) = agent(
        d,
        &authority,
        "dc2-edge",
        "acme",
        &[p("10.2.0.0/16"), p("2001:db8:2::/48")],
        &[p("10.2.8.0/24"), p("2001:db8:2::/48")],
    )
    .await;
    let (c, _ce) = agent(
        d,
        &authority,
        "dc3-edge",
        "other",
        &[p("10.3.0.0/16")],
        &[p("10.3.0.0/16")],
    )
    .await;

    eventually("prefixes in the peers' directories", || {
        seen(&b, "dc1-edge") == Some(vec![p("10.1.0.0/16")])
            && seen(&a, "dc2-edge") == Some(vec![p("10.2.8.0/24"), p("2001:db8:2::/48")])
            && seen(&c, "dc3-edge") == Some(vec![p("10.3.0.0/16")])
    })
    .await;
    let a_copy = a.directory();
    let mut routes = a_copy.routes_for("dc1-edge");
    routes.sort();
    assert_eq!(
        routes,
        [
            (p("10.2.8.0/24"), "dc2-edge"),
            (p("2001:db8:2::/48"), "dc2-edge")
        ]
    );
    // Another tenant's appliance is not permitted: it sees neither, and neither sees it.
    assert_eq!(seen(&c, "dc1-edge"), None);
    assert_eq!(seen(&c, "dc2-edge"), None);
    assert_eq!(seen(&a, "dc3-edge"), None);
    assert!(c.directory().routes_for("dc3-edge").is_empty());
    assert!(a.refused_prefixes().is_empty() && b.refused_prefixes().is_empty());
    // The operator's status lists each appliance with its prefixes and connection.
    let cpclink_keymgr::proto::AdminReply::Status { listed, .. } = authority.status().await else {
        panic!("status answers with a status")
    };
    let dc2 = listed.iter().find(|s| s.entry.id == "dc2-edge").unwrap();
    assert!(dc2.connected && dc2.last_seen.is_some() && !dc2.entry.revoked);
    assert_eq!(dc2.entry.prefixes, [p("10.2.8.0/24"), p("2001:db8:2::/48")]);

    // Removing the assignment withdraws the prefix from the peers' copies.
    authority
        .remove_prefixes("dc1-edge", &[p("10.1.0.0/16")], OPERATOR)
        .await
        .unwrap();
    eventually("withdrawal reaches the peer", || {
        seen(&b, "dc1-edge") == Some(vec![])
    })
    .await;
    eventually("the agent learns its prefix is refused now", || {
        a.refused_prefixes()
            .iter()
            .map(|r| r.prefix)
            .eq([p("10.1.0.0/16")])
    })
    .await;
    let events = audit_events(&cfg.state_dir);
    assert!(events.iter().any(|e| matches!(e,
        AuditEvent::PrefixesRemoved { appliance, by, .. } if appliance == "dc1-edge" && by == OPERATOR)));
    assert!(events.iter().any(|e| matches!(e,
        AuditEvent::TokenCreated { appliance, .. } if appliance == "dc3-edge")));
}

#[tokio::test]
async fn hijack_attempts_are_refused_audited_and_not_distributed_until_assigned() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let authority = Authority::start(&cfg).await.unwrap();
    let d = dir.path();
    let (a, _ae) = agent(
        d,
        &authority,
        "dc1-edge",
        "acme",
        &[p("10.1.0.0/16")],
        &[p("10.1.0.0/16")],
    )
    .await;
    // dc2-edge announces its own prefix, a part of dc1-edge's, and one nobody was assigned.
    let (b, _be) = agent(
        d,
        &authority,
        "dc2-edge",
        "acme",
        &[p("10.2.0.0/16")],
        &[p("10.2.0.0/16"), p("10.1.7.0/24"), p("10.9.0.0/16")],
    )
    .await;

    eventually("the agent learns of both refusals", || {
        b.refused_prefixes().len() == 2
    })
    .await;
    let refused = b.refused_prefixes();
    assert_eq!(refused[0].prefix, p("10.1.7.0/24"));
    assert!(
        refused[0].reason.contains("not assigned to dc2-edge")
            && refused[0].reason.contains("dc1-edge"),
        "{}",
        refused[0].reason
    );
    assert_eq!(refused[1].prefix, p("10.9.0.0/16"));
    assert_eq!(refused[1].reason, "not assigned to dc2-edge");
    eventually("dc2-edge's accepted prefix reaches dc1-edge", || {
        seen(&a, "dc2-edge") == Some(vec![p("10.2.0.0/16")])
    })
    .await;
    assert_eq!(seen(&a, "dc1-edge"), Some(vec![p("10.1.0.0/16")]));
    let master = authority.directory().await;
    assert_eq!(master.appliances["dc2-edge"].prefixes, [p("10.2.0.0/16")]);
    let attempts: Vec<(String, InnerPrefix)> = audit_events(&cfg.state_dir)
        .into_iter()
        .filter_map(|e| match e {
            AuditEvent::PrefixRefused {
                appliance, prefix, ..
            } => Some((appliance, prefix)),
            _ => None,
        })
        .collect();
    assert_eq!(
        attempts,
        [
            ("dc2-edge".to_owned(), p("10.1.7.0/24")),
            ("dc2-edge".to_owned(), p("10.9.0.0/16"))
        ]
    );

    // Assigned later: the refused announcement takes effect without the agent restarting.
    authority
        .assign_prefixes("dc2-edge", &[p("10.9.0.0/16")], OPERATOR)
        .await
        .unwrap();
    eventually("the newly assigned prefix reaches dc1-edge", || {
        seen(&a, "dc2-edge") == Some(vec![p("10.2.0.0/16"), p("10.9.0.0/16")])
    })
    .await;
    eventually("the agent hears it is accepted", || {
        b.refused_prefixes()
            .iter()
            .map(|r| r.prefix)
            .eq([p("10.1.7.0/24")])
    })
    .await;
}

#[tokio::test]
async fn an_overlapping_assignment_is_refused_naming_both_appliances() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::start(&config(dir.path())).await.unwrap();
    authority
        .assign_prefixes("dc1-edge", &[p("10.1.0.0/16")], OPERATOR)
        .await
        .unwrap();
    for wider_or_narrower in ["10.0.0.0/8", "10.1.2.0/24", "10.1.0.0/16"] {
        let e = authority
            .assign_prefixes("dc2-edge", &[p(wider_or_narrower)], OPERATOR)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("dc1-edge") && e.contains("dc2-edge"), "{e}");
    }
    // A token whose assignment overlaps is not minted.
    let e = authority
        .issue_token(
            "dc2-edge",
            "dc2",
            "acme",
            None,
            &[p("10.1.9.0/24")],
            OPERATOR,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("overlaps 10.1.0.0/16"), "{e}");
    let records = authority.prefixes().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].appliance, "dc1-edge");
    assert_eq!(records[0].assigned, [p("10.1.0.0/16")]);
    // Disjoint prefixes, v4 or v6, are fine.
    authority
        .assign_prefixes("dc2-edge", &[p("10.2.0.0/16"), p("::/0")], OPERATOR)
        .await
        .unwrap();
}

#[test]
fn assignments_survive_an_authority_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let first = tokio::runtime::Runtime::new().unwrap();
    first.block_on(async {
        let authority = Authority::start(&cfg).await.unwrap();
        authority
            .assign_prefixes(
                "dc1-edge",
                &[p("10.1.0.0/16"), p("2001:db8:1::/48")],
                OPERATOR,
            )
            .await
            .unwrap();
        authority
            .assign_prefixes("dc2-edge", &[p("10.2.0.0/16")], OPERATOR)
            .await
            .unwrap();
        authority
            .remove_prefixes("dc2-edge", &[p("10.2.0.0/16")], OPERATOR)
            .await
            .unwrap();
        authority.shutdown();
    });
    // Dropping the runtime drops every task of the first authority, and its store.
    drop(first);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let authority = Authority::start(&cfg).await.unwrap();
        let records = authority.prefixes().await;
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(
            records[0].assigned,
            [p("10.1.0.0/16"), p("2001:db8:1::/48")]
        );
        let e = authority
            .assign_prefixes("dc2-edge", &[p("10.1.4.0/22")], OPERATOR)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("dc1-edge"), "{e}");
        // And an agent enrolling afterwards gets what was assigned before the restart.
        let (a, _ae) = agent(
            dir.path(),
            &authority,
            "dc1-edge",
            "acme",
            &[],
            &[p("10.1.0.0/16")],
        )
        .await;
        eventually("the assignment applies", || {
            seen(&a, "dc1-edge") == Some(vec![p("10.1.0.0/16")])
        })
        .await;
    });
    cpclink_keymgr::audit::verify(&cfg.state_dir.join("audit.jsonl")).unwrap();
}
