//! The key plane's lifecycle over real QUIC on loopback: an authority that goes away and
//! comes back while appliances keep keying each other, and an appliance replaced by new
//! hardware after its revocation.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use cpclink_keymgr::agent::{generation_at, AgentOptions, AuthorityLink, KeyAgent, SaEvent};
use cpclink_keymgr::audit::ApplianceReport;
use cpclink_keymgr::authority::Authority;
use cpclink_keymgr::config::AuthorityConfig;
use cpclink_keymgr::pki::{self, KeyedCert};
use cpclink_keymgr::proto::{self, Message};
use cpclink_keymgr::seal::Kek;
use cpclink_keymgr::store::{AnyStore, MemoryStore, Store, Write};
use cpclink_keymgr::{tls, Error};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc::UnboundedReceiver;

fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn authority_config(dir: &Path, port: u16) -> AuthorityConfig {
    let kek_file = dir.join("kek");
    std::fs::write(&kek_file, "22".repeat(32)).unwrap();
    AuthorityConfig {
        listen: (Ipv4Addr::LOCALHOST, port).into(),
        ..AuthorityConfig::on_loopback(dir.join("authority"), kek_file)
    }
}

fn options(
    cfg: &AuthorityConfig,
    authority: SocketAddr,
    ca: &CertificateDer<'static>,
    id: &str,
    token: Option<String>,
) -> AgentOptions {
    AgentOptions {
        appliance: id.into(),
        authorities: vec![authority],
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: cfg.state_dir.with_file_name(id),
        kek: Kek::load(&cfg.kek_file, "kek_file").unwrap(),
        ca_cert: ca.clone(),
        token: token.map(zeroize::Zeroizing::new),
        endpoints: vec![],
        capabilities: vec![],
        prefixes: vec![],
        suite: cpclink_dataplane::crypto::Suite::AesGcm256,
        sa_lifetime: Duration::from_secs(3600),
        rekey_grace: Duration::from_millis(200),
    }
}

async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Runs the authority on a runtime of its own, so that dropping the runtime stops it the
/// way a process exit would: its socket and its store are released.
fn start_authority(cfg: &AuthorityConfig) -> (tokio::runtime::Runtime, Authority) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let authority = rt.block_on(Authority::start(cfg)).unwrap();
    (rt, authority)
}

#[test]
fn an_authority_outage_is_reported_and_peers_keep_keying_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = authority_config(dir.path(), free_udp_port());
    let (auth_rt, authority) = start_authority(&cfg);
    let addr = authority.local_addr().unwrap();
    let ca = authority.ca_cert();
    let token = |id: &str| {
        authority
            .mint_token(id, "dc1", "acme", Duration::from_secs(600))
            .unwrap()
    };
    let (tb, tc) = (token("b"), token("c"));

    let agents_rt = tokio::runtime::Runtime::new().unwrap();
    let (b, c, _events) = agents_rt.block_on(async {
        let (b, eb) = KeyAgent::start(options(&cfg, addr, &ca, "b", Some(tb)))
            .await
            .unwrap();
        let (c, ec) = KeyAgent::start(options(&cfg, addr, &ca, "c", Some(tc)))
            .await
            .unwrap();
        eventually(
            "both agents following the authority",
            Duration::from_secs(20),
            || {
                b.authority_connected()
                    && c.authority_connected()
                    && b.directory().is_active("c")
                    && c.directory().is_active("b")
            },
        )
        .await;
        c.request_sa("b").await.unwrap();
        // An operator action at b while the authority is up reaches its audit log.
        assert!(b.report(ApplianceReport::Reloaded {
            by: "api:ops".into(),
            applied: "peers or routes changed".into(),
        }));
        (b, c, (eb, ec))
    });
    agents_rt.block_on(eventually(
        "b's reload in the authority's audit log",
        Duration::from_secs(10),
        || {
            audit_events(&cfg).iter().any(|e| {
                e["kind"] == "appliance_reported"
                    && e["appliance"] == "b"
                    && e["report"]["reloaded"]["by"] == "api:ops"
            })
        },
    ));

    // The authority stops (its runtime with it: socket and store released).
    authority.shutdown();
    auth_rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(2), authority.wait_closed()).await;
    });
    drop(authority);
    drop(auth_rt);
    agents_rt.block_on(async {
        let took = eventually(
            "the agents noticing the outage",
            Duration::from_secs(5),
            || !b.authority_connected() && !c.authority_connected(),
        )
        .await;
        assert!(took < Duration::from_secs(5));
        assert_eq!(*b.authority_link().borrow(), AuthorityLink::Lost);
        // SA requests go from agent to agent: no authority needed, in either direction,
        // over fresh connections as well as cached ones.
        for _ in 0..3 {
            let grant = c
                .request_sa("b")
                .await
                .expect("SA from b while the authority is down");
            assert_eq!(grant.peer, "b");
            b.request_sa("c")
                .await
                .expect("SA from c while the authority is down");
        }
        // A refusal at b during the outage waits in b's queue.
        assert!(b.report(ApplianceReport::ApiRefused {
            by: Some("intruder".into()),
            what: "POST /v1/reload".into(),
            status: 403,
            reason: "viewer role".into(),
        }));
        // Let the agents' retries back off for a while.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!b.authority_connected());
        assert_eq!(b.reports_pending(), (1, 0));
    });

    // Back on the same state and address.
    let (_auth_rt, authority) = start_authority(&cfg);
    assert_eq!(authority.local_addr().unwrap(), addr);
    agents_rt.block_on(async {
        // Retries are capped at 10 s (jittered), so both are back well within 15 s.
        eventually(
            "the agents finding the authority again",
            Duration::from_secs(15),
            || b.authority_connected() && c.authority_connected(),
        )
        .await;
        // What b queued during the outage is audited once the feed is back, once.
        eventually(
            "b's queue drained to the authority",
            Duration::from_secs(10),
            || b.reports_pending().0 == 0,
        )
        .await;
        eventually(
            "b's queued refusal in the audit log",
            Duration::from_secs(10),
            || {
                audit_events(&cfg)
                    .iter()
                    .filter(|e| {
                        e["kind"] == "appliance_reported"
                            && e["appliance"] == "b"
                            && e["report"]["api_refused"]["by"] == "intruder"
                    })
                    .count()
                    == 1
            },
        )
        .await;
        // The feed is live again: a change at the authority reaches both.
        let version = authority.revoke("c", "test").await.unwrap();
        eventually(
            "the restarted authority's change reaching b",
            Duration::from_secs(5),
            || *b.directory_version().borrow() >= version && !b.directory().is_active("c"),
        )
        .await;
    });
}

/// The certificate and key an agent stored at enrolment (what the old hardware holds).
async fn stored_identity(store: &MemoryStore, kek: &Kek, id: &str) -> KeyedCert {
    let cert = store.get("identity/cert").await.unwrap().unwrap();
    let key = store.get("identity/key").await.unwrap().unwrap();
    KeyedCert::from_chain(&cert, kek.open(&format!("identity/{id}"), &key).unwrap()).unwrap()
}

/// Asks `to` for an SA as the holder of `cert`; the reply, or None if refused outright.
async fn sa_request_as(
    ca: &CertificateDer<'static>,
    cert: &KeyedCert,
    to: &KeyAgent,
    name: &str,
) -> Option<Message> {
    let ep = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let cfg = tls::client_config(ca, Some(cert)).unwrap();
    let conn = ep
        .connect_with(cfg, to.local_addr().unwrap(), name)
        .unwrap()
        .await
        .ok()?;
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    proto::write_frame(&mut send, &Message::SaRequest { suite: 1 })
        .await
        .ok()?;
    send.finish().ok()?;
    proto::read_frame(&mut recv).await.ok().flatten()
}

fn audit_events(cfg: &AuthorityConfig) -> Vec<serde_json::Value> {
    let log = std::fs::read_to_string(cfg.state_dir.join("audit.jsonl")).unwrap();
    log.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect()
}

async fn drain(events: &mut UnboundedReceiver<SaEvent>) -> Vec<SaEvent> {
    let mut out = Vec::new();
    while let Ok(ev) = events.try_recv() {
        out.push(ev);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_appliance_is_replaced_by_new_hardware_and_its_old_certificate_stays_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = authority_config(dir.path(), 0);
    let authority = Authority::start(&cfg).await.unwrap();
    let addr = authority.local_addr().unwrap();
    let ca = authority.ca_cert();
    let kek = Kek::load(&cfg.kek_file, "kek_file").unwrap();
    let token = |id: &str| {
        authority
            .mint_token(id, "dc1", "acme", Duration::from_secs(600))
            .unwrap()
    };

    let (a, mut a_events) = KeyAgent::start(options(&cfg, addr, &ca, "a", Some(token("a"))))
        .await
        .unwrap();
    // The old hardware's state survives it, as its disk would.
    let old_state = MemoryStore::default();
    let (old, mut old_events) = KeyAgent::start_with_store(
        options(&cfg, addr, &ca, "b", Some(token("b"))),
        AnyStore::Memory(old_state.clone()),
    )
    .await
    .unwrap();
    eventually("a and b seeing each other", Duration::from_secs(20), || {
        a.directory().is_active("b") && old.directory().is_active("a")
    })
    .await;
    let old_grant = a.request_sa("b").await.unwrap();
    old.request_sa("a").await.unwrap();
    let old_cert = stored_identity(&old_state, &kek, "b").await;
    let old_serial = pki::serial_of(&old_cert.cert).unwrap();

    // 1. Revoked: the old agent says so and stops; its event stream ends.
    authority.revoke("b", "test").await.unwrap();
    eventually(
        "the old agent stopping as revoked",
        Duration::from_secs(5),
        || old.is_revoked(),
    )
    .await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while old_events.recv().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "a revoked agent's event stream must end");
    assert!(!old.authority_connected());
    eventually("a dropping b", Duration::from_secs(5), || {
        !a.directory().is_active("b")
    })
    .await;
    assert!(drain(&mut a_events)
        .await
        .iter()
        .any(|e| matches!(e, SaEvent::RetirePeer { peer } if peer == "b")));
    drop(old);

    // Restarted on its old state, it refuses to start, naming the replace flow.
    let restarted = KeyAgent::start_with_store(
        options(&cfg, addr, &ca, "b", None),
        AnyStore::Memory(old_state.clone()),
    )
    .await;
    let Err(err) = restarted else {
        panic!("a revoked appliance must not start")
    };
    assert!(matches!(err, Error::Revoked { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("cpclink keymgr replace --appliance b"),
        "{err}"
    );

    // 2. Without the operator's replace order, a token for the id is refused (minting it,
    // or enrolling with one minted anyway), naming the replace command.
    let refused = authority
        .issue_token("b", "dc1", "acme", None, &[], "uid 0")
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("cpclink keymgr replace --appliance b"),
        "{refused}"
    );
    let sneaked = KeyAgent::start(options(&cfg, addr, &ca, "b", Some(token("b")))).await;
    let Err(sneaked) = sneaked else {
        panic!("a plain token must not re-enrol a revoked id")
    };
    assert!(sneaked.to_string().contains("keymgr replace"), "{sneaked}");
    assert!(authority.directory().await.appliances["b"].revoked);

    // Replacing an appliance that is not revoked is refused too.
    assert!(authority
        .replace("a", "dc1", "acme", None, &[], "uid 0")
        .await
        .is_err());

    // 3. The replace order: the entry stays revoked until the new agent enrols.
    let replacement = authority
        .replace("b", "dc1", "acme", None, &[], "uid 1000")
        .await
        .unwrap();
    assert!(authority.directory().await.appliances["b"].revoked);
    let mut new_opts = options(&cfg, addr, &ca, "b", Some(replacement));
    new_opts.state_dir = dir.path().join("b-new-hardware");
    let (new, mut new_events) = KeyAgent::start(new_opts).await.unwrap();
    let entry = authority.directory().await.appliances["b"].clone();
    assert!(
        !entry.revoked,
        "the replacement's enrolment ends the revoked state"
    );
    assert!(
        !pki::same_serial(&entry.cert_serial, &old_serial),
        "a new certificate"
    );
    eventually(
        "a and the new b keying each other",
        Duration::from_secs(20),
        || {
            a.directory().is_active("b")
                && new.directory().is_active("a")
                && new.authority_connected()
        },
    )
    .await;
    let new_grant = a.request_sa("b").await.unwrap();
    new.request_sa("a").await.unwrap();
    // Fresh master keys: nothing the old hardware granted lives on.
    assert_ne!(new_grant.key.as_bytes(), old_grant.key.as_bytes());
    assert!(!drain(&mut a_events).await.iter().any(
        |e| matches!(e, SaEvent::InstallRx { spi, peer, .. } if peer == "b" && *spi == old_grant.spi)
    ));

    // The old certificate stays refused: by the peers, whose directory lists the new serial…
    let reply = sa_request_as(&ca, &old_cert, &a, "a").await;
    assert!(
        !matches!(reply, Some(Message::SaGrant { .. })),
        "old certificate got {reply:?}"
    );
    // …and by the authority: the old hardware, its revocation mark wiped, is told again.
    old_state
        .apply(vec![Write::Delete("revoked".into())])
        .await
        .unwrap();
    let (old_again, _e) = KeyAgent::start_with_store(
        options(&cfg, addr, &ca, "b", None),
        AnyStore::Memory(old_state.clone()),
    )
    .await
    .unwrap();
    eventually(
        "the old certificate refused by the authority",
        Duration::from_secs(10),
        || old_again.is_revoked(),
    )
    .await;
    assert!(new.authority_connected(), "the replacement is unaffected");
    assert!(!authority.directory().await.appliances["b"].revoked);

    // The replacement starts its keys afresh, and the epoch it reports names its generation
    // (what `keymgr rotate` prints).
    assert_eq!(new.epoch().await, 1);
    for _ in 0..3 {
        let epoch = new.rotate(0).await.unwrap();
        let rotated = drain(&mut new_events)
            .await
            .into_iter()
            .find_map(|e| match e {
                SaEvent::Rotated { generation, epoch } => Some((generation, epoch)),
                _ => None,
            });
        assert_eq!(rotated, Some((generation_at(epoch), epoch)));
    }

    // Audited: who ordered it, for which id, the old and the new serial.
    let events = audit_events(&cfg);
    let ordered = events
        .iter()
        .find(|e| e["kind"] == "replacement_ordered")
        .expect("replacement order audited");
    assert_eq!(ordered["appliance"], "b");
    assert_eq!(ordered["by"], "uid 1000");
    assert!(pki::same_serial(
        ordered["old_serial"].as_str().unwrap(),
        &old_serial
    ));
    let replaced = events
        .iter()
        .find(|e| e["kind"] == "replaced")
        .expect("replacement audited");
    assert_eq!(replaced["ordered_by"], "uid 1000");
    assert!(pki::same_serial(
        replaced["old_serial"].as_str().unwrap(),
        &old_serial
    ));
    assert!(pki::same_serial(
        replaced["new_serial"].as_str().unwrap(),
        &entry.cert_serial
    ));
    assert!(cpclink_keymgr::audit::verify(&cfg.state_dir.join("audit.jsonl")).is_ok());
}
