use std::net::IpAddr;
use std::sync::Arc;

use super::super::{Route, RouteTable, RouteTarget};
use super::*;
use crate::error::Error;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A UDP or TCP packet `src:sport → dst:dport` of either family (both the same family).
fn packet(src: &str, dst: &str, protocol: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut p = match (ip(src), ip(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = vec![0u8; 40];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&40u16.to_be_bytes());
            p[9] = protocol;
            p[12..16].copy_from_slice(&s.octets());
            p[16..20].copy_from_slice(&d.octets());
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = vec![0u8; 60];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&20u16.to_be_bytes());
            p[6] = protocol;
            p[8..24].copy_from_slice(&s.octets());
            p[24..40].copy_from_slice(&d.octets());
            p
        }
        _ => panic!("one family"),
    };
    let l4 = if p[0] == 0x45 { 20 } else { 40 };
    p[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
    p[l4 + 2..l4 + 4].copy_from_slice(&dport.to_be_bytes());
    p
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    packet(src, dst, 17, sport, dport)
}

/// A table whose every bucket goes to `peer`.
fn all_to(peer: u32, buckets: usize) -> AffinityTable {
    AffinityTable::new(
        vec![Some(PeerId(peer)); buckets],
        BucketActivity::new(buckets),
    )
}

fn route(table: &RouteTable, packet: &[u8]) -> Route {
    table.route(&crate::wire::InnerPacket::new_checked(packet).unwrap())
}

#[test]
fn a_service_more_specific_than_a_centre_prefix_wins_in_both_families() {
    let table = RouteTable::build_with_services(
        [
            (ip("10.99.0.0"), 16, PeerId(1)),
            (ip("fd00:99::"), 32, PeerId(1)),
            (ip("10.99.0.8"), 32, PeerId(3)),
        ],
        [
            (ip("10.99.0.7"), 32, all_to(2, 16)),
            (ip("fd00:99::7"), 128, all_to(4, 16)),
            (ip("10.99.1.0"), 24, all_to(5, 16)),
        ],
    )
    .unwrap();
    assert_eq!(table.len(), 6);
    assert_eq!(table.services(), 3);
    let cases = [
        ("10.99.0.7", Route::Site(PeerId(2))),
        ("10.99.0.6", Route::Peer(PeerId(1))),
        ("10.99.0.8", Route::Peer(PeerId(3))),
        ("10.99.1.200", Route::Site(PeerId(5))),
        ("10.98.0.7", Route::Unrouted),
    ];
    for (dst, want) in cases {
        assert_eq!(
            route(&table, &udp("10.1.0.1", dst, 1000, 80)),
            want,
            "{dst}"
        );
    }
    let cases = [
        ("fd00:99::7", Route::Site(PeerId(4))),
        ("fd00:99::6", Route::Peer(PeerId(1))),
        ("fd00:98::7", Route::Unrouted),
    ];
    for (dst, want) in cases {
        assert_eq!(
            route(&table, &udp("fd00:1::1", dst, 1000, 80)),
            want,
            "{dst}"
        );
    }
    assert_eq!(
        table.target(ip("10.99.0.7")),
        Some(RouteTarget::Service(ServiceId(0)))
    );
    assert_eq!(
        table.target(ip("fd00:99::7")),
        Some(RouteTarget::Service(ServiceId(1)))
    );
    // A plain lookup has no packet to hash: a service's match answers no peer.
    assert_eq!(table.lookup(ip("10.99.0.7")), None);
    assert_eq!(table.lookup(ip("10.99.0.6")), Some(PeerId(1)));
    assert_eq!(
        table.service(ServiceId(2)).map(AffinityTable::len),
        Some(16)
    );
    assert!(table.service(ServiceId(3)).is_none());
}

#[test]
fn a_centre_prefix_more_specific_than_a_service_wins() {
    let table = RouteTable::build_with_services(
        [(ip("10.99.0.128"), 25, PeerId(7))],
        [(ip("10.99.0.0"), 24, all_to(2, 4))],
    )
    .unwrap();
    let p = udp("10.1.0.1", "10.99.0.200", 1, 2);
    assert_eq!(route(&table, &p), Route::Peer(PeerId(7)));
    let p = udp("10.1.0.1", "10.99.0.20", 1, 2);
    assert_eq!(route(&table, &p), Route::Site(PeerId(2)));
}

#[test]
fn a_prefix_given_to_a_service_and_anything_else_is_refused() {
    let e = RouteTable::build_with_services(
        [(ip("10.99.0.7"), 32, PeerId(1))],
        [(ip("10.99.0.7"), 32, all_to(2, 4))],
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidService { reason, .. } if reason.contains("peer 1") && reason.contains("service 0")),
        "{e}"
    );
    let e = RouteTable::build_with_services(
        [],
        [
            (ip("fd00::7"), 128, all_to(2, 4)),
            (ip("fd00::7"), 128, all_to(2, 4)),
        ],
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidService { .. }), "{e}");
}

#[test]
fn unusable_affinity_tables_are_refused() {
    for service in [
        AffinityTable::new(Vec::new(), BucketActivity::new(0)),
        AffinityTable::new(vec![None; 8], BucketActivity::new(4)),
    ] {
        let e = RouteTable::build_with_services([], [(ip("10.0.0.0"), 8, service)]).unwrap_err();
        assert!(matches!(e, Error::InvalidService { .. }), "{e}");
    }
    let e = RouteTable::build_with_services([], [(ip("10.0.0.1"), 8, all_to(0, 1))]).unwrap_err();
    assert!(matches!(e, Error::InvalidPrefix { .. }), "{e}");
}

#[test]
fn a_flow_always_lands_in_the_same_bucket_and_ports_spread_over_all() {
    const BUCKETS: usize = 64;
    const FLOWS: usize = 10_000;
    for (src, dst) in [("10.1.0.1", "10.99.0.7"), ("fd00:1::1", "fd00:99::7")] {
        let mut counts = [0usize; BUCKETS];
        for flow in 0..FLOWS {
            let (sport, dport) = (10_000 + flow as u16 % 50_000, 443 + (flow / 5_000) as u16);
            let p = udp(src, dst, sport, dport);
            let bucket = flow_bucket(&p, BUCKETS).unwrap();
            assert_eq!(flow_bucket(&p, BUCKETS), Some(bucket), "stable");
            counts[bucket] += 1;
        }
        // 10,000 flows into 64 buckets: about 156 each, a standard deviation of about 12.
        // Anything near a uniform hash stays well inside ±60; a hash that ignores ports or
        // keeps only low bits piles flows into a few buckets.
        let expected = FLOWS / BUCKETS;
        assert!(
            counts.iter().all(|&c| c > 0 && c.abs_diff(expected) < 60),
            "{src}: {counts:?}"
        );
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected as f64).powi(2) / expected as f64)
            .sum();
        // 63 degrees of freedom: the 99.9th percentile is about 104.
        assert!(chi2 < 120.0, "{src}: chi-square {chi2:.1}");
    }
}

#[test]
fn the_flow_hash_reads_addresses_protocol_and_both_ports() {
    let base = udp("10.1.0.1", "10.99.0.7", 1000, 80);
    let variants = [
        udp("10.1.0.2", "10.99.0.7", 1000, 80),
        udp("10.1.0.1", "10.99.0.8", 1000, 80),
        udp("10.1.0.1", "10.99.0.7", 1001, 80),
        udp("10.1.0.1", "10.99.0.7", 1000, 81),
        packet("10.1.0.1", "10.99.0.7", 6, 1000, 80),
    ];
    // With 2^32 buckets a collision is a one-in-four-billion chance, a changed field that
    // is ignored a certainty.
    let buckets = 1 << 32;
    let b = flow_bucket(&base, buckets).unwrap();
    for v in &variants {
        assert_ne!(flow_bucket(v, buckets).unwrap(), b);
    }
    // Without ports (ICMP), the ports' bytes do not count.
    let icmp = |sport| packet("10.1.0.1", "10.99.0.7", 1, sport, 0);
    assert_eq!(
        flow_bucket(&icmp(1), buckets),
        flow_bucket(&icmp(2), buckets)
    );
    assert_eq!(flow_bucket(&[0x45, 0, 0], 64), None, "truncated");
    assert_eq!(flow_bucket(&base, 0), None, "no bucket");
}

#[test]
fn every_fragment_of_a_packet_lands_in_one_bucket() {
    let mut first = udp("10.1.0.1", "10.99.0.7", 1000, 80);
    first[6] = 0x20; // more fragments, offset 0: the ports are there
    let mut later = udp("10.1.0.1", "10.99.0.7", 0x1234, 0x5678); // payload bytes, no ports
    later[7] = 3; // offset 24 bytes
    let buckets = 1 << 32;
    assert_eq!(flow_bucket(&first, buckets), flow_bucket(&later, buckets));
}

#[test]
fn lookups_mark_their_bucket_and_take_clears_the_marks() {
    let activity = BucketActivity::new(130);
    let table = RouteTable::build_with_services(
        [],
        [(
            ip("10.99.0.7"),
            32,
            AffinityTable::new(vec![Some(PeerId(1)); 130], Arc::clone(&activity)),
        )],
    )
    .unwrap();
    assert_eq!(activity.take(), vec![false; 130]);
    let flows: Vec<Vec<u8>> = (0..3)
        .map(|f| udp("10.1.0.1", "10.99.0.7", 2000 + f, 80))
        .collect();
    for p in &flows {
        for _ in 0..3 {
            assert_eq!(route(&table, p), Route::Site(PeerId(1)));
        }
    }
    let used = activity.take();
    assert_eq!(used.len(), 130);
    let mut want = vec![false; 130];
    for p in &flows {
        want[flow_bucket(p, 130).unwrap()] = true;
    }
    assert_eq!(used, want);
    assert_eq!(activity.take(), vec![false; 130], "cleared by the take");
    // Bits of the last, partial word are tracked like the others.
    activity.touch(129);
    activity.touch(130);
    let used = activity.take();
    assert!(used[129] && used.iter().filter(|&&u| u).count() == 1);
}

#[test]
fn a_peer_prefix_lookup_marks_nothing() {
    let activity = BucketActivity::new(8);
    let table = RouteTable::build_with_services(
        [(ip("10.1.0.0"), 16, PeerId(0))],
        [(
            ip("10.99.0.7"),
            32,
            AffinityTable::new(vec![Some(PeerId(1)); 8], Arc::clone(&activity)),
        )],
    )
    .unwrap();
    assert_eq!(
        route(&table, &udp("10.9.0.1", "10.1.2.3", 1, 2)),
        Route::Peer(PeerId(0))
    );
    assert!(activity.take().iter().all(|&u| !u));
}

#[test]
fn a_bucket_without_a_site_answers_no_site() {
    let mut peers = vec![Some(PeerId(1)); 16];
    let p = udp("10.1.0.1", "10.99.0.7", 1000, 80);
    peers[flow_bucket(&p, 16).unwrap()] = None;
    let activity = BucketActivity::new(16);
    let table = RouteTable::build_with_services(
        [(ip("10.99.0.0"), 16, PeerId(9))],
        [(
            ip("10.99.0.7"),
            32,
            AffinityTable::new(peers, Arc::clone(&activity)),
        )],
    )
    .unwrap();
    // Not the covering centre prefix's peer: a service's flow goes to its site or nowhere.
    assert_eq!(route(&table, &p), Route::NoSite);
    assert!(activity.take()[flow_bucket(&p, 16).unwrap()]);
}

/// The controller's rule, as a model: a bucket used since the last sweep keeps its peer,
/// an idle one takes the new choice.
fn reassign(old: &AffinityTable, used: &[bool], choice: PeerId) -> AffinityTable {
    let peers = (0..old.len())
        .map(|b| if used[b] { old.peer(b) } else { Some(choice) })
        .collect();
    AffinityTable::new(peers, Arc::clone(old.activity()))
}

#[test]
fn a_swap_that_moves_only_idle_buckets_keeps_a_busy_flow_on_its_peer() {
    const BUCKETS: usize = 1024;
    let service = (ip("10.99.0.7"), 32);
    let first = AffinityTable::new(vec![Some(PeerId(1)); BUCKETS], BucketActivity::new(BUCKETS));
    let old = Arc::new(
        RouteTable::build_with_services([], [(service.0, service.1, first.clone())]).unwrap(),
    );
    let busy = udp("10.1.0.1", "10.99.0.7", 40_000, 443);
    // The sweep before the flow started: nothing used.
    assert!(first.activity().take().iter().all(|&u| !u));
    assert_eq!(route(&old, &busy), Route::Site(PeerId(1)));

    // The controller now prefers peer 2: it sweeps and builds the next table with the same
    // activity; a packet routed by the old table after the sweep is seen by the next.
    let used = first.activity().take();
    let late = udp("10.1.0.1", "10.99.0.7", 40_001, 443);
    assert_eq!(route(&old, &late), Route::Site(PeerId(1)));
    let next = reassign(&first, &used, PeerId(2));
    let new = RouteTable::build_with_services([], [(service.0, service.1, next.clone())]).unwrap();

    assert_eq!(
        route(&new, &busy),
        Route::Site(PeerId(1)),
        "busy keeps its peer"
    );
    let idle = (0..u16::MAX)
        .map(|port| udp("10.2.0.1", "10.99.0.7", port, 443))
        .find(|p| !used[flow_bucket(p, BUCKETS).unwrap()])
        .unwrap();
    assert_eq!(route(&new, &idle), Route::Site(PeerId(2)), "idle follows");
    assert_eq!(
        next.buckets_of(PeerId(2)),
        BUCKETS - used.iter().filter(|&&u| u).count()
    );

    // The late packet's mark, set through the old table after the sweep, is seen by the
    // next sweep through the new one: the activity outlives the swap.
    let after = next.activity().take();
    assert!(after[flow_bucket(&late, BUCKETS).unwrap()]);
}

impl AffinityTable {
    /// Buckets naming `peer`.
    fn buckets_of(&self, peer: PeerId) -> usize {
        (0..self.len())
            .filter(|&b| self.peer(b) == Some(peer))
            .count()
    }
}
