//! Signed compute-metric advertisements between appliances (sans-IO).
//!
//! An appliance advertises the CATS metrics of the services its centre hosts to every peer
//! it may talk to, over the key plane's QUIC channels ([`crate::proto::Message::Metrics`]).
//! The advertisement is opaque here. Its signature is ECDSA P-256 with SHA-256 (ASN.1 DER)
//! by the sender's certificate key, over [`signed_text`]: a domain label, the sender's id
//! and the advertisement. So a receiver verifies it against the very certificate the
//! sender presented on the mTLS connection, which the agent has already matched to the
//! serial the directory lists; the signature then lets the appliance hold the sender to
//! what it advertised, apart from the channel that carried it.
//!
//! Receipt is rate-limited per peer before any signature is checked ([`ReceiptLimiter`]),
//! so a peer cannot make the agent spend its CPU on verification.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::pki::KeyedCert;
use crate::signing::{Signer, Verifier};
use crate::{Error, Result};

/// The largest advertisement published or accepted, in bytes.
pub const MAX_ADVERTISEMENT: usize = 16 * 1024;
/// Advertisement frames accepted per second from one peer, sustained.
pub const RECEIPT_RATE: u32 = 50;
/// Advertisement frames one peer may send at once before the rate applies.
pub const RECEIPT_BURST: u32 = 50;

/// Separates these signatures from anything else the certificate key signs (TLS
/// handshakes, operator tokens): a signature over other bytes never verifies as this.
const DOMAIN: &[u8] = b"cpclink metrics v1\0";

/// The bytes a signature covers: the domain label, the sender's appliance id, a NUL (ids
/// never contain one, so the id cannot run into the advertisement) and the advertisement.
pub fn signed_text(appliance: &str, advertisement: &[u8]) -> Vec<u8> {
    crate::signing::signed_text(DOMAIN, appliance, advertisement)
}

/// Refuses an advertisement over [`MAX_ADVERTISEMENT`].
pub fn check_size(advertisement: &[u8]) -> Result<()> {
    if advertisement.len() > MAX_ADVERTISEMENT {
        return Err(Error::AdvertisementTooLarge {
            size: advertisement.len(),
            max: MAX_ADVERTISEMENT,
        });
    }
    Ok(())
}

/// Signs this appliance's advertisements with its certificate key.
#[derive(Debug)]
pub struct MetricSigner {
    appliance: String,
    signer: Signer,
}

impl MetricSigner {
    /// A signer for `appliance` with the key of its certificate (PKCS#8, P-256).
    pub fn new(appliance: &str, identity: &KeyedCert) -> Result<Self> {
        Ok(Self {
            appliance: appliance.to_owned(),
            signer: Signer::from_pkcs8(&identity.key)?,
        })
    }

    /// The signature over `advertisement` (refused if over [`MAX_ADVERTISEMENT`]).
    pub fn sign(&self, advertisement: &[u8]) -> Result<Vec<u8>> {
        check_size(advertisement)?;
        self.signer.sign(DOMAIN, &self.appliance, advertisement)
    }
}

/// Verifies one peer's advertisements against the certificate it presented.
#[derive(Debug, Clone)]
pub struct MetricVerifier {
    appliance: String,
    verifier: Verifier,
}

impl MetricVerifier {
    /// A verifier for `appliance`'s advertisements from its certificate (DER).
    pub fn from_certificate(appliance: &str, cert: &[u8]) -> Result<Self> {
        Ok(Self {
            appliance: appliance.to_owned(),
            verifier: Verifier::from_certificate(cert)?,
        })
    }

    /// Whether `signature` is the peer's over `advertisement`.
    pub fn verify(&self, advertisement: &[u8], signature: &[u8]) -> Result<()> {
        check_size(advertisement)?;
        self.verifier
            .verify(DOMAIN, &self.appliance, advertisement, signature)
    }
}

/// What happened to the advertisements peers sent, since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricCounters {
    /// Verified and delivered to the appliance.
    pub received: u64,
    /// Dropped: the signature did not verify against the sender's certificate.
    pub forged: u64,
    /// Dropped unread: the sender was over its receipt rate.
    pub flooded: u64,
    /// Dropped unverified: the advertisement was over [`MAX_ADVERTISEMENT`].
    pub oversized: u64,
}

/// The counters behind [`MetricCounters`], shared by every connection's tasks.
#[derive(Debug, Default)]
pub(crate) struct MetricTally {
    pub(crate) received: AtomicU64,
    pub(crate) forged: AtomicU64,
    pub(crate) flooded: AtomicU64,
    pub(crate) oversized: AtomicU64,
}

impl MetricTally {
    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub(crate) fn snapshot(&self) -> MetricCounters {
        MetricCounters {
            received: self.received.load(Ordering::Relaxed),
            forged: self.forged.load(Ordering::Relaxed),
            flooded: self.flooded.load(Ordering::Relaxed),
            oversized: self.oversized.load(Ordering::Relaxed),
        }
    }
}

/// One token bucket per peer (a peer's metric advertisements at an agent, an appliance's
/// audit reports at the authority): [`RECEIPT_BURST`] frames at once, refilled at
/// [`RECEIPT_RATE`] per second. Peers are those the directory allows, so the table is as
/// large as the appliance's view at most.
#[derive(Debug, Default)]
pub struct ReceiptLimiter {
    buckets: HashMap<String, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl ReceiptLimiter {
    /// Whether a frame from `peer` arriving at `now` may be read; takes a token if so.
    pub fn admit(&mut self, peer: &str, now: Instant) -> bool {
        let bucket = self
            .buckets
            .entry(peer.to_owned())
            .or_insert_with(|| Bucket {
                tokens: f64::from(RECEIPT_BURST),
                at: now,
            });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * f64::from(RECEIPT_RATE)).min(f64::from(RECEIPT_BURST));
        bucket.at = bucket.at.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets `peer` (revoked, or no longer allowed).
    pub fn forget(&mut self, peer: &str) {
        self.buckets.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::Ca;

    #[test]
    fn a_signature_verifies_against_the_signers_certificate_only() {
        let ca = Ca::generate("test ca").unwrap();
        let (a, b) = (
            crate::pki::issued_for_tests(&ca, "dc1-edge"),
            crate::pki::issued_for_tests(&ca, "dc2-edge"),
        );
        let advertisement = b"site dc1: gpu 7/10, cpu 3/10".to_vec();
        let signature = MetricSigner::new("dc1-edge", &a)
            .unwrap()
            .sign(&advertisement)
            .unwrap();
        let from_a = MetricVerifier::from_certificate("dc1-edge", &a.cert).unwrap();
        from_a.verify(&advertisement, &signature).unwrap();

        // Any altered byte of the advertisement or the signature fails.
        for i in 0..advertisement.len() {
            let mut altered = advertisement.clone();
            altered[i] ^= 1;
            assert!(from_a.verify(&altered, &signature).is_err(), "byte {i}");
        }
        let mut bad = signature.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(from_a.verify(&advertisement, &bad).is_err());

        // Another appliance's certificate does not verify it ...
        let from_b = MetricVerifier::from_certificate("dc2-edge", &b.cert).unwrap();
        assert!(from_b.verify(&advertisement, &signature).is_err());
        // ... nor does a's own certificate when the sender claims another id: the id is
        // part of what is signed.
        let as_other = MetricVerifier::from_certificate("dc2-edge", &a.cert).unwrap();
        assert!(as_other.verify(&advertisement, &signature).is_err());
    }

    #[test]
    fn the_id_cannot_run_into_the_advertisement() {
        assert_ne!(signed_text("ab", b"c"), signed_text("a", b"bc"));
        assert!(signed_text("a", b"x").starts_with(DOMAIN));
    }

    #[test]
    fn advertisements_over_the_cap_are_refused_both_ways() {
        let ca = Ca::generate("test ca").unwrap();
        let a = crate::pki::issued_for_tests(&ca, "a");
        let signer = MetricSigner::new("a", &a).unwrap();
        let verifier = MetricVerifier::from_certificate("a", &a.cert).unwrap();
        let at_cap = vec![7u8; MAX_ADVERTISEMENT];
        let signature = signer.sign(&at_cap).unwrap();
        verifier.verify(&at_cap, &signature).unwrap();
        let over = vec![7u8; MAX_ADVERTISEMENT + 1];
        assert!(matches!(
            signer.sign(&over),
            Err(Error::AdvertisementTooLarge { size, max: MAX_ADVERTISEMENT })
                if size == MAX_ADVERTISEMENT + 1
        ));
        assert!(verifier.verify(&over, &signature).is_err());
    }

    #[test]
    fn a_key_that_is_not_pkcs8_p256_is_refused() {
        let ca = Ca::generate("test ca").unwrap();
        let mut a = crate::pki::issued_for_tests(&ca, "a");
        a.key = zeroize::Zeroizing::new(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            MetricSigner::new("a", &a),
            Err(Error::Signature(_))
        ));
    }

    #[test]
    fn receipt_is_limited_per_peer_and_refills_with_time() {
        let mut limiter = ReceiptLimiter::default();
        let t0 = Instant::now();
        let admitted = (0..80).filter(|_| limiter.admit("b", t0)).count();
        assert_eq!(admitted, RECEIPT_BURST as usize);
        // Another peer has its own bucket.
        assert!(limiter.admit("c", t0));
        // 100 ms later, a tenth of a second's rate is back, no more.
        let t1 = t0 + Duration::from_millis(100);
        let admitted = (0..80).filter(|_| limiter.admit("b", t1)).count();
        assert_eq!(admitted, (RECEIPT_RATE / 10) as usize);
        // Idle for long, the bucket holds a burst, not more.
        let t2 = t1 + Duration::from_secs(60);
        let admitted = (0..200).filter(|_| limiter.admit("b", t2)).count();
        assert_eq!(admitted, RECEIPT_BURST as usize);
        // A clock read out of order never adds tokens.
        assert!(!limiter.admit("b", t0));
        limiter.forget("b");
        assert!(limiter.admit("b", t2));
    }
}
