//! The RustCrypto backend: `aes-gcm` and `chacha20poly1305`, pure Rust.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use chacha20poly1305::ChaCha20Poly1305;

use super::{Aead, Suite, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};

enum Key {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
    ChaCha(Box<ChaCha20Poly1305>),
}

/// A RustCrypto AEAD key.
pub struct RustCryptoAead {
    suite: Suite,
    key: Key,
}

impl std::fmt::Debug for RustCryptoAead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustCryptoAead")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl RustCryptoAead {
    /// Builds a key; `key` must have the suite's length.
    pub fn new(suite: Suite, key: &[u8]) -> Result<Self> {
        let bad = |_| Error::BadKeyLength {
            suite,
            expected: suite.key_len(),
            got: key.len(),
        };
        let key = match suite {
            Suite::AesGcm128 | Suite::AesGmac128 => {
                Key::Aes128(Box::new(Aes128Gcm::new_from_slice(key).map_err(bad)?))
            }
            Suite::AesGcm256 | Suite::AesGmac256 => {
                Key::Aes256(Box::new(Aes256Gcm::new_from_slice(key).map_err(bad)?))
            }
            Suite::ChaCha20Poly1305 => Key::ChaCha(Box::new(
                ChaCha20Poly1305::new_from_slice(key).map_err(bad)?,
            )),
        };
        Ok(Self { suite, key })
    }
}

impl Aead for RustCryptoAead {
    fn suite(&self) -> Suite {
        self.suite
    }

    #[inline]
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        let nonce = nonce.into();
        let tag = match &self.key {
            Key::Aes128(k) => k.encrypt_in_place_detached(nonce, aad, in_out),
            Key::Aes256(k) => k.encrypt_in_place_detached(nonce, aad, in_out),
            Key::ChaCha(k) => k.encrypt_in_place_detached(nonce, aad, in_out),
        }
        // Fails only for inputs beyond the suite's limit, far above any packet.
        .map_err(|_| Error::BufferTooSmall {
            needed: in_out.len(),
            got: 0,
        })?;
        Ok(tag.into())
    }

    #[inline]
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        let nonce = nonce.into();
        let tag = tag.into();
        match &self.key {
            Key::Aes128(k) => k.decrypt_in_place_detached(nonce, aad, in_out, tag),
            Key::Aes256(k) => k.decrypt_in_place_detached(nonce, aad, in_out, tag),
            Key::ChaCha(k) => k.decrypt_in_place_detached(nonce, aad, in_out, tag),
        }
        .map_err(|_| Error::AuthenticationFailed)
    }
}
