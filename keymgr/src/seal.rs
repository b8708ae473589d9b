//! Secrets at rest: AES-256-GCM under a key-encryption key (KEK) from the operator.

use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Fills a fresh secret from the system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>> {
    let mut out = Zeroizing::new([0u8; N]);
    SystemRandom::new()
        .fill(out.as_mut())
        .map_err(|_| Error::KeyWrap("system random generator failed"))?;
    Ok(out)
}

/// The key-encryption key. Never logged; wiped on drop.
pub struct Kek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// A KEK from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Reads a KEK file: 64 hex digits (surrounding whitespace ignored).
    pub fn load(path: &Path, field: &str) -> Result<Self> {
        let config = |reason: String| Error::Config {
            file: path.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            config(format!(
                "cannot read the key-encryption key ({e}); create it with `head -c32 /dev/urandom | xxd -p -c64 > FILE`"
            ))
        })?);
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), key.as_mut())
            .map_err(|_| config("must hold exactly 64 hex digits (a 256-bit key)".into()))?;
        Ok(Self(key))
    }

    fn key(&self) -> Result<LessSafeKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, self.0.as_ref())
            .map_err(|_| Error::KeyWrap("bad key-encryption key"))?;
        Ok(LessSafeKey::new(unbound))
    }

    /// Seals `secret`, binding it to `label` (what the secret is, so a sealed blob cannot be
    /// swapped for another). Output: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, label: &str, secret: &[u8]) -> Result<Vec<u8>> {
        let nonce = random_bytes::<NONCE_LEN>()?;
        let mut buf = secret.to_vec();
        self.key()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(label.as_bytes()),
                &mut buf,
            )
            .map_err(|_| Error::KeyWrap("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        zeroize::Zeroize::zeroize(&mut buf);
        Ok(out)
    }

    /// Opens what [`Kek::seal`] produced under the same `label`.
    pub fn open(&self, label: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(Error::KeyWrap("sealed secret too short"));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        let mut buf = Zeroizing::new(body.to_vec());
        let len = self
            .key()?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(label.as_bytes()),
                buf.as_mut(),
            )
            .map_err(|_| Error::KeyWrap("wrong key-encryption key or tampered secret"))?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_binds_label_and_key() {
        let kek = Kek::from_bytes([7; 32]);
        let sealed = kek.seal("master/0", b"secret").unwrap();
        assert_eq!(&kek.open("master/0", &sealed).unwrap()[..], b"secret");
        assert!(kek.open("master/1", &sealed).is_err());
        assert!(Kek::from_bytes([8; 32]).open("master/0", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[14] ^= 1;
        assert!(kek.open("master/0", &bad).is_err());
    }
}
