//! Counters of a worker and of the engine: packets, bytes, drops by reason, time splits.

use std::ops::AddAssign;

use crate::io::IoStats;

/// One worker's counters. Plain integers: only the worker writes them, and the control
/// thread gets a copy on request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerStats {
    /// Inner packets sealed (or framed, in plain mode) and handed to the socket.
    pub tx_packets: u64,
    /// Inner bytes of those packets.
    pub tx_bytes: u64,
    /// Inner packets dropped because the peer had no usable transmit SA.
    pub tx_no_sa: u64,
    /// Inner packets dropped because sealing failed (SA exhausted or expired).
    pub tx_seal_failed: u64,
    /// Inner packets with no peer whose prefixes cover their destination.
    pub tx_no_route: u64,
    /// Inner packets to a service whose flow's bucket has no feasible site, or whose site
    /// has no usable transmit SA: dropped, never sent to another site or in clear.
    pub tx_no_site: u64,
    /// Datagrams received (GRO super-datagrams counted per segment).
    pub rx_packets: u64,
    /// Bytes of those datagrams.
    pub rx_bytes: u64,
    /// Inner packets verified, decrypted and delivered.
    pub rx_delivered: u64,
    /// Inner bytes delivered.
    pub rx_delivered_bytes: u64,
    /// Drops: not a PSP packet (too short, bad header).
    pub rx_malformed: u64,
    /// Drops: from an address that is no peer, for an SPI with no SA.
    pub rx_unknown_peer: u64,
    /// Drops: an SPI with no SA that could not be derived or never authenticated.
    pub rx_unknown_spi: u64,
    /// Of `rx_unknown_spi`: refused because the derivation budget was spent.
    pub rx_derive_throttled: u64,
    /// Drops: the ICV did not verify.
    pub rx_auth_failed: u64,
    /// Drops: the IV was already accepted.
    pub rx_replayed: u64,
    /// Drops: the IV is older than the replay window.
    pub rx_too_old: u64,
    /// Drops: IV 0 or beyond the SA's hard limit.
    pub rx_iv_out_of_range: u64,
    /// Drops: a packet for an SA of a revoked peer, or the inner packet could not be delivered.
    pub rx_rejected: u64,
    /// Packets read from the TUN queue (a TCP or UDP super-packet counts once).
    pub tun_reads: u64,
    /// Packets written to the TUN queue (a coalesced super-packet counts once):
    /// `rx_delivered / tun_writes` is how many inner packets a write carried on average.
    pub tun_writes: u64,
    /// Nanoseconds spent building transmit batches (generate or read, then seal).
    pub ns_tx_build: u64,
    /// Nanoseconds spent in send system calls.
    pub ns_tx_send: u64,
    /// Nanoseconds spent opening and delivering received packets (estimated from a sample).
    pub ns_rx_process: u64,
    /// Nanoseconds spent in receive calls, processing excluded.
    pub ns_rx_io: u64,
    /// CPU time the worker thread has used, user and kernel: per packet, the cost of its
    /// work whatever else the machine runs (wall-clock rates are not, on a shared machine).
    pub ns_cpu: u64,
    /// 1 when the worker could not be pinned to its configured core (it runs wherever the
    /// scheduler puts it); 0 when pinned or not asked to pin.
    pub pin_failed: u64,
    /// What the I/O backend counted.
    pub io: IoStats,
}

impl WorkerStats {
    /// Every receive-side drop.
    pub fn rx_dropped(&self) -> u64 {
        self.rx_malformed
            + self.rx_unknown_peer
            + self.rx_unknown_spi
            + self.rx_auth_failed
            + self.rx_replayed
            + self.rx_too_old
            + self.rx_iv_out_of_range
            + self.rx_rejected
    }

    /// Every transmit-side drop.
    pub fn tx_dropped(&self) -> u64 {
        self.tx_no_sa + self.tx_seal_failed + self.tx_no_route + self.tx_no_site
    }
}

impl AddAssign for IoStats {
    fn add_assign(&mut self, o: Self) {
        self.send_calls += o.send_calls;
        self.gso_sends += o.gso_sends;
        self.send_errors += o.send_errors;
        self.recv_calls += o.recv_calls;
        self.recv_datagrams += o.recv_datagrams;
        self.recv_no_buffers += o.recv_no_buffers;
        self.recv_rearms += o.recv_rearms;
    }
}

impl AddAssign for WorkerStats {
    fn add_assign(&mut self, o: Self) {
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.tx_no_sa += o.tx_no_sa;
        self.tx_seal_failed += o.tx_seal_failed;
        self.tx_no_route += o.tx_no_route;
        self.tx_no_site += o.tx_no_site;
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.rx_delivered += o.rx_delivered;
        self.rx_delivered_bytes += o.rx_delivered_bytes;
        self.rx_malformed += o.rx_malformed;
        self.rx_unknown_peer += o.rx_unknown_peer;
        self.rx_unknown_spi += o.rx_unknown_spi;
        self.rx_derive_throttled += o.rx_derive_throttled;
        self.rx_auth_failed += o.rx_auth_failed;
        self.rx_replayed += o.rx_replayed;
        self.rx_too_old += o.rx_too_old;
        self.rx_iv_out_of_range += o.rx_iv_out_of_range;
        self.rx_rejected += o.rx_rejected;
        self.tun_reads += o.tun_reads;
        self.tun_writes += o.tun_writes;
        self.ns_tx_build += o.ns_tx_build;
        self.ns_tx_send += o.ns_tx_send;
        self.ns_cpu += o.ns_cpu;
        self.ns_rx_process += o.ns_rx_process;
        self.ns_rx_io += o.ns_rx_io;
        self.pin_failed += o.pin_failed;
        self.io += o.io;
    }
}

/// The engine's counters: per worker and summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    /// Each worker's counters, in worker order.
    pub workers: Vec<WorkerStats>,
}

impl EngineStats {
    /// All workers summed.
    pub fn total(&self) -> WorkerStats {
        let mut total = WorkerStats::default();
        for w in &self.workers {
            total += *w;
        }
        total
    }
}

/// One SA's packet counts on the worker that holds it; never key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SaCounters {
    /// The SA's SPI.
    pub spi: crate::wire::Spi,
    /// Whether this worker seals with it (else it opens with it).
    pub transmit: bool,
    /// The peer at the other end.
    pub peer: crate::route::PeerId,
    /// The worker.
    pub worker: usize,
    /// Packets sealed (transmit) or verified and delivered (receive).
    pub packets: u64,
    /// Receive only: packets refused (replayed, too old, failed ICV, IV out of range,
    /// malformed).
    pub refused: u64,
    /// The packet count at which the SA ends (its hard limit).
    pub hard_packets: u64,
}
