//! The audit chain kept in the store, for replicas sharing one etcd cluster: record `n` is
//! the key `audit/<n, 20 digits>` holding the same line the log file would hold (plus the
//! fencing revision of the leader that wrote it), and `meta/audit_head` holds the last
//! `seq` and `hash` as the file's head does.
//!
//! Every append is one transaction that requires its first key to be absent (and, through a
//! fenced store, the writer to lead still), so whatever replica writes, there is one linear
//! chain: a second writer at the same place fails instead of forking it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{chain, chain_hash, AuditEvent, AuditRecord, Head, Verified};
use crate::store::{Store, Write};
use crate::{Error, Result};

/// Where the chain's records live in the store.
pub const PREFIX: &str = "audit/";
/// The chain's head in the store.
const HEAD: &str = "meta/audit_head";
/// Lines in one transaction at most: with the head, 127 puts, inside etcd's default limit
/// of 128 operations per transaction (`--max-txn-ops`; etcd counts the compares apart from
/// the puts, so the leader's guard does not add to them). A rotation at 10,000 appliances
/// writes some 20,000 lines one group after another: halving the groups from 64 lines
/// halves the transactions it waits for.
pub(crate) const MAX_GROUP: usize = 126;

/// The store key of line `seq`.
fn key(seq: u64) -> String {
    format!("{PREFIX}{seq:020}")
}

/// A line as the store keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    record: AuditRecord,
    /// The fencing revision of the leader that appended it (0: no election).
    #[serde(default)]
    term: i64,
}

/// Where the next line of a store's chain goes, as this writer last saw it.
#[derive(Debug, Clone, Default)]
pub struct StoreChain {
    seq: u64,
    prev: [u8; 32],
    kinds: BTreeMap<&'static str, u64>,
    /// Transactions applied through this writer.
    writes: u64,
}

impl StoreChain {
    /// The tip of the chain in `store`: its head, checked against the line it names.
    pub async fn load(store: &impl Store) -> Result<Self> {
        let Some(head) = crate::store::get_json::<Head>(store, HEAD).await? else {
            return Ok(Self::default());
        };
        let mut prev = [0u8; 32];
        let named = match store.get(&key(head.seq)).await? {
            Some(bytes) => decode(head.seq, &bytes)?.record.hash,
            None => String::new(),
        };
        if named != head.hash || hex::decode_to_slice(&head.hash, &mut prev).is_err() {
            return Err(broken(
                head.seq,
                format!("the head names line {} with a hash that line does not have: lines were removed or rewritten", head.seq),
            ));
        }
        Ok(Self {
            seq: head.seq,
            prev,
            kinds: BTreeMap::new(),
            writes: 0,
        })
    }

    /// Lines in the chain.
    pub fn lines(&self) -> u64 {
        self.seq
    }

    /// Transactions applied through this writer (one per group of at most [`MAX_GROUP`]
    /// lines).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Lines appended through this writer, by event kind.
    pub fn kinds(&self) -> &BTreeMap<&'static str, u64> {
        &self.kinds
    }

    /// Appends `events` in transactions of at most [`MAX_GROUP`] lines, each applied only
    /// while its first line's key is absent. `Ok(false)` when another writer appended
    /// first (nothing of that group was written; load the tip again and retry).
    pub async fn append(
        &mut self,
        store: &impl Store,
        mut events: Vec<AuditEvent>,
        term: i64,
    ) -> Result<bool> {
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(MAX_GROUP));
            let records = chain(self.seq, self.prev, std::mem::replace(&mut events, rest));
            let Some(last) = records.last() else { break };
            let (seq, hash) = (last.seq, last.hash.clone());
            let kinds: Vec<&'static str> = records.iter().map(|r| r.event.kind()).collect();
            let mut writes: Vec<Write> = records
                .into_iter()
                .map(|record| {
                    let k = key(record.seq);
                    Write::Put(k, crate::store::json(&Stored { record, term }))
                })
                .collect();
            writes.push(Write::Put(
                HEAD.into(),
                crate::store::json(&Head {
                    seq,
                    hash: hash.clone(),
                }),
            ));
            if !store
                .apply_unless_present(&key(self.seq + 1), writes)
                .await?
            {
                return Ok(false);
            }
            self.seq = seq;
            self.writes += 1;
            // Written by `chain` from a 32-byte hash: always 64 hex digits.
            let _ = hex::decode_to_slice(&hash, &mut self.prev);
            for kind in kinds {
                *self.kinds.entry(kind).or_insert(0) += 1;
            }
        }
        Ok(true)
    }
}

fn broken(line: u64, reason: String) -> Error {
    Error::AuditBroken {
        path: PathBuf::from(format!("store:{PREFIX}")),
        line: usize::try_from(line).unwrap_or(usize::MAX),
        reason,
    }
}

fn decode(line: u64, bytes: &[u8]) -> Result<Stored> {
    serde_json::from_slice(bytes).map_err(|e| broken(line, format!("not a record: {e}")))
}

/// Every line of the chain in `store` with the fencing revision of its writer, checked: a
/// missing line (gap), a line that does not follow its predecessor (fork), a line whose
/// content does not match its hash (edit), or a head that does not name the last line
/// (lines cut off the end) is an [`Error::AuditBroken`].
pub async fn store_records(store: &impl Store) -> Result<Vec<(AuditRecord, i64)>> {
    let entries = store.scan(PREFIX).await?;
    let head: Option<Head> = crate::store::get_json(store, HEAD).await?;
    check(entries, head)
}

/// [`super::verify`] for the chain in `store`.
pub async fn verify_store(store: &impl Store) -> Result<Verified> {
    let records = store_records(store).await?;
    Ok(Verified {
        lines: records.len() as u64,
        head: records
            .last()
            .map_or_else(|| hex::encode([0u8; 32]), |(r, _)| r.hash.clone()),
    })
}

fn check(entries: Vec<(String, Vec<u8>)>, head: Option<Head>) -> Result<Vec<(AuditRecord, i64)>> {
    let mut out = Vec::with_capacity(entries.len());
    let mut prev = [0u8; 32];
    for (i, (k, bytes)) in entries.into_iter().enumerate() {
        let line = i as u64 + 1;
        if k != key(line) {
            return Err(broken(
                line,
                format!("line {line} is missing (the next key is {k}): a gap in the chain"),
            ));
        }
        let Stored { record, term } = decode(line, &bytes)?;
        if record.seq != line {
            return Err(broken(
                line,
                format!("sequence {} stored as line {line}", record.seq),
            ));
        }
        if record.prev != hex::encode(prev) {
            return Err(broken(
                line,
                "does not follow the previous line (prev hash differs): a fork or a replaced line"
                    .into(),
            ));
        }
        let hash = chain_hash(&prev, record.seq, record.time, &record.event);
        if record.hash != hex::encode(hash) {
            return Err(broken(
                line,
                "content does not match its hash (line edited)".into(),
            ));
        }
        prev = hash;
        out.push((record, term));
    }
    let lines = out.len() as u64;
    match head {
        None if lines == 0 => {}
        None => {
            return Err(broken(
                lines,
                "no head: nothing anchors the chain (it is written with every line)".into(),
            ))
        }
        Some(h) if h.seq == lines && h.hash == hex::encode(prev) => {}
        Some(h) => {
            return Err(broken(
                lines,
                format!(
                    "the chain ends at line {lines} but its head names line {} with another hash: lines were removed or rewritten",
                    h.seq
                ),
            ))
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn event(n: u64) -> AuditEvent {
        AuditEvent::RotationOrdered {
            rotation: n,
            by: "test".into(),
        }
    }

    async fn chain_of(n: u64) -> MemoryStore {
        let store = MemoryStore::default();
        let mut tip = StoreChain::load(&store).await.unwrap();
        for i in 0..n {
            assert!(tip.append(&store, vec![event(i)], 7).await.unwrap());
        }
        store
    }

    #[tokio::test]
    async fn lines_chain_as_the_file_does_and_verify() {
        let store = chain_of(3).await;
        let big: Vec<AuditEvent> = (0..(MAX_GROUP as u64 + 5)).map(event).collect();
        let mut tip = StoreChain::load(&store).await.unwrap();
        assert_eq!(tip.lines(), 3);
        assert!(tip.append(&store, big, 9).await.unwrap());
        let records = store_records(&store).await.unwrap();
        assert_eq!(records.len(), 3 + MAX_GROUP + 5);
        assert_eq!(records[0].1, 7);
        assert_eq!(records.last().unwrap().1, 9);
        assert_eq!(
            verify_store(&store).await.unwrap().head,
            records.last().unwrap().0.hash
        );
    }

    #[tokio::test]
    async fn a_stale_writer_cannot_fork_the_chain() {
        let store = chain_of(2).await;
        let mut stale = StoreChain::load(&store).await.unwrap();
        let mut other = StoreChain::load(&store).await.unwrap();
        assert!(other.append(&store, vec![event(10)], 2).await.unwrap());
        assert!(!stale.append(&store, vec![event(11)], 1).await.unwrap());
        let mut fresh = StoreChain::load(&store).await.unwrap();
        assert!(fresh.append(&store, vec![event(11)], 1).await.unwrap());
        assert_eq!(verify_store(&store).await.unwrap().lines, 4);
    }

    #[tokio::test]
    async fn gap_fork_edit_and_cut_are_found() {
        let reason = |e: Error| e.to_string();

        let store = chain_of(4).await;
        store.apply(vec![Write::Delete(key(2))]).await.unwrap();
        let e = reason(verify_store(&store).await.unwrap_err());
        assert!(e.contains("gap"), "{e}");

        let store = chain_of(4).await;
        let mut edited: Stored =
            serde_json::from_slice(&store.get(&key(3)).await.unwrap().unwrap()).unwrap();
        edited.record.event = event(99);
        store
            .put(&key(3), &crate::store::json(&edited))
            .await
            .unwrap();
        let e = reason(verify_store(&store).await.unwrap_err());
        assert!(e.contains("edited"), "{e}");

        // A fork: line 3 rewritten by a writer that chained it after another line 2.
        let store = chain_of(4).await;
        let forked = chain(2, [9u8; 32], vec![event(50)]).remove(0);
        let stored = Stored {
            record: forked,
            term: 1,
        };
        store
            .put(&key(3), &crate::store::json(&stored))
            .await
            .unwrap();
        let e = reason(verify_store(&store).await.unwrap_err());
        assert!(e.contains("fork"), "{e}");

        let store = chain_of(4).await;
        store.apply(vec![Write::Delete(key(4))]).await.unwrap();
        let e = reason(verify_store(&store).await.unwrap_err());
        assert!(e.contains("head names line 4"), "{e}");
        assert!(StoreChain::load(&store).await.is_err());
    }
}
