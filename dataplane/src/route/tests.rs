use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn table(routes: &[(&str, u8, u32)]) -> RouteTable {
    RouteTable::build(routes.iter().map(|&(a, l, p)| (ip(a), l, PeerId(p)))).unwrap()
}

#[test]
fn a_cleared_cache_answers_from_the_new_table() {
    let old = table(&[("10.0.0.0", 8, 1)]);
    let new = table(&[("10.1.0.0", 16, 2)]);
    let mut cache = RouteCache::default();
    let dst = ip("10.1.2.3");
    assert_eq!(cache.entry(&old, dst), 2, "peer 1's entry");
    // Cleared when the worker swaps tables, as it does on SetRoutes.
    cache.clear();
    assert_eq!(cache.entry(&new, dst), 3, "peer 2's entry");
    assert_eq!(cache.entry(&new, ip("10.2.0.1")), 0);
}

#[test]
fn an_empty_table_routes_nothing() {
    let t = RouteTable::empty();
    assert!(t.is_empty());
    assert_eq!(t.lookup(ip("10.0.0.1")), None);
    assert_eq!(t.lookup(ip("::1")), None);
}

#[test]
fn default_routes_catch_everything_of_their_family_only() {
    let t = table(&[("0.0.0.0", 0, 1)]);
    assert_eq!(t.lookup(ip("192.0.2.9")), Some(PeerId(1)));
    assert_eq!(t.lookup(ip("255.255.255.255")), Some(PeerId(1)));
    assert_eq!(t.lookup(ip("2001:db8::1")), None);
    let t = table(&[("::", 0, 2)]);
    assert_eq!(t.lookup(ip("2001:db8::1")), Some(PeerId(2)));
    assert_eq!(t.lookup(ip("10.0.0.1")), None);
}

#[test]
fn host_routes_match_one_address() {
    let t = table(&[("10.0.0.7", 32, 1), ("fd00::7", 128, 2)]);
    assert_eq!(t.lookup(ip("10.0.0.7")), Some(PeerId(1)));
    assert_eq!(t.lookup(ip("10.0.0.6")), None);
    assert_eq!(t.lookup(ip("10.0.0.8")), None);
    assert_eq!(t.lookup(ip("fd00::7")), Some(PeerId(2)));
    assert_eq!(t.lookup(ip("fd00::6")), None);
}

#[test]
fn the_longest_nested_prefix_wins() {
    let t = table(&[
        ("0.0.0.0", 0, 0),
        ("10.0.0.0", 8, 1),
        ("10.1.0.0", 16, 2),
        ("10.1.2.0", 24, 3),
        ("10.1.2.3", 32, 4),
    ]);
    assert_eq!(t.lookup(ip("10.1.2.3")), Some(PeerId(4)));
    assert_eq!(t.lookup(ip("10.1.2.4")), Some(PeerId(3)));
    assert_eq!(t.lookup(ip("10.1.3.4")), Some(PeerId(2)));
    assert_eq!(t.lookup(ip("10.2.3.4")), Some(PeerId(1)));
    assert_eq!(t.lookup(ip("11.2.3.4")), Some(PeerId(0)));
    assert_eq!(t.len(), 5);
}

/// The search probes the middle length first: a longer prefix leaves a marker there, and an
/// address that hits the marker but nothing longer gets the prefix the marker lies in, not
/// nothing (and not the marker's peer: a marker is no route).
#[test]
fn a_marker_that_leads_nowhere_answers_with_the_prefix_below_it() {
    let t = table(&[
        ("10.0.0.0", 8, 1),
        ("172.16.0.0", 12, 5),
        ("192.168.0.0", 16, 6),
        ("10.1.2.0", 24, 2),
        ("10.1.2.128", 25, 3),
    ]);
    assert_eq!(t.lookup(ip("10.1.3.9")), Some(PeerId(1)));
    assert_eq!(t.lookup(ip("10.1.2.9")), Some(PeerId(2)));
    assert_eq!(t.lookup(ip("10.1.2.200")), Some(PeerId(3)));
    assert_eq!(t.lookup(ip("11.1.2.200")), None);
    assert_eq!(t.len(), 5, "markers are not prefixes");
}

#[test]
fn families_never_mix() {
    // ::a01:0/112 holds the IPv4-compatible form of 10.1.x.x; it must not catch IPv4.
    let t = table(&[("10.1.0.0", 16, 1), ("::a01:0", 112, 2)]);
    assert_eq!(t.lookup(ip("10.1.0.5")), Some(PeerId(1)));
    assert_eq!(t.lookup(ip("::a01:5")), Some(PeerId(2)));
    assert_eq!(t.lookup(ip("::ffff:10.1.0.5")), None);
}

#[test]
fn host_bits_and_long_lengths_are_refused() {
    for (addr, len) in [
        ("10.1.2.3", 16),
        ("10.0.0.0", 33),
        ("fd00::1", 64),
        ("::", 129),
    ] {
        let e = RouteTable::build([(ip(addr), len, PeerId(0))]).unwrap_err();
        assert!(
            matches!(e, Error::InvalidPrefix { .. }),
            "{addr}/{len}: {e}"
        );
    }
}

#[test]
fn one_prefix_for_two_peers_is_refused_but_a_repeat_is_not() {
    let e = RouteTable::build([
        (ip("10.0.0.0"), 8, PeerId(1)),
        (ip("10.0.0.0"), 8, PeerId(2)),
    ])
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::DuplicatePrefix {
                first: 1,
                second: 2,
                ..
            }
        ),
        "{e}"
    );
    let t = table(&[("10.0.0.0", 8, 1), ("10.0.0.0", 8, 1)]);
    assert_eq!(t.len(), 1);
}

/// The model: every prefix that covers the address, the longest wins.
fn linear_lookup(routes: &[(Prefix, PeerId)], dst: IpAddr) -> Option<PeerId> {
    routes
        .iter()
        .filter(|(p, _)| p.contains(dst))
        .max_by_key(|(p, _)| p.length())
        .map(|&(_, peer)| peer)
}

/// A prefix from raw bits, with its host bits cleared.
fn prefix_of(v6: bool, bits: u128, len: u8) -> Prefix {
    let (addr, len) = if v6 {
        (IpAddr::V6(Ipv6Addr::from(bits.mask(len % 129))), len % 129)
    } else {
        let len = len % 33;
        (IpAddr::V4(Ipv4Addr::from((bits as u32).mask(len))), len)
    };
    Prefix::new(addr, len).unwrap()
}

/// An address inside `prefix`, its host bits taken from `noise`.
fn inside(prefix: Prefix, noise: u128) -> IpAddr {
    match prefix.addr() {
        IpAddr::V4(a) => {
            let host = (noise as u32) & !u32::MAX.mask(prefix.length());
            IpAddr::V4(Ipv4Addr::from(u32::from(a) | host))
        }
        IpAddr::V6(a) => {
            let host = noise & !u128::MAX.mask(prefix.length());
            IpAddr::V6(Ipv6Addr::from(u128::from(a) | host))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    #[test]
    fn lookups_agree_with_a_linear_scan_at_100_000_prefixes(
        seed in any::<u64>(),
        probes in proptest::collection::vec((any::<u32>(), any::<u128>(), any::<bool>()), 1500),
    ) {
        // Short lengths are rare, as in real tables; long ones make the table large.
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut unique = HashMap::new();
        while unique.len() < 100_000 {
            let v6 = next() % 3 == 0;
            let bits = (u128::from(next()) << 64) | u128::from(next());
            let len = (next() % 129) as u8;
            let len = if v6 { len } else { len % 33 };
            // Cluster the addresses so that prefixes nest, as real ones do.
            let bits = bits & !(u128::from(next() % 4) << 126) & !(u128::from(next() % 4) << 30);
            let prefix = prefix_of(v6, bits, len);
            let peer = PeerId((next() % 64) as u32);
            unique.entry(prefix).or_insert(peer);
        }
        let routes: Vec<(Prefix, PeerId)> = unique.into_iter().collect();
        let table = RouteTable::build(routes.iter().map(|(p, peer)| (p.addr(), p.length(), *peer))).unwrap();
        prop_assert_eq!(table.len(), routes.len());
        let mut seen = Vec::new();
        for (pick, noise, random) in probes {
            let dst = if random {
                if noise & 1 == 0 {
                    IpAddr::V4(Ipv4Addr::from(noise as u32))
                } else {
                    IpAddr::V6(Ipv6Addr::from(noise))
                }
            } else {
                inside(routes[pick as usize % routes.len()].0, noise)
            };
            prop_assert_eq!(table.lookup(dst), linear_lookup(&routes, dst), "{}", dst);
            seen.push(dst);
        }
        // A worker's cache answers as the table does, on a miss, on a hit and after the
        // slot was taken by another destination (1,500 destinations share 256 slots).
        let mut cache = RouteCache::default();
        for dst in seen.iter().chain(seen.iter().rev()) {
            prop_assert_eq!(
                RouteTable::target_of(cache.entry(&table, *dst)),
                table.target(*dst),
                "{}",
                dst
            );
        }
    }
}
