//! The authority as one of several replicas sharing one etcd cluster (`[store] candidate`).
//!
//! Every replica campaigns for one election; only the leader serves agents and writes, and
//! every write it makes is fenced by its leader key ([`ReplicaStore`]), so a former leader
//! that was paused or cut off past its lease changes nothing when it wakes.
//!
//! - **Winning**: the new leader re-scans the store (directory, policy, prefixes, rotation
//!   order and acknowledgements, the audit chain's tip) before it serves anyone. Followers
//!   also re-scan every [`FOLLOWER_REFRESH`], so their reads (status, the management API)
//!   are at most that stale; the re-scan at promotion is what correctness rests on, since a
//!   follower's copy may miss the last writes of the leader that just died. A watch would
//!   keep followers fresher, but the etcd client speaks one request, one reply, and a
//!   re-scan of 10,000 appliances is one range read.
//! - **Following**: a follower completes an agent's QUIC handshake and closes the
//!   connection with [`CLOSE_NOT_LEADER`], the reason naming the leader's control address;
//!   the admin socket and the management API answer reads and refuse writes naming the
//!   leader (the API with 503 problem+json and the leader's API URL, not a redirect: an
//!   operator's credential may be scoped to one replica's address).
//! - **Losing**: as soon as the lease is lost the leader refuses writes, stops its rotation
//!   schedule, closes every agent with [`CLOSE_NOT_LEADER`], and campaigns again.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{load_acks, load_assignments, load_directory, scheduled_rotation, Authority};
use super::{AuditSink, CLOSE_NOT_LEADER};
use crate::audit::AuditEvent;
use crate::directory::{Master, Rule};
use crate::store::{self, Candidate, Election, ReplicaStore};
use crate::Result;

/// How often a follower re-reads the store, so its answers to reads stay recent.
pub(super) const FOLLOWER_REFRESH: Duration = Duration::from_secs(5);
/// How long a leader read from etcd is trusted before a follower asks again.
const LEADER_CACHE: Duration = Duration::from_millis(250);

/// This replica's part in the election.
pub(super) struct Replication {
    /// The store, writes fenced by this replica's leadership.
    pub(super) store: ReplicaStore,
    election: Election,
    candidate: Candidate,
    ttl: Duration,
    /// The policy in the configuration, applied by each new leader.
    policy: Vec<Rule>,
    /// The leader as last read from etcd, and when.
    leader: StdMutex<Option<(Instant, Option<Candidate>)>>,
}

impl Replication {
    /// A replica standing as `candidate` on `store`'s election `authority`.
    pub(super) fn new(
        store: ReplicaStore,
        candidate: Candidate,
        ttl: Duration,
        policy: Vec<Rule>,
    ) -> Self {
        Self {
            election: store.unfenced().election("authority"),
            store,
            candidate,
            ttl,
            policy,
            leader: StdMutex::new(None),
        }
    }

    /// Whether this replica leads now, as far as it knows (etcd fences it if it is wrong).
    pub(super) fn is_leader(&self) -> bool {
        self.store.leadership().is_some_and(|l| l.is_held())
    }

    /// The leader, read from etcd at most every [`LEADER_CACHE`].
    pub(super) async fn leader(&self) -> Option<Candidate> {
        if let Some((when, leader)) = self.cached() {
            if when.elapsed() < LEADER_CACHE {
                return leader;
            }
        }
        let leader = match self.election.leader().await {
            Ok(l) => l.map(|l| l.candidate),
            Err(e) => {
                tracing::debug!("reading the leader failed: {e}");
                None
            }
        };
        *self.cache() = Some((Instant::now(), leader.clone()));
        leader
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Option<Candidate>)>> {
        self.leader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached(&self) -> Option<(Instant, Option<Candidate>)> {
        self.cache().clone()
    }

    /// Why this replica refuses a write, naming where to send it.
    pub(super) async fn refusal(&self) -> String {
        match self.leader().await {
            Some(l) if l.id == self.candidate.id => format!(
                "replica {} is taking over or handing over the lead; retry in a moment",
                l.id
            ),
            Some(l) => format!(
                "replica {} is not the leader; the leader is {} (control {}{})",
                self.candidate.id,
                l.id,
                l.address,
                l.api.map(|a| format!(", API {a}")).unwrap_or_default()
            ),
            None => format!(
                "replica {} is not the leader and no leader is elected yet; retry within {}s",
                self.candidate.id,
                self.ttl.as_secs().max(1) * 2
            ),
        }
    }
}

impl Authority {
    fn replication(&self) -> Option<&Replication> {
        self.inner.replication.as_ref()
    }

    /// Whether this authority serves agents and writes: a single authority always, a
    /// replica while it leads.
    pub fn is_leader(&self) -> bool {
        self.replication().is_none_or(Replication::is_leader)
    }

    /// The leader's management API URL, when this replica follows one that serves it.
    pub(super) async fn leader_api(&self) -> Option<String> {
        self.replication()?.leader().await?.api
    }

    /// Why a write is refused here, when this replica is not the leader.
    pub(super) async fn not_leading(&self) -> Option<String> {
        match self.replication() {
            Some(r) if !r.is_leader() => Some(r.refusal().await),
            _ => None,
        }
    }

    /// Closes an agent's connection to a follower, naming the leader's control address
    /// (empty when none is known) for the agent to try next.
    pub(super) async fn redirect(&self, conn: &quinn::Connection) {
        let leader = match self.replication() {
            Some(r) => r.leader().await.map(|l| l.address).unwrap_or_default(),
            None => String::new(),
        };
        conn.close(CLOSE_NOT_LEADER.into(), leader.as_bytes());
    }

    /// Campaigns, leads until the lease is lost, and campaigns again, until shutdown.
    pub(super) async fn replicate(self, every: Duration) {
        let Some(r) = self.replication() else { return };
        loop {
            let campaign = r.election.campaign(&r.candidate, r.ttl);
            tokio::pin!(campaign);
            let mut refresh = tokio::time::interval(FOLLOWER_REFRESH);
            refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let won = loop {
                tokio::select! {
                    won = &mut campaign => break won,
                    _ = refresh.tick() => {
                        if let Err(e) = self.refresh().await {
                            tracing::debug!("follower refresh failed: {e}");
                        }
                    }
                    () = self.stopping() => return,
                }
            };
            let leadership = match won {
                Ok(l) => Arc::new(l),
                Err(e) => {
                    tracing::error!("campaign failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut held = leadership.held();
            r.store.lead(Some(leadership.clone()));
            *r.cache() = None;
            let schedule = match self.promote(r, leadership.revision(), every).await {
                Ok(next) => tokio::spawn(self.clone().rotation_schedule(next, every)),
                Err(e) => {
                    tracing::warn!("taking the lead failed, standing again: {e}");
                    self.demote(r);
                    continue;
                }
            };
            tokio::select! {
                _ = held.wait_for(|h| !*h) => {
                    tracing::warn!(
                        "replica {} lost the lead: {}",
                        r.candidate.id,
                        leadership.lost_reason().unwrap_or("lease lost")
                    );
                }
                () = self.stopping() => {}
            }
            schedule.abort();
            self.demote(r);
            if *self.inner.stopped.borrow() {
                if let Ok(l) = Arc::try_unwrap(leadership) {
                    let _ = l.resign().await;
                }
                return;
            }
        }
    }

    /// Takes the lead: the state from the store, the configured policy, the audit chain's
    /// tip, the rotation schedule. Returns when the next rotation is due.
    async fn promote(&self, r: &Replication, term: i64, every: Duration) -> Result<u64> {
        self.refresh().await?;
        *self.inner.audit.lock().await = AuditSink::Store(None);
        self.audit(AuditEvent::LeaderElected {
            replica: r.candidate.id.clone(),
            term,
        })
        .await?;
        if self.inner.state.lock().await.master.live().rules != r.policy {
            self.set_rules(r.policy.clone(), "configuration").await?;
        }
        let next = scheduled_rotation(&self.inner.store, every).await?;
        tracing::info!("replica {} leads (term {term})", r.candidate.id);
        Ok(next)
    }

    /// Stops leading at once: writes refused, agents sent to the next leader, feeds ended.
    fn demote(&self, r: &Replication) {
        r.store.lead(None);
        *r.cache() = None;
        let conns: Vec<quinn::Connection> = self.connections().drain().map(|(_, c)| c).collect();
        for conn in conns {
            // The next leader is not known yet: the agent tries again where it was.
            conn.close(CLOSE_NOT_LEADER.into(), b"");
        }
        self.subscribers().clear();
    }

    /// Replaces the in-memory state with what the store holds.
    async fn refresh(&self) -> Result<()> {
        let store = &self.inner.store;
        let dir = load_directory(store).await?;
        let rotation = store::get_json(store, "meta/rotation").await?.unwrap_or(0);
        let assignments = load_assignments(store).await?;
        let acks = load_acks(store).await?;
        let mut st = self.inner.state.lock().await;
        st.master = Master::new(dir);
        st.rotation = rotation;
        st.assignments = assignments;
        self.inner
            .rotated
            .send_replace(acks.iter().map(|(id, (_, e))| (id.clone(), *e)).collect());
        *self.obeyed() = acks.into_iter().map(|(id, (r, _))| (id, r)).collect();
        Ok(())
    }
}
