//! Secrets at rest: AES-256-GCM under a key-encryption key (KEK) from the operator; and
//! sealed boxes to the authority's escrow key (X25519, HKDF-SHA256, AES-256-GCM).

use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cpclink_diagnostics::Diagnostic;
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
        let config = |reason: String, fix: &str| {
            Error::Config(Diagnostic::new(path.display().to_string(), field, reason).with_fix(fix))
        };
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            config(
                format!("cannot read the key-encryption key ({e})"),
                "create it with `head -c32 /dev/urandom | xxd -p -c64 > FILE`",
            )
        })?);
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), key.as_mut()).map_err(|_| {
            config(
                "is not a 256-bit key".into(),
                "write exactly 64 hex digits into it",
            )
        })?;
        Ok(Self(key))
    }

    /// A 256-bit secret for `label` derived from the KEK (HMAC-SHA256): the same on every
    /// start and on every holder of the KEK, and telling nothing of the KEK itself.
    pub fn derive(&self, label: &str) -> Zeroizing<[u8; 32]> {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, self.0.as_ref());
        let tag = aws_lc_rs::hmac::sign(&key, label.as_bytes());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(tag.as_ref());
        out
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

/// Length of an X25519 public key.
pub const ESCROW_PUBLIC_LEN: usize = 32;

fn box_key(shared: &[u8], ephemeral: &[u8], recipient: &[u8], label: &str) -> Result<LessSafeKey> {
    use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
    // Both public keys in the salt bind the box to this exchange; the label binds it to
    // what it holds.
    let mut salt = ephemeral.to_vec();
    salt.extend_from_slice(recipient);
    let prk = Salt::new(HKDF_SHA256, &salt).extract(shared);
    let info = [label.as_bytes()];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| Error::KeyWrap("escrow key derivation failed"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// Seals `secret` so that only the holder of the X25519 private key behind `recipient`
/// can open it: a fresh ephemeral key pair per box, so the all-zero nonce is used once
/// per key. Output: ephemeral public key ‖ ciphertext ‖ tag.
pub fn seal_to(recipient: &[u8], label: &str, secret: &[u8]) -> Result<Vec<u8>> {
    use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, X25519};
    let fail = |_| Error::KeyWrap("escrow sealing failed");
    let ephemeral = PrivateKey::generate(&X25519).map_err(fail)?;
    let public = ephemeral.compute_public_key().map_err(fail)?;
    let key = agree(
        &ephemeral,
        UnparsedPublicKey::new(&X25519, recipient),
        Error::KeyWrap("bad escrow public key"),
        |shared| box_key(shared, public.as_ref(), recipient, label),
    )?;
    let mut buf = secret.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; NONCE_LEN]),
        Aad::from(label.as_bytes()),
        &mut buf,
    )
    .map_err(|_| Error::KeyWrap("escrow sealing failed"))?;
    let mut out = public.as_ref().to_vec();
    out.extend_from_slice(&buf);
    zeroize::Zeroize::zeroize(&mut buf);
    Ok(out)
}

/// The authority's escrow key pair (X25519). Its private half is stored only sealed under
/// the KEK.
pub struct EscrowKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for EscrowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EscrowKey(..)")
    }
}

impl EscrowKey {
    /// A fresh key pair.
    pub fn generate() -> Result<Self> {
        Ok(Self(random_bytes::<32>()?))
    }

    /// The key from its 32 private bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(Error::KeyWrap("escrow key has the wrong length"));
        }
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    /// The private bytes, for sealing under the KEK.
    pub fn private_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    fn private(&self) -> Result<aws_lc_rs::agreement::PrivateKey> {
        use aws_lc_rs::agreement::{PrivateKey, X25519};
        PrivateKey::from_private_key(&X25519, self.0.as_ref())
            .map_err(|_| Error::KeyWrap("bad escrow private key"))
    }

    /// The public key appliances seal to.
    pub fn public(&self) -> Result<Vec<u8>> {
        Ok(self
            .private()?
            .compute_public_key()
            .map_err(|_| Error::KeyWrap("bad escrow private key"))?
            .as_ref()
            .to_vec())
    }

    /// Opens what [`seal_to`] sealed to this key under the same `label`.
    pub fn open(&self, label: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        use aws_lc_rs::agreement::{agree, UnparsedPublicKey, X25519};
        if sealed.len() < ESCROW_PUBLIC_LEN + 16 {
            return Err(Error::KeyWrap("escrowed secret too short"));
        }
        let (ephemeral, body) = sealed.split_at(ESCROW_PUBLIC_LEN);
        let recipient = self.public()?;
        let key = agree(
            &self.private()?,
            UnparsedPublicKey::new(&X25519, ephemeral),
            Error::KeyWrap("bad ephemeral key in an escrowed secret"),
            |shared| box_key(shared, ephemeral, &recipient, label),
        )?;
        let mut buf = Zeroizing::new(body.to_vec());
        let len = key
            .open_in_place(
                Nonce::assume_unique_for_key([0; NONCE_LEN]),
                Aad::from(label.as_bytes()),
                buf.as_mut(),
            )
            .map_err(|_| Error::KeyWrap("wrong escrow key or tampered escrowed secret"))?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escrow_boxes_open_only_with_the_escrow_key_and_label() {
        let escrow = EscrowKey::generate().unwrap();
        let public = escrow.public().unwrap();
        let sealed = seal_to(&public, "escrow/a/3", b"master key").unwrap();
        assert_eq!(
            &escrow.open("escrow/a/3", &sealed).unwrap()[..],
            b"master key"
        );
        // Fresh ephemeral key per box: the same secret never seals the same way twice.
        assert_ne!(
            sealed,
            seal_to(&public, "escrow/a/3", b"master key").unwrap()
        );
        assert!(escrow.open("escrow/b/3", &sealed).is_err());
        assert!(EscrowKey::generate()
            .unwrap()
            .open("escrow/a/3", &sealed)
            .is_err());
        let mut bad = sealed.clone();
        bad[40] ^= 1;
        assert!(escrow.open("escrow/a/3", &bad).is_err());
        let again = EscrowKey::from_bytes(escrow.private_bytes()).unwrap();
        assert_eq!(again.public().unwrap(), public);
    }

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
