//! The path-plane benchmark behind `cpclink srv6 bench`: selection decisions per second on
//! a synthetic topology, and seg6 route programming rate against the kernel in a scratch
//! network namespace.

use std::hint::black_box;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use serde::Serialize;

use cpclink_srv6::inspect::encapsulate;
use cpclink_srv6::program::{Programmer, Seg6Route};
use cpclink_srv6::select::SelectorConfig;
use cpclink_srv6::sid::SegmentList;
use cpclink_srv6::topology::{
    LinkFile, PathFile, ServiceFile, SiteFile, SiteMetricsFile, TopologyFile, TransitFile,
};
use cpclink_srv6::HmacKey;
use cpclink_srv6::{PathSelector, Topology};

use crate::netns::Netns;
use crate::Error;

/// A synthetic topology: `sites` sites, `transits` transit routers, every site reachable
/// through every transit (so `sites × transits` candidate paths), deterministic metrics.
pub fn synthetic_topology(sites: usize, transits: usize) -> Result<Topology, Error> {
    let mut m = TopologyFile {
        service: ServiceFile {
            name: "bench".into(),
            client_delay_ms: 2.0,
            latency_bound_ms: Some(40.0),
            min_bandwidth_mbps: 100.0,
            ..Default::default()
        },
        ingress: "ingress".into(),
        ..Default::default()
    };
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    for t in 0..transits {
        m.transits.push(TransitFile {
            name: format!("t{t}"),
            sid: format!("fd00:100:{t:x}::1"),
        });
        m.links.push(link(
            "ingress".into(),
            format!("t{t}"),
            1.0 + 4.0 * next(),
            next(),
        ));
    }
    for s in 0..sites {
        m.sites.push(SiteFile {
            name: format!("s{s}"),
            sid: format!("fd00:200:{s:x}::6"),
            zone: None,
            available: true,
            metrics: SiteMetricsFile {
                cpu_load: Some(next()),
                compute_delay_ms: Some(1.0 + 10.0 * next()),
                ..Default::default()
            },
        });
        for t in 0..transits {
            m.links.push(link(
                format!("t{t}"),
                format!("s{s}"),
                1.0 + 20.0 * next(),
                next() * 0.9,
            ));
            m.paths.push(PathFile {
                site: format!("s{s}"),
                via: vec![format!("t{t}")],
            });
        }
    }
    Ok(Topology::from_model(m, "synthetic")?)
}

fn link(from: String, to: String, latency_ms: f64, utilisation: f64) -> LinkFile {
    LinkFile {
        from,
        to,
        latency_ms,
        bandwidth_mbps: 10_000.0,
        utilisation,
        loss: 0.0,
        up: true,
    }
}

/// Result of the selection benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct SelectionReport {
    /// Sites.
    pub sites: usize,
    /// Candidate (site, path) pairs.
    pub candidate_paths: usize,
    /// Decisions made.
    pub decisions: u64,
    /// Wall time, s.
    pub seconds: f64,
    /// Decisions per second.
    pub decisions_per_sec: f64,
    /// Candidates evaluated per second.
    pub candidates_per_sec: f64,
}

/// Runs `decide` repeatedly for `duration`, changing one site's load before each decision
/// so every decision works on new metrics.
pub fn selection(sites: usize, paths: usize, duration: Duration) -> Result<SelectionReport, Error> {
    let transits = paths.div_ceil(sites.max(1)).max(1);
    let mut topo = synthetic_topology(sites, transits)?;
    let mut sel = PathSelector::new(SelectorConfig::default());
    let start = Instant::now();
    let mut decisions = 0u64;
    while start.elapsed() < duration {
        for _ in 0..16 {
            let s = (decisions as usize * 7919) % topo.sites.len();
            let load = topo.sites[s].metrics.cpu_load.unwrap_or(0.0);
            topo.sites[s].metrics.cpu_load = Some((load + 0.37) % 1.0);
            black_box(sel.decide(&topo, decisions)?);
            decisions += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(SelectionReport {
        sites,
        candidate_paths: topo.paths.len(),
        decisions,
        seconds,
        decisions_per_sec: decisions as f64 / seconds,
        candidates_per_sec: decisions as f64 * topo.paths.len() as f64 / seconds,
    })
}

/// Result of the route programming benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct ProgrammingReport {
    /// Routes programmed.
    pub routes: usize,
    /// Adding them one request each, routes/s.
    pub add_per_sec: f64,
    /// Replacing all with new segment lists through reconcile, routes/s.
    pub reconcile_replace_per_sec: f64,
    /// A reconcile that finds nothing to change (dump + compare), routes/s.
    pub reconcile_noop_per_sec: f64,
    /// Removing all through reconcile, routes/s.
    pub remove_per_sec: f64,
}

/// Programs `routes` seg6 encap routes (two segments plus HMAC TLV each) in a scratch
/// namespace, then replaces, re-checks and removes them. Needs root.
pub fn programming(routes: usize) -> Result<ProgrammingReport, Error> {
    let ns = Netns::create(&format!("cpclink-bench-{}", std::process::id()))?;
    ns.ip(&[
        "link", "add", "name", "up0", "type", "veth", "peer", "name", "up1",
    ])?;
    ns.ip(&["addr", "add", "fd00:1::1/64", "dev", "up0", "nodad"])?;
    ns.ip(&["link", "set", "dev", "up0", "up"])?;
    ns.ip(&["link", "set", "dev", "up1", "up"])?;
    let mut p = ns.run(Programmer::new)??;
    let oif = p.link_index("up0")?;
    let make = |gen: u16| -> Result<Vec<Seg6Route>, cpclink_srv6::Error> {
        (0..routes)
            .map(|i| {
                let dst = Ipv6Addr::new(0xfd00, 0x5e, (i >> 16) as u16, i as u16, 0, 0, 0, 0);
                let list = SegmentList::parse(&format!(
                    "fd00:100:{gen:x}::1,fd00:200:{:x}::6",
                    i % 0xffff
                ))?;
                Seg6Route::steer(dst, 64, &list, Some(7), oif)
            })
            .collect()
    };
    let first = make(1)?;
    let t = Instant::now();
    for r in &first {
        p.add_route(r)?;
    }
    let add = t.elapsed().as_secs_f64();
    let second = make(2)?;
    let t = Instant::now();
    let rep = p.reconcile_routes(&second)?;
    let replace = t.elapsed().as_secs_f64();
    if rep.replaced != routes {
        return Err(Error::Reconcile("not every route was replaced"));
    }
    let t = Instant::now();
    let rep = p.reconcile_routes(&second)?;
    let noop = t.elapsed().as_secs_f64();
    if rep.unchanged != routes {
        return Err(Error::Reconcile("a second reconcile changed routes"));
    }
    let t = Instant::now();
    p.reconcile_routes(&[])?;
    let remove = t.elapsed().as_secs_f64();
    let n = routes as f64;
    Ok(ProgrammingReport {
        routes,
        add_per_sec: n / add,
        reconcile_replace_per_sec: n / replace,
        reconcile_noop_per_sec: n / noop,
        remove_per_sec: n / remove,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_topology_has_the_requested_shape() {
        let t = synthetic_topology(100, 10).unwrap();
        assert_eq!(
            (t.sites.len(), t.paths.len(), t.links.len()),
            (100, 1000, 10 + 1000)
        );
        let d = PathSelector::new(SelectorConfig::default())
            .decide(&t, 0)
            .unwrap();
        assert_eq!(d.segments.len(), 2);
        // The decision is the cheapest feasible candidate.
        let w = SelectorConfig::default().weights;
        let best = (0..t.paths.len())
            .filter_map(|i| cpclink_srv6::select::evaluate(&t, i, &w, 0).ok())
            .map(|c| c.total_ms)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(d.cost.total_ms, best);
    }
}

/// What an SRH with HMAC costs per packet where the kernel adds it (a seg6 encap route,
/// what the appliance programs) and where the engine would build it itself.
#[derive(Debug, Clone, Serialize)]
pub struct SrhCostReport {
    /// Datagrams sent per measurement.
    pub packets: usize,
    /// UDP payload bytes (a 1400-byte inner packet sealed in PSP).
    pub payload: usize,
    /// CPU ns per datagram sent through a plain IPv6 route (the baseline).
    pub plain_send_ns: f64,
    /// CPU ns per datagram sent through a seg6 encap route (2 SIDs, HMAC by the kernel).
    pub kernel_srh_send_ns: f64,
    /// CPU ns per datagram sent in UDP GSO batches of 40 (how the engine sends) through the
    /// plain route.
    pub gso_plain_send_ns: f64,
    /// The same through the seg6 encap route: the kernel adds the SRH and its HMAC once per
    /// batch, before segmentation.
    pub gso_kernel_srh_send_ns: f64,
    /// CPU ns per packet to build the outer IPv6 header, the SRH and its HMAC in user
    /// space, before any send: what the engine would add (and it would have to send
    /// through a raw socket, one datagram per call, without GSO).
    pub engine_build_ns: f64,
}

/// Datagrams per GSO send in [`srh_cost`].
const GSO_BATCH: usize = 40;

/// Measures [`SrhCostReport`] in a fresh namespace (root): `packets` datagrams of `payload`
/// bytes over a veth through each route, the sending thread's CPU time per datagram.
pub fn srh_cost(packets: usize, payload: usize) -> Result<SrhCostReport, Error> {
    let ns = Netns::create(&format!("cpclink-srh-{}", std::process::id()))?;
    ns.ip(&[
        "link",
        "add",
        "name",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "up1",
        "address",
        "02:00:00:00:00:02",
    ])?;
    ns.ip(&["addr", "add", "fd00:1::1/64", "dev", "up0", "nodad"])?;
    ns.ip(&["link", "set", "dev", "up0", "up"])?;
    ns.ip(&["link", "set", "dev", "up1", "up"])?;
    ns.ip(&[
        "neigh",
        "replace",
        "fd00:1::2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "up0",
        "nud",
        "permanent",
    ])?;
    ns.ip(&["-6", "route", "add", "fd00:99::/64", "via", "fd00:1::2"])?;
    let key = HmacKey::new(7, b"srh-cost-secret".to_vec())?;
    let list = SegmentList::parse("fd00:1::2,fd00:200:1::100")?;
    let mut p = ns.run(Programmer::new)??;
    let oif = p.link_index("up0")?;
    p.set_hmac_key(&key)?;
    let source = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
    p.set_tunnel_source(source)?;
    let (plain, steered) = (
        Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0xfd00, 0x98, 0, 0, 0, 0, 0, 1),
    );
    p.add_route(&Seg6Route::steer(
        steered,
        128,
        &list,
        Some(key.key_id),
        oif,
    )?)?;
    // Sends `packets` datagrams of `payload` bytes, `batch` per call (GSO when above 1);
    // CPU ns per datagram.
    let send = |dst: Ipv6Addr, batch: usize| -> Result<f64, Error> {
        let dst = std::net::SocketAddr::from((dst, 9));
        ns.run(|| -> Result<f64, std::io::Error> {
            let socket = std::net::UdpSocket::bind((source, 0))?;
            if batch > 1 {
                let size = i32::try_from(payload).unwrap_or(i32::MAX);
                nix::sys::socket::setsockopt(
                    &socket,
                    nix::sys::socket::sockopt::UdpGsoSegment,
                    &size,
                )?;
            }
            let buf = vec![0x5au8; payload * batch];
            let started = thread_cpu_ns();
            for _ in 0..packets / batch {
                // A full socket buffer only drops: what is measured is the send path.
                let _ = socket.send_to(&buf, dst);
            }
            Ok((thread_cpu_ns() - started) as f64 / (packets / batch * batch) as f64)
        })?
        .map_err(|e| Error::Path(format!("sending through the routes: {e}")))
    };
    let plain_send_ns = send(plain, 1)?;
    let kernel_srh_send_ns = send(steered, 1)?;
    let gso_plain_send_ns = send(plain, GSO_BATCH)?;
    let gso_kernel_srh_send_ns = send(steered, GSO_BATCH)?;
    let inner = vec![0x5au8; payload];
    let started = thread_cpu_ns();
    for _ in 0..packets {
        std::hint::black_box(encapsulate(source, &list, Some(&key), 41, &inner)?);
    }
    let engine_build_ns = (thread_cpu_ns() - started) as f64 / packets as f64;
    Ok(SrhCostReport {
        packets,
        payload,
        plain_send_ns,
        kernel_srh_send_ns,
        gso_plain_send_ns,
        gso_kernel_srh_send_ns,
        engine_build_ns,
    })
}

/// The calling thread's CPU time, ns.
fn thread_cpu_ns() -> i128 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
        .unwrap_or(0)
}
