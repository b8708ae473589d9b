//! Certificate renewal over real QUIC on loopback: an agent renews before its certificate
//! expires, without a token, keeps the renewed one across a restart, and an appliance
//! whose certificate expired needs a token again.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use cpclink_keymgr::agent::{enrol_only, AgentOptions, KeyAgent};
use cpclink_keymgr::authority::Authority;
use cpclink_keymgr::config::AuthorityConfig;
use cpclink_keymgr::pki;
use cpclink_keymgr::seal::Kek;
use cpclink_keymgr::store::{AnyStore, MemoryStore, Store, Write};

mod support;
use support::authority::authority_config;

fn options(
    cfg: &AuthorityConfig,
    authority: &Authority,
    id: &str,
    token: Option<String>,
) -> AgentOptions {
    AgentOptions {
        appliance: id.into(),
        authorities: vec![authority.local_addr().unwrap()],
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: cfg.state_dir.with_file_name(id),
        kek: Kek::load(&cfg.kek_file, "kek_file").unwrap(),
        ca_cert: authority.ca_cert(),
        token: token.map(zeroize::Zeroizing::new),
        endpoints: vec![],
        capabilities: vec![],
        prefixes: vec![],
        suite: cpclink_dataplane::crypto::Suite::AesGcm256,
        sa_lifetime: Duration::from_secs(3600),
        rekey_grace: Duration::from_millis(200),
    }
}

async fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn certificates_renew_before_expiry_without_a_token_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = authority_config(dir.path());
    let authority = Authority::start(&cfg).await.unwrap();
    authority.set_cert_lifetime(Duration::from_secs(6));
    let token = |id: &str| {
        authority
            .mint_token(id, "dc1", "acme", Duration::from_secs(600))
            .unwrap()
    };
    let store = MemoryStore::default();
    let (a, _ea) = KeyAgent::start_with_store(
        options(&cfg, &authority, "a", Some(token("a"))),
        AnyStore::Memory(store.clone()),
    )
    .await
    .unwrap();
    let (b, _eb) = KeyAgent::start_with_store(
        options(&cfg, &authority, "b", Some(token("b"))),
        AnyStore::Memory(MemoryStore::default()),
    )
    .await
    .unwrap();
    until("a connected", Duration::from_secs(10), || {
        a.authority_connected()
    })
    .await;
    let first = a.certificate_serial();
    let first_end = pki::not_after(&store.get("identity/cert").await.unwrap().unwrap()).unwrap();

    // Due at two thirds of the six seconds: renewed over the live connection.
    until("a renewed", Duration::from_secs(10), || {
        a.certificate_serial() != first
    })
    .await;
    let renewed = a.certificate_serial();
    // The store holds the renewed certificate, and the directory lists its serial.
    let stored = store.get("identity/cert").await.unwrap().unwrap();
    assert!(pki::same_serial(
        &pki::serial_of(&stored).unwrap(),
        &renewed
    ));
    let listed = authority.directory().await.appliances["a"]
        .cert_serial
        .clone();
    assert!(pki::same_serial(&listed, &renewed), "{listed} vs {renewed}");
    // Its peer learns the new serial, and SAs still flow both ways on new connections.
    until("b sees a's new serial", Duration::from_secs(5), || {
        b.directory()
            .appliances
            .get("a")
            .is_some_and(|e| pki::same_serial(&e.cert_serial, &renewed))
    })
    .await;
    b.request_sa("a").await.unwrap();
    a.request_sa("b").await.unwrap();

    // Past the first certificate's expiry, a restart on the store needs no token.
    a.shutdown();
    let wait = first_end
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(500)).await;
    let (a2, _ea2) = KeyAgent::start_with_store(
        options(&cfg, &authority, "a", None),
        AnyStore::Memory(store.clone()),
    )
    .await
    .unwrap();
    until("a reconnected", Duration::from_secs(10), || {
        a2.authority_connected()
    })
    .await;
    a2.shutdown();
    b.shutdown();
    authority.shutdown();
}

#[tokio::test]
async fn an_expired_certificate_needs_a_token_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = authority_config(dir.path());
    let authority = Authority::start(&cfg).await.unwrap();
    authority.set_cert_lifetime(Duration::from_secs(1));
    let addr = authority.local_addr().unwrap();
    let issued = enrol_only(
        addr,
        &authority.ca_cert(),
        "c",
        &authority
            .mint_token("c", "dc1", "acme", Duration::from_secs(600))
            .unwrap(),
    )
    .await
    .unwrap();
    // An agent store holding the certificate, as an agent that was stopped too long.
    let kek = Kek::load(&cfg.kek_file, "kek_file").unwrap();
    let store = MemoryStore::default();
    store
        .apply(vec![
            Write::Put("identity/cert".into(), issued.cert.to_vec()),
            Write::Put(
                "identity/key".into(),
                kek.seal("identity/c", &issued.key).unwrap(),
            ),
        ])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    authority.set_cert_lifetime(Duration::from_secs(3600));

    let refused = KeyAgent::start_with_store(
        options(&cfg, &authority, "c", None),
        AnyStore::Memory(store.clone()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("expired") && refused.contains("token"),
        "{refused}"
    );

    let token = authority
        .mint_token("c", "dc1", "acme", Duration::from_secs(600))
        .unwrap();
    let (c, _ec) = KeyAgent::start_with_store(
        options(&cfg, &authority, "c", Some(token)),
        AnyStore::Memory(store),
    )
    .await
    .unwrap();
    until("c connected", Duration::from_secs(10), || {
        c.authority_connected()
    })
    .await;
    assert!(!pki::same_serial(
        &c.certificate_serial(),
        &pki::serial_of(&issued.cert).unwrap()
    ));
    c.shutdown();
    authority.shutdown();
}

/// A renewal the authority recorded but whose certificate the agent never stored (the
/// reply was lost, or the agent stopped first) leaves the agent with its previous
/// certificate of the same key: the authority still accepts that one, and the agent,
/// seeing another serial listed for itself, renews at once instead of being locked out
/// as if revoked.
#[tokio::test]
async fn a_renewal_whose_reply_was_lost_is_repaired_by_renewing_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = authority_config(dir.path());
    let authority = Authority::start(&cfg).await.unwrap();
    let token = |id: &str| {
        authority
            .mint_token(id, "dc1", "acme", Duration::from_secs(600))
            .unwrap()
    };
    let store = MemoryStore::default();
    let (a, _ea) = KeyAgent::start_with_store(
        options(&cfg, &authority, "a", Some(token("a"))),
        AnyStore::Memory(store.clone()),
    )
    .await
    .unwrap();
    let (b, _eb) = KeyAgent::start_with_store(
        options(&cfg, &authority, "b", Some(token("b"))),
        AnyStore::Memory(MemoryStore::default()),
    )
    .await
    .unwrap();
    until("a connected", Duration::from_secs(10), || {
        a.authority_connected()
    })
    .await;
    let before = store.get("identity/cert").await.unwrap().unwrap();
    let lost = a.renew().await.unwrap();
    a.shutdown();
    // As if the agent had stopped before storing the renewed certificate.
    store.put("identity/cert", &before).await.unwrap();

    let (a2, _ea2) = KeyAgent::start_with_store(
        options(&cfg, &authority, "a", None),
        AnyStore::Memory(store.clone()),
    )
    .await
    .unwrap();
    until("a renewed again", Duration::from_secs(10), || {
        let now = a2.certificate_serial();
        !pki::same_serial(&now, &pki::serial_of(&before).unwrap()) && !pki::same_serial(&now, &lost)
    })
    .await;
    assert!(!a2.is_revoked());
    let renewed = a2.certificate_serial();
    until("b sees a's new serial", Duration::from_secs(5), || {
        b.directory()
            .appliances
            .get("a")
            .is_some_and(|e| pki::same_serial(&e.cert_serial, &renewed))
    })
    .await;
    b.request_sa("a").await.unwrap();
    a2.request_sa("b").await.unwrap();
    a2.shutdown();
    b.shutdown();
    authority.shutdown();
}
