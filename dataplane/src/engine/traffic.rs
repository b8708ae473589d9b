//! Traffic that does not come from TUN or go to it: a [`Source`] of inner packets a worker
//! sends, and a [`Sink`] of the inner packets it delivers. Benchmarks, the demo and tests
//! plug theirs in here; the product's own traffic is TUN's.
//!
//! A source's packets take the same path as TUN's: routed by their inner destination
//! through the worker's [`RouteTable`](crate::route::RouteTable), sealed with the routed
//! peer's SA. Each worker gets its own source and sink from a factory, so nothing on the
//! packet path is shared.

use std::time::{Duration, Instant};

/// Inner IPv4/IPv6 packets one worker sends, optionally paced.
pub trait Source: Send {
    /// The length of the next packet, or 0 when there is nothing to send.
    fn next_len(&self) -> usize;

    /// Writes the next packet into `out`, exactly [`next_len`](Self::next_len) bytes.
    fn fill(&mut self, out: &mut [u8]);

    /// Takes back the packet just written: it could not go yet (no route, peer or SA), and
    /// the next [`fill`](Self::fill) writes it again.
    fn unfill(&mut self);

    /// Packets that may go now; unpaced sources say `u64::MAX`.
    fn allowance(&mut self, _now: Instant) -> u64 {
        u64::MAX
    }

    /// Takes `packets` sent out of the allowance.
    fn spend(&mut self, _packets: u64) {}

    /// How long until the source may send again, when paced and not allowed to now.
    fn until_next(&self, _now: Instant) -> Option<Duration> {
        None
    }
}

/// Where one worker's delivered inner packets go instead of TUN.
pub trait Sink: Send {
    /// Takes one decrypted, verified inner packet.
    fn deliver(&mut self, packet: &[u8]);
}

/// Makes worker `worker`'s (of `workers`) source.
pub type SourceFactory = Box<dyn Fn(usize, usize) -> Box<dyn Source> + Send>;

/// Makes worker `worker`'s (of `workers`) sink.
pub type SinkFactory = Box<dyn Fn(usize, usize) -> Box<dyn Sink> + Send>;
