//! An engine whose source sends to a service: packets whose bucket has no feasible site, or
//! whose site has no SA, are dropped and counted in `tx_no_site`, never sent; once the
//! buckets name a keyed peer, the same flows go to it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpclink_dataplane::engine::{
    lab, Engine, EngineConfig, PeerConfig, PeerId, SaProfile, Source, WorkerStats,
};
use cpclink_dataplane::io::IoKind;
use cpclink_dataplane::route::{AffinityTable, BucketActivity, RouteTable};
use cpclink_dataplane::sa::MasterKeys;

const SERVICE: [u8; 4] = [10, 99, 0, 7];
const BUCKETS: usize = 64;
const LEN: usize = 200;

/// IPv4/UDP packets to the service, one flow per source port, round-robin over 256 flows.
struct ServiceFlows {
    next: u16,
}

impl Source for ServiceFlows {
    fn next_len(&self) -> usize {
        LEN
    }

    fn fill(&mut self, out: &mut [u8]) {
        out.fill(0);
        out[0] = 0x45;
        out[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
        out[8] = 64;
        out[9] = 17;
        out[12..16].copy_from_slice(&[10, 1, 0, 1]);
        out[16..20].copy_from_slice(&SERVICE);
        out[20..22].copy_from_slice(&(20_000 + self.next % 256).to_be_bytes());
        out[22..24].copy_from_slice(&443u16.to_be_bytes());
        self.next = self.next.wrapping_add(1);
    }

    fn unfill(&mut self) {
        self.next = self.next.wrapping_sub(1);
    }
}

fn service_table(peer: Option<PeerId>, activity: &Arc<BucketActivity>) -> Arc<RouteTable> {
    let buckets = AffinityTable::new(vec![peer; BUCKETS], Arc::clone(activity));
    let table = RouteTable::build_with_services(
        // The centre prefix around the service must not catch its packets.
        [("10.99.0.0".parse().unwrap(), 16, PeerId(0))],
        [(SERVICE.into(), 32, buckets)],
    );
    Arc::new(table.unwrap())
}

fn total(engine: &Engine) -> WorkerStats {
    engine.snapshot().unwrap().total()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_service_without_a_feasible_site_drops_and_counts_tx_no_site() {
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = EngineConfig::new("127.0.0.1:0".parse().unwrap());
    config.io = IoKind::Epoll;
    config.source = Some(Box::new(|_, _| {
        Box::new(ServiceFlows { next: 0 }) as Box<dyn Source>
    }));
    let engine = Engine::start(config).unwrap();
    let endpoint: SocketAddr = receiver.local_addr().unwrap();
    engine.set_peer(PeerId(0), PeerConfig { endpoint }).unwrap();
    let activity = BucketActivity::new(BUCKETS);

    // No site in any bucket: everything is dropped, nothing sent, not even to the centre
    // prefix's peer.
    engine.set_routes(service_table(None, &activity)).unwrap();
    let keys = MasterKeys::with_generations([7; 32], [8; 32], 0);
    lab::install_tx_sas(&engine, PeerId(0), &keys, SaProfile::default()).unwrap();
    wait_until("drops without a site", || {
        total(&engine).tx_no_site > 10_000
    });
    let stats = total(&engine);
    assert_eq!(stats.tx_packets, 0, "{stats:?}");
    assert_eq!(stats.tx_no_route + stats.tx_no_sa, 0, "{stats:?}");
    assert!(stats.tx_dropped() >= stats.tx_no_site);
    let used = activity.take();
    assert!(
        used.iter().filter(|&&u| u).count() > BUCKETS / 2,
        "{used:?}"
    );

    // Every bucket names peer 0, which is keyed: the flows go there.
    engine
        .set_routes(service_table(Some(PeerId(0)), &activity))
        .unwrap();
    let before = total(&engine);
    wait_until("packets to the site", || total(&engine).tx_packets > 1_000);
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut datagram = [0u8; 2048];
    let (len, _) = receiver.recv_from(&mut datagram).unwrap();
    assert!(
        len > LEN,
        "an encrypted datagram carries the inner packet and more"
    );

    // The site loses its SA: its flows are dropped as no site, not sent elsewhere.
    engine.revoke_peer(PeerId(0)).unwrap();
    let revoked = total(&engine);
    wait_until("drops for a site without an SA", || {
        total(&engine).tx_no_site > revoked.tx_no_site + 10_000
    });
    let after = total(&engine);
    assert_eq!(
        after.tx_packets, revoked.tx_packets,
        "nothing sent after the SA went"
    );
    assert_eq!(
        after.tx_no_sa, before.tx_no_sa,
        "counted as no site, not as no SA"
    );
    engine.shutdown().unwrap();
}
