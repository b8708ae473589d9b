//! The thread-per-core engine: one pinned worker per core, each with its own socket, ring,
//! buffers, SAs and counters, driven by control messages from one control thread.
//!
//! The control interface speaks in SA events (install, retire, revoke), so a key plane can
//! drive it; static lab keys are just one source of those events (see [`lab`]).

pub mod batching;
pub mod lab;
mod rx_sas;
pub mod segment;
pub mod stages;
pub mod stats;
pub mod traffic;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

pub use batching::{BatchDeadline, BatchDecision, BatchPolicy, BatchingMode};
pub use rx_sas::{RxKeySource, RxRefusal, RxSaTable};
pub use stages::{Stage, StageSampler, StageSummary, StageTimes};
pub use stats::{EngineStats, SaCounters, WorkerStats};
pub use traffic::{Sink, SinkFactory, Source, SourceFactory};

use crate::crypto::{Backend, SaKey, Suite};
use crate::error::{Error, Result};
use crate::io::{self, IoKind, IoSizing};
use crate::sa::{RxSa, SaLimits, Spi, TxSa};

pub use crate::route::{PeerId, RouteTable};

/// Whether packets are sealed. Plain exists only as the benchmark's baseline: the same
/// framing, sizes and batching with the AEAD left out. Appliances always encrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protection {
    /// PSP: every packet sealed; no SA means the packet is dropped.
    #[default]
    Encrypted,
    /// Benchmark baseline only: PSP framing without the AEAD.
    PlainBaseline,
}

/// A peer as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Where its appliance listens.
    pub endpoint: SocketAddr,
}

/// Where received inner packets go.
pub enum Egress {
    /// Dropped after counting (a sender-only engine).
    Discard,
    /// Handed to a sink per worker (a benchmark's or a test's).
    Sink(SinkFactory),
    /// Written to the TUN queues, one per worker.
    Tun(Vec<io::tun::TunQueue>),
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Egress::Discard => f.write_str("Discard"),
            Egress::Sink(_) => f.write_str("Sink"),
            Egress::Tun(queues) => f.debug_tuple("Tun").field(queues).finish(),
        }
    }
}

/// How an engine runs.
pub struct EngineConfig {
    /// The UDP address every worker's receive socket binds (one SO_REUSEPORT group).
    pub listen: SocketAddr,
    /// Outer UDP source ports: worker `i` sends from `base + i`; `None`: from a port the
    /// kernel picks for it. Either way each worker has a port of its own, so ECMP and the
    /// peer's receive hashing see one 5-tuple per worker and every flow keeps one.
    pub tx_port_base: Option<u16>,
    /// Workers (threads), at least one.
    pub workers: usize,
    /// Cores to pin worker i to (`cores[i % len]`); empty: not pinned.
    pub cores: Vec<usize>,
    /// The I/O backend.
    pub io: IoKind,
    /// Encrypt (always, for appliances) or the plain benchmark baseline.
    pub protection: Protection,
    /// The AEAD library.
    pub crypto: Backend,
    /// SA lifetimes.
    pub limits: SaLimits,
    /// The peers; [`PeerId`] indexes this list.
    pub peers: Vec<PeerConfig>,
    /// Receive SAs each worker holds at most.
    pub max_rx_sas: usize,
    /// GSO sends per transmit batch.
    pub batch_sends: usize,
    /// Datagrams per GSO send at most (1 turns segmentation off; at most 64).
    pub gso_segments: usize,
    /// io_uring submission queue and provided-buffer ring sizes.
    pub io_sizing: IoSizing,
    /// A source per worker besides TUN, if any (benchmarks, the demo, tests): its packets
    /// are routed by their inner destination like TUN's.
    pub source: Option<SourceFactory>,
    /// Where received packets go.
    pub egress: Egress,
    /// Time one packet in this many at every stage of its way through a worker (per
    /// direction; 0, the default: none, and nothing is timed).
    pub stage_sample_every: u32,
    /// Latency against batching: transmit batch policy and busy polling.
    pub batching: BatchingMode,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("listen", &self.listen)
            .field("tx_port_base", &self.tx_port_base)
            .field("workers", &self.workers)
            .field("cores", &self.cores)
            .field("io", &self.io)
            .field("protection", &self.protection)
            .field("crypto", &self.crypto)
            .field("peers", &self.peers)
            .field("source", &self.source.is_some())
            .field("egress", &self.egress)
            .finish_non_exhaustive()
    }
}

impl EngineConfig {
    /// A one-worker, encrypting, unpinned engine on `listen` with default limits.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            tx_port_base: None,
            workers: 1,
            cores: Vec::new(),
            io: IoKind::Auto,
            protection: Protection::Encrypted,
            crypto: Backend::AwsLc,
            limits: SaLimits::default(),
            peers: Vec::new(),
            max_rx_sas: 1024,
            batch_sends: 8,
            gso_segments: io::udp::MAX_GSO_SEGMENTS,
            io_sizing: IoSizing::default(),
            source: None,
            egress: Egress::Discard,
            stage_sample_every: 0,
            batching: BatchingMode::THROUGHPUT,
        }
    }
}

/// How SAs are keyed: suite, AEAD library and lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaProfile {
    /// The suite.
    pub suite: Suite,
    /// The AEAD library.
    pub crypto: Backend,
    /// Lifetimes.
    pub limits: SaLimits,
}

impl Default for SaProfile {
    fn default() -> Self {
        Self {
            suite: Suite::AesGcm256,
            crypto: Backend::AwsLc,
            limits: SaLimits::default(),
        }
    }
}

/// A message from the control thread to a worker.
#[derive(Debug)]
pub enum Control {
    /// Use this SA for everything this worker sends to `peer` (replacing the previous one).
    InstallTxSa {
        /// The receiving peer.
        peer: PeerId,
        /// The SA, keyed already (key expansion happens off the packet path).
        sa: Box<TxSa>,
    },
    /// Accept packets of this SA from `peer`.
    InstallRxSa {
        /// The sending peer.
        peer: PeerId,
        /// The SA, keyed already.
        sa: Box<RxSa>,
    },
    /// Adds a peer or changes one (its index is its [`PeerId`]; gaps are filled with
    /// placeholders that route nothing and send nowhere).
    SetPeer {
        /// The peer.
        peer: PeerId,
        /// Its endpoint.
        config: PeerConfig,
    },
    /// Route by this table from now on (replacing the previous one whole; the worker never
    /// sees a table half built).
    SetRoutes(Arc<RouteTable>),
    /// Derive SAs for SPIs that arrive without one from these master keys (or stop).
    SetRxKeySource(Option<RxKeySource>),
    /// Stop accepting packets of a receive SA; transmit SAs are left alone (SPIs a peer
    /// allocated for this appliance's transmit SAs may equal SPIs this appliance allocated).
    RetireRxSa(Spi),
    /// Forget every SA of a peer: nothing more is sent to it or accepted from it.
    RevokePeer(PeerId),
    /// Start or pause the source.
    SetSourceActive(bool),
    /// Reply with a copy of the counters, and of the stage times when sampling is on.
    Snapshot(Sender<(WorkerStats, Option<Box<StageTimes>>)>),
    /// Reply with every SA's packet counts.
    SaCounters(Sender<Vec<SaCounters>>),
    /// Time one packet in this many per stage from now on (0: stop timing); the samples
    /// taken so far are forgotten.
    SetStageSampling(u32),
    /// Batch and poll this way from now on.
    SetBatching(BatchingMode),
    /// Stop; the thread returns its final counters.
    Shutdown,
}

/// Something a worker tells the control thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The transmit SA to `peer` is due for replacement (make-before-break).
    RekeyDue {
        /// The worker whose SA it is.
        worker: usize,
        /// The peer.
        peer: PeerId,
    },
    /// The transmit SA to `peer` is exhausted; the worker drops packets for it until a new
    /// SA is installed.
    SaExhausted {
        /// The worker whose SA it is.
        worker: usize,
        /// The peer.
        peer: PeerId,
    },
}

/// A running engine: the control side's handle on its workers.
#[derive(Debug)]
pub struct Engine {
    local: SocketAddr,
    io: IoKind,
    controls: Vec<Sender<Control>>,
    threads: Vec<JoinHandle<Result<(WorkerStats, StageTimes)>>>,
    events: Receiver<Event>,
    /// The stage sampling the workers were last told, for operators who ask.
    stage_sample_every: AtomicU32,
}

impl Engine {
    /// Binds the sockets, sets up each worker's ring and starts the workers.
    pub fn start(config: EngineConfig) -> Result<Self> {
        if config.workers == 0 {
            return Err(Error::EngineConfig("workers must be at least 1".into()));
        }
        if !(1..=io::udp::MAX_GSO_SEGMENTS).contains(&config.gso_segments) {
            return Err(Error::EngineConfig(format!(
                "gso_segments {} is out of range (expected 1..={})",
                config.gso_segments,
                io::udp::MAX_GSO_SEGMENTS
            )));
        }
        if config.batch_sends == 0 {
            return Err(Error::EngineConfig("batch_sends must be at least 1".into()));
        }
        let batching = config.batching.checked()?;
        let io_sizing = config.io_sizing.checked()?;
        let (io_kind, fallback) = config.io.resolve()?;
        // io_uring has one send slot per submission entry but the receive's; sends beyond
        // them would be dropped on every batch.
        if io_kind == IoKind::IoUring && config.batch_sends >= io_sizing.ring_entries as usize {
            return Err(Error::EngineConfig(format!(
                "a transmit batch of {} sends does not fit an io_uring of {} entries (raise the entries above the batch)",
                config.batch_sends, io_sizing.ring_entries
            )));
        }
        if let Some(why) = fallback {
            eprintln!("cpclink: io_uring unavailable ({why}); using epoll");
        }
        let sockets = io::udp::bind_group(config.listen, config.workers)?;
        let senders = (0..config.workers)
            .map(|i| {
                let port = match config.tx_port_base {
                    None => 0,
                    Some(base) => u16::try_from(usize::from(base) + i)
                        .ok()
                        .filter(|_| base != 0)
                        .ok_or_else(|| {
                            Error::EngineConfig(format!(
                                "source ports {base}..{} for {} workers do not fit 1..=65535",
                                usize::from(base) + config.workers,
                                config.workers
                            ))
                        })?,
                };
                io::udp::bind_sender(SocketAddr::new(config.listen.ip(), port))
            })
            .collect::<Result<Vec<_>>>()?;
        let local = io::udp::local_addr(std::os::fd::AsRawFd::as_raw_fd(&sockets[0]))?;
        let (event_tx, events) = crossbeam_channel::bounded(1024);
        let mut egress_parts = match config.egress {
            Egress::Tun(queues) => {
                if queues.len() != config.workers {
                    return Err(Error::EngineConfig(format!(
                        "{} TUN queues for {} workers",
                        queues.len(),
                        config.workers
                    )));
                }
                queues
                    .into_iter()
                    .map(worker::WorkerEgress::Tun)
                    .collect::<Vec<_>>()
            }
            Egress::Sink(factory) => (0..config.workers)
                .map(|i| worker::WorkerEgress::Sink(factory(i, config.workers)))
                .collect(),
            Egress::Discard => (0..config.workers)
                .map(|_| worker::WorkerEgress::Discard)
                .collect(),
        };
        let mut controls = Vec::with_capacity(config.workers);
        let mut threads = Vec::with_capacity(config.workers);
        for (index, (socket, sender)) in sockets.into_iter().zip(senders).enumerate().rev() {
            let (control_tx, control_rx) = crossbeam_channel::unbounded();
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            let core = (!config.cores.is_empty()).then(|| config.cores[index % config.cores.len()]);
            let setup = worker::WorkerSetup {
                index,
                core,
                io: (io_kind, socket, sender),
                control: control_rx,
                events: event_tx.clone(),
                protection: config.protection,
                crypto: config.crypto,
                limits: config.limits,
                peers: config.peers.clone(),
                max_rx_sas: config.max_rx_sas,
                batch_sends: config.batch_sends,
                gso_segments: config.gso_segments,
                io_sizing,
                stage_sample_every: config.stage_sample_every,
                batching,
                source: config
                    .source
                    .as_ref()
                    .map(|make| make(index, config.workers)),
                egress: egress_parts.pop().unwrap_or(worker::WorkerEgress::Discard),
            };
            let thread = std::thread::Builder::new()
                .name(format!("cpclink-w{index}"))
                .spawn(move || {
                    // The ring is set up on the thread that uses it (single-issuer rings
                    // refuse submissions from any other).
                    let result = worker::run(setup, ready_tx);
                    if let Err(e) = &result {
                        eprintln!("cpclink: worker {index} stopped: {e}");
                    }
                    result
                })
                .map_err(|e| Error::Io {
                    what: "spawn worker",
                    reason: e.to_string(),
                })?;
            ready_rx.recv().map_err(|_| Error::WorkerGone(index))??;
            controls.push(control_tx);
            threads.push(thread);
        }
        controls.reverse();
        threads.reverse();
        Ok(Self {
            local,
            io: io_kind,
            controls,
            threads,
            events,
            stage_sample_every: AtomicU32::new(config.stage_sample_every),
        })
    }

    /// The address the workers listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The backend the workers use.
    pub fn io(&self) -> IoKind {
        self.io
    }

    /// Workers running.
    pub fn workers(&self) -> usize {
        self.controls.len()
    }

    /// Events from the workers (rekey due, SA exhausted).
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    fn send(&self, worker: usize, message: Control) -> Result<()> {
        self.controls
            .get(worker)
            .ok_or(Error::WorkerGone(worker))?
            .send(message)
            .map_err(|_| Error::WorkerGone(worker))
    }

    /// Sends a control message to every worker.
    pub fn broadcast(&self, make: impl Fn() -> Control) -> Result<()> {
        for worker in 0..self.controls.len() {
            self.send(worker, make())?;
        }
        Ok(())
    }

    /// Installs the transmit SA worker `worker` uses for `peer`.
    pub fn install_tx_sa(
        &self,
        worker: usize,
        peer: PeerId,
        spi: Spi,
        key: &SaKey,
        profile: SaProfile,
    ) -> Result<()> {
        let sa = TxSa::from_key(
            spi,
            profile.crypto,
            profile.suite,
            key,
            profile.limits,
            std::time::Instant::now(),
        )?;
        self.send(
            worker,
            Control::InstallTxSa {
                peer,
                sa: Box::new(sa),
            },
        )
    }

    /// The worker packets of `spi` arrive on (the reuseport group steers by SPI).
    pub fn rx_worker(&self, spi: Spi) -> usize {
        (spi.0 as usize) % self.controls.len()
    }

    /// Installs a receive SA on the worker its packets arrive on.
    pub fn install_rx_sa(
        &self,
        peer: PeerId,
        spi: Spi,
        key: &SaKey,
        profile: SaProfile,
    ) -> Result<()> {
        let cipher = profile.crypto.cipher(profile.suite, key.as_bytes())?;
        let sa = RxSa::new(spi, cipher, profile.limits);
        self.send(
            self.rx_worker(spi),
            Control::InstallRxSa {
                peer,
                sa: Box::new(sa),
            },
        )
    }

    /// Gives every worker the master keys to derive receive SAs from.
    pub fn set_rx_key_source(&self, source: Option<RxKeySource>) -> Result<()> {
        self.broadcast(|| Control::SetRxKeySource(source.clone()))
    }

    /// Adds or changes a peer on every worker.
    pub fn set_peer(&self, peer: PeerId, config: PeerConfig) -> Result<()> {
        self.broadcast(|| Control::SetPeer {
            peer,
            config: config.clone(),
        })
    }

    /// Gives every worker a new route table; until the first, nothing from TUN routes.
    pub fn set_routes(&self, table: Arc<RouteTable>) -> Result<()> {
        self.broadcast(|| Control::SetRoutes(Arc::clone(&table)))
    }

    /// Retires a receive SA on the worker its packets arrive on. Transmit SAs are never
    /// retired by SPI: the peer allocated their SPIs, from a space that may overlap this
    /// appliance's; a new `install_tx_sa` replaces one, `revoke_peer` drops them all.
    pub fn retire_rx_sa(&self, spi: Spi) -> Result<()> {
        self.send(self.rx_worker(spi), Control::RetireRxSa(spi))
    }

    /// Revokes a peer everywhere.
    pub fn revoke_peer(&self, peer: PeerId) -> Result<()> {
        self.broadcast(|| Control::RevokePeer(peer))
    }

    /// Starts or pauses the source on every worker.
    pub fn set_source_active(&self, active: bool) -> Result<()> {
        self.broadcast(|| Control::SetSourceActive(active))
    }

    /// Times one packet in `every` per stage on every worker from now on (0: stop); the
    /// samples taken so far are forgotten.
    pub fn set_stage_sampling(&self, every: u32) -> Result<()> {
        self.stage_sample_every.store(every, Ordering::Relaxed);
        self.broadcast(|| Control::SetStageSampling(every))
    }

    /// One packet in how many the workers time per stage (0: none), as last set.
    pub fn stage_sample_every(&self) -> u32 {
        self.stage_sample_every.load(Ordering::Relaxed)
    }

    /// Batches and polls this way on every worker from now on.
    pub fn set_batching(&self, mode: BatchingMode) -> Result<()> {
        let mode = mode.checked()?;
        self.broadcast(|| Control::SetBatching(mode))
    }

    /// A copy of every worker's counters (and stage times, where sampling is on).
    pub fn snapshot(&self) -> Result<EngineStats> {
        let mut stats = EngineStats::default();
        for (counters, stages) in self.ask_workers(Control::Snapshot)? {
            stats.workers.push(counters);
            stats.stages.push(stages.map(|s| *s).unwrap_or_default());
        }
        Ok(stats)
    }

    /// Every SA's packet counts, worker by worker.
    pub fn sa_counters(&self) -> Result<Vec<SaCounters>> {
        Ok(self
            .ask_workers(Control::SaCounters)?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Sends every worker the request `ask` makes around a reply channel and collects
    /// the replies in worker order.
    fn ask_workers<T>(&self, ask: impl Fn(Sender<T>) -> Control) -> Result<Vec<T>> {
        let mut replies = Vec::with_capacity(self.controls.len());
        for worker in 0..self.controls.len() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            self.send(worker, ask(tx))?;
            replies.push(rx);
        }
        let mut answers = Vec::with_capacity(replies.len());
        for (worker, reply) in replies.into_iter().enumerate() {
            answers.push(
                reply
                    .recv_timeout(Duration::from_secs(5))
                    .map_err(|_| Error::WorkerGone(worker))?,
            );
        }
        Ok(answers)
    }

    /// Stops every worker and returns their final counters.
    pub fn shutdown(mut self) -> Result<EngineStats> {
        for control in &self.controls {
            let _ = control.send(Control::Shutdown);
        }
        let mut stats = EngineStats::default();
        for (index, thread) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            let (counters, stages) = thread.join().map_err(|_| Error::WorkerGone(index))??;
            stats.workers.push(counters);
            stats.stages.push(stages);
        }
        Ok(stats)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for control in &self.controls {
            let _ = control.send(Control::Shutdown);
        }
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
    }
}
