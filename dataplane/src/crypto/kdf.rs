//! PSP SA key derivation: NIST SP 800-108 counter mode with AES-256-CMAC as the PRF.
//!
//! The receiver derives the key of any SPI from its master key on demand, so it keeps no
//! per-SA key state (PSP Architecture Specification v1.0, "Key Derivation").

use cmac::{Cmac, Mac};
use zeroize::Zeroizing;

use super::Suite;
use crate::sa::Spi;

/// A derived SA key: 16 or 32 bytes, wiped on drop.
#[derive(Clone)]
pub struct SaKey {
    bytes: Zeroizing<[u8; 32]>,
    len: usize,
}

impl SaKey {
    /// Wraps raw key bytes (16 or 32 of them).
    pub fn from_slice(key: &[u8]) -> Option<Self> {
        if key.len() != 16 && key.len() != 32 {
            return None;
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes[..key.len()].copy_from_slice(key);
        Some(Self {
            bytes,
            len: key.len(),
        })
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Debug for SaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SaKey({} bytes, redacted)", self.len)
    }
}

/// One 16-byte block of SP 800-108 counter-mode output.
///
/// The fixed input is `00 00 00 ctr | 'P' 'v' ('0'+version) | 00 | SPI | 00 00 | L`, with L the
/// derived key length in bits.
fn prf_block(master_key: &[u8; 32], counter: u8, suite: Suite, spi: Spi, bits: u16) -> [u8; 16] {
    let mut input = [0u8; 16];
    input[3] = counter;
    input[4] = b'P';
    input[5] = b'v';
    input[6] = b'0' + suite.version();
    input[8..12].copy_from_slice(&spi.0.to_be_bytes());
    input[14..16].copy_from_slice(&bits.to_be_bytes());
    // A 32-byte key is always a valid AES-256-CMAC key.
    let mut mac = <Cmac<aes::Aes256> as Mac>::new(master_key.into());
    mac.update(&input);
    mac.finalize().into_bytes().into()
}

/// Derives the key of `spi` for `suite` from the master key of the SPI's generation.
pub fn derive_sa_key(master_key: &[u8; 32], spi: Spi, suite: Suite) -> SaKey {
    let mut bytes = Zeroizing::new([0u8; 32]);
    if suite.key_len() == 16 {
        bytes[..16].copy_from_slice(&prf_block(master_key, 1, suite, spi, 0x0080));
    } else {
        bytes[..16].copy_from_slice(&prf_block(master_key, 1, suite, spi, 0x0100));
        bytes[16..].copy_from_slice(&prf_block(master_key, 2, suite, spi, 0x0100));
    }
    SaKey {
        bytes,
        len: suite.key_len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut mac = <Cmac<aes::Aes256> as Mac>::new_from_slice(key).unwrap();
        mac.update(msg);
        mac.finalize().into_bytes().to_vec()
    }

    const SP800_38B_KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
    const SP800_38B_MSG: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";

    /// NIST SP 800-38B, Appendix D.3 (AES-256 CMAC), all four examples.
    #[test]
    fn cmac_matches_nist_sp800_38b_aes256_examples() {
        let key = hex::decode(SP800_38B_KEY).unwrap();
        let msg = hex::decode(SP800_38B_MSG).unwrap();
        let cases = [
            (0, "028962f61b7bf89efc6b551f4667d983"),
            (16, "28a7023f452e8f82bd4bf28d8c37c35c"),
            (40, "aaf3d8f1de5640c232f5b169b9c911e6"),
            (64, "e1992190549f6ed5696a2c056c315410"),
        ];
        for (len, expected) in cases {
            assert_eq!(
                hex::encode(cmac(&key, &msg[..len])),
                expected,
                "Mlen = {len}"
            );
        }
    }

    #[test]
    fn derivation_follows_the_fixed_input_layout() {
        let master = [0x42u8; 32];
        let spi = Spi(0x1234_5678);
        let key = derive_sa_key(&master, spi, Suite::AesGcm128);
        let block = hex::decode("00000001507630001234567800000080").unwrap();
        assert_eq!(key.as_bytes(), &cmac(&master, &block)[..]);

        let key = derive_sa_key(&master, spi, Suite::AesGcm256);
        let b1 = hex::decode("00000001507631001234567800000100").unwrap();
        let b2 = hex::decode("00000002507631001234567800000100").unwrap();
        assert_eq!(&key.as_bytes()[..16], &cmac(&master, &b1)[..]);
        assert_eq!(&key.as_bytes()[16..], &cmac(&master, &b2)[..]);
    }

    #[test]
    fn keys_differ_by_spi_suite_and_master() {
        let a = derive_sa_key(&[1; 32], Spi(1), Suite::AesGcm256);
        let b = derive_sa_key(&[1; 32], Spi(2), Suite::AesGcm256);
        let c = derive_sa_key(&[2; 32], Spi(1), Suite::AesGcm256);
        let d = derive_sa_key(&[1; 32], Spi(1), Suite::ChaCha20Poly1305);
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), c.as_bytes());
        assert_ne!(a.as_bytes(), d.as_bytes());
        assert_eq!(format!("{a:?}"), "SaKey(32 bytes, redacted)");
    }
}
