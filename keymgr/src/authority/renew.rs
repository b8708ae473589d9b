//! Certificate renewal: an enrolled appliance asks for a fresh certificate over the
//! connection its current certificate authenticated, before that one expires, and needs no
//! token for it. An expired certificate no longer completes the handshake, so an appliance
//! that let its certificate lapse enrols again with a token.
//!
//! The renewed certificate names the identity the directory lists (not what the CSR asks
//! for), and its serial replaces the old one in the directory in the same store
//! transaction that records the certificate: peers learn of it as an upsert, and from then
//! on peers accept only the renewed certificate on new connections.
//!
//! The renewal is recorded before its reply reaches the agent, so an agent that lost the
//! reply (or stopped before storing the certificate) holds only the previous certificate.
//! The authority therefore accepts a certificate of the listed certificate's key pair on
//! its own channel, and renews for it: the agent, seeing another serial listed for itself,
//! renews again at once. Renewal keeps the key pair and a replacement is enrolled with a
//! new one, so this never lets replaced hardware back in; revocation is checked first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::Authority;
use crate::config::CERT_DAYS;
use crate::directory::Change;
use crate::pki::{self, Identity};
use crate::proto::{self, Message};
use crate::store::{Store, Write};
use crate::{Error, Result};

/// How long the certificates this authority issues are valid, in seconds.
#[derive(Debug)]
pub(super) struct CertLifetime(AtomicU64);

impl CertLifetime {
    /// `days` days.
    pub(super) fn days(days: u64) -> Self {
        // Clamped as well as checked at load: a configuration built in code skips the check.
        let days = days.clamp(*CERT_DAYS.start(), *CERT_DAYS.end());
        Self(AtomicU64::new(days.saturating_mul(86_400)))
    }

    /// The lifetime now.
    pub(super) fn get(&self) -> Duration {
        Duration::from_secs(self.0.load(Ordering::Relaxed))
    }
}

impl Authority {
    /// Issues certificates valid `lifetime` from now (at least a second), instead of the
    /// configured `cert_days`, from now on: for tests and drills of renewal and expiry.
    pub fn set_cert_lifetime(&self, lifetime: Duration) {
        self.inner
            .cert_lifetime
            .0
            .store(lifetime.as_secs().max(1), Ordering::Relaxed);
    }

    /// The key bits of `id`'s listed certificate, if it has one stored.
    async fn listed_cert(&self, id: &str) -> Option<Vec<u8>> {
        self.inner.store.get(&format!("cert/{id}")).await.ok()?
    }

    /// Whether `presented`, the certificate a connection authenticated with as `id`, is the
    /// certificate the directory lists (serial `listed`) or one of the same key pair whose
    /// renewal the agent did not receive (see the module comment).
    pub(super) async fn holds_listed_key(
        &self,
        id: &str,
        listed: &str,
        presented: &CertificateDer<'_>,
    ) -> bool {
        match pki::serial_of(presented) {
            Ok(serial) if pki::same_serial(listed, &serial) => true,
            Ok(_) => {
                let presented = pki::key_bits_of(presented).ok();
                let listed = self.listed_cert(id).await;
                presented.is_some() && listed.and_then(|c| pki::key_bits_of(&c).ok()) == presented
            }
            Err(_) => false,
        }
    }

    /// Whether `csr` asks for a certificate of the key pair of `id`'s listed certificate.
    async fn csr_for_listed_key(&self, id: &str, csr: &[u8]) -> bool {
        self.listed_cert(id)
            .await
            .is_some_and(|listed| pki::csr_is_for_key_of(csr, &listed))
    }

    /// Renews `id`'s certificate for `csr`; `presented` is the serial of the certificate
    /// its connection authenticated with, which must still be the one listed, or the CSR
    /// must be for the listed certificate's key pair (a renewal whose reply was lost). A
    /// replaced or revoked appliance does not renew. Returns the new certificate followed
    /// by its chain.
    pub(super) async fn renew(&self, id: &str, presented: &str, csr: &[u8]) -> Result<Vec<u8>> {
        let same_key = self.csr_for_listed_key(id, csr).await;
        let may_renew = |e: &crate::directory::ApplianceEntry| {
            !e.revoked && (same_key || pki::same_serial(&e.cert_serial, presented))
        };
        let centre = {
            let st = self.inner.state.lock().await;
            match st.master.live().appliances.get(id) {
                Some(e) if may_renew(e) => e.centre.clone(),
                _ => {
                    return Err(Error::NotAuthorised(format!(
                        "{id} (certificate {presented}) may not renew: not the listed certificate"
                    )))
                }
            }
        };
        let identity = Identity {
            appliance: id.to_owned(),
            centre,
        };
        // Signing is the slow part: outside the lock.
        let (cert, serial) =
            self.inner
                .ca
                .sign_csr_for(csr, &identity, self.inner.cert_lifetime.get())?;
        let mut st = self.inner.state.lock().await;
        // Checked again: a revocation or a replacement may have come meanwhile (a
        // replacement's new key pair is listed in the same transaction as its serial).
        let same_key = self.csr_for_listed_key(id, csr).await;
        let mut entry = match st.master.live().appliances.get(id) {
            Some(e) if !e.revoked && (same_key || pki::same_serial(&e.cert_serial, presented)) => {
                e.clone()
            }
            _ => {
                return Err(Error::NotAuthorised(format!(
                    "{id} was revoked or replaced while renewing"
                )))
            }
        };
        entry.cert_serial = serial.clone();
        self.commit(
            &mut st,
            Change::Upsert(entry),
            vec![Write::Put(format!("cert/{id}"), cert.to_vec())],
            None,
            format!("renew {id}: certificate {presented} -> {serial}"),
        )
        .await?;
        drop(st);
        tracing::info!("{id} renewed its certificate: {presented} -> {serial}");
        Ok(self.inner.ca.with_chain(&cert))
    }

    /// Answers a renewal request on its stream.
    pub(super) async fn answer_renewal(
        &self,
        id: &str,
        presented: &str,
        csr: &[u8],
        send: &mut quinn::SendStream,
    ) -> Result<()> {
        let reply = match self.renew(id, presented, csr).await {
            Ok(cert) => Message::Renewed { cert },
            Err(e) => Message::Error {
                reason: e.to_string(),
            },
        };
        proto::write_frame(send, &reply).await?;
        send.finish()?;
        Ok(())
    }
}
