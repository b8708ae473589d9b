//! The outer UDP source port carries flow entropy: each worker sends from a port of its
//! own, so ECMP and the peer's receive hashing spread the workers (and the flows on them)
//! while every flow keeps one port. Observed where a network would see it: at a plain UDP
//! socket standing in for the peer, on both I/O backends.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpclink_bench::traffic::{TrafficCounters, TrafficSpec};
use cpclink_dataplane::engine::{Egress, Engine, EngineConfig, PeerConfig, PeerId, Protection};
use cpclink_dataplane::io::IoKind;
use cpclink_dataplane::route::RouteTable;
use cpclink_dataplane::wire::PSP_BASE_HEADER_LEN;

const WORKERS: usize = 3;
const FLOWS: u32 = 12;
const DATAGRAMS: usize = 3000;

/// Inner flow → the outer source ports its datagrams came from, and the engine's listen port.
struct Capture {
    listen_port: u16,
    ports: BTreeMap<u32, BTreeSet<u16>>,
}

fn start(io: IoKind, tx_port_base: Option<u16>) -> cpclink_dataplane::Result<Engine> {
    let mut config = EngineConfig::new("127.0.0.1:0".parse().unwrap());
    config.workers = WORKERS;
    config.io = io;
    // The plain baseline leaves the inner packet readable on the wire, so the capture can
    // tell which flow each datagram carries.
    config.protection = Protection::PlainBaseline;
    config.tx_port_base = tx_port_base;
    config.batch_sends = 2;
    config.gso_segments = 4;
    let spec = TrafficSpec::new(FLOWS, 200);
    let counters = TrafficCounters::new(WORKERS);
    config.source = Some(spec.source(None, config.gso_segments, &counters).unwrap());
    config.egress = Egress::Discard;
    let engine = Engine::start(config)?;
    engine.set_routes(Arc::new(RouteTable::build(spec.routes())?))?;
    Ok(engine)
}

fn capture(engine: Engine) -> Capture {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    engine
        .set_peer(
            PeerId(0),
            PeerConfig {
                endpoint: peer.local_addr().unwrap(),
            },
        )
        .unwrap();
    let mut ports: BTreeMap<u32, BTreeSet<u16>> = BTreeMap::new();
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut seen = 0;
    // Enough datagrams, and one from every flow: on a loaded machine one worker can start
    // after the others have sent thousands.
    while (seen < DATAGRAMS || ports.len() < FLOWS as usize)
        && start.elapsed() < Duration::from_secs(20)
    {
        let Ok((len, from)) = peer.recv_from(&mut buf) else {
            continue;
        };
        let inner = &buf[PSP_BASE_HEADER_LEN..len];
        // The synthetic packet: IPv4 (20) and UDP (8) headers, then the flow number.
        let flow = u32::from_be_bytes(inner[28..32].try_into().unwrap());
        let inner_sport = u16::from_be_bytes([inner[20], inner[21]]);
        assert_eq!(u32::from(inner_sport), 10_000 + flow, "a synthetic packet");
        ports.entry(flow).or_default().insert(from.port());
        seen += 1;
    }
    let listen_port = engine.local_addr().port();
    engine.shutdown().unwrap();
    assert!(seen >= DATAGRAMS, "the capture saw {seen} datagrams");
    Capture { listen_port, ports }
}

/// Every flow leaves from exactly one port, flows on different workers from different
/// ports, and none from the listen port they would all share; returns flow → port.
fn check(name: &str, c: &Capture) -> BTreeMap<u32, u16> {
    assert_eq!(c.ports.len(), FLOWS as usize, "{name}: every flow seen");
    let port_of: BTreeMap<u32, u16> = c
        .ports
        .iter()
        .map(|(&flow, ports)| {
            assert_eq!(ports.len(), 1, "{name}: flow {flow} left from {ports:?}");
            (flow, *ports.first().unwrap())
        })
        .collect();
    for (&f, &pf) in &port_of {
        assert_ne!(
            pf, c.listen_port,
            "{name}: flow {f} left from the listen port"
        );
        for (&g, &pg) in &port_of {
            // The synthetic source puts flow f on worker f % workers.
            let same_worker = f as usize % WORKERS == g as usize % WORKERS;
            assert_eq!(pf == pg, same_worker, "{name}: flows {f} and {g}");
        }
    }
    port_of
}

#[test]
fn each_worker_sends_from_a_port_of_its_own_and_a_flow_keeps_one() {
    for io in [IoKind::Epoll, IoKind::IoUring] {
        let c = capture(start(io, None).unwrap());
        let ports: BTreeSet<u16> = check(io.name(), &c).into_values().collect();
        assert_eq!(ports.len(), WORKERS, "{io}: {ports:?}");
    }
}

#[test]
fn a_configured_base_gives_worker_i_port_base_plus_i() {
    // Some base whose WORKERS ports are free: ports in use make the start fail, never
    // silently fall back to other ports.
    let mut attempt = 0u32;
    let (engine, base) = loop {
        let base = 20_000 + ((std::process::id() * 7 + attempt * 997) % 30_000) as u16;
        match start(IoKind::Epoll, Some(base)) {
            Ok(engine) => break (engine, base),
            Err(e) => {
                assert!(e.to_string().contains("bind"), "{e}");
                attempt += 1;
                assert!(attempt < 50, "no free source ports found");
            }
        }
    };
    let c = capture(engine);
    for (flow, port) in check("base", &c) {
        assert_eq!(port, base + (flow as u16 % WORKERS as u16), "flow {flow}");
    }
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().map(|a: SocketAddr| a.port()).unwrap();
    let e = start(IoKind::Epoll, Some(busy)).unwrap_err().to_string();
    assert!(e.contains(&format!("127.0.0.1:{busy}")), "{e}");
    let e = start(IoKind::Epoll, Some(65_534)).unwrap_err().to_string();
    assert!(e.contains("source ports 65534..65537"), "{e}");
}
