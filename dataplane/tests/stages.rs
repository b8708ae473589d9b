//! Stage timing: with sampling on, a known number of packets through two engines yields
//! one timed packet in N at every stage it passes; with sampling off, no sample at all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpclink_dataplane::crypto::Suite;
use cpclink_dataplane::engine::{
    lab, Egress, Engine, EngineConfig, EngineStats, PeerConfig, PeerId, RouteTable, SaProfile,
    Sink, Source, Stage,
};
use cpclink_dataplane::io::IoKind;
use cpclink_dataplane::sa::MasterKeys;

const LEN: usize = 200;
const PACKETS: u32 = 3_000;
const EVERY: u32 = 4;

/// `left` IPv4/UDP packets to 10.1.0.2, then nothing.
struct Counted {
    left: u32,
}

impl Source for Counted {
    fn next_len(&self) -> usize {
        if self.left > 0 {
            LEN
        } else {
            0
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        out.fill(0);
        out[0] = 0x45;
        out[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
        out[8] = 64;
        out[9] = 17;
        out[12..16].copy_from_slice(&[10, 1, 0, 1]);
        out[16..20].copy_from_slice(&[10, 1, 0, 2]);
        self.left -= 1;
    }

    fn unfill(&mut self) {
        self.left += 1;
    }
}

struct Discard;

impl Sink for Discard {
    fn deliver(&mut self, _packet: &[u8]) {}
}

fn localhost() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `PACKETS` from a sending engine to a receiving one, both timing one packet in
/// `every`; returns both engines' final counters and stage times.
fn send_through(every: u32) -> (EngineStats, EngineStats) {
    let keys = MasterKeys::new([9; 32]);
    let mut config = EngineConfig::new(localhost());
    config.io = IoKind::Epoll;
    config.stage_sample_every = every;
    config.egress = Egress::Sink(Box::new(|_, _| Box::new(Discard) as Box<dyn Sink>));
    let receiver = Engine::start(config).unwrap();
    lab::enable_rx_derivation(&receiver, &keys, Suite::AesGcm256).unwrap();

    let mut config = EngineConfig::new(localhost());
    config.io = IoKind::Epoll;
    config.stage_sample_every = every;
    config.source = Some(Box::new(|_, _| {
        Box::new(Counted { left: PACKETS }) as Box<dyn Source>
    }));
    let sender = Engine::start(config).unwrap();
    receiver
        .set_peer(
            PeerId(0),
            PeerConfig {
                endpoint: sender.local_addr(),
            },
        )
        .unwrap();
    receiver.snapshot().unwrap();
    sender
        .set_peer(
            PeerId(0),
            PeerConfig {
                endpoint: receiver.local_addr(),
            },
        )
        .unwrap();
    let routes = RouteTable::build([(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)), 16, PeerId(0))]);
    sender.set_routes(Arc::new(routes.unwrap())).unwrap();
    lab::install_tx_sas(&sender, PeerId(0), &keys, SaProfile::default()).unwrap();

    wait_until("every packet sent", || {
        sender.snapshot().unwrap().total().tx_packets == u64::from(PACKETS)
    });
    // What is still in flight lands; the receiver's counters then stand still.
    let mut last = u64::MAX;
    wait_until("the receiver to settle", || {
        std::thread::sleep(Duration::from_millis(100));
        let now = receiver.snapshot().unwrap().total().rx_packets;
        std::mem::replace(&mut last, now) == now
    });
    (sender.shutdown().unwrap(), receiver.shutdown().unwrap())
}

#[test]
fn sampled_packets_are_timed_at_every_stage_they_pass() {
    let (sent, received) = send_through(EVERY);
    let tx = sent.total();
    assert_eq!(tx.tx_packets, u64::from(PACKETS));
    let times = sent.stage_times();
    let timed = tx.tx_packets / u64::from(EVERY);
    for stage in [Stage::Seal, Stage::BatchWait, Stage::Send] {
        assert_eq!(times.count(stage), timed, "{stage:?} on the sender");
    }
    // A source's packets are neither read from TUN nor segmented.
    for stage in [Stage::TunRead, Stage::Segment] {
        assert_eq!(times.count(stage), 0, "{stage:?} on the sender");
    }
    assert!(times.count(Stage::TxTurn) > 0);

    let rx = received.total();
    assert!(rx.rx_packets > 0);
    assert_eq!(rx.rx_dropped(), 0, "{rx:?}");
    let times = received.stage_times();
    let timed = rx.rx_packets / u64::from(EVERY);
    for stage in [Stage::Receive, Stage::Open] {
        assert_eq!(times.count(stage), timed, "{stage:?} on the receiver");
    }
    // Delivered to a sink, not TUN: nothing coalesced or written.
    for stage in [Stage::Coalesce, Stage::TunWrite, Stage::Seal] {
        assert_eq!(times.count(stage), 0, "{stage:?} on the receiver");
    }
    assert!(times.count(Stage::RxTurn) > 0);
    // A seal of 200 bytes takes well under a millisecond, even on a loaded machine.
    let seal = sent
        .stage_times()
        .histogram(Stage::Seal)
        .value_at_quantile(0.5);
    assert!(seal > 0 && seal < 1_000_000, "median seal {seal} ns");
}

#[test]
fn with_sampling_off_nothing_is_timed() {
    let (sent, received) = send_through(0);
    assert_eq!(sent.total().tx_packets, u64::from(PACKETS));
    for stats in [&sent, &received] {
        assert!(stats.stage_times().summary().is_empty());
        for stage in Stage::ALL {
            assert_eq!(stats.stage_times().count(stage), 0, "{stage:?}");
        }
    }
}
