//! Which authority an agent tries next, and how long it gives one to answer.
//!
//! The authority may run as several replicas, only one of which (the leader) serves agents;
//! a follower closes an agent's connection with [`CLOSE_NOT_LEADER`] naming the leader. The
//! agent holds the list of replica addresses from its configuration and tries them in a
//! fixed order: the leader a follower named first, then the replicas after the one it just
//! lost, wrapping round, with the lost one last (it may come back). Waits between attempts
//! come from [`crate::backoff::Backoff`], so the thousands of agents one replica's death
//! cuts off spread their reconnections instead of arriving in the same instant.
//!
//! Until its lease runs out, a dead leader is still the leader its followers name. An
//! address that failed since the agent last had a feed is therefore not believed at once:
//! a follower naming it sends the agent on through the rest of the round, that address
//! last, instead of back to it. Each address has its own handshake limit, so a dead one's
//! growing limit does not slow the handshakes with the live ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::authority::CLOSE_NOT_LEADER;

/// How long a handshake may take before the next replica is tried, at first. Only applies
/// when there is another address to try: with one, the transport's idle timeout decides.
pub const HANDSHAKE_FIRST: Duration = Duration::from_secs(2);
/// The longest a handshake is given: the transport's idle timeout ends it anyway.
pub const HANDSHAKE_CAP: Duration = Duration::from_secs(10);
/// The longest wait after a follower's redirect: a live replica answered, so the cluster
/// is up and a leader is at most an election away.
pub const REDIRECT_RETRY_CAP: Duration = Duration::from_secs(1);

/// The leader a follower named when it closed a connection with [`CLOSE_NOT_LEADER`], if
/// the connection was closed so and the reason parses as an address.
pub fn leader_named(close: Option<&quinn::ConnectionError>) -> Option<Option<SocketAddr>> {
    match close {
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == quinn::VarInt::from_u32(CLOSE_NOT_LEADER) =>
        {
            Some(
                std::str::from_utf8(&c.reason)
                    .ok()
                    .and_then(|r| r.trim().parse().ok()),
            )
        }
        _ => None,
    }
}

/// The authority addresses an agent knows and the order it tries them in.
#[derive(Debug, Clone)]
pub struct AuthorityRoute {
    listed: Vec<SocketAddr>,
    /// What is left to try in this round.
    pending: VecDeque<SocketAddr>,
    /// Handshakes that timed out in a row, by address (each doubles that address's next
    /// limit).
    timeouts: HashMap<SocketAddr, u32>,
    /// Addresses that failed (or whose feed was lost) since the agent last had a feed.
    failed: HashSet<SocketAddr>,
}

impl AuthorityRoute {
    /// A route over `listed`, tried first in the order given.
    pub fn new(listed: Vec<SocketAddr>) -> Self {
        let pending = listed.iter().copied().collect();
        Self {
            listed,
            pending,
            timeouts: HashMap::new(),
            failed: HashSet::new(),
        }
    }

    /// The addresses as configured.
    pub fn listed(&self) -> &[SocketAddr] {
        &self.listed
    }

    /// The next address to try. When a round is used up, a new one starts after `last`.
    pub fn next(&mut self, last: Option<SocketAddr>) -> Option<SocketAddr> {
        if self.pending.is_empty() {
            self.pending = self.order_after(last, None).into();
        }
        self.pending.pop_front()
    }

    /// Starts a new round at `addr` (a replica that just answered), then the others.
    pub fn begin_with(&mut self, addr: SocketAddr) {
        self.pending = self.order_after(None, Some(addr)).into();
    }

    /// Starts a new round after losing `lost`: `leader` (a follower's word) first, then the
    /// listed addresses after `lost` in turn, wrapping round, `lost` itself last.
    pub fn lost(&mut self, lost: SocketAddr, leader: Option<SocketAddr>) {
        self.pending = self.order_after(Some(lost), leader).into();
    }

    /// The feed from `lost` ended after it had worked: a new round after it, and `lost` is
    /// not believed when a follower names it until it has answered again.
    pub fn feed_lost(&mut self, lost: SocketAddr) {
        self.lost(lost, None);
        self.failed.insert(lost);
    }

    /// The follower at `from` answered and named `leader`. A leader this agent has not
    /// failed to reach is tried next; one it has (most likely a dead leader whose lease has
    /// not run out) goes to the end of the round, after the replicas not asked yet.
    pub fn redirected(&mut self, from: SocketAddr, leader: Option<SocketAddr>) {
        self.failed.remove(&from);
        self.timeouts.remove(&from);
        match leader {
            Some(l) if self.failed.contains(&l) => {
                self.pending.retain(|a| *a != l && *a != from);
                self.pending.push_back(l);
            }
            _ => self.lost(from, leader),
        }
    }

    /// An attempt at `addr` failed without an answer.
    pub fn failed(&mut self, addr: SocketAddr) {
        self.failed.insert(addr);
    }

    /// The order of a round that follows `lost`, `leader` first; no address twice.
    pub fn order_after(
        &self,
        lost: Option<SocketAddr>,
        leader: Option<SocketAddr>,
    ) -> Vec<SocketAddr> {
        let start = lost
            .and_then(|l| self.listed.iter().position(|a| *a == l))
            .map_or(0, |i| i + 1);
        let n = self.listed.len();
        let mut order: Vec<SocketAddr> = leader.into_iter().collect();
        for i in 0..n {
            let a = self.listed[(start + i) % n];
            if !order.contains(&a) {
                order.push(a);
            }
        }
        if let Some(l) = lost.filter(|l| !order.contains(l)) {
            order.push(l);
        }
        order
    }

    /// How long the next handshake with `addr` may take before the next address is
    /// tried; `None` when there is no other address, so the transport's own timeout applies.
    pub fn handshake_limit(&self, addr: SocketAddr) -> Option<Duration> {
        if self.listed.len() < 2 && self.pending.is_empty() {
            return None;
        }
        let timeouts = self.timeouts.get(&addr).copied().unwrap_or(0);
        let doubled = HANDSHAKE_FIRST.saturating_mul(1 << timeouts.min(8));
        Some(doubled.min(HANDSHAKE_CAP))
    }

    /// A handshake with `addr` timed out: the next one with it is given longer (a loaded
    /// authority answers slowly rather than not at all).
    pub fn timed_out(&mut self, addr: SocketAddr) {
        let t = self.timeouts.entry(addr).or_insert(0);
        *t = t.saturating_add(1);
        self.failed.insert(addr);
    }

    /// A connection worked: limits start again from the first, and every address is
    /// believed again.
    pub fn connected(&mut self) {
        self.timeouts.clear();
        self.failed.clear();
    }
}

/// Reads `authority` as one address or a list of them (`"a:1"` or `["a:1", "b:1"]`).
pub fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(SocketAddr),
        Many(Vec<SocketAddr>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(a)) => Ok(vec![a]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(
            "expected \"host:port\" or a list of them, e.g. [\"192.0.2.1:7000\", \"192.0.2.2:7000\"]",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::{Backoff, RETRY_CAP, RETRY_FIRST};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn first_round_follows_the_configured_order_then_wraps() {
        let mut r = AuthorityRoute::new(vec![addr(1), addr(2), addr(3)]);
        let mut tried = Vec::new();
        let mut last = None;
        for _ in 0..5 {
            let a = r.next(last).unwrap();
            tried.push(a.port());
            last = Some(a);
        }
        assert_eq!(tried, [1, 2, 3, 1, 2]);
    }

    #[test]
    fn after_a_loss_the_named_leader_comes_first_then_the_others_the_lost_one_last() {
        let mut r = AuthorityRoute::new(vec![addr(1), addr(2), addr(3)]);
        r.lost(addr(2), Some(addr(3)));
        let order: Vec<u16> = (0..3).map(|_| r.next(None).unwrap().port()).collect();
        assert_eq!(order, [3, 1, 2]);
        // No leader named: the one after the lost one, wrapping round.
        r.lost(addr(3), None);
        let order: Vec<u16> = (0..3).map(|_| r.next(None).unwrap().port()).collect();
        assert_eq!(order, [1, 2, 3]);
        // A leader outside the list is tried too, once.
        let order: Vec<u16> = r
            .order_after(Some(addr(1)), Some(addr(9)))
            .iter()
            .map(|a| a.port())
            .collect();
        assert_eq!(order, [9, 2, 3, 1]);
    }

    #[test]
    fn a_single_authority_keeps_the_transport_timeout_and_several_grow_theirs() {
        let mut one = AuthorityRoute::new(vec![addr(1)]);
        one.next(None);
        assert_eq!(one.handshake_limit(addr(1)), None);
        let mut r = AuthorityRoute::new(vec![addr(1), addr(2)]);
        assert_eq!(r.handshake_limit(addr(1)), Some(HANDSHAKE_FIRST));
        r.timed_out(addr(1));
        assert_eq!(r.handshake_limit(addr(1)), Some(HANDSHAKE_FIRST * 2));
        // Only the address that timed out: a live replica's handshakes keep the first limit.
        assert_eq!(r.handshake_limit(addr(2)), Some(HANDSHAKE_FIRST));
        for _ in 0..20 {
            r.timed_out(addr(1));
        }
        assert_eq!(r.handshake_limit(addr(1)), Some(HANDSHAKE_CAP));
        r.connected();
        assert_eq!(r.handshake_limit(addr(1)), Some(HANDSHAKE_FIRST));
    }

    #[test]
    fn a_follower_naming_a_leader_that_just_failed_sends_the_agent_round_the_others_first() {
        // Replica 1 led and was killed; until its lease runs out, 2 and 3 still name it.
        let mut r = AuthorityRoute::new(vec![addr(1), addr(2), addr(3)]);
        r.feed_lost(addr(1));
        assert_eq!(r.next(None), Some(addr(2)));
        r.redirected(addr(2), Some(addr(1)));
        // Not back to 1: the replica not asked yet first, the failed leader last.
        assert_eq!(r.next(None), Some(addr(3)));
        r.redirected(addr(3), Some(addr(1)));
        assert_eq!(r.next(None), Some(addr(1)));
        r.timed_out(addr(1));
        // A new round, and this time 3 names the leader elected meanwhile: it comes next.
        assert_eq!(r.next(Some(addr(1))), Some(addr(2)));
        r.redirected(addr(2), Some(addr(3)));
        assert_eq!(r.next(None), Some(addr(3)));
        // A leader not failed is believed at once, as before.
        let mut fresh = AuthorityRoute::new(vec![addr(1), addr(2), addr(3)]);
        assert_eq!(fresh.next(None), Some(addr(1)));
        fresh.redirected(addr(1), Some(addr(3)));
        assert_eq!(fresh.next(None), Some(addr(3)));
        // An answer clears the failure: 1 restarted as a follower and is believed again.
        r.failed(addr(1));
        r.redirected(addr(1), Some(addr(2)));
        assert_eq!(r.next(None), Some(addr(2)));
    }

    #[test]
    fn agents_failing_over_together_spread_their_first_attempts() {
        // Ten thousand agents lose their replica at once: the first wait each draws before
        // trying the next replica spreads over half the first step, not one instant.
        let mut waits: Vec<Duration> = (0..10_000)
            .map(|_| Backoff::new(RETRY_FIRST, RETRY_CAP).next_delay())
            .collect();
        waits.sort();
        let (lo, hi) = (waits[0], waits[waits.len() - 1]);
        assert!(lo >= RETRY_FIRST / 2 && hi <= RETRY_FIRST, "{lo:?}..{hi:?}");
        assert!(hi - lo > RETRY_FIRST * 2 / 5, "spread only {:?}", hi - lo);
        // No tenth of the window holds more than a fifth of the agents.
        let width = (RETRY_FIRST / 2).as_nanos() / 10;
        let mut buckets = [0usize; 10];
        for w in &waits {
            let i = ((w.as_nanos() - (RETRY_FIRST / 2).as_nanos()) / width).min(9) as usize;
            buckets[i] += 1;
        }
        assert!(buckets.iter().all(|&b| b < 2_000), "{buckets:?}");
    }

    #[test]
    fn the_leader_is_read_from_the_close_reason() {
        let closed = |code: u32, reason: &[u8]| {
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(code),
                reason: bytes::Bytes::copy_from_slice(reason),
            })
        };
        assert_eq!(
            leader_named(Some(&closed(CLOSE_NOT_LEADER, b"127.0.0.1:7000"))),
            Some(Some(addr(7000)))
        );
        assert_eq!(
            leader_named(Some(&closed(CLOSE_NOT_LEADER, b""))),
            Some(None)
        );
        assert_eq!(leader_named(Some(&closed(0x52, b"127.0.0.1:7000"))), None);
        assert_eq!(leader_named(None), None);
    }
}
