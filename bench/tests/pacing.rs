//! A paced synthetic source sends at its rate, not as fast as it can: measured on the
//! engine's own counters against the wall clock, at a rate far below what the machine
//! does unpaced, on both I/O backends.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpclink_bench::pacer::SourceRate;
use cpclink_bench::traffic::{TrafficCounters, TrafficSpec};
use cpclink_dataplane::engine::{Egress, Engine, EngineConfig, PeerConfig, PeerId, Protection};
use cpclink_dataplane::io::IoKind;
use cpclink_dataplane::route::RouteTable;

const PACKET: usize = 200;
/// 20,000 packets per second: a hundredth of what one worker sends unpaced.
const PPS: f64 = 20_000.0;

/// Packets generated over about `window`, and the seconds that surely contain all of them
/// and that they surely fill.
fn run(io: IoKind, rate: SourceRate, window: Duration) -> (u64, f64, f64) {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = EngineConfig::new("127.0.0.1:0".parse().unwrap());
    config.workers = 2;
    config.io = io;
    config.protection = Protection::PlainBaseline;
    let spec = TrafficSpec::new(8, PACKET);
    let counters = TrafficCounters::new(config.workers);
    config.source = Some(
        spec.source(Some(rate), config.gso_segments, &counters)
            .unwrap(),
    );
    config.egress = Egress::Discard;
    let before = Instant::now();
    let engine = Engine::start(config).unwrap();
    engine
        .set_routes(Arc::new(RouteTable::build(spec.routes()).unwrap()))
        .unwrap();
    engine
        .set_peer(
            PeerId(0),
            PeerConfig {
                endpoint: peer.local_addr().unwrap(),
            },
        )
        .unwrap();
    let started = Instant::now();
    std::thread::sleep(window);
    let asked = Instant::now();
    let generated = counters.total().generated;
    let after = Instant::now();
    engine.shutdown().unwrap();
    (
        generated,
        (after - before).as_secs_f64(),
        (asked - started).as_secs_f64(),
    )
}

#[test]
fn a_paced_source_keeps_to_its_rate() {
    for (io, rate) in [
        (IoKind::IoUring, SourceRate::PacketsPerSecond(PPS)),
        (
            IoKind::Epoll,
            SourceRate::BitsPerSecond(PPS * 8.0 * PACKET as f64),
        ),
    ] {
        let (generated, outer, inner) = run(io, rate, Duration::from_secs(1));
        let ceiling = 1.2 * PPS * outer;
        assert!(
            (generated as f64) <= ceiling,
            "{io}: {generated} packets in at most {outer:.3} s exceeds {rate} by more than 20%"
        );
        // A pacer that oversleeps falls far short; this rate is no effort for any machine.
        let floor = 0.5 * PPS * inner;
        assert!(
            (generated as f64) >= floor,
            "{io}: {generated} packets in at least {inner:.3} s is under half of {rate}"
        );
    }
}
