//! Latency suite: what a packet gains by crossing a cpclink tunnel, under background load.
//!
//! Probes are UDP datagrams carrying a sequence number and their send time. An echo server
//! takes the one-way time when a probe arrives and sends it back; the client takes the round
//! trip when the reply arrives. Both ends are threads of this process, so one monotonic clock
//! serves both and one-way times need no clock synchronisation.
//!
//! Paths, measured in the same run at the same background load:
//! - `cpclink`: client in namespace A, echo server in namespace B. A probe leaves A's kernel
//!   through a TUN device into engine A, is sealed (AES-GCM-256 PSP) and sent over UDP on
//!   loopback to engine B, opened and written to B's TUN device, and delivered by B's kernel;
//!   the reply takes the same way back. This is every step a packet takes through a pair of
//!   appliances, bar the WAN between them.
//! - `udp_loopback`: the same probes between plain UDP sockets on 127.0.0.1 (the baseline).
//! - `veth`: the same probes between the two namespaces over a veth pair, no tunnel
//!   (the network two hosts would have without the appliance in between).
//!
//! Background load is UDP traffic of the probes' size from A to B along the same path,
//! paced by its sender. The tunnel's rates are measured first, in the same run: the maximum
//! (the background sender as fast as it can, counted where engine B delivers to its TUN
//! device), then the no-drop and partial-drop rates ([`crate::ndr`]) searched below it. A
//! load of L% sends L% of the no-drop rate, on every path alike. Paths take turns in rounds
//! of half a second, so that whatever else the machine does meanwhile falls on all of them
//! alike.
//!
//! Latencies go into HdrHistograms corrected for coordinated omission: probes are paced at
//! [`PROBES_PER_SECOND`], so a probe delayed by a stall stands for the probes the stall kept
//! from being sent, and each is recorded with that expected interval. Every round is one
//! interval of the HdrHistogram interval log the suite writes beside its report.
//!
//! The TUN devices and namespaces need root (CAP_NET_ADMIN); the engines' UDP sockets are on
//! the host's loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use crate::cpu::{CpuReading, CpuUse};
use crate::ndr::{self, Loss, NdrPdr, SearchPlan, Trial};
use crate::netns::Netns;
use cpclink_dataplane::crypto::Suite;
use cpclink_dataplane::engine::{
    lab, BatchingMode, Egress, Engine, EngineConfig, PeerConfig, PeerId, RouteTable, SaProfile,
    Stage, StageTimes, WorkerStats,
};
use cpclink_dataplane::io::{tun, IoKind};
use cpclink_dataplane::psp::PSP_OVERHEAD;
use cpclink_dataplane::sa::MasterKeys;

use crate::Error;

/// Background loads measured by default, in percent of the measured maximum.
pub const DEFAULT_LOADS: [u32; 2] = [0, 50];
/// UDP payload bytes of probes and background packets by default.
pub const DEFAULT_SIZE: usize = 1024;
/// Probes sent per second.
pub const PROBES_PER_SECOND: u32 = 5_000;
/// The outer path MTU the tunnel is sized for (an Ethernet WAN).
pub const PATH_MTU: usize = 1500;
/// The TUN MTU: the path MTU less outer IPv4, UDP and PSP.
pub const TUN_MTU: usize = PATH_MTU - 20 - 8 - PSP_OVERHEAD;
/// Largest UDP payload a probe may have (one TUN MTU, no fragments).
pub const MAX_SIZE: usize = TUN_MTU - 28;
/// Smallest: the probe header.
pub const MIN_SIZE: usize = PROBE_HEADER;

const PROBE_HEADER: usize = 20;
const PROBE_MAGIC: u32 = 0x4c41_5450;
const SUITE: Suite = Suite::AesGcm256;
/// Background traffic runs this long before probes start.
const SETTLE: Duration = Duration::from_millis(100);
/// Probes get this long to land after the last is sent; later ones count as lost.
const DRAIN: Duration = Duration::from_millis(200);
/// Probing time of one path before the next takes its turn.
const ROUND: Duration = Duration::from_millis(500);
/// A pause after the maximum for what the flood left queued to drain.
const RECOVER: Duration = Duration::from_millis(500);
/// How long the maximum is measured (after [`SETTLE`]).
const MAX_WINDOW: Duration = Duration::from_secs(1);
/// How long a receiving thread blocks before it looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// Addresses inside the tunnel (TUN) and across the veth pair, side A then side B.
const TUNNEL: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 201, 0, 1), Ipv4Addr::new(10, 201, 0, 2)];
const VETH: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 202, 0, 1), Ipv4Addr::new(10, 202, 0, 2)];

/// Percentiles of a set of latency samples, in nanoseconds (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `samples` (sorted in place), or `None` when there are none.
    pub fn of(samples: &mut [u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        // Nearest rank: the smallest sample with at least num/den of all at or below it,
        // in integers so that 99.9% of 1000 samples is exactly the 999th.
        let rank = |num: usize, den: usize| {
            let n = samples.len();
            let rank = (n * num).div_ceil(den).clamp(1, n);
            samples[rank - 1]
        };
        Some(Self {
            p50: rank(1, 2),
            p90: rank(9, 10),
            p99: rank(99, 100),
            p999: rank(999, 1000),
            max: samples[samples.len() - 1],
        })
    }
}

/// Which way probes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Client to echo server (A to B).
    OneWay,
    /// Client to echo server and back.
    RoundTrip,
}

impl Metric {
    /// The name in tables and interval-log tags.
    pub const fn name(self) -> &'static str {
        match self {
            Metric::OneWay => "one-way",
            Metric::RoundTrip => "round-trip",
        }
    }
}

/// The path probes took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Plain UDP sockets on 127.0.0.1: the baseline.
    UdpLoopback,
    /// Between the namespaces over a veth pair, no tunnel.
    Veth,
    /// Through both engines: TUN, PSP over UDP on loopback, TUN.
    Cpclink,
}

impl Path {
    /// The name in tables, spectra and interval-log tags.
    pub const fn name(self) -> &'static str {
        match self {
            Path::UdpLoopback => "udp_loopback",
            Path::Veth => "veth",
            Path::Cpclink => "cpclink",
        }
    }
}

/// How the engines batched while the cpclink path was probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Throughput first: the largest batches, no busy polling (the default).
    Throughput,
    /// Latency first: bounded batch waits, busy polling.
    LatencyFirst,
}

impl Mode {
    /// The name in tables.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Throughput => "throughput",
            Mode::LatencyFirst => "latency-first",
        }
    }

    /// The name of the mode a batching is: throughput only when it is the default.
    pub fn of(batching: BatchingMode) -> Self {
        if batching == BatchingMode::THROUGHPUT {
            Mode::Throughput
        } else {
            Mode::LatencyFirst
        }
    }
}

/// One path at one load in one direction, as `--json` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencyRow {
    /// The path.
    pub path: Path,
    /// cpclink rows: the engines' mode while probed; `None` on the baselines' rows.
    pub mode: Option<Mode>,
    /// One way or round trip.
    pub metric: Metric,
    /// Background load, percent of the tunnel's no-drop rate.
    pub load_pct: u32,
    /// UDP payload bytes of probes and background packets.
    pub size: usize,
    /// The maximum through the tunnel, background packets per second B received.
    pub max_pps: f64,
    /// The tunnel's no-drop rate, background packets per second (the loads' reference).
    pub ndr_pps: f64,
    /// Background packets per second sent (offered) during this point.
    pub background_pps: f64,
    /// The machine's cores busy on average while this point was probed (`/proc/stat`):
    /// near the machine's core count, the tail is the scheduler's, not the path's.
    pub busy_cores: Option<f64>,
    /// Probes sent.
    pub probes: u64,
    /// Probes (or replies) received.
    pub received: u64,
    /// Probes (or replies) that did not arrive: `probes − received`.
    pub lost: u64,
    /// Median, microseconds.
    pub p50_us: f64,
    /// 90th percentile, microseconds.
    pub p90_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile, microseconds.
    pub p999_us: f64,
    /// Largest, microseconds.
    pub max_us: f64,
    /// p50, p99 and p99.9 of each round on its own, microseconds (rounds with no sample
    /// left out): the spread a comparison of two runs weighs a change against.
    pub rounds_us: Vec<[f64; 3]>,
    /// cpclink rows: p50 less the `udp_loopback` p50 at the same load and metric.
    pub added_p50_us: Option<f64>,
    /// cpclink rows: p99 less the `udp_loopback` p99 at the same load and metric.
    pub added_p99_us: Option<f64>,
    /// cpclink rows: p99.9 less the `udp_loopback` p99.9 at the same load and metric.
    pub added_p999_us: Option<f64>,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct LatencyPlan {
    /// Probing time per point, after the background has settled.
    pub duration: Duration,
    /// Background loads, percent of the tunnel's no-drop rate (0..=100).
    pub loads: Vec<u32>,
    /// UDP payload bytes ([`MIN_SIZE`]..=[`MAX_SIZE`]).
    pub size: usize,
    /// The engines' I/O backend.
    pub io: IoKind,
    /// Offering time of one trial of the no-drop rate search.
    pub ndr_trial: Duration,
    /// Trials per threshold of the search at most.
    pub ndr_trials: usize,
    /// While probing, the engines time one packet in this many at every stage (per
    /// direction; 0: no stage times).
    pub stage_sample_every: u32,
    /// How both engines batch and poll.
    pub batching: BatchingMode,
    /// Probe the cpclink path twice per round, throughput first and then `batching` (or
    /// the default latency-first mode when `batching` is throughput first), the engines
    /// switched between them at run time; the loads' reference is then the throughput
    /// mode's no-drop rate, so both modes carry the same background.
    pub compare_modes: bool,
    /// Times the search is repeated (its spread goes into the report).
    pub ndr_rounds: usize,
}

impl Default for LatencyPlan {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(2),
            loads: DEFAULT_LOADS.to_vec(),
            size: DEFAULT_SIZE,
            io: IoKind::Auto,
            ndr_trial: Duration::from_millis(1000),
            ndr_trials: 8,
            stage_sample_every: DEFAULT_STAGE_SAMPLE_EVERY,
            batching: BatchingMode::THROUGHPUT,
            compare_modes: false,
            ndr_rounds: 1,
        }
    }
}

/// One packet in this many is timed per stage inside the engines while probing: at 0%
/// load a probe in eight, enough for p99; at higher loads the cost (a few clock reads
/// per timed packet) stays below a percent of a packet's time.
pub const DEFAULT_STAGE_SAMPLE_EVERY: u32 = 8;

/// Which of the two engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Side {
    /// Engine A: the probes' (and the background's) sender, the replies' receiver.
    A,
    /// Engine B: the probes' receiver, the replies' sender.
    B,
}

/// One stage inside one engine at one load: where a packet's time went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageRow {
    /// Background load, percent of the tunnel's no-drop rate.
    pub load_pct: u32,
    /// The engine.
    pub side: Side,
    /// The engines' mode.
    pub mode: Mode,
    /// The stage.
    pub stage: Stage,
    /// Samples (timed packets, or loop turns for the turn stages).
    pub samples: u64,
    /// Median, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile, microseconds.
    pub p999_us: f64,
    /// Longest, microseconds.
    pub max_us: f64,
}

/// What one engine's worker spent in CPU for each packet it carried, at one load and in one
/// mode, over its probing rounds: the cost of the wake-ups and system calls around each
/// packet as well as the packet's own work, which the stage times leave out.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct EngineCpuRow {
    /// Background load, percent of the tunnel's no-drop rate.
    pub load_pct: u32,
    /// The engine.
    pub side: Side,
    /// The engines' mode.
    pub mode: Mode,
    /// Packets the worker carried: sealed for sending plus received.
    pub packets: u64,
    /// Its worker thread's CPU time per packet, microseconds.
    pub cpu_us_per_packet: f64,
    /// Its worker's cores on average over the rounds (1.0: one core always busy).
    pub cores: f64,
}

impl EngineCpuRow {
    /// The title of the engine-CPU tables (the CLI's and the suite's).
    pub const TITLE: &'static str = "each engine's worker CPU per packet it carried (sealed plus \
         received) while probing, wake-ups and system calls included";
}

/// A row about one engine at one load and mode, as every per-engine table shows it: load,
/// mode and engine first, then the row's own columns.
pub trait PerEngineRow {
    /// The row's own columns, after load, mode and engine.
    const COLUMNS: &'static [&'static str];
    /// Load, mode and engine.
    fn engine(&self) -> (u32, Mode, Side);
    /// The cells under [`Self::COLUMNS`].
    fn cells(&self) -> Vec<String>;
}

impl PerEngineRow for EngineCpuRow {
    const COLUMNS: &'static [&'static str] = &["packets", "CPU µs per packet", "cores"];

    fn engine(&self) -> (u32, Mode, Side) {
        (self.load_pct, self.mode, self.side)
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.packets.to_string(),
            format!("{:.2}", self.cpu_us_per_packet),
            format!("{:.2}", self.cores),
        ]
    }
}

impl PerEngineRow for StageRow {
    const COLUMNS: &'static [&'static str] =
        &["stage", "samples", "p50 µs", "p99 µs", "p99.9 µs", "max µs"];

    fn engine(&self) -> (u32, Mode, Side) {
        (self.load_pct, self.mode, self.side)
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.stage.name().to_string(),
            self.samples.to_string(),
            format!("{:.1}", self.p50_us),
            format!("{:.1}", self.p99_us),
            format!("{:.1}", self.p999_us),
            format!("{:.1}", self.max_us),
        ]
    }
}

/// The title of the stage tables (the CLI's and the suite's), with the stages in order.
pub fn stages_title(sample_every: u32) -> String {
    format!(
        "time per stage inside each engine, one packet in {sample_every} timed while probing \
         (tx: tun_read, segment, seal, batch_wait, send; rx: receive, open, coalesce, tun_write; \
         tx_turn/rx_turn: per loop turn)"
    )
}

/// The columns and cells of a per-engine table.
pub fn per_engine_cells<R: PerEngineRow>(rows: &[R]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut header = vec!["load", "mode", "engine"];
    header.extend_from_slice(R::COLUMNS);
    let body = rows
        .iter()
        .map(|r| {
            let (load_pct, mode, side) = r.engine();
            let mut row = vec![
                format!("{load_pct}%"),
                mode.name().to_string(),
                format!("{side:?}"),
            ];
            row.extend(r.cells());
            row
        })
        .collect();
    (header, body)
}

/// Renders per-engine rows (stage times, engine CPU) as a Markdown table.
pub fn per_engine_table<R: PerEngineRow>(rows: &[R]) -> String {
    let (header, body) = per_engine_cells(rows);
    crate::markdown_table(&header, &body)
}

/// An engine's worker CPU and packets over the rounds of one mode at one load.
#[derive(Debug, Clone, Copy, Default)]
struct EngineCpu {
    cpu_ns: u64,
    packets: u64,
    seconds: f64,
}

impl EngineCpu {
    fn add(&mut self, before: &WorkerStats, after: &WorkerStats, seconds: f64) {
        self.cpu_ns += after.ns_cpu.saturating_sub(before.ns_cpu);
        self.packets += (after.tx_packets + after.rx_packets)
            .saturating_sub(before.tx_packets + before.rx_packets);
        self.seconds += seconds;
    }

    fn row(&self, load_pct: u32, side: Side, mode: Mode) -> EngineCpuRow {
        EngineCpuRow {
            load_pct,
            side,
            mode,
            packets: self.packets,
            cpu_us_per_packet: self.cpu_ns as f64 / 1e3 / self.packets.max(1) as f64,
            cores: self.cpu_ns as f64 / 1e9 / self.seconds.max(1e-9),
        }
    }
}

/// The rows of one engine's stage times at one load.
pub fn stage_rows(load_pct: u32, side: Side, mode: Mode, times: &StageTimes) -> Vec<StageRow> {
    times
        .summary()
        .into_iter()
        .map(|s| StageRow {
            load_pct,
            side,
            mode,
            stage: s.stage,
            samples: s.samples,
            p50_us: us(s.p50_ns),
            p99_us: us(s.p99_ns),
            p999_us: us(s.p999_ns),
            max_us: us(s.max_ns),
        })
        .collect()
}

/// Everything one run of the suite measured.
#[derive(Debug)]
pub struct LatencyRun {
    /// One row per path, load and metric.
    pub rows: Vec<LatencyRow>,
    /// Per load and engine, where a packet's time went inside it (empty when the plan
    /// timed no stages).
    pub stages: Vec<StageRow>,
    /// Per load, mode and engine, the worker's CPU per packet carried.
    pub engine_cpu: Vec<EngineCpuRow>,
    /// The tunnel's maximum, background packets per second delivered.
    pub max_pps: f64,
    /// The tunnel's no-drop and partial-drop rates: the round with the median NDR.
    pub ndr: NdrPdr,
    /// Every round of the search.
    pub ndr_rounds: Vec<NdrPdr>,
    /// Latency spectra (percentile against latency) per path, load and metric.
    pub spectra: Vec<Spectrum>,
    /// HdrHistogram interval logs, one per load: (load percent, log text).
    pub interval_logs: Vec<(u32, String)>,
}

/// Latency against percentile for one path, load and metric.
#[derive(Debug, Clone)]
pub struct Spectrum {
    /// The path.
    pub path: Path,
    /// One way or round trip.
    pub metric: Metric,
    /// Background load, percent of the no-drop rate.
    pub load_pct: u32,
    /// (percentile in 0..=100, microseconds), percentile ascending.
    pub points: Vec<(f64, f64)>,
}

/// Percentiles a spectrum is drawn at.
pub const SPECTRUM: [f64; 9] = [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99];

/// Why the suite cannot run here (it needs root, `/dev/net/tun` and iproute2), or `None`.
pub fn unavailable() -> Option<Error> {
    if !nix::unistd::geteuid().is_root() {
        return Some(Error::NeedsRoot);
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some(setup_error(
            "TUN",
            "/dev/net/tun is missing (load the tun module)",
        ));
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        return Some(setup_error(
            "ip",
            "the ip command is missing (install iproute2)",
        ));
    }
    None
}

/// Runs the suite and returns its rows (see [`measure`]).
pub fn run(plan: &LatencyPlan, progress: impl FnMut(&str)) -> Result<Vec<LatencyRow>, Error> {
    Ok(measure(plan, progress)?.rows)
}

/// Runs the suite: sets up the tunnel, measures its maximum, searches its no-drop rate,
/// then every path at every load.
pub fn measure(plan: &LatencyPlan, mut progress: impl FnMut(&str)) -> Result<LatencyRun, Error> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&plan.size) {
        return Err(Error::BadProbeSize {
            size: plan.size,
            min: MIN_SIZE,
            max: MAX_SIZE,
        });
    }
    if let Some(&load) = plan.loads.iter().find(|&&l| l > 100) {
        return Err(Error::BadLoad(load));
    }
    if let Some(e) = unavailable() {
        return Err(e);
    }
    let epoch = Instant::now();
    // The modes the cpclink path is probed in; the engines start in the first.
    let modes: Vec<(Mode, BatchingMode)> = if plan.compare_modes {
        let latency = if plan.batching == BatchingMode::THROUGHPUT {
            BatchingMode::LATENCY_FIRST
        } else {
            plan.batching
        };
        vec![
            (Mode::Throughput, BatchingMode::THROUGHPUT),
            (Mode::LatencyFirst, latency),
        ]
    } else {
        vec![(Mode::of(plan.batching), plan.batching)]
    };
    let bench = Testbed::start(plan.io, modes[0].1)?;
    let paths = [
        (Path::UdpLoopback, Endpoints::loopback()?),
        (
            Path::Veth,
            Endpoints::between(&bench.ns_a, &bench.ns_b, VETH)?,
        ),
        (
            Path::Cpclink,
            Endpoints::between(&bench.ns_a, &bench.ns_b, TUNNEL)?,
        ),
    ];
    let max = bench.maximum(&paths[2].1, plan.size)?;
    progress(&format!(
        "maximum through the tunnel: {:.0} packets/s of {} B delivered by engine B ({:.2} Gbit/s); \
         {:.0}/s offered",
        max.delivered_pps,
        plan.size,
        max.delivered_pps * plan.size as f64 * 8.0 / 1e9,
        max.offered_pps,
    ));
    if max.delivered_pps <= 0.0 {
        return Err(Error::Setup {
            what: "the tunnel".into(),
            reason: "no background packet crossed it".into(),
        });
    }
    // What batching costs at the top: each other mode's maximum, measured the same way right
    // after the first's; the loads stay the first mode's.
    let mut max_by_mode = vec![max.delivered_pps];
    for (mode, batching) in modes.iter().skip(1) {
        bench.a.set_batching(*batching)?;
        bench.b.set_batching(*batching)?;
        let other = bench.maximum(&paths[2].1, plan.size)?;
        progress(&format!(
            "maximum through the tunnel, {}: {:.0} packets/s of {} B ({:.2} of the {}'s)",
            mode.name(),
            other.delivered_pps,
            plan.size,
            other.delivered_pps / max.delivered_pps,
            modes[0].0.name(),
        ));
        max_by_mode.push(other.delivered_pps);
    }
    if modes.len() > 1 {
        bench.a.set_batching(modes[0].1)?;
        bench.b.set_batching(modes[0].1)?;
    }
    let search = SearchPlan {
        // Well above what an unpaced sender got delivered: paced, the tunnel carries more
        // than at full tilt (no queue overflows at the start), and the search's first
        // trial must fail for the NDR to be bracketed.
        max_pps: max.delivered_pps * 2.0,
        resolution: 0.03,
        max_trials: plan.ndr_trials.max(1),
        // A tenth of what crossed at full tilt must cross loss-free before the search
        // bisects above it; a failing trial is offered twice more (a loaded machine's
        // hiccup, not the tunnel's limit, is the likelier cause of a single loss).
        min_pps: max.delivered_pps * 0.1,
        retries: 2,
    };
    let ndr_rounds = ndr::ndr_pdr_rounds(
        &mut TunnelTrial {
            bed: &bench,
            tx: &paths[2].1.background_tx,
            size: plan.size,
            window: plan.ndr_trial,
        },
        search,
        plan.ndr_rounds,
    );
    let ndr = ndr::median_round(&ndr_rounds)
        .cloned()
        .unwrap_or_else(|| ndr_rounds[0].clone());
    progress(&format!(
        "tunnel NDR {:.0} packets/s, PDR (0.1% loss) {:.0} packets/s of {} B",
        ndr.ndr.rate_pps, ndr.pdr.rate_pps, plan.size
    ));
    // A tunnel with no loss-free rate at all is probed at fractions of its maximum instead.
    let reference = if ndr.ndr.rate_pps > 0.0 {
        ndr.ndr.rate_pps
    } else {
        max.delivered_pps
    };

    let rounds = (plan.duration.as_secs_f64() / ROUND.as_secs_f64())
        .ceil()
        .max(1.0) as u32;
    let round = plan.duration / rounds;
    let mut rows = Vec::new();
    let mut stages = Vec::new();
    let mut engine_cpu = Vec::new();
    let mut spectra = Vec::new();
    let mut interval_logs = Vec::new();
    // What is probed, in turn: the baselines, then the tunnel once per mode.
    let targets: Vec<(Path, Option<Mode>, &Endpoints)> = paths[..2]
        .iter()
        .map(|(path, endpoints)| (*path, None, endpoints))
        .chain(
            modes
                .iter()
                .map(|(mode, _)| (Path::Cpclink, Some(*mode), &paths[2].1)),
        )
        .collect();
    for &load in &plan.loads {
        let pps = (load > 0).then(|| reference * f64::from(load) / 100.0);
        let mut samples: Vec<Samples> = targets.iter().map(|_| Samples::new()).collect();
        // Each mode's stage times over all of its rounds, engine A then B.
        let mut times: Vec<[StageTimes; 2]> = modes.iter().map(|_| Default::default()).collect();
        let mut cpu: Vec<[EngineCpu; 2]> = modes.iter().map(|_| Default::default()).collect();
        // Paths (and modes) take turns, a round each, so that whatever else the machine
        // does meanwhile falls on all of them alike.
        for _ in 0..rounds {
            for ((_, mode, endpoints), samples) in targets.iter().zip(&mut samples) {
                let Some(mode) = mode else {
                    samples.merge(endpoints.probe(epoch, round, plan.size, pps));
                    continue;
                };
                let m = modes.iter().position(|(n, _)| n == mode).unwrap_or(0);
                if modes.len() > 1 {
                    bench.a.set_batching(modes[m].1)?;
                    bench.b.set_batching(modes[m].1)?;
                }
                // Setting the sampling forgets earlier samples (and, after a snapshot
                // round trip, the mode is the workers'): each round's are its own.
                bench.a.set_stage_sampling(plan.stage_sample_every)?;
                bench.b.set_stage_sampling(plan.stage_sample_every)?;
                let before = [bench.a.snapshot()?.total(), bench.b.snapshot()?.total()];
                let started = Instant::now();
                samples.merge(endpoints.probe(epoch, round, plan.size, pps));
                let after = [bench.a.snapshot()?, bench.b.snapshot()?];
                let seconds = started.elapsed().as_secs_f64();
                for side in 0..2 {
                    cpu[m][side].add(&before[side], &after[side].total(), seconds);
                    if plan.stage_sample_every > 0 {
                        times[m][side].merge(&after[side].stage_times());
                    }
                }
            }
        }
        if plan.stage_sample_every > 0 {
            for ((mode, _), [a, b]) in modes.iter().zip(&times) {
                stages.extend(stage_rows(load, Side::A, *mode, a));
                stages.extend(stage_rows(load, Side::B, *mode, b));
            }
        }
        for ((mode, _), [a, b]) in modes.iter().zip(&cpu) {
            engine_cpu.push(a.row(load, Side::A, *mode));
            engine_cpu.push(b.row(load, Side::B, *mode));
        }
        interval_logs.push((load, interval_log(load, &targets, &samples)));
        for ((path, mode, _), samples) in targets.iter().zip(samples) {
            spectra.extend(samples.spectra(*path, load));
            let mode_max = mode
                .and_then(|m| modes.iter().position(|(n, _)| *n == m))
                .map_or(max.delivered_pps, |m| max_by_mode[m]);
            let mut point = samples.rows(*path, load, plan.size, mode_max, reference);
            for row in &mut point {
                row.mode = *mode;
            }
            progress(&format!(
                "{load:>3}% {:<12} {:<13} one-way p50 {:.1} µs, p99 {:.1} µs, {} of {} probes arrived",
                path.name(),
                mode.map_or("", Mode::name),
                point[0].p50_us,
                point[0].p99_us,
                point[0].received,
                point[0].probes,
            ));
            rows.extend(point);
        }
    }
    if modes.len() > 1 {
        // Left as the appliance would run: as started.
        bench.a.set_batching(modes[0].1)?;
        bench.b.set_batching(modes[0].1)?;
    }
    add_differences(&mut rows);
    drop(targets);
    drop(paths);
    bench.finish()?;
    Ok(LatencyRun {
        rows,
        stages,
        engine_cpu,
        max_pps: max.delivered_pps,
        ndr,
        ndr_rounds,
        spectra,
        interval_logs,
    })
}

/// The rounds of every path at one load as an HdrHistogram interval log (V2, deflated),
/// one interval per round, tagged `PATH-one-way` or `PATH-round-trip`.
fn interval_log(
    load: u32,
    targets: &[(Path, Option<Mode>, &Endpoints)],
    samples: &[Samples],
) -> String {
    let mut buf = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut builder = IntervalLogWriterBuilder::new();
    builder.add_comment(&format!(
        "cpclink bench latency: {load}% of the tunnel's no-drop rate; values in nanoseconds,          corrected for coordinated omission at {PROBES_PER_SECOND} probes/s"
    ));
    let base = samples
        .iter()
        .flat_map(|s| &s.intervals)
        .map(|i| i.start)
        .min();
    if let Some(base) = base {
        builder.with_base_time(std::time::SystemTime::now() - base.elapsed());
    }
    let Ok(mut writer) = builder.begin_log_with(&mut buf, &mut serializer) else {
        return String::new();
    };
    for ((path, mode, _), samples) in targets.iter().zip(samples) {
        let name = match mode {
            Some(m) if targets.iter().filter(|t| t.1.is_some()).count() > 1 => {
                format!("{}-{}", path.name(), m.name())
            }
            _ => path.name().to_owned(),
        };
        for interval in &samples.intervals {
            let offset = base.map_or(Duration::ZERO, |b| interval.start.duration_since(b));
            for (metric, histogram) in [
                (Metric::OneWay.name(), &interval.one_way),
                (Metric::RoundTrip.name(), &interval.round_trip),
            ] {
                let tag = format!("{name}-{metric}");
                // A write into memory fails only on a histogram the serializer cannot encode;
                // the log then lacks that interval, the report's tables do not.
                let _ = writer.write_histogram(histogram, offset, interval.length, Tag::new(&tag));
            }
        }
    }
    drop(writer);
    String::from_utf8(buf).unwrap_or_default()
}

/// One trial of the tunnel's no-drop search: background at a rate for a window, counted
/// where engine B delivers to its TUN device once what was in flight has landed.
struct TunnelTrial<'a> {
    bed: &'a Testbed,
    tx: &'a UdpSocket,
    size: usize,
    window: Duration,
}

impl Trial for TunnelTrial<'_> {
    fn run(&mut self, rate_pps: f64) -> Loss {
        let delivered = || self.bed.b.snapshot().map(|s| s.total().rx_delivered);
        let before = delivered();
        // The sender offers the trial's packets itself, paced from when it starts: a
        // sender thread that started late on a busy machine must not have its late start
        // counted as loss (which made every trial of a loaded run fail, down to a tenth of
        // the maximum). A sender that needs more than the window and 5% to send them did
        // not offer the rate: the trial fails whole.
        let due = (rate_pps * self.window.as_secs_f64()) as u64;
        let stop = AtomicBool::new(false);
        let (sent, took) = std::thread::scope(|s| {
            let sender = s.spawn(|| {
                let start = Instant::now();
                let sent = send_paced(self.tx, self.size, Some(rate_pps), &stop, self.window, due);
                (sent, start.elapsed())
            });
            let deadline = Instant::now() + self.window * 2;
            while !sender.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::Relaxed);
            sender.join().unwrap_or((0, Duration::MAX))
        });
        std::thread::sleep(TRIAL_DRAIN);
        if took > self.window.mul_f64(1.05) {
            return Loss {
                offered: due,
                lost: due,
            };
        }
        match (before, delivered()) {
            // A sender that fell short of the rate offered less than was asked: the
            // shortfall counts as lost, so a rate that cannot even be sent never passes.
            (Ok(before), Ok(after)) => {
                let offered = sent.max(due);
                Loss {
                    offered,
                    lost: offered.saturating_sub(after.saturating_sub(before)),
                }
            }
            // Engine B did not answer: a trial that measured nothing (it fails).
            _ => Loss::default(),
        }
    }
}

/// What a no-drop trial leaves in flight gets this long to land before it is counted lost.
const TRIAL_DRAIN: Duration = Duration::from_millis(100);

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// Fills each cpclink row's `added_*` from the `udp_loopback` row of the same load and metric.
pub fn add_differences(rows: &mut [LatencyRow]) {
    let baselines: Vec<(u32, Metric, f64, f64, f64)> = rows
        .iter()
        .filter(|r| r.path == Path::UdpLoopback && r.received > 0)
        .map(|r| (r.load_pct, r.metric, r.p50_us, r.p99_us, r.p999_us))
        .collect();
    for row in rows.iter_mut().filter(|r| r.path == Path::Cpclink) {
        let Some(&(_, _, p50, p99, p999)) = baselines
            .iter()
            .find(|(load, metric, ..)| *load == row.load_pct && *metric == row.metric)
        else {
            continue;
        };
        if row.received > 0 {
            row.added_p50_us = Some(row.p50_us - p50);
            row.added_p99_us = Some(row.p99_us - p99);
            row.added_p999_us = Some(row.p999_us - p999);
        }
    }
}

/// The SPEC's latency target: p99 added at 50% load, microseconds.
pub const TARGET_ADDED_P99_US: f64 = 50.0;

/// Whether the SPEC's latency target was met, taken one way through both appliances (the
/// stricter reading: a packet between two centres crosses two), if 50% load was measured.
pub fn verdict(rows: &[LatencyRow]) -> Option<String> {
    let lines: Vec<String> = rows
        .iter()
        .filter(|r| r.path == Path::Cpclink && r.metric == Metric::OneWay && r.load_pct == 50)
        .filter_map(|row| {
            let judged = judge_p99(row, rows)?;
            let mode = match row.mode {
                Some(m) if rows.iter().any(|r| r.mode.is_some_and(|o| o != m)) => {
                    format!(", {}", m.name())
                }
                _ => String::new(),
            };
            Some(format!(
                "SPEC target, p99 added under 50% load <= {TARGET_ADDED_P99_US} µs (one way, through both engines{mode}): \
                 {judged}"
            ))
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The SPEC target's verdict on one cpclink row's added p99: "met", "not met" or "not
/// judged" with why, then the difference and the median of the rounds' own differences.
/// `None` where the row has no baseline to be judged against.
pub fn judge_p99(row: &LatencyRow, rows: &[LatencyRow]) -> Option<String> {
    let added = row.added_p99_us?;
    let baseline = rows.iter().find(|r| {
        r.path == Path::UdpLoopback && r.metric == row.metric && r.load_pct == row.load_pct
    })?;
    // A negative difference is the baseline's tail, not the tunnel's speed: stalls of the
    // machine fell on the baseline's rounds. It judges nothing either way.
    let met = if added < 0.0 {
        format!(
            "not judged: the baseline's own p99 ({:.1} µs) is above the tunnel's, so this \
             machine's stalls, not the paths, set the tail",
            baseline.p99_us
        )
    } else if added <= TARGET_ADDED_P99_US {
        "met".to_string()
    } else {
        "not met".to_string()
    };
    let per_round: Vec<f64> = row
        .rounds_us
        .iter()
        .zip(&baseline.rounds_us)
        .map(|(t, b)| t[1] - b[1])
        .collect();
    let per_round = if per_round.len() >= 2 {
        format!(
            "; the median of the {} rounds' own differences {:+.1} µs",
            per_round.len(),
            crate::suite::report::median(&per_round)
        )
    } else {
        String::new()
    };
    Some(format!("{met} ({added:+.1} µs{per_round})"))
}

/// Renders rows as a table.
pub fn table(rows: &[LatencyRow]) -> String {
    let f = |x: f64| format!("{x:.1}");
    let added = |x: Option<f64>| x.map_or_else(|| "".to_string(), |x| format!("{x:+.1}"));
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!("{}%", r.load_pct),
                format!("{:.0}", r.background_pps),
                r.busy_cores.map_or_else(String::new, |c| format!("{c:.2}")),
                r.path.name().to_string(),
                r.mode.map_or("", Mode::name).to_string(),
                r.metric.name().to_string(),
                r.probes.to_string(),
                r.lost.to_string(),
                f(r.p50_us),
                f(r.p90_us),
                f(r.p99_us),
                f(r.p999_us),
                f(r.max_us),
                added(r.added_p50_us),
                added(r.added_p99_us),
                added(r.added_p999_us),
            ]
        })
        .collect();
    crate::markdown_table(
        &[
            "load",
            "bg pkt/s",
            "cores busy",
            "path",
            "mode",
            "metric",
            "probes",
            "lost",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "added p50",
            "added p99",
            "added p99.9",
        ],
        &body,
    )
}

fn setup_error(what: &str, reason: impl std::fmt::Display) -> Error {
    Error::Setup {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// Two namespaces, each with a TUN device served by its own engine and one end of a veth pair.
struct Testbed {
    // Engines first: they close the TUN queues before the namespaces go.
    a: Engine,
    b: Engine,
    ns_a: Netns,
    ns_b: Netns,
}

impl Testbed {
    fn start(io: IoKind, batching: BatchingMode) -> Result<Self, Error> {
        let id = std::process::id();
        let netns = |side: char| {
            Netns::create(&format!("cpclat-{id}-{side}"))
                .map_err(|e| setup_error("network namespace", e))
        };
        let (ns_a, ns_b) = (netns('a')?, netns('b')?);
        let ip =
            |ns: &Netns, args: &[&str]| ns.ip(args).map(drop).map_err(|e| setup_error("ip", e));
        let veth = [format!("cplv{id}a"), format!("cplv{id}b")];
        ip(
            &ns_a,
            &[
                "link",
                "add",
                &veth[0],
                "type",
                "veth",
                "peer",
                "name",
                &veth[1],
                "netns",
                ns_b.name(),
            ],
        )?;
        let mtu = TUN_MTU.to_string();
        let side = |side: usize, ns: &Netns| -> Result<Engine, Error> {
            ip(
                ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", VETH[side]),
                    "dev",
                    &veth[side],
                ],
            )?;
            ip(ns, &["link", "set", &veth[side], "mtu", &mtu, "up"])?;
            // The device is made inside the namespace; its queues work from any thread.
            let name = format!("cplt{id}{}", ["a", "b"][side]);
            let queues = ns
                .run(|| tun::open_queues(&name, 1, true))
                .map_err(|e| setup_error("TUN", e))??;
            ip(
                ns,
                &["addr", "add", &format!("{}/24", TUNNEL[side]), "dev", &name],
            )?;
            ip(ns, &["link", "set", &name, "mtu", &mtu, "up"])?;
            let mut config = EngineConfig::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
            config.egress = Egress::Tun(queues);
            config.io = io;
            config.batching = batching;
            Ok(Engine::start(config)?)
        };
        let a = side(0, &ns_a)?;
        let b = side(1, &ns_b)?;
        let route_to =
            |inner: Ipv4Addr| RouteTable::build([(IpAddr::V4(inner), 32, PeerId(0))]).map(Arc::new);
        a.set_peer(
            PeerId(0),
            PeerConfig {
                endpoint: b.local_addr(),
            },
        )?;
        b.set_peer(
            PeerId(0),
            PeerConfig {
                endpoint: a.local_addr(),
            },
        )?;
        a.set_routes(route_to(TUNNEL[1])?)?;
        b.set_routes(route_to(TUNNEL[0])?)?;
        let (keys_a, keys_b) = (random_keys()?, random_keys()?);
        lab::enable_rx_derivation(&a, &keys_a, SUITE)?;
        lab::enable_rx_derivation(&b, &keys_b, SUITE)?;
        // A snapshot round trip makes sure the receivers are keyed before anything is sent.
        a.snapshot()?;
        b.snapshot()?;
        let profile = SaProfile::default();
        lab::install_tx_sas(&a, PeerId(0), &keys_b, profile)?;
        lab::install_tx_sas(&b, PeerId(0), &keys_a, profile)?;
        Ok(Self { a, b, ns_a, ns_b })
    }

    /// Sends background through the tunnel as fast as it goes: the packets per second
    /// engine B delivered to its TUN device are the maximum.
    fn maximum(&self, tunnel: &Endpoints, size: usize) -> Result<Maximum, Error> {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let sender = s.spawn(|| send_background(&tunnel.background_tx, size, None, &stop));
            let started = Instant::now();
            std::thread::sleep(SETTLE);
            let before = self.b.snapshot();
            let window = Instant::now();
            std::thread::sleep(MAX_WINDOW);
            let after = self.b.snapshot();
            let secs = window.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            let sent = sender.join().unwrap_or_default();
            let offered_secs = started.elapsed().as_secs_f64();
            // What the flood left queued (TUN queues, socket buffers) drains before probing.
            std::thread::sleep(RECOVER);
            let delivered = after?.total().rx_delivered - before?.total().rx_delivered;
            Ok(Maximum {
                delivered_pps: delivered as f64 / secs,
                offered_pps: sent as f64 / offered_secs,
            })
        })
    }

    fn finish(self) -> Result<(), Error> {
        let Self { a, b, ns_a, ns_b } = self;
        a.shutdown()?;
        b.shutdown()?;
        drop((ns_a, ns_b));
        Ok(())
    }
}

fn random_keys() -> Result<MasterKeys, Error> {
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| Error::Baseline("system random"))?;
    Ok(MasterKeys::new(key))
}

/// The sockets of one path: probe client and echo server, background sender and receiver.
/// The background receiver is bound but never read: its kernel delivers every background
/// packet to it (so none bounces back as ICMP) and drops them once its buffer is full, and
/// no reader thread competes with the engines for the cores.
struct Endpoints {
    client: UdpSocket,
    server: UdpSocket,
    background_tx: UdpSocket,
    /// Held open so background packets have a socket to arrive at.
    _background_rx: UdpSocket,
}

/// The tunnel's maximum.
struct Maximum {
    /// Background packets per second engine B delivered.
    delivered_pps: f64,
    /// Background packets per second the sender got into the kernel.
    offered_pps: f64,
}

/// What the rounds of one path at one load saw.
struct Samples {
    probes: u64,
    one_way: Histogram<u64>,
    round_trip: Histogram<u64>,
    one_way_received: u64,
    round_trip_received: u64,
    background_sent: u64,
    background_secs: f64,
    /// The machine's CPU while probing.
    cpu: CpuUse,
    intervals: Vec<Interval>,
}

/// One round of probing, as the interval log records it.
struct Interval {
    start: Instant,
    length: Duration,
    one_way: Histogram<u64>,
    round_trip: Histogram<u64>,
}

/// A histogram of nanoseconds from 1 ns to a minute at 3 significant digits.
fn histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts (low ≥ 1, high ≥ 2·low,
    // sigfig ≤ 5), so this cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant histogram bounds are valid")
}

/// Samples into a histogram, each recorded with the probes' expected interval so a stall
/// also counts the probes it held back (coordinated-omission correction).
fn corrected(samples: &[u64]) -> Histogram<u64> {
    let interval = 1_000_000_000 / u64::from(PROBES_PER_SECOND);
    let mut h = histogram();
    for &ns in samples {
        // Values above the histogram's range are clamped to it rather than dropped.
        let _ = h.record_correct(ns.clamp(1, h.high()), interval);
    }
    h
}

impl Endpoints {
    fn loopback() -> Result<Self, Error> {
        let bind = || UdpSocket::bind((Ipv4Addr::LOCALHOST, 0));
        Self::connect(
            bind().map_err(|e| setup_error("bind", e))?,
            bind().map_err(|e| setup_error("bind", e))?,
            bind().map_err(|e| setup_error("bind", e))?,
            bind().map_err(|e| setup_error("bind", e))?,
        )
    }

    /// Client and background sender in `a` on `addrs[0]`, server and background receiver in
    /// `b` on `addrs[1]`.
    fn between(a: &Netns, b: &Netns, addrs: [Ipv4Addr; 2]) -> Result<Self, Error> {
        let bind_in = |ns: &Netns, addr: Ipv4Addr| {
            ns.run(|| (UdpSocket::bind((addr, 0)), UdpSocket::bind((addr, 0))))
                .map_err(|e| setup_error("socket in namespace", e))
        };
        let (client, background_tx) = bind_in(a, addrs[0])?;
        let (server, background_rx) = bind_in(b, addrs[1])?;
        Self::connect(
            client.map_err(|e| setup_error("bind", e))?,
            server.map_err(|e| setup_error("bind", e))?,
            background_tx.map_err(|e| setup_error("bind", e))?,
            background_rx.map_err(|e| setup_error("bind", e))?,
        )
    }

    fn connect(
        client: UdpSocket,
        server: UdpSocket,
        background_tx: UdpSocket,
        background_rx: UdpSocket,
    ) -> Result<Self, Error> {
        client
            .connect(
                server
                    .local_addr()
                    .map_err(|e| setup_error("local address", e))?,
            )
            .map_err(|e| setup_error("connect", e))?;
        background_tx
            .connect(
                background_rx
                    .local_addr()
                    .map_err(|e| setup_error("local address", e))?,
            )
            .map_err(|e| setup_error("connect", e))?;
        for s in [&client, &server] {
            s.set_read_timeout(Some(POLL))
                .map_err(|e| setup_error("timeout", e))?;
        }
        Ok(Self {
            client,
            server,
            background_tx,
            _background_rx: background_rx,
        })
    }

    /// Sends probes for `duration` over background of `pps` (none without).
    fn probe(&self, epoch: Instant, duration: Duration, size: usize, pps: Option<f64>) -> Samples {
        let stop_background = AtomicBool::new(false);
        let stop_probes = AtomicBool::new(false);
        std::thread::scope(|s| {
            let started = Instant::now();
            let stop_background = &stop_background;
            let background = pps.map(|pps| {
                s.spawn(move || {
                    send_background(&self.background_tx, size, Some(pps), stop_background)
                })
            });
            let server = s.spawn(|| echo(&self.server, epoch, &stop_probes));
            let replies = s.spawn(|| collect_replies(&self.client, epoch, &stop_probes));
            std::thread::sleep(SETTLE);
            let probing = Instant::now();
            let cpu_before = CpuReading::now(&[]);
            let probes = send_probes(&self.client, epoch, duration, size);
            let cpu = match (cpu_before, CpuReading::now(&[])) {
                (Some(then), Some(now)) => now.since(&then),
                _ => CpuUse::default(),
            };
            std::thread::sleep(DRAIN);
            stop_probes.store(true, Ordering::Relaxed);
            stop_background.store(true, Ordering::Relaxed);
            let one_way = server.join().unwrap_or_default();
            let round_trip = replies.join().unwrap_or_default();
            let interval = Interval {
                start: probing,
                length: duration,
                one_way: corrected(&one_way),
                round_trip: corrected(&round_trip),
            };
            Samples {
                probes,
                one_way: interval.one_way.clone(),
                round_trip: interval.round_trip.clone(),
                one_way_received: one_way.len() as u64,
                round_trip_received: round_trip.len() as u64,
                background_sent: background.map_or(0, |t| t.join().unwrap_or_default()),
                background_secs: started.elapsed().as_secs_f64(),
                cpu,
                intervals: vec![interval],
            }
        })
    }
}

impl Samples {
    fn new() -> Self {
        Self {
            probes: 0,
            one_way: histogram(),
            round_trip: histogram(),
            one_way_received: 0,
            round_trip_received: 0,
            background_sent: 0,
            background_secs: 0.0,
            cpu: CpuUse::default(),
            intervals: Vec::new(),
        }
    }

    fn merge(&mut self, other: Samples) {
        self.probes += other.probes;
        // Histograms of equal bounds always add.
        let _ = self.one_way.add(&other.one_way);
        let _ = self.round_trip.add(&other.round_trip);
        self.one_way_received += other.one_way_received;
        self.round_trip_received += other.round_trip_received;
        self.background_sent += other.background_sent;
        self.background_secs += other.background_secs;
        self.cpu.add(&other.cpu);
        self.intervals.extend(other.intervals);
    }

    fn spectra(&self, path: Path, load_pct: u32) -> Vec<Spectrum> {
        [
            (Metric::OneWay, &self.one_way),
            (Metric::RoundTrip, &self.round_trip),
        ]
        .into_iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(metric, h)| Spectrum {
            path,
            metric,
            load_pct,
            points: SPECTRUM
                .iter()
                .map(|&p| (p, us(h.value_at_quantile(p / 100.0))))
                .chain([(100.0, us(h.max()))])
                .collect(),
        })
        .collect()
    }

    fn rows(
        self,
        path: Path,
        load_pct: u32,
        size: usize,
        max_pps: f64,
        ndr_pps: f64,
    ) -> Vec<LatencyRow> {
        let background_pps = if self.background_secs > 0.0 {
            self.background_sent as f64 / self.background_secs
        } else {
            0.0
        };
        let probes = self.probes;
        let busy_cores = self.cpu.busy_cores();
        [
            (Metric::OneWay, &self.one_way, self.one_way_received),
            (
                Metric::RoundTrip,
                &self.round_trip,
                self.round_trip_received,
            ),
        ]
        .into_iter()
        .map(|(metric, h, received)| {
            let rounds_us = self
                .intervals
                .iter()
                .map(|i| match metric {
                    Metric::OneWay => &i.one_way,
                    Metric::RoundTrip => &i.round_trip,
                })
                .filter(|h| !h.is_empty())
                .map(|h| {
                    let q = |q: f64| us(h.value_at_quantile(q));
                    [q(0.5), q(0.99), q(0.999)]
                })
                .collect();
            let p = if h.is_empty() {
                [f64::NAN; 5]
            } else {
                let q = |q: f64| us(h.value_at_quantile(q));
                [q(0.5), q(0.9), q(0.99), q(0.999), us(h.max())]
            };
            LatencyRow {
                path,
                mode: None,
                metric,
                load_pct,
                size,
                max_pps,
                ndr_pps,
                background_pps,
                busy_cores,
                probes,
                received,
                lost: probes.saturating_sub(received),
                p50_us: p[0],
                p90_us: p[1],
                p99_us: p[2],
                p999_us: p[3],
                max_us: p[4],
                rounds_us,
                added_p50_us: None,
                added_p99_us: None,
                added_p999_us: None,
            }
        })
        .collect()
    }
}
fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// A probe's sequence number and send time, if `packet` is a probe.
fn parse_probe(packet: &[u8]) -> Option<(u64, u64)> {
    let field = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(packet.get(at..at + 8)?.try_into().ok()?))
    };
    (packet.get(..4)? == PROBE_MAGIC.to_be_bytes()).then_some(())?;
    Some((field(4)?, field(12)?))
}

/// Sends probes at [`PROBES_PER_SECOND`] for the plan's duration; returns how many.
fn send_probes(client: &UdpSocket, epoch: Instant, duration: Duration, size: usize) -> u64 {
    let interval = Duration::from_secs(1) / PROBES_PER_SECOND;
    let mut packet = vec![0u8; size];
    packet[..4].copy_from_slice(&PROBE_MAGIC.to_be_bytes());
    let start = Instant::now();
    let mut next = start;
    let mut seq = 0u64;
    while start.elapsed() < duration {
        packet[4..12].copy_from_slice(&seq.to_be_bytes());
        packet[12..20].copy_from_slice(&nanos_since(epoch).to_be_bytes());
        // A probe the kernel refused counts as sent and lost: it is what load did to it.
        let _ = client.send(&packet);
        seq += 1;
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    seq
}

/// Echoes probes back and returns their one-way times.
fn echo(server: &UdpSocket, epoch: Instant, stop: &AtomicBool) -> Vec<u64> {
    let mut samples = Vec::with_capacity(1 << 16);
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = server.recv_from(&mut buf) else {
            continue;
        };
        let now = nanos_since(epoch);
        if let Some((_, sent)) = parse_probe(&buf[..len]) {
            samples.push(now.saturating_sub(sent));
            let _ = server.send_to(&buf[..len], from);
        }
    }
    samples
}

/// Takes replies and returns their round-trip times.
fn collect_replies(client: &UdpSocket, epoch: Instant, stop: &AtomicBool) -> Vec<u64> {
    let mut samples = Vec::with_capacity(1 << 16);
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let Ok(len) = client.recv(&mut buf) else {
            continue;
        };
        let now = nanos_since(epoch);
        if let Some((_, sent)) = parse_probe(&buf[..len]) {
            samples.push(now.saturating_sub(sent));
        }
    }
    samples
}

/// Sends background packets at `pps` (or as fast as the kernel takes them) until `stop`.
/// Returns how many sends it made (a stall's missed packets are skipped, not counted).
fn send_background(socket: &UdpSocket, size: usize, pps: Option<f64>, stop: &AtomicBool) -> u64 {
    send_paced(socket, size, pps, stop, Duration::from_millis(1), u64::MAX)
}

/// [`send_background`] with the catch-up after a stall limited to `catch_up` worth of
/// packets: short for background under probes (a stall must not become a burst far above
/// the load), the whole trial for a no-drop trial (every packet due is offered). Stops
/// after `limit` sends.
fn send_paced(
    socket: &UdpSocket,
    size: usize,
    pps: Option<f64>,
    stop: &AtomicBool,
    catch_up: Duration,
    limit: u64,
) -> u64 {
    let packet = vec![0x42u8; size];
    let start = Instant::now();
    // `paced` is the pacing cursor (packets due so far, less what a stall skipped);
    // `sent` counts the sends actually made, which is what was offered.
    let (mut paced, mut sent) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) && sent < limit {
        let Some(pps) = pps else {
            for _ in 0..64 {
                sent += u64::from(socket.send(&packet).is_ok());
            }
            continue;
        };
        let due = (start.elapsed().as_secs_f64() * pps) as u64;
        // A sender that was descheduled catches up by at most `catch_up` worth.
        let burst_limit = (pps * catch_up.as_secs_f64()).ceil() as u64;
        if due > paced + burst_limit {
            paced = due - burst_limit;
        }
        while paced < due && sent < limit {
            // A send the kernel refused counts as offered and lost.
            let _ = socket.send(&packet);
            paced += 1;
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_ranks() {
        let mut samples: Vec<u64> = (1..=1000).rev().collect();
        let p = Percentiles::of(&mut samples).unwrap();
        assert_eq!(
            (p.p50, p.p90, p.p99, p.p999, p.max),
            (500, 900, 990, 999, 1000)
        );
        // 10 samples: the 99th and 99.9th percentile are the largest, the median the fifth.
        let mut samples = vec![7, 1, 9, 3, 5, 2, 8, 10, 4, 6];
        let p = Percentiles::of(&mut samples).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.p999, p.max), (5, 9, 10, 10, 10));
        let p = Percentiles::of(&mut [42]).unwrap();
        assert_eq!((p.p50, p.p999, p.max), (42, 42, 42));
        assert_eq!(Percentiles::of(&mut []), None);
    }

    #[test]
    fn engine_cpu_is_the_workers_cpu_over_the_packets_it_carried_in_every_round() {
        let mut cpu = EngineCpu::default();
        let at = |ns_cpu, tx_packets, rx_packets| WorkerStats {
            ns_cpu,
            tx_packets,
            rx_packets,
            ..WorkerStats::default()
        };
        // Two rounds of half a second: 3 ms of CPU for 1000 packets, then 1 ms for 1000.
        cpu.add(&at(10_000_000, 50, 50), &at(13_000_000, 850, 250), 0.5);
        cpu.add(&at(20_000_000, 0, 0), &at(21_000_000, 0, 1000), 0.5);
        let row = cpu.row(50, Side::B, Mode::Throughput);
        assert_eq!(row.packets, 2000);
        assert!((row.cpu_us_per_packet - 2.0).abs() < 1e-9, "{row:?}");
        assert!((row.cores - 0.004).abs() < 1e-9, "{row:?}");
    }

    #[test]
    fn per_engine_tables_lead_with_load_mode_and_engine_then_the_rows_own_cells() {
        let cpu = EngineCpu {
            cpu_ns: 4_000_000,
            packets: 1000,
            seconds: 1.0,
        }
        .row(50, Side::B, Mode::LatencyFirst);
        let (header, body) = per_engine_cells(&[cpu]);
        assert_eq!(
            header,
            [
                "load",
                "mode",
                "engine",
                "packets",
                "CPU µs per packet",
                "cores"
            ]
        );
        assert_eq!(
            body,
            [["50%", "latency-first", "B", "1000", "4.00", "0.00"]]
        );
        let stage = StageRow {
            load_pct: 0,
            side: Side::A,
            mode: Mode::Throughput,
            stage: Stage::Seal,
            samples: 7,
            p50_us: 0.25,
            p99_us: 1.0,
            p999_us: 2.0,
            max_us: 3.0,
        };
        let table = per_engine_table(&[stage]);
        let last: Vec<&str> = table
            .lines()
            .last()
            .unwrap()
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            last,
            [
                "0%",
                "throughput",
                "A",
                "seal",
                "7",
                "0.2",
                "1.0",
                "2.0",
                "3.0"
            ],
            "{table}"
        );
    }

    #[test]
    fn a_tail_shows_in_the_high_percentiles_only() {
        // 1% of samples a hundred times slower: p50 and p90 do not move, p99.9 does.
        let mut samples: Vec<u64> = (0..10_000)
            .map(|i| if i % 100 == 0 { 10_000 } else { 100 })
            .collect();
        let p = Percentiles::of(&mut samples).unwrap();
        assert_eq!((p.p50, p.p90, p.p99), (100, 100, 100));
        assert_eq!((p.p999, p.max), (10_000, 10_000));
    }

    fn row(path: Path, metric: Metric, load_pct: u32, p50: f64, p99: f64) -> LatencyRow {
        LatencyRow {
            path,
            mode: (path == Path::Cpclink).then_some(Mode::Throughput),
            metric,
            load_pct,
            size: 100,
            max_pps: 1.0,
            ndr_pps: 1.0,
            background_pps: 0.0,
            busy_cores: None,
            probes: 10,
            received: 10,
            lost: 0,
            p50_us: p50,
            p90_us: p50,
            p99_us: p99,
            p999_us: p99,
            max_us: p99,
            rounds_us: vec![[p50, p99, p99]],
            added_p50_us: None,
            added_p99_us: None,
            added_p999_us: None,
        }
    }

    #[test]
    fn added_latency_is_taken_against_the_baseline_of_the_same_load_and_metric() {
        let mut rows = vec![
            row(Path::UdpLoopback, Metric::OneWay, 0, 10.0, 20.0),
            row(Path::UdpLoopback, Metric::RoundTrip, 0, 20.0, 40.0),
            row(Path::UdpLoopback, Metric::OneWay, 50, 15.0, 60.0),
            row(Path::Veth, Metric::OneWay, 50, 16.0, 61.0),
            row(Path::Cpclink, Metric::OneWay, 0, 30.0, 50.0),
            row(Path::Cpclink, Metric::RoundTrip, 0, 65.0, 100.0),
            row(Path::Cpclink, Metric::OneWay, 50, 40.0, 95.0),
            row(Path::Cpclink, Metric::RoundTrip, 50, 40.0, 95.0),
        ];
        add_differences(&mut rows);
        let added: Vec<_> = rows
            .iter()
            .map(|r| (r.added_p50_us, r.added_p99_us))
            .collect();
        assert_eq!(added[..4], [(None, None); 4], "baselines get no difference");
        assert_eq!(added[4], (Some(20.0), Some(30.0)));
        assert_eq!(added[5], (Some(45.0), Some(60.0)));
        assert_eq!(added[6], (Some(25.0), Some(35.0)));
        assert_eq!(added[7], (None, None), "no round-trip baseline at 50%");
        assert!(verdict(&rows).unwrap().ends_with(": met (+35.0 µs)"));
        rows[6].added_p99_us = Some(50.5);
        assert!(verdict(&rows).unwrap().ends_with("not met (+50.5 µs)"));
        assert_eq!(verdict(&rows[..4]), None, "no cpclink row at 50%");
        let table = table(&rows);
        assert_eq!(table.lines().count(), 2 + rows.len());
        assert!(table.lines().nth(6).unwrap().contains("+20.0"), "{table}");
    }

    #[test]
    fn each_mode_gets_its_own_difference_and_verdict_against_the_one_baseline() {
        let mut latency = row(Path::Cpclink, Metric::OneWay, 50, 30.0, 55.0);
        latency.mode = Some(Mode::LatencyFirst);
        latency.p999_us = 70.0;
        let mut rows = vec![
            row(Path::UdpLoopback, Metric::OneWay, 50, 15.0, 20.0),
            row(Path::Cpclink, Metric::OneWay, 50, 40.0, 95.0),
            latency,
        ];
        add_differences(&mut rows);
        assert_eq!(rows[0].mode, None, "a baseline has no mode");
        assert_eq!(
            (rows[1].added_p99_us, rows[1].added_p999_us),
            (Some(75.0), Some(75.0))
        );
        assert_eq!(
            (rows[2].added_p99_us, rows[2].added_p999_us),
            (Some(35.0), Some(50.0))
        );
        let verdict = verdict(&rows).unwrap();
        let lines: Vec<_> = verdict.lines().collect();
        assert_eq!(lines.len(), 2, "{verdict}");
        assert!(
            lines[0].contains("throughput): not met (+75.0 µs)"),
            "{verdict}"
        );
        assert!(
            lines[1].contains("latency-first): met (+35.0 µs)"),
            "{verdict}"
        );
        let table = table(&rows);
        assert!(
            table.contains("latency-first") && table.contains("+50.0"),
            "{table}"
        );
        assert_eq!(Mode::of(BatchingMode::THROUGHPUT), Mode::Throughput);
        assert_eq!(Mode::of(BatchingMode::LATENCY_FIRST), Mode::LatencyFirst);
    }

    #[test]
    fn a_baseline_tail_above_the_tunnels_judges_nothing_and_rounds_are_compared_in_pairs() {
        let mut base = row(Path::UdpLoopback, Metric::OneWay, 50, 20.0, 900.0);
        let mut tunnel = row(Path::Cpclink, Metric::OneWay, 50, 120.0, 400.0);
        // Three rounds each; the second fell on a stall of the baseline's.
        base.rounds_us = vec![[20.0, 90.0, 0.0], [20.0, 2500.0, 0.0], [20.0, 100.0, 0.0]];
        tunnel.rounds_us = vec![
            [120.0, 300.0, 0.0],
            [120.0, 450.0, 0.0],
            [120.0, 420.0, 0.0],
        ];
        let mut rows = vec![base, tunnel];
        add_differences(&mut rows);
        let judged = judge_p99(&rows[1], &rows).unwrap();
        assert!(judged.starts_with("not judged"), "{judged}");
        assert!(judged.contains("(-500.0 µs"), "{judged}");
        // Round differences +210, -2050, +320: their median, not the pooled figure.
        assert!(
            judged.contains("3 rounds' own differences +210.0 µs"),
            "{judged}"
        );
        assert!(verdict(&rows).unwrap().contains("not judged"));
        assert_eq!(judge_p99(&rows[0], &rows), None, "a baseline is not judged");
    }

    #[test]
    fn probes_carry_their_sequence_and_send_time() {
        let mut packet = vec![0u8; 64];
        packet[..4].copy_from_slice(&PROBE_MAGIC.to_be_bytes());
        packet[4..12].copy_from_slice(&7u64.to_be_bytes());
        packet[12..20].copy_from_slice(&123_456u64.to_be_bytes());
        assert_eq!(parse_probe(&packet), Some((7, 123_456)));
        assert_eq!(parse_probe(&packet[..19]), None);
        packet[0] ^= 1;
        assert_eq!(
            parse_probe(&packet),
            None,
            "background packets are not probes"
        );
    }
}
