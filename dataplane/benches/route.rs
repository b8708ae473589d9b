//! Criterion micro-benchmark: route lookup at 10 and at 100,000 prefixes, for addresses that
//! hit a prefix of their own length mix and for addresses that fall through to nothing.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use cpclink_dataplane::route::{PeerId, RouteTable};

/// xorshift64: the same table and probes on every run.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `count` prefixes, three IPv4 to one IPv6, lengths /8../32 and /16../128 like a
/// carrier's table, inside 10.0.0.0/8 and fd00::/8 so that misses exist.
fn routes(count: usize, noise: &mut Noise) -> Vec<(IpAddr, u8, PeerId)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let peer = PeerId((noise.next() % 64) as u32);
        let route = if noise.next() % 4 == 0 {
            let len = 16 + (noise.next() % 113) as u8;
            let bits = (u128::from(noise.next()) << 64 | u128::from(noise.next())) >> 8
                | (0xfd_u128 << 120);
            let mask = u128::MAX.checked_shl(u32::from(128 - len)).unwrap_or(0);
            (IpAddr::V6(Ipv6Addr::from(bits & mask)), len)
        } else {
            let len = 8 + (noise.next() % 25) as u8;
            let bits = (noise.next() as u32 >> 8) | (10 << 24);
            let mask = u32::MAX.checked_shl(u32::from(32 - len)).unwrap_or(0);
            (IpAddr::V4(Ipv4Addr::from(bits & mask)), len)
        };
        if seen.insert(route) {
            out.push((route.0, route.1, peer));
        }
    }
    out
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    group.throughput(Throughput::Elements(1));
    for count in [10, 100_000] {
        let mut noise = Noise(0x2545_f491_4f6c_dd1d);
        let routes = routes(count, &mut noise);
        let table = RouteTable::build(routes.iter().copied()).unwrap();
        // Hits: the network address of each prefix; misses: outside 10/8 and fd00::/8.
        let hits: Vec<IpAddr> = routes.iter().map(|r| r.0).cycle().take(1024).collect();
        let misses: Vec<IpAddr> = (0..1024)
            .map(|i| {
                if i % 4 == 0 {
                    IpAddr::V6(Ipv6Addr::from(
                        u128::from(noise.next()) | (0x2001_u128 << 112),
                    ))
                } else {
                    IpAddr::V4(Ipv4Addr::from(noise.next() as u32 | (192 << 24)))
                }
            })
            .collect();
        for (name, probes) in [("hit", &hits), ("miss", &misses)] {
            let mut i = 0;
            group.bench_with_input(BenchmarkId::new(name, count), &count, |b, _| {
                b.iter(|| {
                    i = (i + 1) % probes.len();
                    black_box(table.lookup(black_box(probes[i])))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
