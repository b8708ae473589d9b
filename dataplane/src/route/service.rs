//! Services: anycast inner prefixes that several peer centres host. Each one has an
//! [`AffinityTable`] of buckets naming the peer for the flows hashing into them, so the
//! data plane keeps a flow on one site without per-flow state. Sans-IO.
//!
//! The controller owns the choice: it rebuilds the table off the packet path and swaps the
//! whole route table in. Workers only read the buckets and mark the ones they use in the
//! table's [`BucketActivity`], which the controller reads to tell busy buckets (whose
//! flows must stay where they are) from idle ones (free to follow a new choice). The
//! activity outlives the table: the controller builds the next table with the same `Arc`,
//! so a mark set just before a swap is still seen after it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::PeerId;

/// A service, by its position in the list given to
/// [`RouteTable::build_with_services`](super::RouteTable::build_with_services).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ServiceId(pub u16);

/// One service's affinity table: a fixed number of buckets, each naming the peer new and
/// established flows hashing into it go to (`None`: no feasible site → drop, count
/// `tx_no_site`).
#[derive(Debug, Clone)]
pub struct AffinityTable {
    buckets: Box<[Option<PeerId>]>,
    activity: Arc<BucketActivity>,
}

impl AffinityTable {
    /// A table of `peers.len()` buckets marking their use in `activity`, which should have
    /// as many (the route table refuses a table whose counts differ).
    pub fn new(peers: Vec<Option<PeerId>>, activity: Arc<BucketActivity>) -> Self {
        Self {
            buckets: peers.into_boxed_slice(),
            activity,
        }
    }

    /// Buckets in the table.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether the table has no bucket (no flow can be placed).
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The peer of bucket `bucket`; `None` for a bucket with no feasible site or past the end.
    #[inline]
    pub fn peer(&self, bucket: usize) -> Option<PeerId> {
        self.buckets.get(bucket).copied().flatten()
    }

    /// The activity flags the table marks, to carry into the table that replaces it.
    pub fn activity(&self) -> &Arc<BucketActivity> {
        &self.activity
    }

    /// The peer for `packet`'s flow, marking its bucket used; `None` when the bucket has
    /// no site or the packet is no IP packet.
    #[inline]
    pub(super) fn site(&self, packet: &[u8]) -> Option<PeerId> {
        let bucket = flow_bucket(packet, self.buckets.len())?;
        self.activity.touch(bucket);
        self.peer(bucket)
    }
}

/// Per-bucket "used since last sweep" flags shared by every worker and the controller.
///
/// One bit per bucket in 64-bit words. A worker reads the word and writes only when its bit
/// is clear, so a busy bucket costs a shared read, not a cache line bouncing between cores
/// at packet rate; the controller reads and clears them. Relaxed ordering throughout: a
/// mark that races a sweep lands either in this sweep or in the next, never nowhere.
#[derive(Debug)]
pub struct BucketActivity {
    words: Box<[AtomicU64]>,
    buckets: usize,
}

impl BucketActivity {
    /// Flags for `buckets` buckets, all clear.
    pub fn new(buckets: usize) -> Arc<Self> {
        Arc::new(Self {
            words: (0..buckets.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            buckets,
        })
    }

    /// Buckets tracked.
    pub fn len(&self) -> usize {
        self.buckets
    }

    /// Whether no bucket is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets == 0
    }

    /// Returns which buckets were used since the last call, clearing them.
    pub fn take(&self) -> Vec<bool> {
        let mut used = Vec::with_capacity(self.buckets);
        for word in self.words.iter() {
            // An idle word is left unwritten: sweeps do not pull lines from the workers.
            let bits = if word.load(Ordering::Relaxed) == 0 {
                0
            } else {
                word.swap(0, Ordering::Relaxed)
            };
            let remaining = (self.buckets - used.len()).min(64);
            used.extend((0..remaining).map(|bit| bits & (1 << bit) != 0));
        }
        used
    }

    /// Marks `bucket` used; a bucket past the end is ignored.
    #[inline]
    pub fn touch(&self, bucket: usize) {
        if bucket >= self.buckets {
            return;
        }
        let word = &self.words[bucket / 64];
        let bit = 1u64 << (bucket % 64);
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::Relaxed);
        }
    }
}

/// The flow hash (inner source, destination, protocol and, for TCP and UDP, both ports;
/// IPv4 and IPv6) reduced to one of `buckets` buckets. `None` for no IP packet or no bucket.
///
/// Ports are left out of every IPv4 fragment, the first too (the others carry none), so a
/// fragmented packet never lands on two sites; it may land apart from its flow's others.
/// Read straight from the header's bytes, a few 64-bit words each folded in with one
/// multiply: this runs for every packet to a service.
#[inline]
pub fn flow_bucket(packet: &[u8], buckets: usize) -> Option<usize> {
    if buckets == 0 {
        return None;
    }
    let mut h = flow_hash(packet)?;
    // Every input bit reaches the high half the multiply-shift reduction reads.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    Some(((u128::from(h) * buckets as u128) >> 64) as usize)
}

/// The 5-tuple of an IPv4 or IPv6 packet, hashed.
#[inline]
fn flow_hash(p: &[u8]) -> Option<u64> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(p.get(at..at + 8)?.try_into().ok()?))
    };
    let ports = |protocol: u8, l4: usize| -> u64 {
        let tuple = match (protocol, p.get(l4..l4 + 4)) {
            (PROTO_TCP | PROTO_UDP, Some(b)) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            _ => 0,
        };
        (u64::from(protocol) << 32) | u64::from(tuple)
    };
    let fold = |h: u64, w: u64| (h ^ w).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(31);
    let seed = 0x9e37_79b9_7f4a_7c15;
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < ihl {
                return None;
            }
            let fragment = u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0;
            let l4 = if fragment {
                ports(p[9], 0) & !0xffff_ffff
            } else {
                ports(p[9], ihl)
            };
            Some(fold(fold(seed, word(12)?), l4))
        }
        6 if p.len() >= 40 => {
            let h = [word(8)?, word(16)?, word(24)?, word(32)?]
                .into_iter()
                .fold(seed, fold);
            Some(fold(h, ports(p[6], 40)))
        }
        _ => None,
    }
}

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

#[cfg(test)]
mod tests;
