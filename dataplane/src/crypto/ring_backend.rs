//! The ring backend.

use ring::aead::{
    Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};

use super::{Aead, Suite, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};

/// A ring AEAD key.
#[derive(Debug)]
pub struct RingAead {
    suite: Suite,
    key: LessSafeKey,
}

impl RingAead {
    /// Builds a key; `key` must have the suite's length.
    pub fn new(suite: Suite, key: &[u8]) -> Result<Self> {
        let algorithm = match suite {
            Suite::AesGcm128 | Suite::AesGmac128 => &AES_128_GCM,
            Suite::AesGcm256 | Suite::AesGmac256 => &AES_256_GCM,
            Suite::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        };
        let unbound = UnboundKey::new(algorithm, key).map_err(|_| Error::BadKeyLength {
            suite,
            expected: suite.key_len(),
            got: key.len(),
        })?;
        Ok(Self {
            suite,
            key: LessSafeKey::new(unbound),
        })
    }
}

impl Aead for RingAead {
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
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                in_out,
            )
            // ring fails a seal only for inputs beyond the suite's limit, far above any packet.
            .map_err(|_| Error::BufferTooSmall {
                needed: in_out.len(),
                got: 0,
            })?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    #[inline]
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                Tag::from(*tag),
                in_out,
                0..,
            )
            .map(|_| ())
            .map_err(|_| Error::AuthenticationFailed)
    }
}
