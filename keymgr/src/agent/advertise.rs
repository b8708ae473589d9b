//! Metric advertisements over the agents' QUIC channels: publishing this appliance's to
//! every peer it may talk to, and receiving peers' ([`crate::metrics`] signs and verifies).
//!
//! Publishing never blocks the caller: the advertisement is signed once, then each peer
//! gets it on its own stream from a task of its own, so a peer that does not answer delays
//! no other. Receipt checks, in order of cost: policy, the sender's rate, the size, then
//! the signature; only a verified advertisement reaches the appliance.

use std::sync::Arc;
use std::time::Instant;

use super::{KeyAgent, SaEvent, REQUEST_TIMEOUT};
use crate::metrics::{MetricCounters, MetricTally, MetricVerifier, ReceiptLimiter};
use crate::proto::{self, Message};
use crate::Result;

impl KeyAgent {
    /// Signs `advertisement` with this appliance's certificate key and sends it to every
    /// peer the directory lets this appliance key with (joined, not revoked, allowed by
    /// policy), each on its own stream, in the background. A peer that cannot be reached
    /// is skipped (logged at debug). Returns how many peers it was addressed to. Refused
    /// with [`crate::Error::AdvertisementTooLarge`] over
    /// [`crate::metrics::MAX_ADVERTISEMENT`]. Call it from within the agent's runtime.
    pub fn publish_metrics(&self, advertisement: Vec<u8>) -> Result<usize> {
        let signature = self.inner.signer.sign(&advertisement)?;
        let message = Arc::new(Message::Metrics {
            advertisement,
            signature,
        });
        let peers: Vec<String> = self
            .dir()
            .sa_targets(&self.inner.id)
            .iter()
            .map(|e| e.id.clone())
            .collect();
        for peer in &peers {
            let this = self.clone();
            let message = Arc::clone(&message);
            let peer = peer.clone();
            tokio::spawn(async move {
                let sent =
                    tokio::time::timeout(REQUEST_TIMEOUT, this.send_metrics(&peer, &message));
                match sent.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!("metrics not sent to {peer}: {e}"),
                    Err(_) => tracing::debug!("metrics not sent to {peer}: timed out"),
                }
            });
        }
        Ok(peers.len())
    }

    /// What became of the advertisements peers sent since the agent started.
    pub fn metric_counters(&self) -> MetricCounters {
        self.inner.metric_tally.snapshot()
    }

    async fn send_metrics(&self, peer: &str, message: &Message) -> Result<()> {
        let conn = self.connection_to(peer).await?;
        // No reply comes: the receiving side of the stream is dropped at once.
        let (mut send, _recv) = conn.open_bi().await?;
        proto::write_frame(&mut send, message).await?;
        send.finish()?;
        Ok(())
    }

    /// Handles one advertisement from `peer`, whose connection presented the certificate
    /// `verifier` was built from (`None`: it could not be read, so nothing verifies).
    pub(super) fn receive_metrics(
        &self,
        peer: &str,
        verifier: Option<&MetricVerifier>,
        advertisement: Vec<u8>,
        signature: &[u8],
    ) {
        if !self.dir().allows(&self.inner.id, peer) {
            return;
        }
        let tally = &self.inner.metric_tally;
        if !self.metric_limiter().admit(peer, Instant::now()) {
            MetricTally::bump(&tally.flooded);
            tracing::debug!("dropped an advertisement from {peer}: over its receipt rate");
            return;
        }
        if crate::metrics::check_size(&advertisement).is_err() {
            MetricTally::bump(&tally.oversized);
            tracing::warn!(
                "dropped an advertisement of {} bytes from {peer}: over the limit",
                advertisement.len()
            );
            return;
        }
        match verifier.map(|v| v.verify(&advertisement, signature)) {
            Some(Ok(())) => {
                MetricTally::bump(&tally.received);
                self.emit(SaEvent::Metrics {
                    peer: peer.to_owned(),
                    advertisement,
                });
            }
            Some(Err(_)) | None => {
                MetricTally::bump(&tally.forged);
                tracing::warn!(
                    "dropped an advertisement from {peer}: its signature does not verify against the certificate {peer} presented"
                );
            }
        }
    }

    pub(super) fn metric_limiter(&self) -> std::sync::MutexGuard<'_, ReceiptLimiter> {
        self.inner
            .metric_limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
