//! AEAD backends behind one trait, and the PSP key derivation.
//!
//! Every backend seals and opens in place on caller buffers; the packet layer hands them
//! disjoint slices of one packet buffer, so nothing is copied.

/// ring and aws-lc-rs share the `LessSafeKey` API: one definition serves both backends, and
/// only the open call, whose tag argument differs, is given per library.
macro_rules! less_safe_key_aead {
    ($(#[$doc:meta])* $name:ident, $lib:ident,
     open: |$key:ident, $nonce:ident, $aad:ident, $tag:ident, $in_out:ident| $open:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            suite: $crate::crypto::Suite,
            key: $lib::aead::LessSafeKey,
        }

        impl $name {
            /// Builds a key; `key` must have the suite's length.
            pub fn new(suite: $crate::crypto::Suite, key: &[u8]) -> $crate::Result<Self> {
                use $crate::crypto::Suite;
                use $lib::aead::{UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};
                let algorithm = match suite {
                    Suite::AesGcm128 | Suite::AesGmac128 => &AES_128_GCM,
                    Suite::AesGcm256 | Suite::AesGmac256 => &AES_256_GCM,
                    Suite::ChaCha20Poly1305 => &CHACHA20_POLY1305,
                };
                let unbound = UnboundKey::new(algorithm, key).map_err(|_| {
                    $crate::Error::BadKeyLength { suite, expected: suite.key_len(), got: key.len() }
                })?;
                Ok(Self { suite, key: $lib::aead::LessSafeKey::new(unbound) })
            }
        }

        impl $crate::crypto::Aead for $name {
            fn suite(&self) -> $crate::crypto::Suite {
                self.suite
            }

            #[inline]
            fn seal_in_place(
                &self,
                nonce: &[u8; $crate::crypto::NONCE_LEN],
                aad: &[u8],
                in_out: &mut [u8],
            ) -> $crate::Result<[u8; $crate::crypto::TAG_LEN]> {
                let tag = self
                    .key
                    .seal_in_place_separate_tag(
                        $lib::aead::Nonce::assume_unique_for_key(*nonce),
                        $lib::aead::Aad::from(aad),
                        in_out,
                    )
                    // A seal fails only for inputs beyond the suite's limit (2^36 bytes for
                    // GCM), far above any packet.
                    .map_err(|_| $crate::Error::BufferTooSmall { needed: in_out.len(), got: 0 })?;
                let mut out = [0u8; $crate::crypto::TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                Ok(out)
            }

            #[inline]
            fn open_in_place(
                &self,
                nonce: &[u8; $crate::crypto::NONCE_LEN],
                aad: &[u8],
                in_out: &mut [u8],
                tag: &[u8; $crate::crypto::TAG_LEN],
            ) -> $crate::Result<()> {
                let $key = &self.key;
                let $nonce = $lib::aead::Nonce::assume_unique_for_key(*nonce);
                let $aad = $lib::aead::Aad::from(aad);
                let $tag = tag;
                let $in_out = in_out;
                $open.map(|_| ()).map_err(|_| $crate::Error::AuthenticationFailed)
            }
        }
    };
}

mod aws_lc;
mod kdf;
mod ring_backend;
mod rust_crypto;

use std::fmt;
use std::str::FromStr;

pub use aws_lc::AwsLcAead;
pub use kdf::{derive_sa_key, SaKey};
pub use ring_backend::RingAead;
pub use rust_crypto::RustCryptoAead;

pub use crate::wire::Suite;

use crate::error::{Error, Result};

/// Length of the AEAD nonce: SPI ‖ IV.
pub const NONCE_LEN: usize = 12;
/// Length of the authentication tag (the PSP ICV).
pub const TAG_LEN: usize = 16;

/// An AEAD library.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// aws-lc-rs: the default, fastest measured on x86-64 with AES-NI/VAES.
    #[default]
    AwsLc,
    /// ring.
    Ring,
    /// RustCrypto `aes-gcm` and `chacha20poly1305`: pure Rust, portable.
    #[serde(rename = "rustcrypto")]
    RustCrypto,
}

impl Backend {
    /// All backends.
    pub const ALL: [Backend; 3] = [Backend::AwsLc, Backend::Ring, Backend::RustCrypto];

    /// The backend's name in configs and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::AwsLc => "aws-lc-rs",
            Backend::Ring => "ring",
            Backend::RustCrypto => "rustcrypto",
        }
    }

    /// Builds this backend's cipher for a suite and key.
    pub fn cipher(self, suite: Suite, key: &[u8]) -> Result<Cipher> {
        if key.len() != suite.key_len() {
            return Err(Error::BadKeyLength {
                suite,
                expected: suite.key_len(),
                got: key.len(),
            });
        }
        Ok(match self {
            Backend::AwsLc => Cipher::AwsLc(AwsLcAead::new(suite, key)?),
            Backend::Ring => Cipher::Ring(RingAead::new(suite, key)?),
            Backend::RustCrypto => Cipher::RustCrypto(RustCryptoAead::new(suite, key)?),
        })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                format!("unknown crypto backend {s:?} (expected aws-lc-rs, ring or rustcrypto)")
            })
    }
}

/// One AEAD key of one backend, sealing and opening in place.
///
/// For the GMAC suites, `in_out` is authenticated but left as it is: callers pass the whole
/// packet as `aad` and an empty `in_out` (see [`crate::psp`]).
pub trait Aead: Send {
    /// The suite this key is for.
    fn suite(&self) -> Suite;

    /// Encrypts `in_out` in place and returns the tag.
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN]>;

    /// Verifies `tag` and decrypts `in_out` in place; on failure `in_out` holds no plaintext.
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()>;
}

/// A key of any backend, dispatched statically: what an SA holds.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Cipher {
    /// aws-lc-rs.
    AwsLc(AwsLcAead),
    /// ring.
    Ring(RingAead),
    /// RustCrypto.
    RustCrypto(RustCryptoAead),
}

impl Cipher {
    /// The backend of this key.
    pub fn backend(&self) -> Backend {
        match self {
            Cipher::AwsLc(_) => Backend::AwsLc,
            Cipher::Ring(_) => Backend::Ring,
            Cipher::RustCrypto(_) => Backend::RustCrypto,
        }
    }
}

impl Aead for Cipher {
    fn suite(&self) -> Suite {
        match self {
            Cipher::AwsLc(c) => c.suite(),
            Cipher::Ring(c) => c.suite(),
            Cipher::RustCrypto(c) => c.suite(),
        }
    }

    #[inline]
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        match self {
            Cipher::AwsLc(c) => c.seal_in_place(nonce, aad, in_out),
            Cipher::Ring(c) => c.seal_in_place(nonce, aad, in_out),
            Cipher::RustCrypto(c) => c.seal_in_place(nonce, aad, in_out),
        }
    }

    #[inline]
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        match self {
            Cipher::AwsLc(c) => c.open_in_place(nonce, aad, in_out, tag),
            Cipher::Ring(c) => c.open_in_place(nonce, aad, in_out, tag),
            Cipher::RustCrypto(c) => c.open_in_place(nonce, aad, in_out, tag),
        }
    }
}

#[cfg(test)]
mod tests;
