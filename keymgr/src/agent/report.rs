//! Operator actions at this appliance (reloads, refused API requests), reported to the
//! authority for its audit log over the feed connection.
//!
//! Reports wait in a bounded queue while the authority is out of reach and go out, oldest
//! first, once the feed is live again; a report leaves the queue only after its frame was
//! written. A queue that is full drops the newest and counts it, so a flood of refused
//! requests cannot grow the agent's memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::KeyAgent;
use crate::audit::ApplianceReport;
use crate::proto::{self, Message};
use crate::Result;

/// Reports held while the authority cannot be reached.
pub const REPORT_QUEUE: usize = 256;

/// The queue of reports not yet written to the authority.
#[derive(Debug, Default)]
pub(super) struct Reports {
    queue: Mutex<VecDeque<ApplianceReport>>,
    queued: Notify,
    dropped: AtomicU64,
}

impl Reports {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<ApplianceReport>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until a report is queued (at once if one already is).
    pub(super) async fn ready(&self) {
        loop {
            let notified = self.queued.notified();
            if !self.queue().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Writes every queued report to `send`, each removed once written.
    pub(super) async fn flush(&self, send: &mut quinn::SendStream) -> Result<()> {
        loop {
            let Some(next) = self.queue().front().cloned() else {
                return Ok(());
            };
            proto::write_frame(send, &Message::Report(next)).await?;
            self.queue().pop_front();
        }
    }
}

impl KeyAgent {
    /// Queues `report` for the authority's audit log; it is sent as soon as the feed is
    /// live. Returns false when the queue was full and the report was dropped.
    pub fn report(&self, report: ApplianceReport) -> bool {
        let reports = &self.inner.reports;
        {
            let mut queue = reports.queue();
            if queue.len() >= REPORT_QUEUE {
                let dropped = reports.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        "audit reports for the authority: queue full, {dropped} dropped so far"
                    );
                }
                return false;
            }
            queue.push_back(report);
        }
        reports.queued.notify_one();
        true
    }

    /// Reports waiting for the authority, and reports dropped because the queue was full.
    pub fn reports_pending(&self) -> (usize, u64) {
        let reports = &self.inner.reports;
        (
            reports.queue().len(),
            reports.dropped.load(Ordering::Relaxed),
        )
    }
}
