//! One worker: its socket and ring, its SAs, its source and egress, its counters. Nothing
//! here is shared with another worker, and nothing on the packet path locks or allocates.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::rx_sas::{RxRefusal, RxSaTable};
use super::segment::{Coalescer, Push, Segmenter, VnetHeader, VNET_HDR_LEN};
use super::traffic::{Sink, Source};
use super::{Control, Event, PeerConfig, PeerId, Protection, RouteTable, SaCounters, WorkerStats};
use crate::crypto::Backend;
use crate::error::{Error, Result};
use crate::io::tun::TunQueue;
use crate::io::{DatagramIo, IoKind, TxBatch};
use crate::psp::PSP_OVERHEAD;
use crate::route::{Route, RouteCache};
use crate::sa::{SaLimits, Spi, TxSa, TxSaState};
use crate::wire::{InnerPacket, PspHeader, PspRepr, PSP_BASE_HEADER_LEN};
use std::os::fd::OwnedFd;

/// One received datagram in this many is timed for the receive-path time split.
const RX_TIMING_SAMPLE: u32 = 16;
/// How often SA ages, derivation budgets and the like are looked at.
const TICK: Duration = Duration::from_millis(100);
/// How long an idle worker blocks in the kernel before it looks at its control channel.
const IDLE_WAIT: Duration = Duration::from_millis(2);
/// Receive calls per loop turn at most when there is nothing to send; with something to
/// send, one, so both directions of a worker get alternate turns.
const RECV_ROUNDS: usize = 8;
/// The largest inner packet read from TUN.
const TUN_MTU_MAX: usize = VNET_HDR_LEN + 65_535;
/// TUN reads per transmit batch at most.
const TUN_READS_PER_BATCH: usize = 256;
/// Source packets dropped for want of a site per transmit batch at most, so a source whose
/// every flow has none still lets the worker turn to its receive side.
const NO_SITE_DROPS_PER_BATCH: u64 = 256;

/// Where a worker's received inner packets go.
pub(super) enum WorkerEgress {
    Discard,
    Sink(Box<dyn Sink>),
    Tun(TunQueue),
}

/// Everything a worker starts with; moved into its thread.
pub(super) struct WorkerSetup {
    pub index: usize,
    pub core: Option<usize>,
    pub io: (IoKind, OwnedFd, OwnedFd),
    pub control: Receiver<Control>,
    pub events: Sender<Event>,
    pub protection: Protection,
    pub crypto: Backend,
    pub limits: SaLimits,
    pub peers: Vec<PeerConfig>,
    pub max_rx_sas: usize,
    pub batch_sends: usize,
    pub gso_segments: usize,
    pub io_sizing: crate::io::IoSizing,
    pub source: Option<Box<dyn Source>>,
    pub egress: WorkerEgress,
}

struct Peer {
    config: PeerConfig,
    tx: Option<TxSa>,
    rekey_reported: bool,
}

/// The worker's state apart from its I/O backend, so the receive closure can borrow it
/// while the backend is borrowed too.
struct State {
    index: usize,
    protection: Protection,
    peers: Vec<Peer>,
    /// Shared read-only with the other workers; replaced whole, never changed in place.
    routes: Arc<RouteTable>,
    /// This worker's recent destinations' results from `routes`; cleared when it is replaced.
    route_cache: RouteCache,
    rx_sas: RxSaTable,
    source: Option<Box<dyn Source>>,
    source_active: bool,
    /// Where the source's last packet went: its next one is built for there before it is
    /// routed, and moved only when the route says otherwise.
    source_endpoint: SocketAddr,
    egress: WorkerEgress,
    tun_buf: Vec<u8>,
    coalescer: Option<Coalescer>,
    events: Sender<Event>,
    stats: WorkerStats,
}

/// Runs a worker until it is told to shut down; returns its final counters.
/// `ready` learns whether the I/O backend could be set up before any packet moves.
pub(super) fn run(setup: WorkerSetup, ready: Sender<Result<()>>) -> Result<WorkerStats> {
    // Pinning is best effort: an unavailable core leaves the thread to the scheduler, but
    // says so (counted in `pin_failed` and reported once) rather than running unpinned
    // unnoticed while the operator believes otherwise.
    let pin_failed = match setup.core {
        Some(core) if !pin_to(core) => {
            eprintln!(
                "cpclink: worker {} could not be pinned to core {core}; it runs unpinned",
                setup.index
            );
            true
        }
        _ => false,
    };
    let WorkerSetup {
        index,
        io: (io_kind, socket, sender),
        control,
        events,
        protection,
        crypto,
        limits,
        peers,
        max_rx_sas,
        batch_sends,
        gso_segments,
        io_sizing,
        source,
        egress,
        ..
    } = setup;
    let mut io = match crate::io::open(io_kind, socket, sender, io_sizing) {
        Ok(io) => {
            let _ = ready.send(Ok(()));
            io
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let mut state = State {
        index,
        protection,
        peers: peers
            .into_iter()
            .map(|config| Peer {
                config,
                tx: None,
                rekey_reported: false,
            })
            .collect(),
        routes: Arc::new(RouteTable::empty()),
        route_cache: RouteCache::default(),
        rx_sas: RxSaTable::new(max_rx_sas, crypto, limits),
        source,
        source_active: true,
        source_endpoint: SocketAddr::from(([0, 0, 0, 0], 0)),
        tun_buf: if matches!(egress, WorkerEgress::Tun(_)) {
            vec![0u8; TUN_MTU_MAX]
        } else {
            Vec::new()
        },
        coalescer: match &egress {
            WorkerEgress::Tun(q) if q.has_vnet_header() => Some(Coalescer::new(q.has_uso())),
            _ => None,
        },
        egress,
        events,
        stats: WorkerStats {
            pin_failed: u64::from(pin_failed),
            ..WorkerStats::default()
        },
    };
    if let WorkerEgress::Tun(queue) = &state.egress {
        io.watch(queue.raw_fd())?;
    }
    let mut batch = TxBatch::new(batch_sends, gso_segments);
    let mut next_tick = Instant::now() + TICK;
    loop {
        loop {
            match control.try_recv() {
                Ok(Control::Shutdown) | Err(TryRecvError::Disconnected) => {
                    return Ok(state.final_stats(io.as_ref()));
                }
                Ok(message) => state.handle(message, io.as_ref()),
                Err(TryRecvError::Empty) => break,
            }
        }

        let started = Instant::now();
        state.build_batch(&mut batch, started);
        let sending = !batch.is_empty();
        let built = Instant::now();
        if sending {
            io.send(&mut batch)?;
        }
        let sent = Instant::now();
        state.stats.ns_tx_build += (built - started).as_nanos() as u64;
        state.stats.ns_tx_send += (sent - built).as_nanos() as u64;

        // With nothing to send, block in the kernel until a datagram arrives, the TUN queue
        // becomes readable (the backend watches it) or the control channel is due a look.
        let mut wait = (!sending).then(|| state.idle_wait(built));
        let mut process_ns = 0u64;
        let mut datagrams = 0u32;
        let rounds = if sending { 1 } else { RECV_ROUNDS };
        for _ in 0..rounds {
            let n = io.recv(wait, &mut |buf, segment, src| {
                // Two clock reads per datagram would cost as much as a tenth of its
                // processing; timing one datagram in RX_TIMING_SAMPLE estimates the split.
                if datagrams % RX_TIMING_SAMPLE == 0 {
                    let t = Instant::now();
                    state.on_datagram(buf, segment, src);
                    process_ns += t.elapsed().as_nanos() as u64 * u64::from(RX_TIMING_SAMPLE);
                } else {
                    state.on_datagram(buf, segment, src);
                }
                datagrams = datagrams.wrapping_add(1);
            })?;
            state.flush_tun();
            wait = None;
            if n == 0 {
                break;
            }
        }
        let received = Instant::now();
        state.stats.ns_rx_process += process_ns;
        state.stats.ns_rx_io += ((received - sent).as_nanos() as u64).saturating_sub(process_ns);

        if received >= next_tick {
            next_tick = received + TICK;
            state.tick(received);
        }
    }
}

/// Pins the calling thread to `core`; false when the core does not exist or is not allowed.
fn pin_to(core: usize) -> bool {
    // The affinity mask holds CPU_SETSIZE (1024) cores: a larger number cannot be set at all
    // (and would index past the mask), so it is a failed pin, not a call.
    const CPU_SETSIZE: usize = 1024;
    core < CPU_SETSIZE && core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

impl State {
    fn sa_counters(&self) -> Vec<SaCounters> {
        let transmit = self.peers.iter().enumerate().filter_map(|(i, p)| {
            p.tx.as_ref().map(|sa| SaCounters {
                spi: sa.spi(),
                transmit: true,
                peer: PeerId(i as u32),
                worker: self.index,
                packets: sa.sealed(),
                refused: 0,
                hard_packets: sa.limits().hard_packets,
            })
        });
        let receive = self.rx_sas.counters().map(|(sa, peer)| {
            let s = sa.stats();
            SaCounters {
                spi: sa.spi(),
                transmit: false,
                peer,
                worker: self.index,
                packets: s.accepted,
                refused: s.replayed + s.too_old + s.auth_failed + s.iv_out_of_range + s.malformed,
                hard_packets: sa.hard_limit(),
            }
        });
        transmit.chain(receive).collect()
    }

    fn final_stats(&self, io: &dyn DatagramIo) -> WorkerStats {
        let mut stats = self.stats;
        stats.io = io.stats();
        stats.ns_cpu = crate::io::thread_cpu_time().as_nanos() as u64;
        stats
    }

    fn handle(&mut self, message: Control, io: &dyn DatagramIo) {
        match message {
            Control::InstallTxSa { peer, sa } => {
                if let Some(p) = self.peers.get_mut(peer.0 as usize) {
                    p.tx = Some(*sa);
                    p.rekey_reported = false;
                }
            }
            Control::SetPeer { peer, config } => {
                let index = peer.0 as usize;
                if index >= self.peers.len() {
                    // Growing the peer list is a control-path allocation, never a packet-path one.
                    self.peers.resize_with(index + 1, || Peer {
                        config: PeerConfig {
                            endpoint: SocketAddr::from(([0, 0, 0, 0], 0)),
                        },
                        tx: None,
                        rekey_reported: false,
                    });
                }
                self.peers[index].config = config;
            }
            // The old table is freed here, off the packet path, when its last worker lets go.
            Control::SetRoutes(table) => {
                self.routes = table;
                self.route_cache.clear();
            }
            Control::InstallRxSa { peer, sa } => self.rx_sas.install(peer, *sa),
            Control::SetRxKeySource(source) => self.rx_sas.set_source(source),
            Control::RetireRxSa(spi) => {
                self.rx_sas.retire(spi);
            }
            Control::RevokePeer(peer) => {
                self.rx_sas.revoke(peer);
                if let Some(p) = self.peers.get_mut(peer.0 as usize) {
                    p.tx = None;
                }
            }
            Control::SetSourceActive(active) => self.source_active = active,
            Control::Snapshot(reply) => {
                let _ = reply.send(self.final_stats(io));
            }
            Control::SaCounters(reply) => {
                let _ = reply.send(self.sa_counters());
            }
            Control::Shutdown => {}
        }
    }

    fn tick(&mut self, now: Instant) {
        self.rx_sas.tick();
        for (i, peer) in self.peers.iter_mut().enumerate() {
            let Some(sa) = peer.tx.as_mut() else { continue };
            let event = match sa.state(now) {
                TxSaState::Fresh => None,
                TxSaState::RekeyDue if !peer.rekey_reported => {
                    peer.rekey_reported = true;
                    Some(Event::RekeyDue {
                        worker: self.index,
                        peer: PeerId(i as u32),
                    })
                }
                TxSaState::RekeyDue => None,
                TxSaState::Exhausted => {
                    peer.tx = None;
                    Some(Event::SaExhausted {
                        worker: self.index,
                        peer: PeerId(i as u32),
                    })
                }
            };
            if let Some(event) = event {
                // A full event queue means the control thread is behind; the state is
                // reported again at the next tick only for exhaustion, which matters most.
                let _ = self.events.try_send(event);
            }
        }
    }

    /// How long to block when nothing was sent: the usual idle wait, or less when the
    /// paced source may send again sooner.
    fn idle_wait(&self, now: Instant) -> Duration {
        match &self.source {
            Some(source) if self.source_active => match source.until_next(now) {
                // Allowed to send but did not (no route, no SA): nothing to hurry for.
                None | Some(Duration::ZERO) => IDLE_WAIT,
                Some(next) => next.min(IDLE_WAIT),
            },
            _ => IDLE_WAIT,
        }
    }

    fn build_batch(&mut self, batch: &mut TxBatch, now: Instant) {
        if self.source.is_some() {
            self.build_from_source(batch, now);
        } else if matches!(self.egress, WorkerEgress::Tun(_)) {
            self.build_from_tun(batch);
        }
    }

    /// Fills the batch from the source, routing every packet by its inner destination as
    /// TUN's are. A packet that cannot go yet (no route, peer or SA) goes back to the
    /// source and ends the batch: the source waits, it does not lose packets. A service's
    /// packet whose site is missing (no bucket peer, or one without an SA) is dropped and
    /// counted in `tx_no_site`, as TUN's would be: waiting would stall every other flow.
    fn build_from_source(&mut self, batch: &mut TxBatch, now: Instant) {
        let Some(source) = self.source.as_mut() else {
            return;
        };
        if !self.source_active {
            return;
        }
        let allowance = source.allowance(now);
        let mut budget = allowance;
        let mut no_site = 0;
        // Plain frames carry an SPI too, so the receiver's steering treats them alike.
        let plain_spi = Spi(0x4000_0000 | self.index as u32);
        while budget > 0 && no_site < NO_SITE_DROPS_PER_BATCH {
            let inner_len = source.next_len();
            if inner_len == 0 {
                break;
            }
            let framed = inner_len + PSP_OVERHEAD;
            let inner = PSP_BASE_HEADER_LEN..PSP_BASE_HEADER_LEN + inner_len;
            let Some(slot) = batch.append(self.source_endpoint, framed) else {
                break;
            };
            source.fill(&mut slot[inner.clone()]);
            let packet = InnerPacket::new_checked(&slot[inner]);
            let next_header = packet.as_ref().map_or(4, InnerPacket::psp_next_header);
            let route = packet.map_or(Route::Unrouted, |p| {
                self.routes.route_cached(&p, &mut self.route_cache)
            });
            let protection = self.protection;
            let routed = route
                .peer()
                .and_then(|p| Some((p, self.peers.get_mut(p.0 as usize)?)))
                .filter(|(_, peer)| match protection {
                    Protection::Encrypted => peer.tx.is_some(),
                    // A placeholder peer (not configured yet) has port 0: nowhere to send to.
                    Protection::PlainBaseline => peer.config.endpoint.port() != 0,
                });
            let Some((peer_id, peer)) = routed else {
                batch.unappend(framed);
                if route.is_service() {
                    // Taken from the source and lost: never sent elsewhere, never in clear.
                    self.stats.tx_no_site += 1;
                    no_site += 1;
                    budget -= 1;
                    continue;
                }
                source.unfill();
                break;
            };
            let Some(slot) = batch.redirect_last(framed, peer.config.endpoint) else {
                batch.unappend(framed);
                source.unfill();
                break;
            };
            self.source_endpoint = peer.config.endpoint;
            let sealed = match (self.protection, peer.tx.as_mut()) {
                (Protection::Encrypted, Some(sa)) => sa.seal(next_header, 0, slot).is_ok(),
                (Protection::Encrypted, None) => false,
                (Protection::PlainBaseline, _) => plain_frame(plain_spi, slot),
            };
            if !sealed {
                batch.unappend(framed);
                source.unfill();
                self.stats.tx_seal_failed += 1;
                peer.tx = None;
                let _ = self.events.try_send(Event::SaExhausted {
                    worker: self.index,
                    peer: peer_id,
                });
                break;
            }
            budget -= 1;
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += inner_len as u64;
        }
        source.spend(allowance - budget);
    }

    fn build_from_tun(&mut self, batch: &mut TxBatch) {
        let WorkerEgress::Tun(queue) = &mut self.egress else {
            return;
        };
        let vnet = queue.has_vnet_header();
        let mut reads = 0;
        // A 64 KiB super-packet needs at most three sends (two full, one shorter tail).
        while batch.free_sends() >= 3 && reads < TUN_READS_PER_BATCH {
            let len = match queue.read(&mut self.tun_buf) {
                Ok(Some(len)) => len,
                Ok(None) | Err(_) => break,
            };
            reads += 1;
            self.stats.tun_reads += 1;
            let (header, packet) = if vnet {
                match VnetHeader::parse(&self.tun_buf[..len]) {
                    Ok(h) => (h, &self.tun_buf[VNET_HDR_LEN..len]),
                    Err(_) => {
                        self.stats.tx_no_route += 1;
                        continue;
                    }
                }
            } else {
                (VnetHeader::default(), &self.tun_buf[..len])
            };
            let (Ok(inner), Ok(segments)) = (
                InnerPacket::new_checked(packet),
                Segmenter::new(header, packet),
            ) else {
                self.stats.tx_no_route += 1;
                continue;
            };
            let next_header = inner.psp_next_header();
            let route = self.routes.route_cached(&inner, &mut self.route_cache);
            let service = route.is_service();
            // A route to a peer this worker has not heard of yet routes nowhere; a service's
            // bucket peer unknown here is a site this worker cannot reach.
            let Some(peer) = route.peer().and_then(|p| self.peers.get_mut(p.0 as usize)) else {
                if service {
                    self.stats.tx_no_site += segments.count() as u64;
                } else {
                    self.stats.tx_no_route += segments.count() as u64;
                }
                continue;
            };
            let Some(sa) = peer.tx.as_mut() else {
                // Never plaintext: no SA, no packet; a service's flow never goes elsewhere.
                if service {
                    self.stats.tx_no_site += segments.count() as u64;
                } else {
                    self.stats.tx_no_sa += segments.count() as u64;
                }
                continue;
            };
            for i in 0..segments.count() {
                let inner_len = segments.len(i);
                let framed = inner_len + PSP_OVERHEAD;
                let Some(slot) = batch.append(peer.config.endpoint, framed) else {
                    self.stats.tx_seal_failed += 1;
                    continue;
                };
                segments.write(
                    i,
                    &mut slot[PSP_BASE_HEADER_LEN..PSP_BASE_HEADER_LEN + inner_len],
                );
                if sa.seal(next_header, 0, slot).is_ok() {
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += inner_len as u64;
                } else {
                    batch.unappend(framed);
                    self.stats.tx_seal_failed += 1;
                }
            }
        }
    }

    #[inline]
    fn on_datagram(&mut self, buf: &mut [u8], segment: usize, src: SocketAddr) {
        for packet in buf.chunks_mut(segment) {
            self.on_packet(packet, src);
        }
    }

    /// Writes the super-packet being coalesced, if any. Called after every receive call, so
    /// a super-packet grows across all the datagrams that were ready together and never
    /// waits for one that was not.
    fn flush_tun(&mut self) {
        if let (WorkerEgress::Tun(queue), Some(coalescer)) = (&mut self.egress, &mut self.coalescer)
        {
            flush(queue, coalescer, &mut self.stats);
        }
    }

    #[inline]
    fn on_packet(&mut self, packet: &mut [u8], src: SocketAddr) {
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += packet.len() as u64;
        let range = match self.protection {
            Protection::PlainBaseline => {
                if PspHeader::new_checked(&*packet).is_err() {
                    self.stats.rx_malformed += 1;
                    return;
                }
                PSP_BASE_HEADER_LEN..packet.len() - PSP_OVERHEAD + PSP_BASE_HEADER_LEN
            }
            Protection::Encrypted => {
                let spi = match PspHeader::new_checked(&*packet) {
                    Ok(h) => h.spi(),
                    Err(_) => {
                        self.stats.rx_malformed += 1;
                        return;
                    }
                };
                let peers = &self.peers;
                let peer_of = |ip: IpAddr| {
                    peers
                        .iter()
                        .position(|p| p.config.endpoint.ip() == ip)
                        .map(|i| PeerId(i as u32))
                };
                match self.rx_sas.open(spi, src.ip(), packet, peer_of) {
                    Ok((opened, _peer)) => opened.payload,
                    Err(refusal) => {
                        self.count_refusal(refusal);
                        return;
                    }
                }
            }
        };
        self.stats.rx_delivered += 1;
        self.stats.rx_delivered_bytes += range.len() as u64;
        match &mut self.egress {
            WorkerEgress::Discard => {}
            WorkerEgress::Sink(sink) => sink.deliver(&packet[range]),
            WorkerEgress::Tun(queue) => {
                let stats = &mut self.stats;
                if let Some(coalescer) = self.coalescer.as_mut() {
                    match coalescer.push(&packet[range.clone()]) {
                        Push::Merged => return,
                        Push::TakeFirst => {
                            flush(queue, coalescer, stats);
                            if coalescer.push(&packet[range.clone()]) == Push::Merged {
                                return;
                            }
                        }
                        Push::Alone => flush(queue, coalescer, stats),
                    }
                }
                let written = if queue.has_vnet_header() {
                    // The PSP header in front of the inner packet is spent: its last bytes
                    // become the virtio-net header (no offload; checksums are complete).
                    let start = range.start - VNET_HDR_LEN;
                    packet[start..range.start].fill(0);
                    queue.write(&packet[start..range.end])
                } else {
                    queue.write(&packet[range])
                };
                count_write(written.is_ok(), stats);
            }
        }
    }

    fn count_refusal(&mut self, refusal: RxRefusal) {
        let s = &mut self.stats;
        match refusal {
            RxRefusal::UnknownPeer => s.rx_unknown_peer += 1,
            RxRefusal::UnknownSpi { throttled } => {
                s.rx_unknown_spi += 1;
                s.rx_derive_throttled += u64::from(throttled);
            }
            RxRefusal::Revoked => s.rx_rejected += 1,
            RxRefusal::Sa(Error::AuthenticationFailed) => s.rx_auth_failed += 1,
            RxRefusal::Sa(Error::Replayed(_)) => s.rx_replayed += 1,
            RxRefusal::Sa(Error::TooOld { .. }) => s.rx_too_old += 1,
            RxRefusal::Sa(Error::IvOutOfRange { .. }) => s.rx_iv_out_of_range += 1,
            RxRefusal::Sa(_) => s.rx_malformed += 1,
        }
    }
}

/// Writes what the coalescer holds to the TUN queue.
fn flush(queue: &mut TunQueue, coalescer: &mut Coalescer, stats: &mut WorkerStats) {
    if let Some(bytes) = coalescer.take() {
        count_write(queue.write(bytes).is_ok(), stats);
    }
}

/// Counts a TUN write, or the packet it lost.
fn count_write(written: bool, stats: &mut WorkerStats) {
    if written {
        stats.tun_writes += 1;
    } else {
        stats.rx_rejected += 1;
    }
}

/// Writes the PSP header of a plain baseline frame (no AEAD; the ICV bytes stay as they are).
fn plain_frame(spi: Spi, slot: &mut [u8]) -> bool {
    PspRepr {
        next_header: 4,
        crypt_offset: 0,
        sample: false,
        drop_after_sampling: false,
        suite: crate::crypto::Suite::AesGcm256,
        spi,
        iv: 1,
        vc: None,
    }
    .emit(slot)
    .is_ok()
}
