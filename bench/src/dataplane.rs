//! Data-plane suite: synthetic flows between two engines over loopback, encrypted and, in
//! the same run, as the plain baseline (the same PSP framing, sizes and GSO/GRO batching
//! with the AEAD left out), per payload size, worker count and I/O backend.
//!
//! Throughput is what the receiving sink verified, byte for byte, per second: inner packet
//! bytes, not wire bytes. The time splits say where each side's worker time went.
//!
//! With services, the flows' prefixes become anycast services whose affinity buckets pick
//! the peer per flow, so every packet pays the flow hash and the bucket's activity mark;
//! each point is measured that way right after it is measured with plain peer prefixes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpclink_dataplane::crypto::{Backend, Suite};
use cpclink_dataplane::engine::{
    lab, Egress, Engine, EngineConfig, PeerConfig, PeerId, Protection, SaProfile, WorkerStats,
};
use cpclink_dataplane::io::{udp::MAX_GSO_SEGMENTS, IoKind};
use cpclink_dataplane::route::{AffinityTable, BucketActivity, RouteTable};
use cpclink_dataplane::sa::MasterKeys;

use crate::pacer::SourceRate;
use crate::traffic::{TrafficCounters, TrafficSpec, TrafficStats, MAX_PACKET, MIN_PACKET};
use crate::Error;

/// Payload sizes measured by default.
pub const DEFAULT_SIZES: [usize; 4] = [64, 512, 1400, 8192];
/// Worker counts measured by default.
pub const DEFAULT_WORKERS: [usize; 2] = [1, 2];
/// Rounds of every point by default.
pub const DEFAULT_ROUNDS: usize = 3;
/// GSO sends per transmit batch by default.
pub const DEFAULT_BATCH_SENDS: usize = 8;
/// Flows in every measurement.
pub const FLOWS: u32 = 64;
/// The suite measured by default: PSP version 1, AES-GCM-256.
pub const DEFAULT_SUITE: Suite = Suite::AesGcm256;
/// Buckets of every service's affinity table.
pub const SERVICE_BUCKETS: usize = 1024;
const WARMUP: Duration = Duration::from_millis(300);

/// Two engines on loopback, each sending synthetic flows to the other (or only `a` to `b`),
/// keyed in lab mode, each routing the flows' prefixes to the other.
#[derive(Debug)]
pub struct LoopbackPair {
    /// The first appliance.
    pub a: Engine,
    /// The second appliance.
    pub b: Engine,
    traffic_a: Arc<TrafficCounters>,
    traffic_b: Arc<TrafficCounters>,
}

/// One side of a pair: its engine's counters and what its synthetic traffic counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SideStats {
    /// The engine's counters, summed over workers.
    pub engine: WorkerStats,
    /// The generators' and sinks' counts.
    pub traffic: TrafficStats,
}

/// How a [`LoopbackPair`] runs.
#[derive(Debug, Clone, Copy)]
pub struct PairOptions {
    /// Workers per engine.
    pub workers: usize,
    /// I/O backend.
    pub io: IoKind,
    /// Encrypted, or the plain baseline.
    pub protection: Protection,
    /// Inner packet bytes.
    pub payload: usize,
    /// Flows per direction.
    pub flows: u32,
    /// Whether `b` sends to `a` too.
    pub both_ways: bool,
    /// GSO sends per transmit batch.
    pub batch_sends: usize,
    /// Datagrams per GSO send at most.
    pub gso_segments: usize,
    /// The address both engines listen on (127.0.0.1, or an address of the NIC measured).
    pub address: IpAddr,
    /// Each direction's rate; `None`: as fast as the sender can (the benchmark's mode).
    pub rate: Option<SourceRate>,
    /// The PSP suite (encrypted mode).
    pub suite: Suite,
    /// The AEAD library (encrypted mode).
    pub crypto: Backend,
    /// Extra prefixes in each engine's route table beside the flows' own, so that every
    /// lookup searches a full table ([`extra_routes`]).
    pub routes: usize,
    /// Services the flows' prefixes are split into (0: plain peer prefixes), each with
    /// [`SERVICE_BUCKETS`] buckets ([`service_routes`]).
    pub services: usize,
}

/// `count` prefixes of a realistic mix (three IPv4 to one IPv6; IPv4 mostly /16../24 with
/// some longer to /32, IPv6 /32../64 and /128 host routes), none of them overlapping
/// 10.0.0.0/8 where the synthetic flows' own prefixes lie, all to peer 0. The same on
/// every run.
pub fn extra_routes(count: usize) -> Vec<(IpAddr, u8, PeerId)> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let roll = next() % 100;
        let route = if roll < 75 {
            // Most of a real IPv4 table is /24s; the rest spreads over /16../23 and a few longer.
            let len = match next() % 100 {
                0..=54 => 24,
                55..=89 => 16 + (next() % 8) as u8,
                _ => 25 + (next() % 8) as u8,
            };
            let bits = next() as u32;
            if bits >> 24 == 10 {
                continue;
            }
            let mask = u32::MAX.checked_shl(u32::from(32 - len)).unwrap_or(0);
            (IpAddr::V4(Ipv4Addr::from(bits & mask)), len)
        } else {
            let len = if roll < 95 {
                32 + (next() % 33) as u8
            } else {
                128
            };
            // Global unicast, 2000::/3, as announced tables are.
            let bits = (u128::from(next()) << 64 | u128::from(next())) >> 3 | (1u128 << 125);
            let mask = u128::MAX.checked_shl(u32::from(128 - len)).unwrap_or(0);
            (IpAddr::V6(std::net::Ipv6Addr::from(bits & mask)), len)
        };
        if seen.insert(route) {
            out.push((route.0, route.1, PeerId(0)));
        }
    }
    out
}

/// The flows' own prefixes (`spec`'s, one per peer) split into `count` service prefixes
/// (at least one per peer) that cover them exactly, so every flow's packets go through a
/// service's buckets; each service has [`SERVICE_BUCKETS`] buckets spreading over the
/// spec's peers round-robin. Halving the widest prefix until there are enough keeps them
/// aligned: 4 services over one /24 are four /26s.
pub fn service_routes(spec: &TrafficSpec, count: usize) -> Vec<(IpAddr, u8, AffinityTable)> {
    let routes = spec.routes();
    let peers: Vec<PeerId> = routes.iter().map(|r| r.2).collect();
    let mut prefixes: Vec<(IpAddr, u8)> = routes.iter().map(|r| (r.0, r.1)).collect();
    while prefixes.len() < count {
        let Some((widest, _)) = prefixes.iter().enumerate().min_by_key(|(_, p)| p.1) else {
            break;
        };
        let (addr, len) = prefixes[widest];
        let upper = match addr {
            IpAddr::V4(a) if len < 32 => IpAddr::V4(Ipv4Addr::from(u32::from(a) | 1 << (31 - len))),
            IpAddr::V6(a) if len < 128 => {
                IpAddr::V6(Ipv6Addr::from(u128::from(a) | 1 << (127 - len)))
            }
            // Every prefix is a host route: no more services fit.
            _ => break,
        };
        prefixes[widest] = (addr, len + 1);
        prefixes.push((upper, len + 1));
    }
    prefixes
        .into_iter()
        .map(|(addr, len)| {
            let buckets = (0..SERVICE_BUCKETS)
                .map(|b| Some(peers[b % peers.len()]))
                .collect();
            let table = AffinityTable::new(buckets, BucketActivity::new(SERVICE_BUCKETS));
            (addr, len, table)
        })
        .collect()
}

/// Where a pair listens unless told otherwise.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn keys(seed: u8) -> Result<MasterKeys, Error> {
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| Error::Baseline("system random"))?;
    key[0] ^= seed;
    Ok(MasterKeys::new(key))
}

/// Pins `a` to even cores and `b` to odd ones when every worker gets a core of its own.
fn cores(side: usize, workers: usize) -> Vec<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if workers * 2 > cpus {
        return Vec::new();
    }
    (0..workers).map(|w| 2 * w + side).collect()
}

impl LoopbackPair {
    /// Starts both engines, keys them and lets traffic flow.
    pub fn start(options: PairOptions) -> Result<Self, Error> {
        let spec = TrafficSpec::new(options.flows, options.payload);
        let engine = |side: usize, source: bool, counters: &Arc<TrafficCounters>| {
            let mut config = EngineConfig::new(SocketAddr::new(options.address, 0));
            config.workers = options.workers;
            config.cores = cores(side, options.workers);
            config.io = options.io;
            config.protection = options.protection;
            config.crypto = options.crypto;
            config.batch_sends = options.batch_sends;
            config.gso_segments = options.gso_segments;
            config.source = if source {
                Some(spec.source(options.rate, options.gso_segments, counters)?)
            } else {
                None
            };
            config.egress = Egress::Sink(spec.sink(counters));
            Ok::<_, Error>(Engine::start(config)?)
        };
        let traffic_a = TrafficCounters::new(options.workers);
        let traffic_b = TrafficCounters::new(options.workers);
        let a = engine(0, true, &traffic_a)?;
        let b = engine(1, options.both_ways, &traffic_b)?;
        let peer = |endpoint| PeerConfig { endpoint };
        a.set_peer(PeerId(0), peer(b.local_addr()))?;
        b.set_peer(PeerId(0), peer(a.local_addr()))?;
        let extra = extra_routes(options.routes);
        let routes = Arc::new(if options.services == 0 {
            RouteTable::build(spec.routes().into_iter().chain(extra))?
        } else {
            RouteTable::build_with_services(extra, service_routes(&spec, options.services))?
        });
        a.set_routes(Arc::clone(&routes))?;
        b.set_routes(routes)?;
        let (keys_a, keys_b) = (keys(0xa)?, keys(0xb)?);
        lab::enable_rx_derivation(&a, &keys_a, options.suite)?;
        lab::enable_rx_derivation(&b, &keys_b, options.suite)?;
        // A snapshot round trip makes sure the receivers are keyed before anything is sent.
        a.snapshot()?;
        b.snapshot()?;
        let profile = SaProfile {
            suite: options.suite,
            crypto: options.crypto,
            ..SaProfile::default()
        };
        lab::install_tx_sas(&a, PeerId(0), &keys_b, profile)?;
        lab::install_tx_sas(&b, PeerId(0), &keys_a, profile)?;
        Ok(Self {
            a,
            b,
            traffic_a,
            traffic_b,
        })
    }

    /// Counters of both sides, summed over workers.
    pub fn totals(&self) -> Result<(SideStats, SideStats), Error> {
        Ok((
            SideStats {
                engine: self.a.snapshot()?.total(),
                traffic: self.traffic_a.total(),
            },
            SideStats {
                engine: self.b.snapshot()?.total(),
                traffic: self.traffic_b.total(),
            },
        ))
    }

    /// Stops the sources, lets what is in flight land, stops the engines.
    pub fn finish(self) -> Result<(SideStats, SideStats), Error> {
        self.a.set_source_active(false)?;
        self.b.set_source_active(false)?;
        std::thread::sleep(Duration::from_millis(200));
        let (a, b) = (self.a.shutdown()?.total(), self.b.shutdown()?.total());
        Ok((
            SideStats {
                engine: a,
                traffic: self.traffic_a.total(),
            },
            SideStats {
                engine: b,
                traffic: self.traffic_b.total(),
            },
        ))
    }
}

/// One measurement, as `--json` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DataplaneRow {
    /// "plain" (baseline) or "encrypted".
    pub mode: &'static str,
    /// "io_uring" or "epoll".
    pub io: &'static str,
    /// The PSP suite ("aes-gcm-256", ...); `null` for the plain baseline.
    pub suite: Option<&'static str>,
    /// The AEAD library ("aws-lc-rs", "ring", "rustcrypto"); `null` for the plain baseline.
    pub crypto: Option<&'static str>,
    /// Workers per engine.
    pub workers: usize,
    /// Inner packet bytes.
    pub payload: usize,
    /// Extra prefixes in the route tables beside the flows' own.
    pub routes: usize,
    /// Services the flows' prefixes were split into (0: plain peer prefixes).
    pub services: usize,
    /// Verified inner throughput, gigabits per second.
    pub gbps: f64,
    /// Verified inner packets, millions per second.
    pub mpps: f64,
    /// Where the time went (table only).
    #[serde(skip)]
    pub split: TimeSplit,
}

/// Shares of worker time, from the engines' own clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeSplit {
    /// Sender: generating and sealing.
    pub tx_build: f64,
    /// Sender: in send calls.
    pub tx_send: f64,
    /// Receiver: opening and checking.
    pub rx_process: f64,
    /// Datagrams the kernel dropped on the way, as a share of those sent.
    pub lost: f64,
    /// Sender: worker CPU time (user and kernel) per packet sent, nanoseconds. Unlike the
    /// rates, it holds on a machine busy with other work.
    pub tx_cpu_ns: f64,
    /// Receiver: worker CPU time per packet received, nanoseconds.
    pub rx_cpu_ns: f64,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct DataplanePlan {
    /// Measuring time per point, after a warm-up.
    pub duration: Duration,
    /// Inner packet sizes.
    pub sizes: Vec<usize>,
    /// Worker counts.
    pub workers: Vec<usize>,
    /// Backends.
    pub ios: Vec<IoKind>,
    /// GSO sends per transmit batch.
    pub batch_sends: usize,
    /// Datagrams per GSO send at most.
    pub gso_segments: usize,
    /// Suites measured encrypted, each beside the one plain baseline of its point.
    pub suites: Vec<Suite>,
    /// AEAD libraries measured encrypted, with every suite.
    pub cryptos: Vec<Backend>,
    /// Rounds: every point is measured once per round, rounds one after another, and each
    /// figure reported is the median over the rounds, so a noisy spell on a shared machine
    /// falls on plain and encrypted alike instead of on one point.
    pub rounds: usize,
    /// Extra prefixes: when not 0, every point is measured with this many extra prefixes in
    /// the route tables right after it is measured without ([`extra_routes`]).
    pub routes: usize,
    /// Services: when not 0, every point is measured with the flows' prefixes split into
    /// this many services right after it is measured with plain peer prefixes
    /// ([`service_routes`]).
    pub services: usize,
}

impl Default for DataplanePlan {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(1),
            sizes: DEFAULT_SIZES.to_vec(),
            workers: DEFAULT_WORKERS.to_vec(),
            ios: vec![IoKind::IoUring, IoKind::Epoll],
            batch_sends: DEFAULT_BATCH_SENDS,
            gso_segments: MAX_GSO_SEGMENTS,
            suites: vec![DEFAULT_SUITE],
            cryptos: vec![Backend::AwsLc],
            rounds: DEFAULT_ROUNDS,
            routes: 0,
            services: 0,
        }
    }
}

/// Measures one pair: starts it, warms up, counts what the receiver verified over
/// `duration`, stops it.
pub fn measure(options: PairOptions, duration: Duration) -> Result<DataplaneRow, Error> {
    let pair = LoopbackPair::start(options)?;
    std::thread::sleep(WARMUP);
    let (a0, b0) = pair.totals()?;
    let start = Instant::now();
    std::thread::sleep(duration);
    let (a1, b1) = pair.totals()?;
    let secs = start.elapsed().as_secs_f64();
    pair.finish()?;
    let (tb0, tb1) = (b0.traffic, b1.traffic);
    let (a0, a1, b0, b1) = (a0.engine, a1.engine, b0.engine, b1.engine);
    let bytes = tb1.sink.verified_bytes - tb0.sink.verified_bytes;
    let packets = tb1.sink.verified_packets - tb0.sink.verified_packets;
    let worker_ns = secs * 1e9 * options.workers as f64;
    let share = |ns: u64| ns as f64 / worker_ns;
    let sent = (a1.tx_packets - a0.tx_packets).max(1);
    let received = (b1.rx_packets - b0.rx_packets).max(1);
    let encrypted = options.protection == Protection::Encrypted;
    Ok(DataplaneRow {
        mode: if encrypted { "encrypted" } else { "plain" },
        io: options.io.name(),
        suite: encrypted.then(|| options.suite.name()),
        crypto: encrypted.then(|| options.crypto.name()),
        workers: options.workers,
        payload: options.payload,
        routes: options.routes,
        services: options.services,
        gbps: bytes as f64 * 8.0 / secs / 1e9,
        mpps: packets as f64 / secs / 1e6,
        split: TimeSplit {
            tx_build: share(a1.ns_tx_build - a0.ns_tx_build),
            tx_send: share(a1.ns_tx_send - a0.ns_tx_send),
            rx_process: share(b1.ns_rx_process - b0.ns_rx_process),
            lost: (tb1.sink.gaps - tb0.sink.gaps) as f64 / sent as f64,
            tx_cpu_ns: (a1.ns_cpu - a0.ns_cpu) as f64 / sent as f64,
            rx_cpu_ns: (b1.ns_cpu - b0.ns_cpu) as f64 / received as f64,
        },
    })
}

/// Runs the suite: for every backend, worker count and size, plain once, then encrypted
/// with every library and suite; all of that `rounds` times, reporting medians.
pub fn run(
    plan: &DataplanePlan,
    mut progress: impl FnMut(&DataplaneRow),
) -> Result<Vec<DataplaneRow>, Error> {
    if let Some(&suite) = plan.suites.iter().find(|s| !s.encrypts()) {
        return Err(Error::NotEncrypting(suite.name()));
    }
    if let Some(&payload) = plan
        .sizes
        .iter()
        .find(|&&size| !(MIN_PACKET..=MAX_PACKET).contains(&size))
    {
        return Err(Error::BadSize(payload));
    }
    let mut modes = vec![(Protection::PlainBaseline, DEFAULT_SUITE, Backend::AwsLc)];
    for &crypto in &plan.cryptos {
        for &suite in &plan.suites {
            modes.push((Protection::Encrypted, suite, crypto));
        }
    }
    let route_counts: &[usize] = if plan.routes == 0 {
        &[0]
    } else {
        &[0, plan.routes]
    };
    let service_counts: &[usize] = if plan.services == 0 {
        &[0]
    } else {
        &[0, plan.services]
    };
    let mut points = Vec::new();
    for &io in &plan.ios {
        for &workers in &plan.workers {
            for &payload in &plan.sizes {
                for (routes, services, &(protection, suite, crypto)) in route_counts
                    .iter()
                    .flat_map(|&r| service_counts.iter().map(move |&s| (r, s)))
                    .flat_map(|(r, s)| modes.iter().map(move |m| (r, s, m)))
                {
                    points.push(PairOptions {
                        workers,
                        io,
                        protection,
                        payload,
                        flows: FLOWS,
                        both_ways: false,
                        batch_sends: plan.batch_sends,
                        gso_segments: plan.gso_segments,
                        address: LOOPBACK,
                        rate: None,
                        suite,
                        crypto,
                        routes,
                        services,
                    });
                }
            }
        }
    }
    let mut measured: Vec<Vec<DataplaneRow>> = vec![Vec::new(); points.len()];
    for _ in 0..plan.rounds.max(1) {
        for (point, &options) in measured.iter_mut().zip(&points) {
            let row = measure(options, plan.duration)?;
            progress(&row);
            point.push(row);
        }
    }
    Ok(measured.iter().map(|rounds| median_row(rounds)).collect())
}

/// One row whose every figure is the median of that figure over `rounds` (not empty).
fn median_row(rounds: &[DataplaneRow]) -> DataplaneRow {
    let median = |figure: fn(&DataplaneRow) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(figure).collect();
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        }
    };
    DataplaneRow {
        gbps: median(|r| r.gbps),
        mpps: median(|r| r.mpps),
        split: TimeSplit {
            tx_build: median(|r| r.split.tx_build),
            tx_send: median(|r| r.split.tx_send),
            rx_process: median(|r| r.split.rx_process),
            lost: median(|r| r.split.lost),
            tx_cpu_ns: median(|r| r.split.tx_cpu_ns),
            rx_cpu_ns: median(|r| r.split.rx_cpu_ns),
        },
        ..rounds[0].clone()
    }
}

/// Renders rows as a table, each encrypted row beside its plain baseline.
pub fn table(rows: &[DataplaneRow]) -> String {
    let mut out = Vec::new();
    let mut baseline: Option<&DataplaneRow> = None;
    for row in rows {
        if row.suite.is_none() {
            baseline = Some(row);
            continue;
        }
        let (Some(plain), enc) = (baseline, row) else {
            continue;
        };
        let pct = |x: f64| format!("{:.0}%", x * 100.0);
        out.push(vec![
            enc.io.to_string(),
            enc.workers.to_string(),
            enc.payload.to_string(),
            enc.routes.to_string(),
            enc.services.to_string(),
            enc.suite.unwrap_or_default().to_string(),
            enc.crypto.unwrap_or_default().to_string(),
            format!("{:.2}", plain.gbps),
            format!("{:.2}", enc.gbps),
            format!("{:.3}", plain.mpps),
            format!("{:.3}", enc.mpps),
            format!("{:.2}", enc.gbps / plain.gbps.max(f64::MIN_POSITIVE)),
            format!("{}/{}", pct(plain.split.tx_build), pct(enc.split.tx_build)),
            format!("{}/{}", pct(plain.split.tx_send), pct(enc.split.tx_send)),
            format!(
                "{}/{}",
                pct(plain.split.rx_process),
                pct(enc.split.rx_process)
            ),
            format!("{}/{}", pct(plain.split.lost), pct(enc.split.lost)),
            format!("{:.0}/{:.0}", plain.split.tx_cpu_ns, enc.split.tx_cpu_ns),
            format!("{:.0}/{:.0}", plain.split.rx_cpu_ns, enc.split.rx_cpu_ns),
            format!(
                "{:.2}",
                plain.split.tx_cpu_ns.max(plain.split.rx_cpu_ns)
                    / enc
                        .split
                        .tx_cpu_ns
                        .max(enc.split.rx_cpu_ns)
                        .max(f64::MIN_POSITIVE)
            ),
        ]);
    }
    crate::markdown_table(
        &[
            "io",
            "workers",
            "payload",
            "extra routes",
            "services",
            "suite",
            "crypto",
            "plain Gb/s",
            "enc Gb/s",
            "plain Mpps",
            "enc Mpps",
            "enc/plain",
            "tx build p/e",
            "tx send p/e",
            "rx process p/e",
            "lost p/e",
            "tx cpu ns/pkt p/e",
            "rx cpu ns/pkt p/e",
            "enc/plain by cpu",
        ],
        &out,
    )
}

/// Every row where the setting `vary` picks is set, each with the row measured at the same
/// point with that setting at zero (the same run's baseline).
fn beside_baseline(
    rows: &[DataplaneRow],
    vary: fn(&mut PointKey) -> &mut usize,
) -> Vec<(&DataplaneRow, &DataplaneRow)> {
    let base = |r: &DataplaneRow| {
        let mut k = PointKey::of(r);
        *vary(&mut k) = 0;
        k
    };
    rows.iter()
        .filter(|r| *vary(&mut PointKey::of(r)) > 0)
        .filter_map(|with| {
            let without = rows.iter().find(|r| PointKey::of(r) == base(with))?;
            Some((with, without))
        })
        .collect()
}

/// What makes a measured point: everything but the results.
#[derive(PartialEq)]
struct PointKey {
    mode: &'static str,
    io: &'static str,
    suite: Option<&'static str>,
    crypto: Option<&'static str>,
    workers: usize,
    payload: usize,
    routes: usize,
    services: usize,
}

impl PointKey {
    fn of(r: &DataplaneRow) -> Self {
        Self {
            mode: r.mode,
            io: r.io,
            suite: r.suite,
            crypto: r.crypto,
            workers: r.workers,
            payload: r.payload,
            routes: r.routes,
            services: r.services,
        }
    }
}

/// The change in CPU time per packet (the slower side's) from `without` to `with`.
fn cpu_change(with: &DataplaneRow, without: &DataplaneRow) -> String {
    let cpu = |r: &DataplaneRow| r.split.tx_cpu_ns.max(r.split.rx_cpu_ns);
    format!(
        "{:+.1}%",
        (cpu(with) / cpu(without).max(f64::MIN_POSITIVE) - 1.0) * 100.0
    )
}

/// Renders every point measured with services beside the same point with plain peer
/// prefixes: Gbit/s and CPU time per packet of both, and the change.
pub fn services_table(rows: &[DataplaneRow]) -> String {
    let mut out = Vec::new();
    for (with, without) in beside_baseline(rows, |r| &mut r.services) {
        out.push(vec![
            with.mode.to_string(),
            with.io.to_string(),
            with.workers.to_string(),
            with.payload.to_string(),
            with.routes.to_string(),
            with.services.to_string(),
            format!("{:.2}", without.gbps),
            format!("{:.2}", with.gbps),
            format!("{:.3}", with.gbps / without.gbps.max(f64::MIN_POSITIVE)),
            format!("{:.0}/{:.0}", without.split.tx_cpu_ns, with.split.tx_cpu_ns),
            cpu_change(with, without),
        ]);
    }
    crate::markdown_table(
        &[
            "mode",
            "io",
            "workers",
            "payload",
            "extra routes",
            "services",
            "Gb/s peer prefixes",
            "Gb/s services",
            "services/peer",
            "tx cpu ns/pkt peer/services",
            "cpu/pkt change",
        ],
        &out,
    )
}

/// Renders every point measured with extra routes beside the same point without: Gbit/s and
/// CPU time per packet of both, and the change.
pub fn routes_table(rows: &[DataplaneRow]) -> String {
    let mut out = Vec::new();
    for (with, without) in beside_baseline(rows, |r| &mut r.routes) {
        out.push(vec![
            with.mode.to_string(),
            with.io.to_string(),
            with.workers.to_string(),
            with.payload.to_string(),
            with.routes.to_string(),
            format!("{:.2}", without.gbps),
            format!("{:.2}", with.gbps),
            format!(
                "{:+.1}%",
                (with.gbps / without.gbps.max(f64::MIN_POSITIVE) - 1.0) * 100.0
            ),
            format!("{:.0}/{:.0}", without.split.tx_cpu_ns, with.split.tx_cpu_ns),
            cpu_change(with, without),
        ]);
    }
    crate::markdown_table(
        &[
            "mode",
            "io",
            "workers",
            "payload",
            "extra routes",
            "Gb/s without",
            "Gb/s with",
            "change",
            "tx cpu ns/pkt without/with",
            "cpu/pkt change",
        ],
        &out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_is_measured_plain_then_encrypted_and_verified() {
        let plan = DataplanePlan {
            duration: Duration::from_millis(200),
            sizes: vec![512],
            workers: vec![1],
            ios: vec![IoKind::Epoll, IoKind::IoUring],
            batch_sends: 4,
            gso_segments: 16,
            rounds: 1,
            ..DataplanePlan::default()
        };
        let rows = run(&plan, |_| {}).unwrap();
        assert_eq!(rows.len(), 4);
        assert!(
            rows.iter().all(|r| r.gbps > 0.0 && r.mpps > 0.0),
            "{rows:?}"
        );
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["mode"], "plain");
        assert_eq!(json[1]["mode"], "encrypted");
        assert_eq!(json[0]["io"], "epoll");
        assert_eq!(json[2]["io"], "io_uring");
        assert_eq!(json[1]["payload"], 512);
        assert_eq!(json[0]["suite"], serde_json::Value::Null);
        assert_eq!(json[1]["suite"], "aes-gcm-256");
        assert_eq!(json[1]["crypto"], "aws-lc-rs");
        assert_eq!(
            json[1].as_object().unwrap().len(),
            10,
            "exactly the documented keys"
        );
        assert_eq!(table(&rows).lines().count(), 2 + 2);
    }

    #[test]
    fn every_library_and_suite_is_measured_beside_one_baseline() {
        let plan = DataplanePlan {
            duration: Duration::from_millis(150),
            sizes: vec![1400],
            workers: vec![1],
            ios: vec![IoKind::Epoll],
            suites: vec![Suite::AesGcm128, Suite::AesGcm256],
            cryptos: vec![Backend::AwsLc, Backend::Ring],
            rounds: 1,
            ..DataplanePlan::default()
        };
        let rows = run(&plan, |_| {}).unwrap();
        let labels: Vec<_> = rows.iter().map(|r| (r.mode, r.suite, r.crypto)).collect();
        assert_eq!(
            labels,
            [
                ("plain", None, None),
                ("encrypted", Some("aes-gcm-128"), Some("aws-lc-rs")),
                ("encrypted", Some("aes-gcm-256"), Some("aws-lc-rs")),
                ("encrypted", Some("aes-gcm-128"), Some("ring")),
                ("encrypted", Some("aes-gcm-256"), Some("ring")),
            ]
        );
        assert!(rows.iter().all(|r| r.gbps > 0.0), "{rows:?}");
        let table = table(&rows);
        assert_eq!(table.lines().count(), 2 + 4, "{table}");
        assert!(table.contains(" ring |"), "{table}");
    }

    #[test]
    fn rounds_measure_every_point_again_and_report_the_median() {
        let plan = DataplanePlan {
            duration: Duration::from_millis(100),
            sizes: vec![256],
            workers: vec![1],
            ios: vec![IoKind::Epoll],
            rounds: 3,
            ..DataplanePlan::default()
        };
        let mut measured = Vec::new();
        let rows = run(&plan, |row| measured.push(row.clone())).unwrap();
        let modes: Vec<_> = measured.iter().map(|r| r.mode).collect();
        assert_eq!(
            modes,
            [
                "plain",
                "encrypted",
                "plain",
                "encrypted",
                "plain",
                "encrypted"
            ],
            "the rounds take the points in turn"
        );
        assert_eq!(rows.len(), 2);
        for (i, row) in rows.iter().enumerate() {
            let mut gbps: Vec<f64> = measured.iter().skip(i).step_by(2).map(|r| r.gbps).collect();
            gbps.sort_by(f64::total_cmp);
            assert_eq!(row.gbps, gbps[1], "the median of three rounds");
        }
    }

    #[test]
    fn median_rows_take_each_figure_separately() {
        let row = |gbps: f64, tx_cpu_ns: f64| DataplaneRow {
            mode: "encrypted",
            io: "epoll",
            suite: Some("aes-gcm-256"),
            crypto: Some("aws-lc-rs"),
            workers: 1,
            payload: 1400,
            routes: 0,
            services: 0,
            gbps,
            mpps: gbps / 10.0,
            split: TimeSplit {
                tx_cpu_ns,
                ..TimeSplit::default()
            },
        };
        let m = median_row(&[
            row(30.0, 500.0),
            row(10.0, 300.0),
            row(20.0, 900.0),
            row(40.0, 400.0),
        ]);
        assert_eq!(m.gbps, 25.0);
        assert_eq!(m.mpps, 2.5);
        assert_eq!(m.split.tx_cpu_ns, 450.0);
        assert_eq!(m.suite, Some("aes-gcm-256"));
    }

    #[test]
    fn extra_routes_are_measured_beside_the_same_point_without() {
        let plan = DataplanePlan {
            duration: Duration::from_millis(100),
            sizes: vec![512],
            workers: vec![1],
            ios: vec![IoKind::Epoll],
            rounds: 1,
            routes: 2_000,
            ..DataplanePlan::default()
        };
        let rows = run(&plan, |_| {}).unwrap();
        let shape: Vec<_> = rows.iter().map(|r| (r.mode, r.routes)).collect();
        assert_eq!(
            shape,
            [
                ("plain", 0),
                ("encrypted", 0),
                ("plain", 2_000),
                ("encrypted", 2_000)
            ]
        );
        assert!(rows.iter().all(|r| r.gbps > 0.0), "routed: {rows:?}");
        assert_eq!(routes_table(&rows).lines().count(), 2 + 2);
    }

    #[test]
    fn extra_routes_are_a_realistic_mix_that_leaves_the_flows_alone() {
        let routes = extra_routes(20_000);
        let table = RouteTable::build(routes.iter().copied()).unwrap();
        assert_eq!(table.len(), 20_000, "no prefix twice");
        let v4 = routes.iter().filter(|r| r.0.is_ipv4()).count();
        assert!((13_000..17_000).contains(&v4), "{v4} IPv4 of 20,000");
        assert!(routes.iter().any(|r| r.1 == 128) && routes.iter().any(|r| r.1 == 24));
        for flow in TrafficSpec::new(64, 100).routes() {
            assert_eq!(table.lookup(flow.0), None, "{flow:?} is the flows' own");
        }
    }

    #[test]
    fn services_are_measured_beside_the_same_point_with_peer_prefixes() {
        let plan = DataplanePlan {
            duration: Duration::from_millis(100),
            sizes: vec![512],
            workers: vec![1],
            ios: vec![IoKind::Epoll],
            rounds: 1,
            services: 4,
            ..DataplanePlan::default()
        };
        let rows = run(&plan, |_| {}).unwrap();
        let shape: Vec<_> = rows.iter().map(|r| (r.mode, r.services)).collect();
        assert_eq!(
            shape,
            [
                ("plain", 0),
                ("encrypted", 0),
                ("plain", 4),
                ("encrypted", 4)
            ]
        );
        assert!(
            rows.iter().all(|r| r.gbps > 0.0),
            "through services: {rows:?}"
        );
        assert_eq!(services_table(&rows).lines().count(), 2 + 2);
    }

    #[test]
    fn services_cover_every_flow_and_spread_their_buckets_over_the_peers() {
        let mut spec = TrafficSpec::new(600, 100);
        spec.peers = 3;
        let services = service_routes(&spec, 8);
        assert_eq!(services.len(), 8);
        let mut lengths: Vec<u8> = services.iter().map(|s| s.1).collect();
        lengths.sort_unstable();
        assert_eq!(lengths, [25, 25, 25, 25, 26, 26, 26, 26]);
        let (a, b) = (&services[0].2, &services[1].2);
        assert_eq!(a.len(), SERVICE_BUCKETS);
        assert_eq!(
            (a.peer(0), a.peer(1), a.peer(2)),
            (Some(PeerId(0)), Some(PeerId(1)), Some(PeerId(2)))
        );
        assert!(
            !Arc::ptr_eq(a.activity(), b.activity()),
            "one activity per service"
        );
        let table = RouteTable::build_with_services([], services).unwrap();
        for flow in 0..spec.flows {
            let [x, y, z, w] = spec.destination(flow);
            let dst = IpAddr::V4(Ipv4Addr::new(x, y, z, w));
            assert!(
                matches!(
                    table.target(dst),
                    Some(cpclink_dataplane::route::RouteTarget::Service(_))
                ),
                "flow {flow} to {dst} misses the services"
            );
        }
        let one = service_routes(&TrafficSpec::new(64, 100), 1);
        assert_eq!(
            (one.len(), one[0].1),
            (1, 24),
            "one service is the flows' prefix"
        );
    }

    #[test]
    fn an_integrity_only_suite_is_refused_by_name() {
        let plan = DataplanePlan {
            suites: vec![Suite::AesGmac256],
            ..DataplanePlan::default()
        };
        let e = run(&plan, |_| {}).unwrap_err().to_string();
        assert!(
            e.contains("aes-gmac-256") && e.contains("without encrypting"),
            "{e}"
        );
    }

    #[test]
    fn sizes_outside_the_generator_range_are_refused() {
        let plan = DataplanePlan {
            sizes: vec![8],
            ..DataplanePlan::default()
        };
        assert!(matches!(run(&plan, |_| {}), Err(Error::BadSize(8))));
    }
}
