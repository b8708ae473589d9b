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
use crate::wire::InnerPacket;

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
    pub(super) fn site(&self, packet: &InnerPacket<&[u8]>) -> Option<PeerId> {
        let bucket = bucket_of(packet.flow_hash(), self.buckets.len())?;
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

/// The bucket of `buckets` an inner packet's flow falls in ([`InnerPacket::flow_hash`]);
/// `None` for no IP packet or no bucket.
pub fn flow_bucket(packet: &[u8], buckets: usize) -> Option<usize> {
    let packet = InnerPacket::new_checked(packet).ok()?;
    bucket_of(packet.flow_hash(), buckets)
}

/// A flow hash reduced to one of `buckets` buckets.
#[inline]
fn bucket_of(mut h: u64, buckets: usize) -> Option<usize> {
    if buckets == 0 {
        return None;
    }
    // Every input bit reaches the high half the multiply-shift reduction reads.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    Some(((u128::from(h) * buckets as u128) >> 64) as usize)
}

#[cfg(test)]
mod tests;
