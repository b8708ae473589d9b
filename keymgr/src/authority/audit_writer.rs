//! The one writer of the audit chain: group commit.
//!
//! Every audit line goes through one queue to one task. While it writes a group, callers
//! keep queueing; when the write is durable it answers each caller of that group with the
//! sequence number of its last line, then takes everything queued meanwhile as the next
//! group. So a burst of N lines (the acknowledgements of a rotation reaching every
//! appliance at once) costs a few fsyncs (file) or transactions (store), not N, while each
//! caller still returns only once its own line is durable.
//!
//! Invariants: the chain is written only here, in queue order, so one caller's lines are
//! consecutive and the chain stays linear; a group is answered only after the sink says it
//! is durable, and a failed group fails every caller in it (none of its lines is
//! acknowledged). The chaining and record format are the sink's ([`crate::audit`]).

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::{append_to_store, AuditSink, Authority, QueuedAudit};
use crate::audit::{AuditEvent, MAX_GROUP, MAX_STORE_GROUP};
use crate::store::AnyStore;

impl Authority {
    /// Runs until the authority shuts down, then writes what was queued before it did and
    /// refuses the rest (callers learn the writer stopped).
    pub(super) async fn audit_writer(self, mut queue: mpsc::UnboundedReceiver<QueuedAudit>) {
        loop {
            let first = tokio::select! {
                q = queue.recv() => q,
                () = self.stopping() => None,
            };
            let Some(first) = first else { break };
            let group = self.take_group(first, &mut queue).await;
            self.write_group(group).await;
        }
        queue.close();
        while let Ok(first) = queue.try_recv() {
            let group = self.take_group(first, &mut queue).await;
            self.write_group(group).await;
        }
    }

    /// `first` and whatever else is queued now, up to one durable write of the sink.
    async fn take_group(
        &self,
        first: QueuedAudit,
        queue: &mut mpsc::UnboundedReceiver<QueuedAudit>,
    ) -> Vec<QueuedAudit> {
        let limit = match &*self.inner.audit.lock().await {
            AuditSink::File(_) => MAX_GROUP,
            AuditSink::Store(_) => MAX_STORE_GROUP,
        };
        let mut lines = first.0.len();
        let mut group = vec![first];
        while lines < limit {
            let Ok(next) = queue.try_recv() else { break };
            lines += next.0.len();
            group.push(next);
        }
        group
    }

    /// Appends the group's lines in queue order and answers each caller.
    async fn write_group(&self, group: Vec<QueuedAudit>) {
        let mut events: Vec<AuditEvent> = Vec::new();
        let mut waiting = Vec::with_capacity(group.len());
        for (mut e, done) in group {
            waiting.push((e.len() as u64, done));
            events.append(&mut e);
        }
        let lines = events.len() as u64;
        let result = if events.is_empty() {
            self.chain_tip().await
        } else {
            self.append_group(events).await
        };
        // `last` is the sequence number of the group's last line: each caller's last line
        // follows from the lines queued before its own.
        let mut seq = result.as_ref().map_or(0, |last| last - lines);
        for (n, done) in waiting {
            seq += n;
            let _ = done.send(result.clone().map(|_| seq));
        }
    }

    /// Writes `events` as one group; the sequence number of its last line.
    async fn append_group(&self, events: Vec<AuditEvent>) -> std::result::Result<u64, String> {
        let mut sink = self.inner.audit.lock().await;
        let (writes, last) = match &mut *sink {
            AuditSink::File(log) => {
                let log = log.clone();
                tokio::task::spawn_blocking(move || {
                    let mut log = log
                        .lock()
                        .map_err(|_| "the audit log's lock is poisoned".to_owned())?;
                    let before = log.writes();
                    log.append_all(events).map_err(|e| e.to_string())?;
                    Ok((log.writes() - before, log.lines()))
                })
                .await
                .unwrap_or_else(|e| Err(format!("the audit writer failed: {e}")))?
            }
            AuditSink::Store(tip) => {
                let term = match &self.inner.store {
                    AnyStore::Replica(r) => r.term(),
                    _ => 0,
                };
                let writes = append_to_store(&self.inner.store, tip, events, term)
                    .await
                    .map_err(|e| e.to_string())?;
                (writes, tip.as_ref().map_or(0, |t| t.lines()))
            }
        };
        self.inner.audit_writes.fetch_add(writes, Ordering::Relaxed);
        Ok(last)
    }

    /// The sequence number of the chain's last line as this writer knows it.
    async fn chain_tip(&self) -> std::result::Result<u64, String> {
        match &*self.inner.audit.lock().await {
            AuditSink::File(log) => log
                .lock()
                .map(|l| l.lines())
                .map_err(|_| "the audit log's lock is poisoned".to_owned()),
            AuditSink::Store(tip) => Ok(tip.as_ref().map_or(0, |t| t.lines())),
        }
    }

    /// Durable writes the audit writer made: fsyncs of the log file, or store transactions.
    pub fn audit_writes(&self) -> u64 {
        self.inner.audit_writes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {

    use crate::audit::AuditEvent;
    use crate::authority::Authority;
    use crate::config::AuthorityConfig;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_lines_form_one_chain_in_fewer_writes() {
        let dir = tempfile::tempdir().unwrap();
        let kek_file = dir.path().join("kek");
        std::fs::write(&kek_file, hex::encode([7u8; 32])).unwrap();
        let cfg = AuthorityConfig::on_loopback(dir.path().join("authority"), kek_file);
        let authority = Authority::start(&cfg).await.unwrap();
        let lines_before = authority.verify_audit().await.unwrap().lines;
        let writes_before = authority.audit_writes();
        const CALLERS: u64 = 400;
        let calls: Vec<_> = (0..CALLERS)
            .map(|i| {
                let a = authority.clone();
                tokio::spawn(async move {
                    // Every fifth caller appends two lines, which must stay together.
                    let mut events = vec![AuditEvent::Rotated {
                        appliance: format!("a{i}"),
                        epoch: i,
                    }];
                    if i % 5 == 0 {
                        events.push(AuditEvent::Escrowed {
                            appliance: format!("a{i}"),
                            epoch: i,
                        });
                    }
                    let n = events.len() as u64;
                    (i, n, a.audit_all(events).await.unwrap())
                })
            })
            .collect();
        let mut answered = Vec::new();
        for c in calls {
            answered.push(c.await.unwrap());
        }
        let verified = authority.verify_audit().await.unwrap();
        let total: u64 = answered.iter().map(|(_, n, _)| n).sum();
        assert_eq!(verified.lines, lines_before + total);
        let records = authority.audit_records().await.unwrap();
        for (i, n, last) in &answered {
            // The caller's lines end at the sequence number it was told, in its order.
            let mine = &records[(last - n) as usize..*last as usize];
            assert_eq!(mine[0].seq, last - n + 1);
            assert!(
                matches!(&mine[0].event, AuditEvent::Rotated { appliance, .. } if *appliance == format!("a{i}")),
                "line {} is not caller {i}'s: {:?}",
                mine[0].seq,
                mine[0].event
            );
            if *n == 2 {
                assert!(matches!(&mine[1].event, AuditEvent::Escrowed { epoch, .. } if epoch == i));
            }
        }
        let writes = authority.audit_writes() - writes_before;
        assert!(
            writes < total,
            "{total} lines took {writes} writes: not grouped"
        );
        authority.shutdown();
    }
}
