//! A revocation is pushed to the revoked appliance's peers only, over real QUIC on
//! loopback; an appliance that may not talk to it hears nothing, and its next directory
//! delta carries it past the revocation's version.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use cpclink_keymgr::agent::{AgentOptions, KeyAgent};
use cpclink_keymgr::authority::Authority;
use cpclink_keymgr::config::AuthorityConfig;
use cpclink_keymgr::seal::Kek;
use cpclink_keymgr::store::{AnyStore, MemoryStore};

mod support;
use support::authority::authority_config;

async fn agent(cfg: &AuthorityConfig, authority: &Authority, id: &str, tenant: &str) -> KeyAgent {
    let token = authority
        .mint_token(id, "dc1", tenant, Duration::from_secs(600))
        .unwrap();
    let opts = AgentOptions {
        appliance: id.into(),
        authorities: vec![authority.local_addr().unwrap()],
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: cfg.state_dir.with_file_name(id),
        kek: Kek::load(&cfg.kek_file, "kek_file").unwrap(),
        ca_cert: authority.ca_cert(),
        token: Some(zeroize::Zeroizing::new(token)),
        endpoints: vec![],
        capabilities: vec![],
        prefixes: vec![],
        suite: cpclink_dataplane::crypto::Suite::AesGcm256,
        sa_lifetime: Duration::from_secs(3600),
        rekey_grace: Duration::from_millis(200),
    };
    let (agent, mut events) =
        KeyAgent::start_with_store(opts, AnyStore::Memory(MemoryStore::default()))
            .await
            .unwrap();
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    agent
}

async fn reaches(agent: &KeyAgent, version: u64) {
    let mut v = agent.directory_version();
    tokio::time::timeout(Duration::from_secs(10), v.wait_for(|v| *v >= version))
        .await
        .unwrap_or_else(|_| panic!("{} never reached version {version}", agent.id()))
        .unwrap();
}

#[tokio::test]
async fn a_revocation_reaches_the_peers_of_the_revoked_appliance_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = authority_config(dir.path());
    let authority = Authority::start(&cfg).await.unwrap();
    // a and b share tenant acme; c is of tenant other and may talk to neither.
    let a = agent(&cfg, &authority, "a", "acme").await;
    let b = agent(&cfg, &authority, "b", "acme").await;
    let c = agent(&cfg, &authority, "c", "other").await;
    // Every agent has announced itself (its `joined` upsert) and heard of its peers'.
    let settled = |x: &KeyAgent, ids: &[&str]| {
        let d = x.directory();
        ids.iter()
            .all(|id| d.appliances.get(*id).is_some_and(|e| e.joined))
    };
    let start = Instant::now();
    while !(settled(&b, &["a", "b"]) && settled(&c, &["c"])) {
        assert!(start.elapsed() < Duration::from_secs(10), "never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c_before = *c.directory_version().borrow();

    let revoked = authority.revoke("a", "test").await.unwrap();
    reaches(&b, revoked).await;
    assert!(!b.directory().is_active("a"), "b enforces the revocation");
    // c is sent nothing: given time, its copy stays where it was.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *c.directory_version().borrow(),
        c_before,
        "c was pushed a revocation"
    );
    assert!(!c.directory().appliances.contains_key("a"));

    // The next change c hears of carries it past the revocation's version.
    let d = agent(&cfg, &authority, "d", "other").await;
    let now = authority.directory().await.version;
    assert!(now > revoked);
    reaches(&c, now).await;
    assert!(c.directory().is_active("d"));
    for x in [&a, &b, &c, &d] {
        x.shutdown();
    }
    authority.shutdown();
}
