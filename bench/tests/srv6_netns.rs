//! End to end against the real kernel: an ingress, two transit routers (t1, t2) and two
//! egress sites (e1, e2) in network namespaces. The selector programs the ingress over
//! netlink; interface counters and UDP receivers show where traffic went. Skips, with the
//! reason, when not root or when the kernel lacks seg6.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::time::Duration;

use cpclink_bench::netns::{self, Netns};
use cpclink_srv6::inspect::{decode_packet, encapsulate};
use cpclink_srv6::program::{Programmer, Seg6LocalAction, Seg6Route};
use cpclink_srv6::select::{Reason, SelectorConfig};
use cpclink_srv6::{HmacKey, PathSelector, SegmentList, Topology};

const SERVICE: &str = "fd00:5e::1";
const SOURCE: &str = "fd00:a::1";
const PORT: u16 = 9000;

const TOPOLOGY: &str = r#"
ingress = "ing"
[service]
name = "inference"
latency_bound_ms = 20.0
[[transits]]
name = "t1"
sid = "fd00:100:1::1"
[[transits]]
name = "t2"
sid = "fd00:100:2::1"
[[sites]]
name = "e1"
sid = "fd00:200:1::6"
metrics = { cpu_load = 0.2 }
[[sites]]
name = "e2"
sid = "fd00:200:2::6"
metrics = { cpu_load = 0.5 }
[[links]]
from = "ing"
to = "t1"
latency_ms = 1.0
[[links]]
from = "ing"
to = "t2"
latency_ms = 2.0
[[links]]
from = "t1"
to = "e1"
latency_ms = 1.0
[[links]]
from = "t1"
to = "e2"
latency_ms = 1.0
[[links]]
from = "t2"
to = "e1"
latency_ms = 1.0
[[links]]
from = "t2"
to = "e2"
latency_ms = 1.0
[[paths]]
site = "e1"
via = ["t1"]
[[paths]]
site = "e1"
via = ["t2"]
[[paths]]
site = "e2"
via = ["t1"]
[[paths]]
site = "e2"
via = ["t2"]
"#;

struct Lab {
    ns: HashMap<&'static str, Netns>,
}

impl Lab {
    fn build() -> Self {
        let tag = std::process::id();
        let mut ns = HashMap::new();
        for n in ["ing", "t1", "t2", "e1", "e2"] {
            let netns = Netns::create(&format!("cl{tag}-{n}")).unwrap();
            netns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
            // Transits leave HMAC to the egress domain; egress sites require it. Set before
            // the interfaces exist so they inherit it from `default`.
            let require = match n {
                "e1" | "e2" => "1",
                "t1" | "t2" => "-1",
                _ => "0",
            };
            netns
                .sysctl("net.ipv6.conf.all.seg6_require_hmac", require)
                .unwrap();
            netns
                .sysctl("net.ipv6.conf.default.seg6_require_hmac", require)
                .unwrap();
            ns.insert(n, netns);
        }
        let lab = Self { ns };
        let links = [
            ("ing", "t1", 11),
            ("ing", "t2", 12),
            ("t1", "e1", 31),
            ("t1", "e2", 32),
            ("t2", "e1", 41),
            ("t2", "e2", 42),
        ];
        for (a, b, net) in links {
            // Each end's interface is named after the node at the other end.
            lab.ns[a]
                .ip(&[
                    "link",
                    "add",
                    "name",
                    b,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    a,
                    "netns",
                    lab.ns[b].name(),
                ])
                .unwrap();
            lab.ns[a]
                .ip(&[
                    "addr",
                    "add",
                    &format!("fd00:{net}::1/64"),
                    "dev",
                    b,
                    "nodad",
                ])
                .unwrap();
            lab.ns[b]
                .ip(&[
                    "addr",
                    "add",
                    &format!("fd00:{net}::2/64"),
                    "dev",
                    a,
                    "nodad",
                ])
                .unwrap();
            lab.ns[a].ip(&["link", "set", "dev", b, "up"]).unwrap();
            lab.ns[b].ip(&["link", "set", "dev", a, "up"]).unwrap();
        }
        // Resolve neighbours before measuring, so no packet waits in a neighbour queue.
        for (a, b, net) in links {
            for (from, to) in [(a, format!("fd00:{net}::2")), (b, format!("fd00:{net}::1"))] {
                let out = lab.ns[from]
                    .exec(&["ping", "-c", "1", "-W", "5", &to])
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{from} cannot reach {to}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        lab.ns["ing"]
            .ip(&["addr", "add", &format!("{SOURCE}/128"), "dev", "lo"])
            .unwrap();
        for e in ["e1", "e2"] {
            lab.ns[e]
                .ip(&["addr", "add", &format!("{SERVICE}/128"), "dev", "lo"])
                .unwrap();
            // The service table End.DT6 decapsulates into: the service address is local.
            lab.ns[e]
                .ip(&[
                    "-6", "route", "add", "local", SERVICE, "dev", "lo", "table", "100",
                ])
                .unwrap();
        }
        // Underlay: plain IPv6 routes to each locator.
        let route = |n: &str, prefix: &str, via: &str| {
            lab.ns[n]
                .ip(&["-6", "route", "add", prefix, "via", via])
                .unwrap()
        };
        route("ing", "fd00:100:1::/48", "fd00:11::2");
        route("ing", "fd00:100:2::/48", "fd00:12::2");
        route("t1", "fd00:200:1::/48", "fd00:31::2");
        route("t1", "fd00:200:2::/48", "fd00:32::2");
        route("t2", "fd00:200:1::/48", "fd00:41::2");
        route("t2", "fd00:200:2::/48", "fd00:42::2");
        lab
    }

    fn programmer(&self, n: &str) -> Programmer {
        self.ns[n].run(Programmer::new).unwrap().unwrap()
    }

    fn rx_packets(&self, n: &str, dev: &str) -> u64 {
        let out = self.ns[n]
            .ip(&["-s", "-j", "link", "show", "dev", dev])
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
    }

    fn receiver(&self, n: &str) -> UdpSocket {
        let s = self.ns[n]
            .run(|| UdpSocket::bind(SocketAddrV6::new(SERVICE.parse().unwrap(), PORT, 0, 0)))
            .unwrap()
            .unwrap();
        s.set_nonblocking(true).unwrap();
        s
    }
}

fn drain(s: &UdpSocket) -> usize {
    std::thread::sleep(Duration::from_millis(300));
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while s.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

fn send_udp(lab: &Lab, count: usize) {
    let s = lab.ns["ing"]
        .run(|| UdpSocket::bind(SocketAddrV6::new(SOURCE.parse().unwrap(), 0, 0, 0)))
        .unwrap()
        .unwrap();
    for i in 0..count {
        s.send_to(
            format!("probe {i}").as_bytes(),
            SocketAddrV6::new(SERVICE.parse().unwrap(), PORT, 0, 0),
        )
        .unwrap();
    }
}

/// An inner IPv6/UDP packet from SOURCE to SERVICE:PORT.
fn inner_udp(payload: &[u8]) -> Vec<u8> {
    let (src, dst): (Ipv6Addr, Ipv6Addr) = (SOURCE.parse().unwrap(), SERVICE.parse().unwrap());
    let udp_len = 8 + payload.len();
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&PORT.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    // Checksum over the pseudo-header and the UDP datagram.
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(udp_len as u32).to_be_bytes());
    add(&[0, 0, 0, 17]);
    add(&p[40..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    p[46..48].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    p
}

fn inject(lab: &Lab, packets: &[Vec<u8>]) {
    lab.ns["ing"]
        .run(|| {
            let s = socket2::Socket::new(
                socket2::Domain::IPV6,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(255)),
            )
            .unwrap();
            for p in packets {
                let mut d = [0u8; 16];
                d.copy_from_slice(&p[24..40]);
                let to = SocketAddrV6::new(Ipv6Addr::from(d), 0, 0, 0);
                s.send_to(p, &to.into()).unwrap();
            }
        })
        .unwrap();
}

#[test]
fn selector_programs_linux_srv6_with_hmac() {
    if let Some(reason) = netns::unavailable() {
        println!("skipped: {reason}");
        return;
    }
    let lab = Lab::build();
    let key = HmacKey::new(7, b"egress-domain-secret".to_vec()).unwrap();

    // Transit End SIDs and egress End.DT6 SIDs, programmed by cpclink.
    for (n, sid, dev) in [
        ("t1", "fd00:100:1::1", "ing"),
        ("t2", "fd00:100:2::1", "ing"),
    ] {
        let mut p = lab.programmer(n);
        let oif = p.link_index(dev).unwrap();
        p.add_route(&Seg6Route::local_sid(
            sid.parse().unwrap(),
            Seg6LocalAction::End,
            oif,
        ))
        .unwrap();
    }
    for (n, sid) in [("e1", "fd00:200:1::6"), ("e2", "fd00:200:2::6")] {
        let mut p = lab.programmer(n);
        let oif = p.link_index("t1").unwrap();
        let r = Seg6Route::local_sid(
            sid.parse().unwrap(),
            Seg6LocalAction::EndDt6 { table: 100 },
            oif,
        );
        assert_eq!(
            p.reconcile_routes(std::slice::from_ref(&r)).unwrap().added,
            1
        );
        assert_eq!(
            p.reconcile_hmac_keys(std::slice::from_ref(&key))
                .unwrap()
                .added,
            1
        );
        assert_eq!(p.hmac_keys().unwrap(), vec![(7, key.secret().to_vec(), 2)]);
    }
    let mut ing = lab.programmer("ing");
    ing.set_tunnel_source(SOURCE.parse().unwrap()).unwrap();
    assert_eq!(
        ing.tunnel_source().unwrap(),
        SOURCE.parse::<Ipv6Addr>().unwrap()
    );
    ing.reconcile_hmac_keys(std::slice::from_ref(&key)).unwrap();

    let (rx1, rx2) = (lab.receiver("e1"), lab.receiver("e2"));
    let mut topo = Topology::parse(TOPOLOGY, "lab.toml").unwrap();
    let mut sel = PathSelector::new(SelectorConfig {
        hold_down_ms: 5_000,
        ..Default::default()
    });
    let program = |ing: &mut Programmer, d: &cpclink_srv6::Decision, topo: &Topology| {
        let first_transit = &topo.transits[topo.paths[d.path_index].via[0]].name;
        let oif = ing.link_index(first_transit).unwrap();
        let route = Seg6Route::steer(
            SERVICE.parse().unwrap(),
            128,
            &d.segments,
            Some(key.key_id),
            oif,
        )
        .unwrap();
        ing.reconcile_routes(&[route]).unwrap()
    };
    let through = |lab: &Lab, count: usize| {
        let before = (lab.rx_packets("t1", "ing"), lab.rx_packets("t2", "ing"));
        send_udp(lab, count);
        let got = (drain(&rx1), drain(&rx2));
        let after = (lab.rx_packets("t1", "ing"), lab.rx_packets("t2", "ing"));
        (got, (after.0 - before.0, after.1 - before.1))
    };

    // 1. Initial choice: e1 (less loaded) via t1 (shorter).
    let d = sel.decide(&topo, 0).unwrap();
    assert_eq!(
        (d.site.as_str(), d.segments.to_string().as_str()),
        ("e1", "fd00:100:1::1,fd00:200:1::6")
    );
    let r = program(&mut ing, &d, &topo);
    assert_eq!((r.added, r.unchanged), (1, 0));
    assert_eq!(
        program(&mut ing, &d, &topo).unchanged,
        1,
        "reconciling again changes nothing"
    );
    let ((g1, g2), (c1, c2)) = through(&lab, 50);
    println!("initial: e1 got {g1}, e2 got {g2}; rx on t1 {c1}, t2 {c2}");
    assert_eq!((g1, g2), (50, 0));
    assert!(c1 >= 50 && c2 < 10, "t1 {c1} t2 {c2}");

    // 2. Metrics change: e2 becomes much better, but hysteresis (hold-down) waits.
    topo.sites[0].metrics.cpu_load = Some(0.9);
    topo.sites[1].metrics.cpu_load = Some(0.1);
    let d = sel.decide(&topo, 1_000).unwrap();
    assert_eq!(d.site, "e1");
    assert!(
        matches!(
            d.explanation.reason,
            Reason::Held {
                hold_down_left_ms: 4_000,
                ..
            }
        ),
        "{:?}",
        d.explanation.reason
    );
    assert_eq!(program(&mut ing, &d, &topo).unchanged, 1);
    assert_eq!(through(&lab, 20).0, (20, 0));
    let d = sel.decide(&topo, 6_000).unwrap();
    assert_eq!(
        (d.site.as_str(), d.segments.to_string().as_str()),
        ("e2", "fd00:100:1::1,fd00:200:2::6")
    );
    assert_eq!(program(&mut ing, &d, &topo).replaced, 1);
    let ((g1, g2), (c1, c2)) = through(&lab, 50);
    println!("after metric change: e1 got {g1}, e2 got {g2}; rx on t1 {c1}, t2 {c2}");
    assert_eq!((g1, g2), (0, 50));
    assert!(c1 >= 50 && c2 < 10);

    // 3. The ingress–t1 link goes down: fail over to t2.
    lab.ns["ing"].ip(&["link", "set", "t1", "down"]).unwrap();
    let l = topo.link_index("ing", "t1").unwrap();
    topo.links[l].metrics.up = false;
    let d = sel.decide(&topo, 6_100).unwrap();
    assert!(
        matches!(d.explanation.reason, Reason::Failover { .. }),
        "{:?}",
        d.explanation.reason
    );
    assert_eq!(
        (d.site.as_str(), d.segments.to_string().as_str()),
        ("e2", "fd00:100:2::1,fd00:200:2::6")
    );
    program(&mut ing, &d, &topo);
    let ((g1, g2), (_, c2)) = through(&lab, 50);
    println!("after link down: e1 got {g1}, e2 got {g2}; rx on t2 {c2}");
    assert_eq!((g1, g2), (0, 50));
    assert!(c2 >= 50);

    // 4. HMAC at the egress domain: unsigned and wrongly signed packets are dropped, packets
    //    signed by cpclink pass.
    let list = SegmentList::parse("fd00:100:2::1,fd00:200:2::6").unwrap();
    let src: Ipv6Addr = SOURCE.parse().unwrap();
    let wrong = HmacKey::new(7, b"not-the-secret".to_vec()).unwrap();
    let batch = |k: Option<&HmacKey>| {
        (0..20)
            .map(|i| {
                encapsulate(src, &list, k, 41, &inner_udp(format!("raw {i}").as_bytes())).unwrap()
            })
            .collect::<Vec<_>>()
    };
    inject(&lab, &batch(None));
    let unsigned = drain(&rx2);
    inject(&lab, &batch(Some(&wrong)));
    let wrongly = drain(&rx2);
    inject(&lab, &batch(Some(&key)));
    let signed = drain(&rx2);
    println!("egress with seg6_require_hmac=1: unsigned {unsigned}/20, wrong key {wrongly}/20, cpclink-signed {signed}/20 delivered");
    assert_eq!((unsigned, wrongly, signed), (0, 0, 20));

    // 5. An SRH written by the kernel (ingress encap route with HMAC key 7) decodes and
    //    verifies with cpclink's decoder.
    let cap = lab.ns["t2"]
        .run(|| {
            let eth_p_all = i32::from(0x0003u16.to_be());
            let s = socket2::Socket::new(
                socket2::Domain::PACKET,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(eth_p_all)),
            )
            .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s
        })
        .unwrap();
    send_udp(&lab, 3);
    let mut frame = None;
    let mut buf = [0u8; 2048];
    for _ in 0..200 {
        let Ok(n) = std::io::Read::read(&mut &cap, &mut buf) else {
            break;
        };
        // Ethernet, IPv6, next header 43 (routing), routing type 4.
        if n > 14 + 44 && buf[12..14] == [0x86, 0xdd] && buf[14 + 6] == 43 && buf[14 + 42] == 4 {
            frame = Some(buf[14..n].to_vec());
            break;
        }
    }
    let packet = frame.expect("no SRv6 packet captured at t2");
    println!("kernel-written packet: {}", hex::encode(&packet));
    let decoded = decode_packet(&packet, Some(&key)).unwrap();
    println!("decoded: {}", serde_json::to_string(&decoded).unwrap());
    assert_eq!(decoded.source, src);
    assert_eq!(
        decoded.segments,
        vec![
            "fd00:200:2::6".parse::<Ipv6Addr>().unwrap(),
            "fd00:100:2::1".parse().unwrap()
        ]
    );
    assert_eq!(decoded.hmac.as_ref().and_then(|h| h.valid), Some(true));
    assert_eq!(
        decode_packet(&packet, Some(&wrong))
            .unwrap()
            .hmac
            .and_then(|h| h.valid),
        Some(false)
    );

    // cpclink's routes are all it removes on an empty reconcile.
    assert_eq!(ing.reconcile_routes(&[]).unwrap().removed, 1);
    assert!(ing.routes().unwrap().is_empty());
}
