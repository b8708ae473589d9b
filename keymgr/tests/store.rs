//! One suite, run against the redb store and against a real etcd server.

mod support;

use std::time::Duration;

use cpclink_keymgr::audit::{verify_store, AuditEvent, StoreChain};
use cpclink_keymgr::store::{EtcdStore, MemoryStore, RedbStore, Store, Write};
use support::etcd::{connect, dead_url, start_etcd};

async fn suite(s: &impl Store) {
    assert_eq!(s.get("a/1").await.unwrap(), None);
    s.put("a/1", b"one").await.unwrap();
    s.put("a/2", b"two").await.unwrap();
    s.put("b/1", b"other").await.unwrap();
    assert_eq!(s.get("a/1").await.unwrap().as_deref(), Some(&b"one"[..]));
    s.put("a/1", b"uno").await.unwrap();
    assert_eq!(s.get("a/1").await.unwrap().as_deref(), Some(&b"uno"[..]));

    let scanned = s.scan("a/").await.unwrap();
    assert_eq!(
        scanned,
        vec![
            ("a/1".into(), b"uno".to_vec()),
            ("a/2".into(), b"two".to_vec())
        ]
    );

    assert!(s.insert_new("tok/x", b"1").await.unwrap());
    assert!(!s.insert_new("tok/x", b"2").await.unwrap());
    assert_eq!(s.get("tok/x").await.unwrap().as_deref(), Some(&b"1"[..]));

    s.apply(vec![
        Write::Put("c/1".into(), b"x".to_vec()),
        Write::Delete("a/2".into()),
        Write::Put("c/2".into(), b"y".to_vec()),
    ])
    .await
    .unwrap();
    assert_eq!(s.get("a/2").await.unwrap(), None);
    assert_eq!(s.scan("c/").await.unwrap().len(), 2);
    // Deleting what is absent is not an error.
    s.apply(vec![Write::Delete("nope".into())]).await.unwrap();

    // A guarded batch: all of it while the guard is absent, none of it once present.
    let put = |k: &str, v: &[u8]| Write::Put(k.into(), v.to_vec());
    assert!(s
        .apply_unless_present("g/token", vec![put("g/token", b"1"), put("g/entry", b"a")])
        .await
        .unwrap());
    assert!(!s
        .apply_unless_present("g/token", vec![put("g/token", b"2"), put("g/other", b"b")])
        .await
        .unwrap());
    assert_eq!(s.get("g/token").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(s.get("g/other").await.unwrap(), None);
    // The guard need not be among the writes.
    assert!(s
        .apply_unless_present("g/absent", vec![put("g/third", b"c")])
        .await
        .unwrap());
    assert!(!s
        .apply_unless_present("g/entry", vec![put("g/fourth", b"d")])
        .await
        .unwrap());
    assert_eq!(s.scan("g/").await.unwrap().len(), 3);
}

/// Many concurrent insert-if-absent calls for one key: exactly one wins (single-use tokens
/// rest on this).
async fn insert_new_has_one_winner<S: Store>(s: std::sync::Arc<S>) {
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.insert_new("race", &[i]).await.unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);

    // The same for guarded batches: one batch lands whole, the others not at all.
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let batch = vec![
                Write::Put("race-guard".into(), vec![i]),
                Write::Put(format!("race-entry/{i:02}"), vec![i]),
            ];
            s.apply_unless_present("race-guard", batch).await.unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
    let entries = s.scan("race-entry/").await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        s.get("race-guard").await.unwrap(),
        Some(entries[0].1.clone())
    );
}

#[tokio::test]
async fn redb_store_passes_the_suite_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let s = RedbStore::open(&path).unwrap();
        suite(&s).await;
        insert_new_has_one_winner(std::sync::Arc::new(s)).await;
    }
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(s.get("a/1").await.unwrap().as_deref(), Some(&b"uno"[..]));
    assert!(!s.insert_new("tok/x", b"3").await.unwrap());
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    let s = MemoryStore::default();
    suite(&s).await;
    insert_new_has_one_winner(std::sync::Arc::new(s)).await;
}

#[tokio::test]
async fn etcd_store_passes_the_suite() {
    let Some(etcd) = start_etcd() else { return };
    let s = connect(&etcd, "/test/").await;
    suite(&s).await;
    insert_new_has_one_winner(std::sync::Arc::new(s)).await;
    // Prefixes keep authorities apart.
    let other = connect(&etcd, "/other/").await;
    assert_eq!(other.get("a/1").await.unwrap(), None);
    assert!(other.scan("").await.unwrap().is_empty());
}

/// The authority on etcd, end to end: two agents enrol over QUIC, learn of each other and
/// one grants the other an SA; the records are in etcd, not in a local file, and a second
/// authority started on the same cluster knows both appliances and spent tokens.
#[tokio::test]
async fn authority_on_etcd_enrols_agents_that_grant_each_other_sas() {
    use std::net::Ipv4Addr;

    use cpclink_keymgr::agent::{AgentOptions, KeyAgent};
    use cpclink_keymgr::authority::Authority;
    use cpclink_keymgr::config::{AuthorityConfig, StoreConfig};
    use cpclink_keymgr::seal::Kek;

    let Some(etcd) = start_etcd() else { return };
    let records = connect(&etcd, "/e2e/").await;
    let dir = tempfile::tempdir().unwrap();
    let kek_file = dir.path().join("kek");
    std::fs::write(&kek_file, "22".repeat(32)).unwrap();
    let mut cfg = AuthorityConfig {
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: dir.path().join("authority"),
        kek_file: kek_file.clone(),
        rotation_interval_secs: 86_400,
        cert_days: 1,
        token_ttl_secs: 600,
        store: StoreConfig::Etcd {
            endpoints: vec![etcd.members[0].url.clone()],
            prefix: "/e2e/".into(),
            candidate: None,
            election_ttl_secs: 10,
        },
        rules: Vec::new(),
        api: None,
        ca: None,
    };
    let authority = Authority::start(&cfg).await.unwrap();
    let mut agents = Vec::new();
    let mut tokens = Vec::new();
    for id in ["a", "b"] {
        let token = authority
            .mint_token(id, "dc1", "acme", Duration::from_secs(600))
            .unwrap();
        tokens.push(token.clone());
        let opts = AgentOptions {
            appliance: id.into(),
            authorities: vec![authority.local_addr().unwrap()],
            listen: (Ipv4Addr::LOCALHOST, 0).into(),
            state_dir: dir.path().join(id),
            kek: Kek::load(&kek_file, "kek_file").unwrap(),
            ca_cert: authority.ca_cert(),
            token: Some(zeroize::Zeroizing::new(token)),
            endpoints: vec![],
            capabilities: vec![],
            prefixes: vec![],
            suite: cpclink_dataplane::crypto::Suite::AesGcm256,
            sa_lifetime: Duration::from_secs(3600),
            rekey_grace: Duration::from_secs(5),
        };
        agents.push(KeyAgent::start(opts).await.unwrap());
    }
    let (a, b) = (&agents[0].0, &agents[1].0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(a.directory().is_active("b") && b.directory().is_active("a")) {
        assert!(
            std::time::Instant::now() < deadline,
            "agents never saw each other"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let grant = a.request_sa("b").await.unwrap();
    assert_eq!(grant.peer, "b");

    assert!(records.get("appliance/a").await.unwrap().is_some());
    assert!(records.get("cert/b").await.unwrap().is_some());
    assert_eq!(records.scan("token/").await.unwrap().len(), 2);
    assert!(!cfg.state_dir.join("authority.redb").exists());

    // Restarted on the same cluster, the authority knows both appliances and spent tokens.
    authority.shutdown();
    cfg.listen = (Ipv4Addr::LOCALHOST, 0).into();
    let again = Authority::start(&cfg).await.unwrap();
    let dir_copy = again.directory().await;
    assert!(dir_copy.is_active("a") && dir_copy.is_active("b"));
    let reused = cpclink_keymgr::agent::enrol_only(
        again.local_addr().unwrap(),
        &again.ca_cert(),
        "a",
        &tokens[0],
    )
    .await
    .unwrap_err();
    assert!(reused.to_string().contains("already used"), "{reused}");
}

#[tokio::test]
async fn unreachable_etcd_is_named_with_the_operation_and_what_to_check() {
    let url = dead_url();
    let e = EtcdStore::connect(std::slice::from_ref(&url), "cpclink/")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("etcd {url}: range cpclink/: connection refused; is etcd running?")
    );

    let (a, b) = (dead_url(), dead_url());
    let e = EtcdStore::connect(&[a.clone(), b.clone()], "cpclink/")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "etcd {a}, {b}: range cpclink/: no endpoint reachable"
        )),
        "{e}"
    );
    assert!(e.ends_with("is etcd running?"), "{e}");
}

#[tokio::test]
async fn gateway_errors_carry_what_etcd_said() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A stand-in gateway that refuses every request the way etcd's does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = conn.read(&mut buf).await.unwrap();
        let body =
            r#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#;
        let reply = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(reply.as_bytes()).await.unwrap();
    });
    let e = EtcdStore::connect(std::slice::from_ref(&url), "p/")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("etcd {url}: range p/: etcd says: etcdserver: no leader (gRPC status 14)")
    );
}

/// Endpoints that cannot be reached are skipped; a member that restarts is reconnected to
/// (its old idle connections are closed); what etcd refuses comes back as an error naming
/// the transaction.
#[tokio::test]
async fn etcd_store_fails_over_reconnects_and_reports_refusals() {
    let Some(mut etcd) = start_etcd() else { return };
    let _ = connect(&etcd, "/probe/").await;
    let s = EtcdStore::connect(&[dead_url(), etcd.members[0].url.clone()], "/fo/")
        .await
        .unwrap();
    s.put("k", b"v").await.unwrap();
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));

    // Restart the member on the same ports and data: the pooled connections are dead.
    etcd.members[0].kill();
    etcd.members[0].restart().unwrap();
    let mut value = None;
    for _ in 0..100 {
        if let Ok(v) = s.get("k").await {
            value = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(value.as_deref(), Some(&b"v"[..]));

    // etcd refuses a transaction that writes one key twice.
    let e = s
        .apply(vec![
            Write::Put("dup".into(), b"1".to_vec()),
            Write::Delete("dup".into()),
        ])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("txn [/fo/dup, /fo/dup]"), "{e}");
    assert!(e.contains("duplicate key"), "{e}");
}

/// A long run of audit lines (a rotation at scale writes one per appliance) goes into a
/// real etcd in transactions as large as etcd's default limit of 128 operations takes: a
/// group one line too large would be refused whole.
#[tokio::test]
async fn a_long_audit_run_goes_into_etcd_in_full_transactions_and_verifies() {
    let Some(etcd) = start_etcd() else { return };
    let s = connect(&etcd, "/audit-groups/").await;
    let events: Vec<AuditEvent> = (0..300)
        .map(|i| AuditEvent::Rotated {
            appliance: format!("sim-{i}"),
            epoch: 1,
        })
        .collect();
    let mut chain = StoreChain::default();
    assert!(chain.append(&s, events, 0).await.unwrap());
    // 126 lines and the head in each: 126 + 126 + 48.
    assert_eq!(chain.writes(), 3);
    assert_eq!(chain.lines(), 300);
    let verified = verify_store(&s).await.unwrap();
    assert_eq!(verified.lines, 300);
}
