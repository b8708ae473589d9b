//! Renewing this appliance's certificate before it expires, over the authority connection
//! the current certificate authenticated: no token is needed while it is valid.
//!
//! A renewal is due two thirds of the way from when the certificate was received (or the
//! agent started) to its expiry, so a failed attempt leaves a third of the lifetime for
//! retries. The renewed certificate is committed to the agent's store before anything
//! uses it, so a crash in between restarts on either the old (still valid) certificate or
//! the new one, never on none. The key pair is kept: peers verify metric signatures against
//! the certificate of the connection, and the key never leaves the appliance either way.

use std::time::{Duration, Instant, SystemTime};

use super::KeyAgent;
use crate::backoff::{Backoff, RETRY_CAP, RETRY_FIRST};
use crate::pki::{self, KeyedCert};
use crate::proto::{self, Message};
use crate::store::{Store, Write};
use crate::{tls, Error, Result};

/// How long a renewal request may take.
const RENEW_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a peer's certificate that the directory copy does not list may wait for the
/// delta that lists it.
const LISTING_WAIT: Duration = Duration::from_secs(2);

/// When `cert` should be renewed: two thirds of the way from now to its expiry (now, if it
/// cannot be read or has expired).
pub(super) fn due(cert: &[u8]) -> Instant {
    let left = pki::not_after(cert)
        .ok()
        .and_then(|end| end.duration_since(SystemTime::now()).ok())
        .unwrap_or_default();
    super::later(left * 2 / 3)
}

/// Whether `cert` has expired (or cannot be read).
pub(super) fn expired(cert: &[u8]) -> bool {
    pki::not_after(cert).map_or(true, |end| end <= SystemTime::now())
}

impl KeyAgent {
    /// The TLS client configuration with this appliance's current certificate.
    pub(super) fn client(&self) -> quinn::ClientConfig {
        self.inner
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(super) fn feed(&self) -> std::sync::MutexGuard<'_, Option<quinn::Connection>> {
        self.inner
            .feed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn identity(&self) -> KeyedCert {
        self.inner
            .identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn renew_at(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.inner
            .renew_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The serial of the certificate this agent presents now (hex).
    pub fn certificate_serial(&self) -> String {
        pki::serial_of(&self.identity().cert).unwrap_or_default()
    }

    /// The serial the directory lists for this appliance when it is none of `known`: a
    /// renewal this agent never received the reply of.
    fn listed_elsewhere(&self, known: &[String]) -> Option<String> {
        let listed = self
            .dir()
            .appliances
            .get(&self.inner.id)
            .filter(|e| !e.revoked)?
            .cert_serial
            .clone();
        (!known.iter().any(|k| pki::same_serial(k, &listed))).then_some(listed)
    }

    /// Whether `conn`'s peer presents the certificate the directory lists for `peer`,
    /// waiting up to [`LISTING_WAIT`] for directory updates when it does not yet. A peer
    /// presents its renewed certificate as soon as it has it, while the delta that lists
    /// the new serial (committed before the renewal was answered) may still be on its way
    /// here: refusing at once made two appliances that renewed together refuse each other.
    pub(super) async fn holds_listed_certificate_soon(
        &self,
        conn: &quinn::Connection,
        peer: &str,
    ) -> bool {
        // Subscribed before the first check, so no update between the two is missed.
        let mut version = self.directory_version();
        let deadline = tokio::time::Instant::now() + LISTING_WAIT;
        loop {
            if self.holds_listed_certificate(conn, peer) {
                return true;
            }
            match tokio::time::timeout_at(deadline, version.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    /// Renews the certificate when it is due, or at once when the directory lists another
    /// serial for this appliance than any it held or already renewed for (the reply of a
    /// renewal was lost: see `authority::renew`), retrying with jittered backoff while the
    /// authority cannot be asked; ends when the agent stops.
    pub(super) async fn renewal_loop(self) {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP);
        let mut directory = self.directory_version();
        // Serials this agent held, and listed serials it has renewed because of: a delta
        // may list the previous serial for a moment after a renewal.
        let mut known = vec![self.certificate_serial()];
        loop {
            let due = *self.renew_at();
            // Woken at least once a minute to notice that the agent stopped.
            let wait = due
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(60));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = directory.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            if self.inner.endpoint.local_addr().is_err() || self.is_revoked() {
                return;
            }
            let lost = self.listed_elsewhere(&known);
            if Instant::now() < due && lost.is_none() {
                continue;
            }
            if let Some(listed) = lost {
                tracing::warn!(
                    "the directory lists certificate {listed} for this appliance, not {}: renewing now",
                    self.certificate_serial()
                );
                known.push(listed);
            }
            // A few suffice: a lagging delta lists only the serial just before.
            if known.len() > 8 {
                known.drain(..known.len() - 8);
            }
            match self.renew().await {
                Ok(serial) => {
                    backoff.reset();
                    tracing::info!("certificate renewed: now {serial}");
                    known.push(serial);
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(
                        "renewing the certificate failed ({e}); trying again in {:.1} s",
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Asks the authority for a renewed certificate over the live feed's connection,
    /// stores it durably, then presents it from now on. Returns its serial.
    pub async fn renew(&self) -> Result<String> {
        let conn = self
            .feed()
            .clone()
            .ok_or_else(|| Error::Timeout("no live connection to the authority".into()))?;
        // Until the renewed certificate is presented, no connection to a peer begins.
        let _renewing = self.inner.renewing.write().await;
        let current = self.identity();
        let csr = pki::renewal_csr(&self.inner.id, &current.key)?;
        let cert = tokio::time::timeout(RENEW_TIMEOUT, async {
            let (mut send, mut recv) = conn.open_bi().await?;
            proto::write_frame(&mut send, &Message::Renew { csr }).await?;
            send.finish()?;
            match proto::read_frame::<_, Message>(&mut recv).await? {
                Some(Message::Renewed { cert }) => Ok(cert),
                Some(Message::Error { reason }) => Err(Error::Refused(reason)),
                other => Err(Error::Frame(format!("unexpected renewal reply {other:?}"))),
            }
        })
        .await
        .map_err(|_| Error::Timeout("certificate renewal".into()))??;
        if pki::identity_of(&cert)?.appliance != self.inner.id
            || pki::public_key_of(&cert)? != pki::public_key_of(&current.cert)?
        {
            return Err(Error::Certificate(
                "the renewed certificate names another appliance or key".into(),
            ));
        }
        // Durable before it is used: the old certificate stays in the store until then.
        self.inner
            .store
            .apply(vec![Write::Put("identity/cert".into(), cert.clone())])
            .await?;
        let renewed = KeyedCert::from_chain(&cert, current.key.clone())?;
        let server = tls::server_config(&self.inner.ca_cert, &renewed, true)?;
        let client = tls::client_config(&self.inner.ca_cert, Some(&renewed))?;
        self.inner.endpoint.set_server_config(Some(server));
        *self
            .inner
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        *self.renew_at() = due(&renewed.cert);
        let serial = pki::serial_of(&renewed.cert)?;
        *self
            .inner
            .identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = renewed;
        Ok(serial)
    }
}
