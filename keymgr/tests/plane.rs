//! The key plane end to end on loopback: a real authority, real key agents over real QUIC,
//! and PSP packets over real UDP sealed with keys the agents negotiated.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use cpclink_dataplane::crypto::Backend;
use cpclink_dataplane::psp;
use cpclink_dataplane::sa::{RxSa, SaLimits, Spi, TxSa};
use cpclink_keymgr::agent::{enrol_only, AgentOptions, KeyAgent, SaEvent, TxSaGrant};
use cpclink_keymgr::authority::Authority;
use cpclink_keymgr::config::AuthorityConfig;
use cpclink_keymgr::directory::{Rule, Selector};
use cpclink_keymgr::pki::identity_of;
use cpclink_keymgr::proto::{self, Message, MAX_FRAME};
use cpclink_keymgr::seal::Kek;
use cpclink_keymgr::{audit, tls};
use tokio::sync::mpsc::UnboundedReceiver;

struct Plane {
    dir: tempfile::TempDir,
    authority: Authority,
    cfg: AuthorityConfig,
}

async fn plane() -> Plane {
    let (dir, cfg) = plane_config();
    let authority = Authority::start(&cfg).await.unwrap();
    Plane {
        dir,
        authority,
        cfg,
    }
}

fn plane_config() -> (tempfile::TempDir, AuthorityConfig) {
    let dir = tempfile::tempdir().unwrap();
    let kek_file = dir.path().join("kek");
    std::fs::write(&kek_file, "11".repeat(32)).unwrap();
    let cfg = AuthorityConfig::on_loopback(dir.path().join("authority"), kek_file);
    (dir, cfg)
}

impl Plane {
    fn addr(&self) -> SocketAddr {
        self.authority.local_addr().unwrap()
    }

    fn token(&self, id: &str, tenant: &str) -> String {
        self.authority
            .mint_token(id, "dc1", tenant, Duration::from_secs(600))
            .unwrap()
    }

    async fn agent(&self, id: &str, tenant: &str) -> (KeyAgent, UnboundedReceiver<SaEvent>) {
        let opts = AgentOptions {
            appliance: id.into(),
            authorities: vec![self.addr()],
            listen: (Ipv4Addr::LOCALHOST, 0).into(),
            state_dir: self.dir.path().join(id),
            kek: Kek::load(&self.cfg.kek_file, "kek_file").unwrap(),
            ca_cert: self.authority.ca_cert(),
            token: Some(zeroize::Zeroizing::new(self.token(id, tenant))),
            endpoints: vec![],
            capabilities: vec![],
            prefixes: vec![],
            suite: cpclink_dataplane::crypto::Suite::AesGcm256,
            sa_lifetime: Duration::from_secs(3600),
            rekey_grace: Duration::from_secs(5),
        };
        KeyAgent::start(opts).await.unwrap()
    }
}

/// Waits until each agent's directory copy lists the given appliances as active.
async fn settle(expect: &[(&KeyAgent, &[&str])]) {
    eventually("directory propagation", || {
        expect
            .iter()
            .all(|(agent, ids)| ids.iter().all(|id| agent.directory().is_active(id)))
    })
    .await;
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An agent whose enrolment reply was lost (its connection cut under load, a failover)
/// asks again with the same token and key pair: it gets the certificate it was issued and
/// nothing is written again. The same token with another key pair, or for an appliance
/// revoked since, is still refused as spent.
#[tokio::test]
async fn a_lost_enrolment_reply_is_sent_again_for_the_same_key_pair_only() {
    let p = plane().await;
    let token = p.token("edge-1", "acme");
    let (_key, csr) = cpclink_keymgr::pki::appliance_csr("edge-1").unwrap();
    let enrol = |csr: Vec<u8>| {
        let (authority, token) = (p.authority.clone(), token.clone());
        async move {
            authority
                .enrol(&token, "edge-1", &csr, String::new(), vec![], vec![])
                .await
        }
    };
    let first = enrol(csr.clone()).await.unwrap();
    let version = p.authority.directory().await.version;
    let again = enrol(csr.clone()).await.unwrap();
    assert_eq!(again, first, "not the certificate first issued");
    assert_eq!(
        p.authority.directory().await.version,
        version,
        "written again"
    );

    let (_other, other_csr) = cpclink_keymgr::pki::appliance_csr("edge-1").unwrap();
    let e = enrol(other_csr).await.unwrap_err();
    assert!(e.to_string().contains("already used"), "{e}");

    p.authority.revoke("edge-1", "test").await.unwrap();
    // Revoked: the old key pair gets nothing, lost reply or not.
    let e = enrol(csr).await.unwrap_err();
    assert!(!e.to_string().contains("BEGIN CERTIFICATE"), "{e}");
    assert!(!p.authority.directory().await.is_active("edge-1"));
}

#[tokio::test]
async fn enrolment_accepts_a_token_once_and_refuses_reused_expired_and_forged() {
    let p = plane().await;
    let ca = p.authority.ca_cert();
    let token = p.token("edge-1", "acme");
    let cert = enrol_only(p.addr(), &ca, "edge-1", &token).await.unwrap();
    let named = identity_of(&cert.cert).unwrap();
    assert_eq!(
        (named.appliance.as_str(), named.centre.as_str()),
        ("edge-1", "dc1")
    );
    assert!(p.authority.directory().await.is_active("edge-1"));

    let reused = enrol_only(p.addr(), &ca, "edge-1", &token)
        .await
        .unwrap_err();
    assert!(reused.to_string().contains("already used"), "{reused}");

    let expired = p
        .authority
        .mint_token("edge-2", "dc1", "acme", Duration::ZERO)
        .unwrap();
    let e = enrol_only(p.addr(), &ca, "edge-2", &expired)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");

    // Claims rewritten to another appliance, MAC kept: forged.
    let fresh = p.token("edge-3", "acme");
    let mut parts: Vec<String> = fresh.split('.').map(str::to_owned).collect();
    let claims = String::from_utf8(hex::decode(&parts[1]).unwrap()).unwrap();
    parts[1] = hex::encode(claims.replace("edge-3", "edge-9"));
    let e = enrol_only(p.addr(), &ca, "edge-9", &parts.join("."))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("forged"), "{e}");
    assert!(!p
        .authority
        .directory()
        .await
        .appliances
        .contains_key("edge-9"));
    // The untouched token still works: the refusals consumed nothing.
    enrol_only(p.addr(), &ca, "edge-3", &fresh).await.unwrap();

    let log = audit::verify(&p.cfg.state_dir.join("audit.jsonl")).unwrap();
    assert!(log.lines >= 2);
}

/// An agent configured as one appliance presenting a token minted for another used to spend
/// it and list the other, a ghost that peers then asked for SAs in vain.
#[tokio::test]
async fn a_token_for_another_appliance_spends_nothing_and_names_both() {
    let p = plane().await;
    let ca = p.authority.ca_cert();
    let token = p.token("dc9-edge", "acme");
    let e = enrol_only(p.addr(), &ca, "dcx-edge", &token)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("dc9-edge") && e.contains("dcx-edge"), "{e}");
    let dir = p.authority.directory().await;
    assert!(dir.appliances.is_empty(), "{:?}", dir.appliances.keys());
    // Not spent: the right agent still enrols with it.
    enrol_only(p.addr(), &ca, "dc9-edge", &token).await.unwrap();
    assert!(p.authority.directory().await.is_active("dc9-edge"));
    // Enrolled but never connected with its certificate: listed, yet no SA target.
    let (a, _a_events) = p.agent("a", "acme").await;
    let (b, _b_events) = p.agent("b", "acme").await;
    settle(&[(&a, &["b", "dc9-edge"])]).await;
    eventually("b joins", || {
        a.directory().sa_targets("a").iter().any(|e| e.id == "b")
    })
    .await;
    let dir = a.directory();
    let targets: Vec<&str> = dir.sa_targets("a").iter().map(|e| e.id.as_str()).collect();
    assert_eq!(targets, ["b"]);
    // Revoked: no target either.
    p.authority.revoke("b", "test").await.unwrap();
    eventually("b's revocation", || {
        a.directory().sa_targets("a").is_empty()
    })
    .await;
    drop(b);
}

/// The receive side of a toy data plane: rx SAs maintained from an agent's events.
struct Receiver {
    rx: HashMap<Spi, (String, RxSa)>,
    events: UnboundedReceiver<SaEvent>,
    retired: Vec<Spi>,
}

impl Receiver {
    fn new(events: UnboundedReceiver<SaEvent>) -> Self {
        Self {
            rx: HashMap::new(),
            events,
            retired: Vec::new(),
        }
    }

    fn pump(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                SaEvent::InstallRx {
                    peer,
                    spi,
                    suite,
                    key,
                } => {
                    let cipher = Backend::AwsLc.cipher(suite, key.as_bytes()).unwrap();
                    self.rx
                        .insert(spi, (peer, RxSa::new(spi, cipher, SaLimits::default())));
                }
                SaEvent::RetireRx { spis } => {
                    for s in spis {
                        self.rx.remove(&s);
                        self.retired.push(s);
                    }
                }
                SaEvent::RetirePeer { peer } => self.rx.retain(|_, (p, _)| *p != peer),
                _ => {}
            }
        }
    }

    /// Opens one packet; returns the payload if an installed SA accepted it.
    fn open(&mut self, packet: &mut [u8]) -> Option<Vec<u8>> {
        self.pump();
        let spi = psp::parse(packet).ok()?.spi;
        let (_, sa) = self.rx.get_mut(&spi)?;
        let opened = sa.open(packet).ok()?;
        Some(packet[opened.payload].to_vec())
    }
}

fn tx_sa(g: &TxSaGrant) -> TxSa {
    TxSa::from_key(
        g.spi,
        Backend::AwsLc,
        g.suite,
        &g.key,
        SaLimits::default(),
        Instant::now(),
    )
    .unwrap()
}

fn seal(tx: &mut TxSa, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 16 + payload.len() + 16];
    buf[16..16 + payload.len()].copy_from_slice(payload);
    tx.seal(4, 0, &mut buf).unwrap();
    buf
}

fn udp_pair() -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let b = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (a, b)
}

#[tokio::test]
async fn traffic_flows_with_agent_keys_and_unauthorised_peers_get_no_sa() {
    let p = plane().await;
    let (a, _a_events) = p.agent("a", "acme").await;
    let (b, b_events) = p.agent("b", "acme").await;
    let (c, _c_events) = p.agent("c", "other").await;
    settle(&[(&a, &["b"]), (&b, &["a"]), (&c, &["c"])]).await;

    let grant = a.request_sa("b").await.unwrap();
    assert_eq!(grant.peer, "b");
    let mut tx = tx_sa(&grant);
    let mut rx = Receiver::new(b_events);
    let (sock_a, sock_b) = udp_pair();
    for i in 0..200u32 {
        let payload = format!("packet {i}").into_bytes();
        sock_a.send(&seal(&mut tx, &payload)).unwrap();
        let mut buf = [0u8; 2048];
        let n = sock_b.recv(&mut buf).unwrap();
        assert_eq!(rx.open(&mut buf[..n]).as_deref(), Some(&payload[..]));
    }
    // A second SA gets a distinct SPI and key.
    let second = a.request_sa("b").await.unwrap();
    assert_ne!(second.spi, grant.spi);
    assert_ne!(second.key.as_bytes(), grant.key.as_bytes());

    // Other tenant: refused by c's own policy copy ...
    assert!(c.request_sa("b").await.is_err());
    // ... and by b's agent when c asks directly with its valid certificate.
    let c_cert = enrol_only(
        p.addr(),
        &p.authority.ca_cert(),
        "c2",
        &p.token("c2", "other"),
    )
    .await
    .unwrap();
    let reply = raw_request(&p, &c_cert, &b, "b", Message::SaRequest { suite: 1 }).await;
    assert!(
        !matches!(reply, Some(Message::SaGrant { .. })),
        "unauthorised peer got {reply:?}"
    );
}

/// Sends one message to an agent as the holder of `cert`; returns the reply (None when the
/// connection or stream was closed instead).
async fn raw_request(
    p: &Plane,
    cert: &cpclink_keymgr::pki::KeyedCert,
    to: &KeyAgent,
    name: &str,
    msg: Message,
) -> Option<Message> {
    let ep = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let cfg = tls::client_config(&p.authority.ca_cert(), Some(cert)).unwrap();
    let conn = ep
        .connect_with(cfg, to.local_addr().unwrap(), name)
        .unwrap()
        .await
        .ok()?;
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    proto::write_frame(&mut send, &msg).await.ok()?;
    send.finish().ok()?;
    proto::read_frame(&mut recv).await.ok().flatten()
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_survives() {
    let p = plane().await;
    let (b, _e) = p.agent("b", "acme").await;
    let a_cert = enrol_only(p.addr(), &p.authority.ca_cert(), "a", &p.token("a", "acme"))
        .await
        .unwrap();
    settle(&[(&b, &["a"])]).await;
    let ep = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let cfg = tls::client_config(&p.authority.ca_cert(), Some(&a_cert)).unwrap();
    let conn = ep
        .connect_with(cfg, b.local_addr().unwrap(), "b")
        .unwrap()
        .await
        .unwrap();
    for bad in [
        ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec(),
        vec![0, 0, 0, 2, 77, 0],
        vec![0, 0, 0, 2, proto::VERSION, 250],
    ] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bad).await.unwrap();
        send.finish().unwrap();
        let reply: Option<Message> = proto::read_frame(&mut recv).await.unwrap();
        assert!(matches!(reply, Some(Message::Error { .. })), "{reply:?}");
    }
    // Same connection, a good request now succeeds.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    proto::write_frame(&mut send, &Message::SaRequest { suite: 1 })
        .await
        .unwrap();
    send.finish().unwrap();
    let reply: Option<Message> = proto::read_frame(&mut recv).await.unwrap();
    assert!(matches!(reply, Some(Message::SaGrant { .. })), "{reply:?}");
}

#[tokio::test]
async fn rotation_under_traffic_loses_nothing_and_rekeys_before_retiring() {
    let p = plane().await;
    let (a, mut a_events) = p.agent("a", "acme").await;
    let (b, b_events) = p.agent("b", "acme").await;
    settle(&[(&a, &["b"]), (&b, &["a"])]).await;

    let first = a.request_sa("b").await.unwrap();
    let mut current = first.clone();
    let mut tx = tx_sa(&first);
    let mut rx = Receiver::new(b_events);
    let (sock_a, sock_b) = udp_pair();
    let mut sent = 0u64;
    let mut received = 0u64;
    let mut spis_used = vec![first.spi];
    let epoch0 = b.epoch().await;

    for rotation in 1..=3u64 {
        p.authority.rotate_all("test").await.unwrap();
        // Keep sending until a has installed an SA under b's new epoch.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                Instant::now() < deadline,
                "no rekey after rotation {rotation}"
            );
            while let Ok(ev) = a_events.try_recv() {
                if let SaEvent::InstallTx(g) = ev {
                    assert_eq!(g.peer, "b");
                    // Every retired SPI so far must be one the sender had already left.
                    tx = tx_sa(&g);
                    spis_used.push(g.spi);
                    current = g;
                }
            }
            let payload = sent.to_be_bytes();
            sock_a.send(&seal(&mut tx, &payload)).unwrap();
            sent += 1;
            let mut buf = [0u8; 256];
            let n = sock_b.recv(&mut buf).unwrap();
            assert_eq!(
                rx.open(&mut buf[..n]).as_deref(),
                Some(&payload[..]),
                "packet {sent} (SPI {}) was dropped",
                tx.spi()
            );
            received += 1;
            assert!(!rx.retired.contains(&tx.spi()), "the SA in use was retired");
            if current.epoch == epoch0 + rotation {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    assert_eq!(sent, received);
    assert_eq!(b.epoch().await, epoch0 + 3);
    // Rotations 2 and 3 overwrote the generations of the first two SAs: they were retired,
    // and only after the sender had moved on.
    assert!(rx.retired.contains(&spis_used[0]));
    assert!(!rx.retired.contains(&current.spi));
    // Never the same SPI twice.
    let mut unique = spis_used.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), spis_used.len());
}

#[tokio::test]
async fn revoked_appliance_is_cut_off_by_its_peers() {
    let p = plane().await;
    let (b, b_events) = p.agent("b", "acme").await;
    let (c, mut c_events) = p.agent("c", "acme").await;
    settle(&[(&b, &["c"]), (&c, &["b"])]).await;
    let grant = c.request_sa("b").await.unwrap();
    let mut tx = tx_sa(&grant);
    let mut rx = Receiver::new(b_events);
    let (sock_c, sock_b) = udp_pair();
    let mut buf = [0u8; 256];
    sock_c.send(&seal(&mut tx, b"before")).unwrap();
    let n = sock_b.recv(&mut buf).unwrap();
    assert_eq!(rx.open(&mut buf[..n]).as_deref(), Some(&b"before"[..]));

    p.authority.revoke("c", "test").await.unwrap();
    eventually("revocation reaching b", || !b.directory().is_active("c")).await;
    sock_c.send(&seal(&mut tx, b"after")).unwrap();
    let n = sock_b.recv(&mut buf).unwrap();
    assert_eq!(
        rx.open(&mut buf[..n]),
        None,
        "revoked peer's packet accepted"
    );
    assert!(!b.directory().is_active("c"));
    assert!(c.request_sa("b").await.is_err());
    // Even with its still-valid certificate, b refuses c directly.
    let _ = &mut c_events;
    assert!(b
        .grant("c", cpclink_dataplane::crypto::Suite::AesGcm256)
        .await
        .is_err());
    let status = p.authority.status().await;
    assert!(matches!(
        status,
        proto::AdminReply::Status { revoked: 1, .. }
    ));
}

/// Waits until the agent's directory version reaches `version`.
async fn reaches(agent: &KeyAgent, version: u64) {
    let mut rx = agent.directory_version();
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|v| *v >= version))
        .await
        .unwrap_or_else(|_| panic!("{} never reached version {version}", agent.id()))
        .unwrap();
}

fn listed(agent: &KeyAgent) -> Vec<String> {
    agent.directory().appliances.into_keys().collect()
}

#[tokio::test]
async fn a_change_reaches_every_affected_agent_and_only_those() {
    let p = plane().await;
    let (a, _ae) = p.agent("a", "acme").await;
    let (b, _be) = p.agent("b", "acme").await;
    let (c, _ce) = p.agent("c", "other").await;
    let (d, _de) = p.agent("d", "other").await;
    settle(&[(&a, &["b"]), (&b, &["a"]), (&c, &["d"]), (&d, &["c"])]).await;
    let before_c = *c.directory_version().borrow();
    let before_d = *d.directory_version().borrow();

    // An appliance's change goes to it and to those that may talk to it ...
    let v = p
        .authority
        .update_appliance("a", vec!["10.9.9.9:1000".into()], vec![])
        .await
        .unwrap();
    reaches(&a, v).await;
    reaches(&b, v).await;
    assert_eq!(b.directory().appliances["a"].endpoints, ["10.9.9.9:1000"]);
    // ... and to nobody else: the other tenant's copies do not move.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*c.directory_version().borrow(), before_c);
    assert_eq!(*d.directory_version().borrow(), before_d);
    assert_eq!(listed(&c), ["c", "d"]);

    // A policy change reaches everyone; only the pair it allows learns of each other.
    let pair = Rule {
        a: Selector {
            appliance: Some("a".into()),
            ..Selector::default()
        },
        b: Selector {
            appliance: Some("c".into()),
            ..Selector::default()
        },
        same_tenant: false,
    };
    let v = p
        .authority
        .set_rules(vec![Rule::same_tenant(), pair], "test")
        .await
        .unwrap();
    for agent in [&a, &b, &c, &d] {
        reaches(agent, v).await;
    }
    assert_eq!(listed(&a), ["a", "b", "c"]);
    assert_eq!(listed(&b), ["a", "b"]);
    assert_eq!(listed(&c), ["a", "c", "d"]);
    assert_eq!(listed(&d), ["c", "d"]);
    // The new entries are live: a reaches c's agent for an SA.
    assert_eq!(a.request_sa("c").await.unwrap().peer, "c");

    // Taking the rule away again: the pair drop each other, refuse each other.
    let v = p
        .authority
        .set_rules(vec![Rule::same_tenant()], "test")
        .await
        .unwrap();
    reaches(&a, v).await;
    reaches(&c, v).await;
    assert_eq!(listed(&a), ["a", "b"]);
    assert_eq!(listed(&c), ["c", "d"]);
    assert!(a.request_sa("c").await.is_err());
}

/// An older release could crash between marking a token used and recording its
/// appliance, leaving the token spent for nothing. Such a token completes once; redeeming
/// and recording are now one transaction, so the state cannot arise again.
#[tokio::test]
async fn a_token_spent_without_its_appliance_completes_once() {
    let (_dir, cfg) = plane_config();
    let token = cpclink_keymgr::authority::create_token(&cfg, "edge-1", "dc1", "acme", None, &[])
        .await
        .unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&hex::decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let token_id = claims["id"].as_str().unwrap();
    {
        use cpclink_keymgr::store::{RedbStore, Store};
        let store = RedbStore::open(&cfg.state_dir.join("authority.redb")).unwrap();
        store
            .put(&format!("token/{token_id}"), br#"["edge-1",1]"#)
            .await
            .unwrap();
    }
    let authority = Authority::start(&cfg).await.unwrap();
    let addr = authority.local_addr().unwrap();
    let ca = authority.ca_cert();
    enrol_only(addr, &ca, "edge-1", &token).await.unwrap();
    assert!(authority.directory().await.is_active("edge-1"));
    let again = enrol_only(addr, &ca, "edge-1", &token).await.unwrap_err();
    assert!(again.to_string().contains("already used"), "{again}");
}

/// The next scheduled rotation is kept in the store: one that fell due while the
/// authority was down is ordered as soon as it is back, not a full interval later.
#[test]
fn a_rotation_due_while_the_authority_was_down_happens_on_restart() {
    let (_dir, mut cfg) = plane_config();
    cfg.rotation_interval_secs = 2;
    let first = tokio::runtime::Runtime::new().unwrap();
    first.block_on(async {
        let authority = Authority::start(&cfg).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        authority.shutdown();
    });
    // Dropping the runtime drops every task of the first authority, and its store.
    drop(first);
    std::thread::sleep(Duration::from_millis(2500));
    cfg.rotation_interval_secs = 86_400;
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let authority = Authority::start(&cfg).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let proto::AdminReply::Status { rotation, .. } = authority.status().await {
                if rotation == 1 {
                    break;
                }
                assert_eq!(rotation, 0);
            }
            assert!(
                Instant::now() < deadline,
                "the due rotation was not ordered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Ordered once, and the next one is an interval away: no burst of catch-ups.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(matches!(
            authority.status().await,
            proto::AdminReply::Status { rotation: 1, .. }
        ));
    });
}

/// Waits until the authority holds `id`'s keys in escrow at `epoch`; returns them.
async fn escrowed_at(p: &Plane, id: &str, epoch: u64) -> cpclink_dataplane::sa::MasterKeys {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((e, keys)) = p.authority.escrowed_keys(id, "test").await.unwrap() {
            if e == epoch {
                return keys;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{id}'s keys at epoch {epoch} never escrowed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn master_keys_are_escrowed_sealed_to_the_authority_and_follow_rotations() {
    let p = plane().await;
    let (a, _ae) = p.agent("a", "acme").await;
    let (b, _be) = p.agent("b", "acme").await;
    settle(&[(&a, &["b"]), (&b, &["a"])]).await;
    let epoch = b.epoch().await;
    let keys = escrowed_at(&p, "b", epoch).await;
    // The escrowed keys are b's: they derive the very SA key b's agent granted.
    let grant = a.request_sa("b").await.unwrap();
    assert_eq!(
        keys.derive(grant.spi, grant.suite).unwrap().as_bytes(),
        grant.key.as_bytes()
    );
    // In the store the keys are sealed: no plaintext, and not openable as another's.
    let raw = std::fs::read(p.cfg.state_dir.join("authority.redb")).unwrap();
    let key_hex =
        |k: &cpclink_dataplane::sa::MasterKeys| hex::encode(k.key(k.current_generation()).unwrap());
    assert!(!raw.windows(64).any(|w| w == key_hex(&keys).as_bytes()));

    // After a rotation the new generation is escrowed too, and still matches.
    p.authority.rotate_all("test").await.unwrap();
    let keys = escrowed_at(&p, "b", epoch + 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let grant = loop {
        let g = a.request_sa("b").await.unwrap();
        if g.epoch == epoch + 1 {
            break g;
        }
        assert!(Instant::now() < deadline, "no SA of the new generation");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        keys.derive(grant.spi, grant.suite).unwrap().as_bytes(),
        grant.key.as_bytes()
    );
    let log = std::fs::read_to_string(p.cfg.state_dir.join("audit.jsonl")).unwrap();
    assert!(log.contains(r#""kind":"escrowed""#) && log.contains(r#""kind":"escrow_opened""#));
    audit::verify(&p.cfg.state_dir.join("audit.jsonl")).unwrap();
}

/// An agent keeps where it stands in the rotation sequence across restarts: one restarted
/// after rotations it missed catches up once (to the newest), and one restarted without
/// missing any does not rotate again.
#[test]
fn a_restarted_agent_catches_up_on_missed_rotations_once() {
    let (dir, cfg) = plane_config();
    let authority_rt = tokio::runtime::Runtime::new().unwrap();
    let authority = authority_rt.block_on(Authority::start(&cfg)).unwrap();
    let token = authority
        .mint_token("b", "dc1", "acme", Duration::from_secs(600))
        .unwrap();
    let options = |token: Option<String>| AgentOptions {
        appliance: "b".into(),
        authorities: vec![authority.local_addr().unwrap()],
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: dir.path().join("b"),
        kek: Kek::load(&cfg.kek_file, "kek_file").unwrap(),
        ca_cert: authority.ca_cert(),
        token: token.map(zeroize::Zeroizing::new),
        endpoints: vec![],
        capabilities: vec![],
        prefixes: vec![],
        suite: cpclink_dataplane::crypto::Suite::AesGcm256,
        sa_lifetime: Duration::from_secs(3600),
        rekey_grace: Duration::from_millis(100),
    };
    // Runs an agent in a runtime of its own until it has its directory and `until` holds
    // for its epoch, then a little longer (for any wrong extra rotation to show); returns
    // the epoch then. Dropping the runtime stops the agent and closes its store, as a
    // process exit would.
    let run_agent = |token: Option<String>, until: &dyn Fn(u64) -> bool| -> u64 {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let epoch = rt.block_on(async {
            let (agent, _events) = KeyAgent::start(options(token)).await.unwrap();
            let mut version = agent.directory_version();
            tokio::time::timeout(Duration::from_secs(20), version.wait_for(|v| *v > 0))
                .await
                .unwrap()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !until(agent.epoch().await) {
                assert!(Instant::now() < deadline, "agent stuck");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            agent.epoch().await
        });
        drop(rt);
        epoch
    };
    let first = run_agent(Some(token), &|_| true);
    authority_rt.block_on(async {
        authority.rotate_all("test").await.unwrap();
        authority.rotate_all("test").await.unwrap();
    });
    // Two rotations missed: one catch-up rotation on reconnect, to the newest.
    let caught_up = run_agent(None, &|e| e > first);
    assert_eq!(caught_up, first + 1);
    // Nothing missed since: no rotation at all on the next restart.
    assert_eq!(run_agent(None, &|_| true), caught_up);
    // And the next ordered rotation is obeyed as usual.
    authority_rt.block_on(authority.rotate_all("test")).unwrap();
    assert_eq!(run_agent(None, &|e| e > caught_up), caught_up + 1);
}
