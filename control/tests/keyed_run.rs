//! The key plane driving the data plane: a real authority and real key agents over QUIC
//! key two engines through the same driver `cpclink run` uses (no static keys); synthetic
//! traffic both ways over UDP is verified byte by byte by the sinks. Rotation and revocation
//! are ordered with the `cpclink keymgr` commands an operator would type.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpclink_appliance::keyed::{KeyPlane, KeyedOptions};
use cpclink_appliance::keys::KeyingStatus;
use cpclink_appliance::RunningAppliance;
use cpclink_bench::traffic::{SinkStats, TrafficCounters, TrafficSpec};
use cpclink_dataplane::crypto::Suite;
use cpclink_dataplane::engine::{Egress, Engine, EngineConfig, WorkerStats};
use cpclink_dataplane::sa::Spi;
use cpclink_keymgr::agent::{AgentOptions, KeyAgent};
use cpclink_keymgr::authority::Authority;
use cpclink_keymgr::config::AuthorityConfig;
use cpclink_keymgr::prefix::InnerPrefix;
use cpclink_keymgr::seal::Kek;

mod common;
use common::{netns_skip_reason, sh, Lab};

const FLOWS: u32 = 8;
const PACKET: usize = 1000;

/// An authority on loopback, with its config file on disk for the `cpclink keymgr` commands.
struct Plane {
    dir: tempfile::TempDir,
    config: PathBuf,
    authority: Authority,
}

async fn plane() -> Plane {
    // The driver's info lines show in a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    std::fs::write(&kek, "5c".repeat(32)).unwrap();
    let config = dir.path().join("authority.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\nkek_file = \"{}\"\n",
            dir.path().join("authority").display(),
            kek.display()
        ),
    )
    .unwrap();
    let cfg = AuthorityConfig::load(&config).unwrap();
    let authority = Authority::start(&cfg).await.unwrap();
    Plane {
        dir,
        config,
        authority,
    }
}

/// One appliance: an engine with a synthetic source and sink, keyed by its agent.
struct Appliance {
    engine: Arc<Engine>,
    keyed: RunningAppliance,
    traffic: Arc<TrafficCounters>,
}

/// An engine's counters with what its synthetic sink saw.
#[derive(Debug, Clone, Copy)]
struct Stats {
    engine: WorkerStats,
    sink: SinkStats,
}

impl std::ops::Deref for Stats {
    type Target = WorkerStats;

    fn deref(&self) -> &WorkerStats {
        &self.engine
    }
}

/// The traffic an appliance sends (to the other's prefix) and checks (on its own): `a`
/// serves 10.201.0.0/24, `b` 10.202.0.0/24, both assigned at the authority and announced by
/// the agents, so each engine routes the other's flows through the directory's routes.
fn traffic(id: &str) -> (TrafficSpec, TrafficSpec, InnerPrefix) {
    let (own, other) = if id == "a" { (201, 202) } else { (202, 201) };
    let spec = |second| TrafficSpec {
        prefix_base: [10, second],
        ..TrafficSpec::new(FLOWS, PACKET)
    };
    let served = InnerPrefix::new(std::net::IpAddr::from([10, own, 0, 0]), 24).unwrap();
    (spec(other), spec(own), served)
}

impl Plane {
    async fn appliance(&self, id: &str, workers: usize) -> Appliance {
        self.appliance_granting(id, workers, Duration::from_secs(3600))
            .await
    }

    /// An appliance whose agent grants SAs for `sa_lifetime`.
    async fn appliance_granting(
        &self,
        id: &str,
        workers: usize,
        sa_lifetime: Duration,
    ) -> Appliance {
        let (sends, checks, served) = traffic(id);
        let counters = TrafficCounters::new(workers);
        let mut config = EngineConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        config.workers = workers;
        config.source = Some(sends.source(None, config.gso_segments, &counters).unwrap());
        config.egress = Egress::Sink(checks.sink(&counters));
        let engine = Arc::new(Engine::start(config).unwrap());
        self.authority
            .assign_prefixes(id, &[served], "test")
            .await
            .unwrap();
        let token = self
            .authority
            .mint_token(id, "dc1", "acme", Duration::from_secs(600))
            .unwrap();
        let (agent, events) = KeyAgent::start(AgentOptions {
            appliance: id.into(),
            authorities: vec![self.authority.local_addr().unwrap()],
            listen: (Ipv4Addr::LOCALHOST, 0).into(),
            state_dir: self.dir.path().join(id),
            kek: Kek::load(&self.dir.path().join("kek"), "kek_file").unwrap(),
            ca_cert: self.authority.ca_cert(),
            token: Some(zeroize::Zeroizing::new(token)),
            endpoints: vec![engine.local_addr().to_string()],
            capabilities: vec![],
            prefixes: vec![served],
            suite: Suite::AesGcm256,
            sa_lifetime,
            rekey_grace: Duration::from_secs(2),
        })
        .await
        .unwrap();
        let keys = KeyPlane::new(engine.clone(), agent, events, KeyedOptions::default());
        let keyed = cpclink_appliance::spawn(engine.clone(), keys, None);
        Appliance {
            engine,
            keyed,
            traffic: counters,
        }
    }

    /// Runs `cpclink keymgr --config <authority.toml> ARGS` against this authority.
    async fn keymgr(&self, args: &[&str]) -> String {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cpclink"));
        command.args(["keymgr", "--config"]).arg(&self.config);
        command.args(args);
        let out = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "cpclink keymgr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Appliance {
    fn stats(&self) -> Stats {
        Stats {
            engine: self.engine.snapshot().unwrap().total(),
            sink: self.traffic.total().sink,
        }
    }

    fn status(&self) -> KeyingStatus {
        self.keyed.keys()
    }

    /// The transmit SA of every worker towards `peer`, once each worker has one.
    fn tx_spis(&self, peer: &str) -> Option<Vec<Spi>> {
        self.status().peers.get(peer)?.tx.iter().copied().collect()
    }

    async fn stop(self) -> WorkerStats {
        drop(self.keyed.stop().await);
        let engine = Arc::try_unwrap(self.engine).expect("the driver let go of the engine");
        engine.shutdown().unwrap().total()
    }
}

/// Pauses both sources, waits until nothing more arrives, and returns each side's counters
/// before stopping both. (Counters taken during shutdown would count packets a stopping
/// worker's socket no longer steers to the worker holding their SA.)
async fn finish(a: Appliance, b: Appliance) -> (Stats, Stats) {
    a.engine.set_source_active(false).unwrap();
    b.engine.set_source_active(false).unwrap();
    let mut last = (a.stats().rx_packets, b.stats().rx_packets);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = (a.stats().rx_packets, b.stats().rx_packets);
        if now == last {
            break;
        }
        last = now;
    }
    let stats = (a.stats(), b.stats());
    a.stop().await;
    b.stop().await;
    stats
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen in 60 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until each sink has verified `bytes` more than it had.
async fn flows_on(a: &Appliance, b: &Appliance, bytes: u64, what: &str) {
    let (a0, b0) = (a.stats().sink.verified_bytes, b.stats().sink.verified_bytes);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (sa, sb) = (a.stats(), b.stats());
        if sa.sink.verified_bytes >= a0 + bytes && sb.sink.verified_bytes >= b0 + bytes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in 60 s\na: {sa:?}\n{:?}\nb: {sb:?}\n{:?}",
            a.status(),
            b.status()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until each engine has received more than its socket buffers hold (32 MiB each,
/// which the kernel doubles for its bookkeeping) since the call.
async fn worked_through_socket_buffers(a: &Appliance, b: &Appliance) {
    let (a0, b0) = (a.stats().rx_bytes, b.stats().rx_bytes);
    let backlog = |x: &Appliance| (64u64 << 20) * x.engine.workers() as u64;
    eventually("the receivers working through their socket buffers", || {
        a.stats().rx_bytes >= a0 + backlog(a) && b.stats().rx_bytes >= b0 + backlog(b)
    })
    .await;
}

/// No packet was refused for a key reason, and every delivered byte matched.
fn assert_clean(s: &Stats, who: &str) {
    assert_eq!(s.sink.corrupt, 0, "{who}: corrupt packets: {s:?}");
    assert_eq!(s.rx_auth_failed, 0, "{who}: authentication failures: {s:?}");
    assert_eq!(
        s.rx_unknown_spi, 0,
        "{who}: packets for SPIs without an SA: {s:?}"
    );
    assert_eq!(s.rx_unknown_peer, 0, "{who}: packets from strangers: {s:?}");
    assert_eq!(s.rx_rejected, 0, "{who}: rejected packets: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_flows_both_ways_with_keys_from_the_agents() {
    let p = plane().await;
    let a = p.appliance("a", 2).await;
    let b = p.appliance("b", 1).await;
    flows_on(&a, &b, 4 << 20, "4 MiB each way").await;

    // One SA per worker: a worker's IV counter is its own, so sharing an SA would repeat
    // (key, IV) pairs.
    let a_tx = a.tx_spis("b").unwrap();
    assert_eq!(a_tx.len(), 2);
    assert_ne!(a_tx[0], a_tx[1], "each worker has its own SA");
    let b_tx = b.tx_spis("a").unwrap();
    assert_eq!(b_tx.len(), 1);
    // Each receiver installed what it granted, for the right peer.
    let (sa, sb) = (a.status(), b.status());
    for spi in &a_tx {
        assert_eq!(sb.rx.get(spi).map(String::as_str), Some("a"), "{sb:?}");
    }
    assert_eq!(sa.rx.get(&b_tx[0]).map(String::as_str), Some("b"), "{sa:?}");
    assert!(sa.peers["b"].active && !sa.peers["b"].revoked);
    assert_eq!(
        sa.peers["b"].endpoint,
        Some(b.engine.local_addr()),
        "the endpoint b published"
    );

    let (fa, fb) = finish(a, b).await;
    println!(
        "verified by the sinks: a {} packets ({} MiB), b {} packets ({} MiB)",
        fa.sink.verified_packets,
        fa.sink.verified_bytes >> 20,
        fb.sink.verified_packets,
        fb.sink.verified_bytes >> 20
    );
    for (s, who) in [(&fa, "a"), (&fb, "b")] {
        assert_clean(s, who);
        assert!(s.sink.verified_bytes >= 4 << 20, "{who}: {s:?}");
        assert!(s.tx_packets > 0 && s.rx_delivered > 0, "{who}: {s:?}");
    }
    // Every delivered packet was one the sink verified byte for byte.
    assert_eq!(fa.rx_delivered, fa.sink.verified_packets + fa.sink.corrupt);
    assert_eq!(fb.rx_delivered, fb.sink.verified_packets + fb.sink.corrupt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_under_traffic_move_to_new_sas_and_retire_the_old() {
    let p = plane().await;
    let a = p.appliance("a", 2).await;
    let b = p.appliance("b", 1).await;
    flows_on(&a, &b, 2 << 20, "traffic before the rotation").await;
    let first = (a.tx_spis("b").unwrap(), b.tx_spis("a").unwrap());

    let mut previous = first.clone();
    for round in 1..=2 {
        let rotation = p.keymgr(&["rotate"]).await;
        assert!(
            rotation.starts_with(&format!("rotated: rotation {round} ordered")),
            "the authority's rotation number: {rotation}"
        );
        // Every worker moves to an SA of the peer's new generation.
        let moved = |now: &Option<Vec<Spi>>, before: &[Spi]| {
            now.as_ref().is_some_and(|now| {
                now.iter()
                    .all(|s| s.generation() != before[0].generation() && !before.contains(s))
            })
        };
        eventually(
            &format!("the move to new SAs after rotation {round}"),
            || moved(&a.tx_spis("b"), &previous.0) && moved(&b.tx_spis("a"), &previous.1),
        )
        .await;
        flows_on(&a, &b, 2 << 20, "traffic on the new SAs").await;
        // Packets sealed under the old SAs may still wait in the receivers' socket buffers;
        // the next rotation retires those SAs. In service rotations are hours apart; here
        // the receivers first work through more than their buffers hold.
        worked_through_socket_buffers(&a, &b).await;
        let now = (a.tx_spis("b").unwrap(), b.tx_spis("a").unwrap());
        println!(
            "rotation {round}: a→b SAs {:?} → {:?}, b→a {:?} → {:?}",
            previous.0, now.0, previous.1, now.1
        );
        previous = now;
    }
    // The second rotation overwrote the generation of the first SAs: each receiver
    // retired them.
    eventually("the first SAs retired", || {
        let (sa, sb) = (a.status(), b.status());
        first
            .0
            .iter()
            .all(|s| sb.retired_rx.contains(s) && !sb.rx.contains_key(s))
            && first
                .1
                .iter()
                .all(|s| sa.retired_rx.contains(s) && !sa.rx.contains_key(s))
    })
    .await;
    // The SAs in use are not among the retired.
    let (sa, sb) = (a.status(), b.status());
    assert!(previous.0.iter().all(|s| sb.rx.contains_key(s)), "{sb:?}");
    assert!(previous.1.iter().all(|s| sa.rx.contains_key(s)), "{sa:?}");
    flows_on(&a, &b, 1 << 20, "traffic after the retirement").await;

    let (fa, fb) = finish(a, b).await;
    println!(
        "verified by the sinks: a {} MiB, b {} MiB; drops a {:?} b {:?}",
        fa.sink.verified_bytes >> 20,
        fb.sink.verified_bytes >> 20,
        (fa.rx_unknown_spi, fa.rx_auth_failed),
        (fb.rx_unknown_spi, fb.rx_auth_failed)
    );
    // Make-before-break: no packet met a missing or wrong key at either end.
    assert_clean(&fa, "a");
    assert_clean(&fb, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_reaching_their_granted_lifetime_are_replaced_under_traffic() {
    let p = plane().await;
    let a = p.appliance("a", 2).await;
    // b grants SAs for 3 s: a's workers must replace theirs every 2.4 s, without a rotation.
    let b = p.appliance_granting("b", 1, Duration::from_secs(3)).await;
    flows_on(&a, &b, 1 << 20, "traffic on the first SAs").await;
    let mut seen = a.tx_spis("b").unwrap();
    let generation = seen[0].generation();
    for replacement in 1..=2 {
        let before = a.tx_spis("b").unwrap();
        eventually(&format!("replacement {replacement} of a's SAs"), || {
            a.tx_spis("b")
                .is_some_and(|now| now.iter().all(|s| !before.contains(s)))
        })
        .await;
        let now = a.tx_spis("b").unwrap();
        assert!(
            now.iter()
                .all(|s| s.generation() == generation && !seen.contains(s)),
            "fresh SPIs of the same generation: {now:?} after {seen:?}"
        );
        seen.extend(now);
        flows_on(&a, &b, 1 << 20, "traffic on the replacements").await;
    }
    let (fa, fb) = finish(a, b).await;
    assert_clean(&fa, "a");
    assert_clean(&fb, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_appliance_is_refused_by_its_peer() {
    let p = plane().await;
    let a = p.appliance("a", 2).await;
    let b = p.appliance("b", 1).await;
    flows_on(&a, &b, 2 << 20, "traffic before the revocation").await;

    // a ignores its revocation, as a compromised appliance would: its agent is stopped and
    // its engine keeps sending with the SAs it holds.
    let Appliance {
        engine: a_engine,
        keyed: a_keyed,
        traffic: a_traffic,
    } = a;
    drop(a_keyed.stop().await);
    let granted_to_a = b.status().rx.clone();
    let rejected_before = b.stats().rx_rejected;
    let start = Instant::now();
    p.keymgr(&["revoke", "a"]).await;
    eventually("b refusing a's packets", || {
        b.stats().rx_rejected > rejected_before
    })
    .await;
    let took = start.elapsed();
    println!("revocation enforced by the peer's data plane {took:?} after the command");

    let status = b.status();
    let peer = &status.peers["a"];
    assert!(peer.revoked && !peer.active, "{status:?}");
    assert!(peer.tx.iter().all(Option::is_none), "b sends nothing to a");
    assert!(
        !status.rx.values().any(|p| p == "a"),
        "b holds no SA of a any more: {status:?}, before {granted_to_a:?}"
    );
    // Packets already queued may still be delivered; after that, nothing from a.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a_stats = || Stats {
        engine: a_engine.snapshot().unwrap().total(),
        sink: a_traffic.total().sink,
    };
    let (s1, a1) = (b.stats(), a_stats());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (s2, a2) = (b.stats(), a_stats());
    assert!(a2.tx_packets > a1.tx_packets, "a kept sending: {a2:?}");
    assert_eq!(
        s2.sink.verified_bytes, s1.sink.verified_bytes,
        "b's sink received nothing more from a"
    );
    assert!(
        s2.rx_rejected > s1.rx_rejected,
        "b keeps refusing a's packets as a revoked peer's: {s2:?}"
    );
    assert_eq!(
        a2.sink.verified_bytes, a1.sink.verified_bytes,
        "b stopped sending to a"
    );
    assert_eq!(s2.rx_auth_failed, 0);
    assert_eq!(s2.sink.corrupt, 0);

    drop(a_engine);
    b.stop().await;
}

#[test]
fn tun_tunnel_keyed_by_the_key_plane_carries_ping_through_rotation_until_revocation() {
    if let Some(reason) = netns_skip_reason(&["ip", "ping"]) {
        println!("skipped: {reason}");
        return;
    }
    let id = std::process::id();
    let mut lab = Lab::new(
        "keyed-netns",
        vec![format!("cpk-a-{id}"), format!("cpk-b-{id}")],
    );
    let (a, b) = (lab.namespaces[0].clone(), lab.namespaces[1].clone());
    let (va, vb) = (
        format!("cka{}", id % 100_000),
        format!("ckb{}", id % 100_000),
    );
    for cmd in [
        format!("ip netns add {a}"),
        format!("ip netns add {b}"),
        format!("ip link add {va} netns {a} type veth peer name {vb} netns {b}"),
        format!("ip -n {a} link set lo up"),
        format!("ip -n {b} link set lo up"),
        format!("ip -n {a} addr add 10.98.0.1/24 dev {va}"),
        format!("ip -n {b} addr add 10.98.0.2/24 dev {vb}"),
        format!("ip -n {a} link set {va} up"),
        format!("ip -n {b} link set {vb} up"),
    ] {
        sh(&cmd.split_whitespace().collect::<Vec<_>>()).unwrap();
    }

    let d = lab.dir.clone();
    std::fs::write(d.join("kek"), "3e".repeat(32)).unwrap();
    std::fs::write(
        d.join("authority.toml"),
        format!(
            "listen = \"10.98.0.1:7000\"\nstate_dir = \"{}\"\nkek_file = \"{}\"\n",
            d.join("authority").display(),
            d.join("kek").display()
        ),
    )
    .unwrap();
    // Tokens first: minting one also creates the CA the appliances are pointed at.
    for name in ["a", "b"] {
        let token = lab
            .keymgr(&["token", "create", "--appliance", name, "--centre", "dc1"])
            .unwrap();
        std::fs::write(d.join(format!("{name}.token")), token.trim()).unwrap();
    }
    lab.cpclink(
        &a,
        "authority",
        &[
            "keymgr",
            "run",
            "--config",
            d.join("authority.toml").to_str().unwrap(),
        ],
    );
    lab.wait_for("the authority", || lab.keymgr(&["status"]).is_ok());

    // Relative paths in [keymgr] are taken from the configuration's directory.
    let config = |me: &str, addr: &str, peer: &str, peer_inner: &str| {
        format!(
            "[appliance]\nlisten = \"{addr}:1000\"\nworkers = 2\n\n[tun]\nname = \"cpc0\"\npath_mtu = 1500\n\n\
             [keymgr]\nappliance = \"{me}\"\nauthority = \"10.98.0.1:7000\"\nlisten = \"{addr}:7001\"\n\
             state_dir = \"{me}-agent\"\nkek_file = \"kek\"\nca_cert = \"authority/ca.pem\"\n\
             token_file = \"{me}.token\"\nrekey_grace_ms = 500\n\n\
             [[keymgr.peer]]\nid = \"{peer}\"\nprefixes = [\"{peer_inner}/32\"]\n"
        )
    };
    std::fs::write(
        d.join("a.toml"),
        config("a", "10.98.0.1", "b", "10.201.0.2"),
    )
    .unwrap();
    std::fs::write(
        d.join("b.toml"),
        config("b", "10.98.0.2", "a", "10.201.0.1"),
    )
    .unwrap();
    let pid_a = lab.cpclink(
        &a,
        "a",
        &["run", "--config", d.join("a.toml").to_str().unwrap()],
    );
    let pid_b = lab.cpclink(
        &b,
        "b",
        &["run", "--config", d.join("b.toml").to_str().unwrap()],
    );
    // Both workers of each side hold an SA towards the other.
    let keyed = |log: &str, peer: &str| {
        (0..2).all(|w| log.contains(&format!("worker {w} sends to {peer} with SA")))
    };
    lab.wait_for("both appliances keyed", || {
        keyed(&lab.log("a", "err"), "b") && keyed(&lab.log("b", "err"), "a")
    });
    sh(&[
        "ip",
        "-n",
        &a,
        "addr",
        "add",
        "10.201.0.1/24",
        "dev",
        "cpc0",
    ])
    .unwrap();
    sh(&[
        "ip",
        "-n",
        &b,
        "addr",
        "add",
        "10.201.0.2/24",
        "dev",
        "cpc0",
    ])
    .unwrap();
    lab.ping(0, "10.201.0.2")
        .unwrap_or_else(|e| panic!("ping through the keyed tunnel: {e}\n{}", lab.logs()));

    // A rotation: both sides move to SAs of the new generation, and the tunnel still works.
    assert!(lab
        .keymgr(&["rotate"])
        .unwrap()
        .starts_with("rotated: rotation 1 ordered"));
    let moved = |log: &str, peer: &str| {
        (0..2).all(|w| {
            log.lines().any(|l| {
                l.contains(&format!("worker {w} sends to {peer} with SA 0x8"))
                    && l.contains("replacing")
            })
        })
    };
    lab.wait_for("the move to generation-1 SAs", || {
        moved(&lab.log("a", "err"), "b") && moved(&lab.log("b", "err"), "a")
    });
    lab.ping(1, "10.201.0.1")
        .unwrap_or_else(|e| panic!("ping after the rotation: {e}\n{}", lab.logs()));

    // Revoking b: a drops every SA with it, and the tunnel carries nothing more.
    lab.keymgr(&["revoke", "b"]).unwrap();
    lab.wait_for("a dropping b", || {
        lab.log("a", "err")
            .contains("peer b (PeerId(0)) revoked: dropping every SA with it")
    });
    assert!(
        lab.ping(0, "10.201.0.2").is_err(),
        "ping after the revocation must fail\n{}",
        lab.logs()
    );

    // The revoked b stops by itself, with an error that names the way back.
    let child = lab.child("b");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked b stops\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "a revoked appliance exits with an error");
    let log = lab.log("b", "err");
    assert!(
        log.contains("was revoked and has stopped") && log.contains("cpclink keymgr replace"),
        "{log}"
    );
    let _ = pid_b;
    sh(&["kill", "-INT", &pid_a.to_string()]).unwrap();
    {
        let name = "a";
        let child = lab.child(name);
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "cpclink {name} exits cleanly on Ctrl-C\n{}",
            lab.logs()
        );
        let log = lab.log(name, "err");
        assert!(log.contains(&format!("key agent {name} stopped")), "{log}");
        let stats: serde_json::Value = serde_json::from_str(lab.log(name, "out").trim())
            .unwrap_or_else(|e| panic!("final counters of {name}: {e}\n{}", lab.logs()));
        assert!(stats["rx_delivered"].as_u64().unwrap() >= 6, "{stats}");
        assert_eq!(stats["rx_auth_failed"], 0, "{stats}");
        assert_eq!(stats["rx_unknown_spi"], 0, "{stats}");
    }
    // Nothing was sent in clear after the revocation: a withdrew b's prefixes and dropped
    // its echo requests to b for want of a route (or, before the withdrawal, of an SA).
    let a_stats: serde_json::Value = serde_json::from_str(lab.log("a", "out").trim()).unwrap();
    assert!(
        a_stats["tx_no_route"].as_u64().unwrap() + a_stats["tx_no_sa"].as_u64().unwrap() > 0,
        "a dropped its echo requests to the revoked b: {a_stats}"
    );
}
