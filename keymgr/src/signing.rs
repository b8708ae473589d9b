//! ECDSA P-256 signatures by certificate keys over domain-separated messages: one mechanism
//! for everything the key plane signs outside TLS (metric advertisements, operator tokens).
//!
//! A signature covers [`signed_text`]: a domain label that names what is signed, the
//! signer's id, a NUL (ids never contain one) and the message; a signature made for one
//! domain or signer never verifies as another's.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
};

use crate::{Error, Result};

/// The bytes a signature covers.
pub fn signed_text(domain: &[u8], signer: &str, message: &[u8]) -> Vec<u8> {
    let mut text = Vec::with_capacity(domain.len() + signer.len() + 1 + message.len());
    text.extend_from_slice(domain);
    text.extend_from_slice(signer.as_bytes());
    text.push(0);
    text.extend_from_slice(message);
    text
}

/// Signs with a certificate's private key.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer with a PKCS#8 ECDSA P-256 key.
    pub fn from_pkcs8(key: &[u8]) -> Result<Self> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key)
            .map_err(|_| Error::Signature("the certificate key is not an ECDSA P-256 key"))?;
        Ok(Self {
            key,
            rng: SystemRandom::new(),
        })
    }

    /// The signature (ASN.1 DER) over [`signed_text`].
    pub fn sign(&self, domain: &[u8], signer: &str, message: &[u8]) -> Result<Vec<u8>> {
        let signature = self
            .key
            .sign(&self.rng, &signed_text(domain, signer, message))
            .map_err(|_| Error::Signature("signing failed"))?;
        Ok(signature.as_ref().to_vec())
    }
}

/// Verifies signatures against a certificate's public key.
#[derive(Debug, Clone)]
pub struct Verifier {
    public_key: Vec<u8>,
}

impl Verifier {
    /// A verifier for the key `cert` (DER) certifies.
    pub fn from_certificate(cert: &[u8]) -> Result<Self> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert)
            .map_err(|e| Error::Certificate(format!("unparsable certificate: {e}")))?;
        Ok(Self {
            public_key: parsed.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// Whether `signature` was made over [`signed_text`] of these.
    pub fn verify(
        &self,
        domain: &[u8],
        signer: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.public_key)
            .verify(&signed_text(domain, signer, message), signature)
            .map_err(|_| Error::Signature("the signature does not verify"))
    }
}
