//! Two engines on loopback exchanging synthetic traffic, on both I/O backends; and an
//! attacker's packets injected from a plain UDP socket.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpclink_bench::traffic::{Generator, TrafficCounters, TrafficSpec, TrafficStats};
use cpclink_dataplane::crypto::{Backend, Suite};
use cpclink_dataplane::engine::{
    lab, Egress, Engine, EngineConfig, PeerConfig, PeerId, SaProfile, WorkerStats,
};
use cpclink_dataplane::io::IoKind;
use cpclink_dataplane::psp::PSP_OVERHEAD;
use cpclink_dataplane::route::RouteTable;
use cpclink_dataplane::sa::{MasterKeys, SaLimits, Spi, TxSa};

const SUITE: Suite = Suite::AesGcm256;
const FLOWS: u32 = 64;
const PER_DIRECTION: u64 = 512 << 20;

fn keys(seed: u8) -> MasterKeys {
    MasterKeys::with_generations([seed; 32], [seed ^ 0xff; 32], 0)
}

/// An engine with the synthetic sink (and source, if given), routing the flows' prefixes
/// to peer 0; and its traffic counters.
fn engine(
    io: IoKind,
    workers: usize,
    source: Option<TrafficSpec>,
) -> (Engine, Arc<TrafficCounters>) {
    let counters = TrafficCounters::new(workers);
    let spec = source.unwrap_or(TrafficSpec::new(FLOWS, 200));
    let mut config = EngineConfig::new("127.0.0.1:0".parse().unwrap());
    config.workers = workers;
    config.io = io;
    config.source = source.map(|spec| spec.source(None, config.gso_segments, &counters).unwrap());
    config.egress = Egress::Sink(spec.sink(&counters));
    let engine = Engine::start(config).expect("engine starts");
    engine
        .set_routes(Arc::new(RouteTable::build(spec.routes()).unwrap()))
        .unwrap();
    (engine, counters)
}

fn peer(endpoint: SocketAddr) -> PeerConfig {
    PeerConfig { endpoint }
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks one direction: what `sender` sent against what `receiver` verified.
fn check_direction(
    name: &str,
    (sender, sent): (&WorkerStats, &TrafficStats),
    (receiver, received): (&WorkerStats, &TrafficStats),
) {
    let sink = received.sink;
    assert_eq!(sink.corrupt, 0, "{name}: corrupt packets delivered");
    assert_eq!(sink.out_of_order, 0, "{name}: a flow's order was broken");
    assert!(sink.verified_bytes >= PER_DIRECTION, "{name}: {sink:?}");
    assert_eq!(
        sent.generated, sender.tx_packets,
        "{name}: generated vs sealed"
    );
    assert_eq!(sender.tx_dropped(), 0, "{name}: sender dropped");
    assert_eq!(
        receiver.rx_dropped(),
        0,
        "{name}: receiver dropped {receiver:?}"
    );
    assert_eq!(
        receiver.rx_delivered, sink.verified_packets,
        "{name}: everything delivered was verified"
    );
    assert_eq!(
        receiver.rx_packets,
        receiver.rx_delivered + receiver.rx_dropped(),
        "{name}: received = delivered + dropped"
    );
    // Whatever the kernel lost on the way shows up as gaps; nothing appears from nowhere.
    assert!(
        sink.verified_packets + sink.gaps <= sender.tx_packets,
        "{name}"
    );
    assert!(receiver.rx_packets <= sender.tx_packets, "{name}");
}

fn exchange(io: IoKind) {
    let spec = TrafficSpec::new(FLOWS, 1400);
    let (keys_a, keys_b) = (keys(0xa1), keys(0xb2));
    let (a, traffic_a) = engine(io, 2, Some(spec));
    let (b, traffic_b) = engine(io, 2, Some(spec));
    a.set_peer(PeerId(0), peer(b.local_addr())).unwrap();
    b.set_peer(PeerId(0), peer(a.local_addr())).unwrap();
    lab::enable_rx_derivation(&a, &keys_a, SUITE).unwrap();
    lab::enable_rx_derivation(&b, &keys_b, SUITE).unwrap();
    // A snapshot is a round trip through every worker's control queue: after it, the
    // peers and keys above are in place before any packet is sent.
    a.snapshot().unwrap();
    b.snapshot().unwrap();
    let profile = SaProfile::default();
    lab::install_tx_sas(&a, PeerId(0), &keys_b, profile).unwrap();
    lab::install_tx_sas(&b, PeerId(0), &keys_a, profile).unwrap();

    wait_until("1 GiB verified", Duration::from_secs(240), || {
        let (sa, sb) = (traffic_a.total(), traffic_b.total());
        sa.sink.verified_bytes >= PER_DIRECTION && sb.sink.verified_bytes >= PER_DIRECTION
    });
    a.set_source_active(false).unwrap();
    b.set_source_active(false).unwrap();
    // Let what is in flight land before the final count.
    std::thread::sleep(Duration::from_millis(300));
    let (sa, sb) = (a.shutdown().unwrap(), b.shutdown().unwrap());
    assert_eq!(sa.workers.len(), 2);
    let (ta, tb) = (sa.total(), sb.total());
    let (xa, xb) = (traffic_a.total(), traffic_b.total());
    check_direction("a→b", (&ta, &xa), (&tb, &xb));
    check_direction("b→a", (&tb, &xb), (&ta, &xa));
    assert!(xa.sink.verified_bytes + xb.sink.verified_bytes >= 1 << 30);
}

#[test]
fn two_engines_exchange_a_gibibyte_over_io_uring() {
    exchange(IoKind::IoUring);
}

#[test]
fn two_engines_exchange_a_gibibyte_over_epoll() {
    exchange(IoKind::Epoll);
}

/// One synthetic packet of flow 0, number `number`, sealed by `sa` into a PSP datagram.
fn sealed(sa: &mut TxSa, number: u64) -> Vec<u8> {
    let mut generator = Generator::new(TrafficSpec::new(FLOWS, 200), 0, FLOWS as usize);
    let mut packet = vec![0u8; 200 + PSP_OVERHEAD];
    for _ in 0..=number {
        generator.fill(&mut packet[16..216]);
    }
    sa.seal(4, 0, &mut packet).unwrap();
    packet
}

fn forged_packets_are_dropped_and_counted(io: IoKind) {
    let keys_b = keys(0xb2);
    let (b, traffic_b) = engine(io, 1, None);
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.set_peer(PeerId(0), peer(attacker.local_addr().unwrap()))
        .unwrap();
    lab::enable_rx_derivation(&b, &keys_b, SUITE).unwrap();
    b.snapshot().unwrap();
    let to = b.local_addr();
    let now = Instant::now();
    let limits = SaLimits::default();
    let spi = Spi(0x0000_1234);
    let key = keys_b.derive(spi, SUITE).unwrap();
    let mut sa = TxSa::from_key(spi, Backend::AwsLc, SUITE, &key, limits, now).unwrap();

    let genuine = sealed(&mut sa, 0);
    let mut tampered = sealed(&mut sa, 1);
    tampered[100] ^= 0x01;
    // A key the sender does not have for this SPI: what a guessed SPI looks like.
    let wrong_key = keys(0x77).derive(Spi(0x0000_4321), SUITE).unwrap();
    let mut guesser = TxSa::from_key(
        Spi(0x0000_4321),
        Backend::AwsLc,
        SUITE,
        &wrong_key,
        limits,
        now,
    )
    .unwrap();
    let wrong_spi = sealed(&mut guesser, 0);

    let expect = |what: &str, check: &dyn Fn(&WorkerStats) -> bool| {
        wait_until(what, Duration::from_secs(20), || {
            check(&b.snapshot().unwrap().total())
        });
    };
    attacker.send_to(&genuine, to).unwrap();
    expect("the genuine packet", &|s| s.rx_delivered == 1);
    attacker.send_to(&genuine, to).unwrap();
    expect("the replay", &|s| s.rx_replayed == 1);
    attacker.send_to(&tampered, to).unwrap();
    expect("the tampered packet", &|s| s.rx_auth_failed == 1);
    attacker.send_to(&wrong_spi, to).unwrap();
    expect("the wrong SPI", &|s| s.rx_unknown_spi == 1);
    attacker.send_to(&[0u8; 7], to).unwrap();
    expect("the runt", &|s| s.rx_malformed == 1);

    let stats = b.shutdown().unwrap().total();
    assert_eq!(stats.rx_packets, 5);
    assert_eq!(
        stats.rx_delivered, 1,
        "only the genuine packet is delivered"
    );
    assert_eq!(traffic_b.total().sink.verified_packets, 1);
    assert_eq!(traffic_b.total().sink.corrupt, 0);
    assert_eq!(stats.rx_dropped(), 4);
}

#[test]
fn forged_packets_are_dropped_over_io_uring() {
    forged_packets_are_dropped_and_counted(IoKind::IoUring);
}

#[test]
fn forged_packets_are_dropped_over_epoll() {
    forged_packets_are_dropped_and_counted(IoKind::Epoll);
}

/// An SA that runs out is replaced on the worker's request; nothing is sent without one and
/// the receiver takes every SA in turn.
#[test]
fn exhausted_sas_are_replaced_without_loss_or_plaintext() {
    use cpclink_dataplane::engine::Event;
    let spec = TrafficSpec::new(FLOWS, 512);
    let keys_b = keys(0xb2);
    let (a, traffic_a) = engine(IoKind::Auto, 1, Some(spec));
    let (b, traffic_b) = engine(IoKind::Auto, 1, None);
    a.set_peer(PeerId(0), peer(b.local_addr())).unwrap();
    b.set_peer(PeerId(0), peer(a.local_addr())).unwrap();
    lab::enable_rx_derivation(&b, &keys_b, SUITE).unwrap();
    b.snapshot().unwrap();
    let profile = SaProfile {
        limits: SaLimits {
            soft_packets: 2_000,
            hard_packets: 4_000,
            ..SaLimits::default()
        },
        ..SaProfile::default()
    };
    lab::install_tx_sas(&a, PeerId(0), &keys_b, profile).unwrap();
    let mut rekeys = 0;
    wait_until("five SAs used up", Duration::from_secs(60), || {
        while let Ok(event) = a.events().try_recv() {
            let (Event::SaExhausted { worker, peer } | Event::RekeyDue { worker, peer }) = event;
            lab::rekey_tx_sa(&a, worker, peer, &keys_b, profile).unwrap();
            rekeys += 1;
        }
        rekeys >= 5
    });
    a.set_source_active(false).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (sa, sb) = (a.shutdown().unwrap().total(), b.shutdown().unwrap().total());
    // Five rekey events come from at least three SAs (an SA reports due, then perhaps
    // exhausted), each past its soft limit of 2,000 packets; how many were used up to the
    // hard limit depends on how fast the events were answered.
    assert!(
        sa.tx_packets >= 3 * 2_000,
        "several SAs' worth sent: {sa:?}"
    );
    let (xa, xb) = (traffic_a.total(), traffic_b.total());
    assert_eq!(
        xa.generated, sa.tx_packets,
        "what could not be sealed was not sent"
    );
    assert_eq!(sb.rx_dropped(), 0, "every SA was accepted: {sb:?}");
    assert_eq!(xb.sink.corrupt + xb.sink.out_of_order, 0);
    assert_eq!(sb.rx_delivered, xb.sink.verified_packets);
}
