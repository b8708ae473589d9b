//! Leader election on an etcd lease, fenced by the leader key's create revision.
//!
//! A candidate grants itself a lease, keeps it alive, and creates the election's leader key
//! under it in a transaction that holds only while the key is absent. The revision that
//! created the key is the leader's fencing token: every write made as leader is a transaction
//! that compares the key's create revision with it. Once the lease has expired (etcd deletes
//! the key with it) or the key was created again by another candidate, such a write fails in
//! etcd whatever the former leader believes, so a paused or partitioned former leader cannot
//! write. Its local view ([`Leadership::held`]) only lets it notice sooner.
//!
//! Waiting candidates poll the key (every quarter of the TTL, at most every half second)
//! rather than watch it: the gateway's watch is a long-lived stream, and this client speaks
//! one request, one reply. A poll adds at most one interval to a failover.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::EtcdClient;
use super::messages::{
    Compare, CompareResult, CompareTarget, KeyValue, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, ResponseOp, TxnRequest,
};
use super::EtcdStore;
use crate::store::Write;
use crate::{Error, Result};

/// The longest a waiting candidate goes without looking at the leader key.
const POLL_CAP: Duration = Duration::from_millis(500);
/// How long a member may take to answer a read before the next member is asked.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// The shortest: below this, polling costs etcd more than it saves in failover time.
const POLL_FLOOR: Duration = Duration::from_millis(50);

/// Who stands for election: the id it is known by and where it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The candidate's id, unique among the candidates.
    pub id: String,
    /// Where the candidate serves (e.g. its control address), so followers can redirect.
    pub address: String,
    /// The candidate's management API URL, if it serves one, so followers can name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}

/// The candidate holding an election's leader key now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Who it is and where it serves.
    pub candidate: Candidate,
    /// The revision that created its leader key: its fencing token.
    pub revision: i64,
}

/// One election in an etcd cluster: one leader key under the store's prefix.
#[derive(Debug, Clone)]
pub struct Election {
    store: EtcdStore,
    /// The leader key, prefix included.
    key: Vec<u8>,
}

impl EtcdStore {
    /// The election `name` among processes sharing this store's prefix.
    pub fn election(&self, name: &str) -> Election {
        Election {
            key: self.key(&format!("election/{name}")).into_bytes(),
            store: self.clone(),
        }
    }
}

impl Election {
    /// The election's leader key in etcd, for messages.
    pub fn key(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    /// Who holds the leader key now, if anyone.
    pub async fn leader(&self) -> Result<Option<Leader>> {
        let reply = self
            .client()
            .call_within(&RangeRequest::key(self.key.clone()), READ_TIMEOUT)
            .await?;
        reply.kvs.first().map(|kv| self.decode(kv)).transpose()
    }

    /// Waits until `candidate` holds the leader key, on a lease of `ttl` (etcd raises TTLs
    /// under its minimum, about 2 s). Errors from etcd while waiting are logged and retried:
    /// a cluster that lost quorum only delays the win. Dropping the future gives up; a lease
    /// granted meanwhile then expires on its own.
    pub async fn campaign(&self, candidate: &Candidate, ttl: Duration) -> Result<Leadership> {
        let value = serde_json::to_vec(candidate).map_err(|e| Error::Etcd {
            endpoint: self.client().urls(),
            operation: format!("campaign {}", self.key()),
            reason: format!("encoding the candidate: {e}"),
        })?;
        let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let poll = (ttl / 4).clamp(POLL_FLOOR, POLL_CAP);
        let mut lease: Option<Lease> = None;
        loop {
            if !lease.as_ref().is_some_and(|l| *l.held.borrow()) {
                lease = None;
                match self.grant(ttl_secs).await {
                    Ok(l) => lease = Some(l),
                    Err(e) => {
                        tracing::warn!(election = %self.key(), error = %e, "cannot grant a lease; retrying");
                        tokio::time::sleep(poll).await;
                        continue;
                    }
                }
            }
            let Some(id) = lease.as_ref().map(|l| l.id) else {
                continue;
            };
            match self.try_acquire(id, &value, ttl).await {
                Ok(Some(revision)) => {
                    if let Some(l) = lease.take().filter(|l| *l.held.borrow()) {
                        let _ = l.fence.send(revision);
                        tracing::info!(election = %self.key(), candidate = %candidate.id, revision, "won the election");
                        return Ok(Leadership {
                            election: self.clone(),
                            candidate: candidate.clone(),
                            revision,
                            lease: l,
                        });
                    }
                    // Won with a lease that was lost meanwhile: the key goes with it.
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(election = %self.key(), error = %e, "campaign attempt failed; retrying");
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    fn client(&self) -> &EtcdClient {
        &self.store.client
    }

    fn decode(&self, kv: &KeyValue) -> Result<Leader> {
        let candidate = serde_json::from_slice(&kv.value).map_err(|e| Error::CorruptRecord {
            key: self.key(),
            reason: e.to_string(),
        })?;
        Ok(Leader {
            candidate,
            revision: kv.create_revision,
        })
    }

    /// Grants a lease and starts keeping it alive.
    async fn grant(&self, ttl: i64) -> Result<Lease> {
        let asked = Instant::now();
        let timeout = Duration::from_secs(ttl.unsigned_abs()).max(READ_TIMEOUT);
        let reply = self
            .client()
            .call_within(&LeaseGrantRequest { ttl }, timeout)
            .await?;
        if reply.id == 0 || reply.ttl <= 0 {
            return Err(Error::Etcd {
                endpoint: self.client().urls(),
                operation: format!("lease grant {ttl}s"),
                reason: format!("etcd granted no lease ({})", reply.error),
            });
        }
        let ttl = Duration::from_secs(reply.ttl.unsigned_abs());
        let (held_tx, held) = watch::channel(true);
        let (fence, fence_rx) = watch::channel(0);
        let lost = Arc::new(OnceLock::new());
        let keeper = tokio::spawn(keep_alive(KeepAlive {
            election: self.clone(),
            lease: reply.id,
            ttl,
            // The lease runs from when etcd granted it, which is after the request left.
            deadline: asked + ttl,
            fence: fence_rx,
            held: held_tx,
            lost: lost.clone(),
        }));
        Ok(Lease {
            id: reply.id,
            ttl,
            held,
            fence,
            lost,
            keeper,
        })
    }

    /// Creates the leader key under `lease` if it is absent; the fencing revision when this
    /// lease holds the key (created now, or by an earlier attempt whose reply was lost).
    async fn try_acquire(&self, lease: i64, value: &[u8], ttl: Duration) -> Result<Option<i64>> {
        let txn = TxnRequest {
            compare: vec![Compare::absent(self.key.clone())],
            success: vec![RequestOp::Put(PutRequest {
                key: self.key.clone(),
                value: value.to_vec(),
                lease,
            })],
            failure: vec![RequestOp::Range(RangeRequest::key(self.key.clone()))],
        };
        // A member that swallows the attempt costs a failover this long; asking again is
        // safe, since a key this lease already holds counts as won.
        let reply = self
            .client()
            .call_within(&txn, ttl.min(READ_TIMEOUT))
            .await?;
        if reply.succeeded {
            return Ok(Some(reply.header.revision));
        }
        Ok(holder(&reply.responses)
            .filter(|kv| kv.lease == lease)
            .map(|kv| kv.create_revision))
    }
}

/// The key a transaction's failure branch read, if it exists.
fn holder(responses: &[ResponseOp]) -> Option<&KeyValue> {
    responses.iter().find_map(|r| match r {
        ResponseOp::Range(range) => range.kvs.first(),
        _ => None,
    })
}

/// A granted lease and the task renewing it.
#[derive(Debug)]
struct Lease {
    id: i64,
    ttl: Duration,
    /// True while the lease is renewed and (once won) the leader key is ours.
    held: watch::Receiver<bool>,
    /// The fencing revision once the key is won (0 before): the renewals then check the key.
    fence: watch::Sender<i64>,
    /// Why the lease was lost, once it is.
    lost: Arc<OnceLock<String>>,
    keeper: JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Holding an election's leader key. Dropping it stops renewing the lease; the key then
/// lasts until the lease expires, so call [`Leadership::resign`] to hand over at once.
#[derive(Debug)]
pub struct Leadership {
    election: Election,
    candidate: Candidate,
    revision: i64,
    lease: Lease,
}

impl Leadership {
    /// The revision that created this leader key: the fencing token of writes made as leader.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Who this leader is.
    pub fn candidate(&self) -> &Candidate {
        &self.candidate
    }

    /// The lease's time to live as etcd granted it.
    pub fn ttl(&self) -> Duration {
        self.lease.ttl
    }

    /// True while the lease is renewed and the leader key is this one; turns false (for
    /// good) as soon as a renewal fails past the lease's expiry, etcd answers that the lease
    /// is gone, or the key was deleted or created again by someone else.
    pub fn held(&self) -> watch::Receiver<bool> {
        self.lease.held.clone()
    }

    /// Whether the leadership is held, as far as this process knows. Only etcd knows for
    /// sure: [`Leadership::fenced`] asks it.
    pub fn is_held(&self) -> bool {
        *self.lease.held.borrow()
    }

    /// Why the leadership was lost (as this process saw it), once [`Leadership::held`] is
    /// false; for logs.
    pub fn lost_reason(&self) -> Option<&str> {
        self.lease.lost.get().map(String::as_str)
    }

    /// Applies `batch` (keys under the store's prefix) in one transaction, only while the
    /// leader key is still the one this process created. [`Error::Fenced`] when it is not:
    /// then nothing was written.
    pub async fn fenced(&self, batch: Vec<Write>) -> Result<()> {
        self.fenced_txn(None, batch).await.map(drop)
    }

    /// [`Leadership::fenced`], applied only while `guard` (a key under the store's prefix)
    /// is absent as well: `Ok(false)` when it is present (nothing was written).
    pub async fn fenced_unless_present(&self, guard: &str, batch: Vec<Write>) -> Result<bool> {
        self.fenced_txn(Some(guard), batch).await
    }

    async fn fenced_txn(&self, guard: Option<&str>, batch: Vec<Write>) -> Result<bool> {
        let key = self.election.key.clone();
        let mut compare = vec![Compare {
            key: key.clone(),
            result: CompareResult::Equal,
            target: CompareTarget::CreateRevision(self.revision),
        }];
        compare.extend(guard.map(|g| Compare::absent(self.election.store.key(g).into_bytes())));
        let txn = TxnRequest {
            compare,
            success: self.election.store.ops(batch),
            failure: vec![RequestOp::Range(RangeRequest::key(key))],
        };
        // A write that outlives the lease is fenced anyway; waiting longer only delays that.
        let reply = self
            .election
            .client()
            .call_within(&txn, self.lease.ttl.max(Duration::from_secs(2)))
            .await?;
        if reply.succeeded {
            return Ok(true);
        }
        let holder = holder(&reply.responses);
        if guard.is_some() && holder.is_some_and(|kv| kv.create_revision == self.revision) {
            // Still the leader: the guard is what failed.
            return Ok(false);
        }
        let now = match holder {
            None => "no one holds the leader key (the lease expired or was revoked)".to_owned(),
            Some(kv) => match self.election.decode(kv) {
                Ok(l) => format!(
                    "{} ({}) holds it since revision {}",
                    l.candidate.id, l.candidate.address, l.revision
                ),
                Err(e) => format!("the leader key holds an unreadable record ({e})"),
            },
        };
        Err(Error::Fenced {
            election: self.election.key(),
            revision: self.revision,
            now,
        })
    }

    /// Revokes the lease, deleting the leader key so another candidate wins at once.
    pub async fn resign(self) -> Result<()> {
        self.lease.keeper.abort();
        let revoked = self
            .election
            .client()
            .call_within(
                &LeaseRevokeRequest { id: self.lease.id },
                self.lease.ttl.max(READ_TIMEOUT),
            )
            .await;
        match revoked {
            // A lease that already expired is as resigned as one revoked now.
            Err(Error::Etcd { reason, .. }) if reason.contains("lease not found") => Ok(()),
            other => other.map(drop),
        }
    }

    /// Stops renewing the lease without revoking it, as a paused process would: the lease
    /// expires after its TTL while this handle still believes it leads. For drills and
    /// tests of fencing.
    #[doc(hidden)]
    pub fn stop_renewing(&self) {
        self.lease.keeper.abort();
    }
}

/// What the renewing task needs.
struct KeepAlive {
    election: Election,
    lease: i64,
    ttl: Duration,
    /// When the lease expires unless renewed, by the local clock (conservatively early).
    deadline: Instant,
    fence: watch::Receiver<i64>,
    held: watch::Sender<bool>,
    lost: Arc<OnceLock<String>>,
}

/// What one renewal found.
enum Renewal {
    /// Renewed for this long from when the renewal was sent.
    Renewed(Duration),
    /// The lease is lost, for this reason.
    Lost(String),
}

/// Renews the lease every third of its TTL until it is lost; then turns `held` false.
async fn keep_alive(mut k: KeepAlive) {
    let interval = k.ttl / 3;
    let mut next = Instant::now() + interval;
    let mut last_error = String::new();
    let expired = |last_error: &str| {
        let mut reason = "no renewal was answered before the lease's TTL ran out".to_owned();
        if !last_error.is_empty() {
            reason.push_str(&format!(" (last: {last_error})"));
        }
        reason
    };
    let reason = loop {
        tokio::time::sleep_until(next.min(k.deadline)).await;
        if Instant::now() >= k.deadline {
            break expired(&last_error);
        }
        let sent = Instant::now();
        // Each member gets half an interval: a member that forwards to a frozen raft leader
        // hangs, and the renewal must reach the others (and try again) before the deadline.
        match tokio::time::timeout_at(k.deadline, renew(&k, interval / 2)).await {
            Err(_) => break expired(&last_error),
            Ok(Ok(Renewal::Renewed(ttl))) => {
                k.deadline = sent + ttl;
                next = sent + interval;
                last_error.clear();
            }
            Ok(Ok(Renewal::Lost(reason))) => break reason,
            Ok(Err(e)) => {
                tracing::debug!(election = %k.election.key(), error = %e, "lease renewal failed; retrying");
                last_error = e.to_string();
                // Retry soon: the lease still runs until the deadline.
                next = Instant::now() + (interval / 4).max(POLL_FLOOR);
            }
        }
    };
    tracing::warn!(election = %k.election.key(), lease = %format!("{:x}", k.lease), %reason, "lease lost");
    let _ = k.lost.set(reason);
    k.held.send_replace(false);
    // The key may outlive a lease this process gave up on; revoke so it goes now.
    if *k.fence.borrow_and_update() != 0 {
        let _ = k
            .election
            .client()
            .call_within(&LeaseRevokeRequest { id: k.lease }, k.ttl)
            .await;
    }
}

/// Renews the lease once and, once the key is won, checks it is still this lease's.
async fn renew(k: &KeepAlive, timeout: Duration) -> Result<Renewal> {
    let client = k.election.client();
    let reply = client
        .call_within(&LeaseKeepAliveRequest { id: k.lease }, timeout)
        .await?;
    if let Some(error) = reply.error {
        return Err(Error::Etcd {
            endpoint: client.urls(),
            operation: format!("lease keepalive {:x}", k.lease),
            reason: format!("etcd says: {error}"),
        });
    }
    if reply.result.ttl <= 0 {
        return Ok(Renewal::Lost(
            "etcd answered the renewal with TTL 0: the lease expired".into(),
        ));
    }
    let fence = *k.fence.borrow();
    if fence != 0 {
        let range = client
            .call_within(&RangeRequest::key(k.election.key.clone()), timeout)
            .await?;
        match range.kvs.first() {
            Some(kv) if kv.create_revision == fence => {}
            Some(kv) => {
                return Ok(Renewal::Lost(format!(
                    "the leader key was created again at revision {} by another lease",
                    kv.create_revision
                )))
            }
            None => return Ok(Renewal::Lost("the leader key was deleted".into())),
        }
    }
    Ok(Renewal::Renewed(Duration::from_secs(
        reply.result.ttl.unsigned_abs(),
    )))
}
