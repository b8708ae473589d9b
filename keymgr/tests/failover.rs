//! Agents that know several authority replicas, over real QUIC on loopback: one that does
//! not answer is skipped, and a follower that closes with `CLOSE_NOT_LEADER` sends the agent
//! to the leader it names, for enrolment and for the feed alike.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpclink_keymgr::agent::{AgentOptions, KeyAgent};
use cpclink_keymgr::authority::{Authority, StatePaths, CLOSE_NOT_LEADER};
use cpclink_keymgr::config::AuthorityConfig;
use cpclink_keymgr::pki::{self, Ca};
use cpclink_keymgr::seal::Kek;
use cpclink_keymgr::store::{AnyStore, MemoryStore};
use cpclink_keymgr::tls;

mod support;
use support::authority::authority_config;

fn options(
    cfg: &AuthorityConfig,
    authorities: Vec<SocketAddr>,
    ca: &Authority,
    id: &str,
    token: String,
) -> AgentOptions {
    AgentOptions {
        appliance: id.into(),
        authorities,
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: cfg.state_dir.with_file_name(id),
        kek: Kek::load(&cfg.kek_file, "kek_file").unwrap(),
        ca_cert: ca.ca_cert(),
        token: Some(zeroize::Zeroizing::new(token)),
        endpoints: vec![],
        capabilities: vec![],
        prefixes: vec![],
        suite: cpclink_dataplane::crypto::Suite::AesGcm256,
        sa_lifetime: Duration::from_secs(3600),
        rekey_grace: Duration::from_millis(200),
    }
}

async fn connected(agent: &KeyAgent, within: Duration) {
    let start = Instant::now();
    while !agent.authority_connected() {
        assert!(start.elapsed() < within, "not connected within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_agent_skips_an_authority_that_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = authority_config(dir.path());
    let authority = Authority::start(&cfg).await.unwrap();
    let live = authority.local_addr().unwrap();
    // Bound and held, never answering: a replica whose host is gone.
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let dead = silent.local_addr().unwrap();
    let token = authority
        .mint_token("a", "dc1", "acme", Duration::from_secs(600))
        .unwrap();

    let started = Instant::now();
    let (agent, _events) = KeyAgent::start_with_store(
        options(&cfg, vec![dead, live], &authority, "a", token),
        AnyStore::Memory(MemoryStore::default()),
    )
    .await
    .unwrap();
    connected(&agent, Duration::from_secs(20)).await;
    assert_eq!(agent.current_authority(), live);
    assert!(authority.directory().await.is_active("a"));
    // Enrolment gave up on the silent one after its handshake limit, and the feed went to
    // the replica that enrolled the agent without trying the silent one again.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    agent.shutdown();
    authority.shutdown();
}

/// A replica that is not the leader: it holds a certificate of the cluster's CA and closes
/// every connection with `CLOSE_NOT_LEADER`, naming `leader`. Counts the connections.
fn follower(state_dir: &Path, kek: &Kek, leader: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let paths = StatePaths::new(state_dir);
    let ca_cert = pki::cert_from_pem(&std::fs::read_to_string(&paths.ca_cert).unwrap()).unwrap();
    let ca_key = kek
        .open(
            "ca-key",
            &std::fs::read(state_dir.join("ca.key.sealed")).unwrap(),
        )
        .unwrap();
    let ca = Ca::load(&ca_cert, &ca_key).unwrap();
    let server = ca.issue_authority().unwrap();
    let endpoint = quinn::Endpoint::server(
        tls::server_config(&ca_cert, &server, false).unwrap(),
        (Ipv4Addr::LOCALHOST, 0).into(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    conn.close(CLOSE_NOT_LEADER.into(), leader.to_string().as_bytes());
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_follower_sends_the_agent_to_the_leader_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = authority_config(dir.path());
    let authority = Authority::start(&cfg).await.unwrap();
    let leader = authority.local_addr().unwrap();
    let kek = Kek::load(&cfg.kek_file, "kek_file").unwrap();
    let (follower, seen) = follower(&cfg.state_dir, &kek, leader);
    // The leader is not in the agent's list: the follower's word is enough (its
    // certificate is the cluster CA's, checked against the authority's name).
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let dead = silent.local_addr().unwrap();
    let token = authority
        .mint_token("b", "dc1", "acme", Duration::from_secs(600))
        .unwrap();
    let store = MemoryStore::default();

    // Enrolment asked at the follower is made at the leader.
    let (agent, _events) = KeyAgent::start_with_store(
        options(&cfg, vec![follower, dead], &authority, "b", token),
        AnyStore::Memory(store.clone()),
    )
    .await
    .unwrap();
    connected(&agent, Duration::from_secs(10)).await;
    assert_eq!(agent.current_authority(), leader);
    assert!(authority.directory().await.is_active("b"));
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the follower was asked first"
    );
    agent.shutdown();

    // Restarted on its store (enrolled, no token): the feed starts at the follower, which
    // closes with CLOSE_NOT_LEADER; the agent goes to the named leader before the silent
    // replica that comes next in its list.
    let mut opts = options(&cfg, vec![follower, dead], &authority, "b", String::new());
    opts.token = None;
    let started = Instant::now();
    let (agent, _events) = KeyAgent::start_with_store(opts, AnyStore::Memory(store))
        .await
        .unwrap();
    connected(&agent, Duration::from_secs(10)).await;
    assert_eq!(agent.current_authority(), leader);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "the feed went to the follower first"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the silent replica was tried before the leader: {:?}",
        started.elapsed()
    );
    agent.shutdown();
    authority.shutdown();
}
