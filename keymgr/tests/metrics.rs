//! Signed metric advertisements between key agents, over real QUIC with certificates from
//! a real authority: who gets them, and what a forged or flooding sender achieves.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use cpclink_keymgr::agent::{enrol_only, AgentOptions, KeyAgent, SaEvent};
use cpclink_keymgr::authority::Authority;
use cpclink_keymgr::config::AuthorityConfig;
use cpclink_keymgr::metrics::{MetricSigner, MAX_ADVERTISEMENT, RECEIPT_BURST, RECEIPT_RATE};
use cpclink_keymgr::pki::KeyedCert;
use cpclink_keymgr::proto::{self, Message};
use cpclink_keymgr::seal::Kek;
use cpclink_keymgr::{tls, Error};
use tokio::sync::mpsc::UnboundedReceiver;

struct Plane {
    dir: tempfile::TempDir,
    authority: Authority,
    kek_file: std::path::PathBuf,
}

async fn plane() -> Plane {
    let dir = tempfile::tempdir().unwrap();
    let kek_file = dir.path().join("kek");
    std::fs::write(&kek_file, "22".repeat(32)).unwrap();
    let cfg = AuthorityConfig::on_loopback(dir.path().join("authority"), kek_file.clone());
    let authority = Authority::start(&cfg).await.unwrap();
    Plane {
        dir,
        authority,
        kek_file,
    }
}

impl Plane {
    fn token(&self, id: &str, tenant: &str) -> String {
        self.authority
            .mint_token(id, "dc1", tenant, Duration::from_secs(600))
            .unwrap()
    }

    async fn agent(&self, id: &str, tenant: &str) -> (KeyAgent, UnboundedReceiver<SaEvent>) {
        KeyAgent::start(self.options(id, tenant)).await.unwrap()
    }

    fn options(&self, id: &str, tenant: &str) -> AgentOptions {
        AgentOptions {
            appliance: id.into(),
            authorities: vec![self.authority.local_addr().unwrap()],
            listen: (Ipv4Addr::LOCALHOST, 0).into(),
            state_dir: self.dir.path().join(id),
            kek: Kek::load(&self.kek_file, "kek_file").unwrap(),
            ca_cert: self.authority.ca_cert(),
            token: Some(zeroize::Zeroizing::new(self.token(id, tenant))),
            endpoints: vec![],
            capabilities: vec![],
            prefixes: vec![],
            suite: cpclink_dataplane::crypto::Suite::AesGcm256,
            sa_lifetime: Duration::from_secs(3600),
            rekey_grace: Duration::from_secs(5),
        }
    }

    /// A certificate (and key) for `id`, enrolled without running an agent.
    async fn certificate(&self, id: &str, tenant: &str) -> KeyedCert {
        let addr = self.authority.local_addr().unwrap();
        enrol_only(addr, &self.authority.ca_cert(), id, &self.token(id, tenant))
            .await
            .unwrap()
    }

    /// A connection to `to`'s agent as the holder of `cert`.
    async fn connect_as(&self, cert: &KeyedCert, to: &KeyAgent) -> quinn::Connection {
        let ep = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let cfg = tls::client_config(&self.authority.ca_cert(), Some(cert)).unwrap();
        ep.connect_with(cfg, to.local_addr().unwrap(), to.id())
            .unwrap()
            .await
            .unwrap()
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The metric advertisements among the events that arrive within `within`.
async fn advertisements(
    events: &mut UnboundedReceiver<SaEvent>,
    within: Duration,
) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if let SaEvent::Metrics {
            peer,
            advertisement,
        } = event
        {
            got.push((peer, advertisement));
        }
    }
    got
}

/// The next metric advertisement among the events.
async fn next_advertisement(events: &mut UnboundedReceiver<SaEvent>) -> (String, Vec<u8>) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("no advertisement arrived")
            .expect("the event stream ended");
        if let SaEvent::Metrics {
            peer,
            advertisement,
        } = event
        {
            return (peer, advertisement);
        }
    }
}

/// Sends one frame on a stream of its own, as an agent does.
async fn send(conn: &quinn::Connection, msg: &Message) {
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    proto::write_frame(&mut send, msg).await.unwrap();
    send.finish().unwrap();
}

fn signed(signer: &MetricSigner, advertisement: &[u8]) -> Message {
    Message::Metrics {
        advertisement: advertisement.to_vec(),
        signature: signer.sign(advertisement).unwrap(),
    }
}

#[tokio::test]
async fn an_advertisement_reaches_the_peers_policy_allows_and_no_other() {
    let p = plane().await;
    let (a, _a_events) = p.agent("a", "acme").await;
    let (b, mut b_events) = p.agent("b", "acme").await;
    let (c, mut c_events) = p.agent("c", "other").await;
    eventually("b joins a's view", || {
        a.directory().sa_targets("a").iter().any(|e| e.id == "b")
    })
    .await;

    let advertisement = b"dc1: gpu 7/10, cpu 3/10".to_vec();
    assert_eq!(a.publish_metrics(advertisement.clone()).unwrap(), 1);
    assert_eq!(
        next_advertisement(&mut b_events).await,
        ("a".to_owned(), advertisement)
    );
    assert_eq!(b.metric_counters().received, 1);
    // c is of another tenant: not addressed, and it would refuse a's connection anyway.
    assert!(advertisements(&mut c_events, Duration::from_millis(300))
        .await
        .is_empty());
    assert_eq!(c.metric_counters().received, 0);

    // Over the cap: refused at once, nothing sent.
    let e = a
        .publish_metrics(vec![0; MAX_ADVERTISEMENT + 1])
        .unwrap_err();
    assert!(matches!(e, Error::AdvertisementTooLarge { .. }), "{e}");
    assert!(advertisements(&mut b_events, Duration::from_millis(300))
        .await
        .is_empty());
}

#[tokio::test]
async fn a_forged_advertisement_is_dropped_and_counted_not_delivered() {
    let p = plane().await;
    let (b, mut b_events) = p.agent("b", "acme").await;
    let a = p.certificate("a", "acme").await;
    let x = p.certificate("x", "acme").await;
    eventually("a in b's directory", || b.directory().is_active("a")).await;
    let conn = p.connect_as(&a, &b).await;

    // Signed by a's own key over a's connection: delivered, as from a.
    let good = MetricSigner::new("a", &a).unwrap();
    send(&conn, &signed(&good, b"genuine")).await;
    // Signed by another appliance's valid key, claiming to be a.
    send(
        &conn,
        &signed(&MetricSigner::new("a", &x).unwrap(), b"by x"),
    )
    .await;
    // a's signature, the advertisement altered on the way.
    let Message::Metrics { signature, .. } = signed(&good, b"gpu 1/10") else {
        unreachable!()
    };
    let altered = Message::Metrics {
        advertisement: b"gpu 9/10".to_vec(),
        signature,
    };
    send(&conn, &altered).await;
    // a's key, but over x's id: the id is part of what is signed.
    send(
        &conn,
        &signed(&MetricSigner::new("x", &a).unwrap(), b"as x"),
    )
    .await;

    eventually("all four frames handled", || {
        let n = b.metric_counters();
        n.received + n.forged == 4
    })
    .await;
    let counters = b.metric_counters();
    assert_eq!((counters.received, counters.forged), (1, 3));
    let got = advertisements(&mut b_events, Duration::from_millis(300)).await;
    assert_eq!(got, [("a".to_owned(), b"genuine".to_vec())]);
}

#[tokio::test]
async fn a_flooding_peer_is_held_to_its_receipt_rate() {
    let p = plane().await;
    let (b, mut b_events) = p.agent("b", "acme").await;
    let a = p.certificate("a", "acme").await;
    eventually("a in b's directory", || b.directory().is_active("a")).await;
    let conn = p.connect_as(&a, &b).await;
    let signer = MetricSigner::new("a", &a).unwrap();
    let frame = signed(&signer, b"again and again");

    // Enough that even a slow machine sends them faster than the rate refills.
    const SENT: u64 = 400;
    let start = Instant::now();
    for _ in 0..SENT {
        send(&conn, &frame).await;
    }
    eventually("every frame handled", || {
        let n = b.metric_counters();
        n.received + n.flooded == SENT
    })
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let counters = b.metric_counters();
    // A burst plus what the rate refilled while the frames arrived, no more.
    let allowed = u64::from(RECEIPT_BURST) + (f64::from(RECEIPT_RATE) * elapsed).ceil() as u64;
    assert!(
        counters.received <= allowed && counters.flooded > 0,
        "{counters:?} in {elapsed:.2} s"
    );
    assert_eq!(counters.forged, 0);
    let got = advertisements(&mut b_events, Duration::from_millis(300)).await;
    assert_eq!(got.len() as u64, counters.received);
}

/// A peer whose agent ran, joined and then went silent (its address now swallows every
/// packet) used to hold the connection cache while its handshake timed out, so the
/// advertisement to every peer queued behind it timed out too.
#[tokio::test]
async fn a_silent_peer_delays_no_other_peer() {
    let p = plane().await;
    let (a, _a_events) = p.agent("a", "acme").await;
    let (b, mut b_events) = p.agent("b", "acme").await;
    // a0 runs in a runtime of its own, so that dropping it stops the agent for good.
    // The authority runs on this test's runtime: wait for a0 without blocking it.
    let (started, a0_started) = tokio::sync::oneshot::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let options = p.options("a0", "acme");
    let a0 = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (agent, _events) = rt.block_on(KeyAgent::start(options)).unwrap();
        started.send(agent.local_addr().unwrap()).unwrap();
        stopped.recv().unwrap();
    });
    let a0_addr = a0_started.await.unwrap();
    eventually("a0 and b join a's view", || {
        a.directory().sa_targets("a").len() == 2
    })
    .await;
    stop.send(()).unwrap();
    tokio::task::spawn_blocking(move || a0.join().unwrap())
        .await
        .unwrap();
    let _black_hole = std::net::UdpSocket::bind(a0_addr).unwrap();

    let start = Instant::now();
    assert_eq!(a.publish_metrics(b"dc1: gpu 2/10".to_vec()).unwrap(), 2);
    assert_eq!(next_advertisement(&mut b_events).await.0, "a");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "b waited {:?} for a0",
        start.elapsed()
    );
    assert_eq!(b.metric_counters().received, 1);
}
