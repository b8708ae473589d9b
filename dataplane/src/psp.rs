//! PSP encapsulation: a header from [`crate::wire`] plus an AEAD from [`crate::crypto`],
//! sealed and opened in place in one packet buffer.
//!
//! A packet buffer is laid out as the UDP payload will be:
//! `header (16, or 24 with a cookie) | clear bytes | ciphertext | ICV (16)`.

use std::ops::Range;

use crate::crypto::{Aead, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::sa::Spi;
use crate::wire::{PspHeader, PspRepr, ICV_LEN, PSP_BASE_HEADER_LEN};

/// Bytes PSP adds around an inner packet without a cookie: header and ICV.
pub const PSP_OVERHEAD: usize = PSP_BASE_HEADER_LEN + ICV_LEN;

/// The AEAD nonce of a packet.
//= PSP Architecture Specification v1.0, "Initialization Vector"
//# The 96-bit GCM IV is the 32-bit SPI followed by the 64-bit IV from the packet.
#[inline]
pub fn nonce(spi: Spi, iv: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&spi.0.to_be_bytes());
    n[4..].copy_from_slice(&iv.to_be_bytes());
    n
}

/// Length of the PSP packet that carries `payload_len` bytes (cookie bytes not included).
pub const fn sealed_len(repr: &PspRepr, payload_len: usize) -> usize {
    PSP_BASE_HEADER_LEN + payload_len + ICV_LEN + (repr.buffer_len() - PSP_BASE_HEADER_LEN)
}

/// Writes the header of `repr` and seals the packet in place.
///
/// `packet` must be exactly `sealed_len(repr, n)` bytes with the payload already in place
/// after the header (after the cookie when there is one); the ICV space is overwritten.
pub fn seal_in_place(cipher: &impl Aead, repr: &PspRepr, packet: &mut [u8]) -> Result<()> {
    if cipher.suite() != repr.suite {
        return Err(Error::SuiteMismatch {
            expected: cipher.suite(),
            got: repr.suite,
        });
    }
    let min = repr.buffer_len() + ICV_LEN;
    if packet.len() < min {
        return Err(Error::BufferTooSmall {
            needed: min,
            got: packet.len(),
        });
    }
    let clear_end = PSP_BASE_HEADER_LEN + usize::from(repr.crypt_offset) * 4;
    let body_end = packet.len() - ICV_LEN;
    if clear_end > body_end {
        return Err(Error::CryptOffsetBeyondPayload {
            offset: clear_end - PSP_BASE_HEADER_LEN,
            payload: body_end - PSP_BASE_HEADER_LEN,
        });
    }
    repr.emit(packet)?;
    seal_written(cipher, &nonce(repr.spi, repr.iv), clear_end, packet)
}

/// Seals a packet whose header is already written: authenticates the first `clear_end`
/// bytes, encrypts the rest up to the ICV (an integrity-only suite authenticates it all)
/// and writes the ICV. The caller has checked the lengths ([`seal_in_place`] does).
#[inline]
pub fn seal_written(
    cipher: &impl Aead,
    nonce: &[u8; NONCE_LEN],
    clear_end: usize,
    packet: &mut [u8],
) -> Result<()> {
    let (body, icv) = packet.split_at_mut(packet.len() - ICV_LEN);
    let tag = if cipher.suite().encrypts() {
        let (aad, in_out) = body.split_at_mut(clear_end);
        cipher.seal_in_place(nonce, aad, in_out)?
    } else {
        cipher.seal_in_place(nonce, body, &mut [])?
    };
    icv.copy_from_slice(&tag);
    Ok(())
}

/// A packet opened in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The header as received.
    pub header: PspRepr,
    /// Where the inner payload (clear bytes included, cookie excluded) lies in the buffer.
    pub payload: Range<usize>,
}

/// Checks the header of a received packet without touching the payload.
pub fn parse(packet: &[u8]) -> Result<PspRepr> {
    PspRepr::parse(&PspHeader::new_checked(packet)?)
}

/// A received packet's header, checked, and where its parts lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The header as received.
    pub header: PspRepr,
    payload_start: usize,
    clear_end: usize,
}

/// Checks the header of a received packet for [`open_parsed`].
#[inline]
pub fn parse_for_open(packet: &[u8]) -> Result<Parsed> {
    let view = PspHeader::new_checked(packet)?;
    Ok(Parsed {
        header: PspRepr::parse(&view)?,
        payload_start: view.header_len(),
        clear_end: view.encrypted_start(),
    })
}

/// Verifies and decrypts a packet in place with a cipher already chosen for its SPI.
///
/// On failure the buffer holds no plaintext an attacker could make use of, and nothing in it
/// must be delivered.
pub fn open_in_place(cipher: &impl Aead, packet: &mut [u8]) -> Result<Opened> {
    let parsed = parse_for_open(packet)?;
    open_parsed(cipher, parsed, packet)
}

/// [`open_in_place`] of a packet whose header [`parse_for_open`] already checked.
#[inline]
pub fn open_parsed(cipher: &impl Aead, parsed: Parsed, packet: &mut [u8]) -> Result<Opened> {
    let Parsed {
        header,
        payload_start,
        clear_end,
    } = parsed;
    if cipher.suite() != header.suite {
        return Err(Error::SuiteMismatch {
            expected: cipher.suite(),
            got: header.suite,
        });
    }
    let nonce = nonce(header.spi, header.iv);
    let body_end = packet.len() - ICV_LEN;
    let (body, icv) = packet.split_at_mut(body_end);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(icv);
    if header.suite.encrypts() {
        let (aad, in_out) = body.split_at_mut(clear_end);
        cipher.open_in_place(&nonce, aad, in_out, &tag)?;
    } else {
        cipher.open_in_place(&nonce, body, &mut [], &tag)?;
    }
    Ok(Opened {
        header,
        payload: payload_start..body_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Backend, Suite};

    fn seal(
        suite: Suite,
        backend: Backend,
        crypt_offset: u8,
        vc: Option<u64>,
        payload: &[u8],
    ) -> Vec<u8> {
        let cipher = backend.cipher(suite, &vec![0x11; suite.key_len()]).unwrap();
        let repr = PspRepr {
            next_header: 4,
            crypt_offset,
            sample: false,
            drop_after_sampling: false,
            suite,
            spi: Spi(0x10),
            iv: 77,
            vc,
        };
        let mut packet = vec![0u8; sealed_len(&repr, payload.len())];
        let start = repr.buffer_len();
        packet[start..start + payload.len()].copy_from_slice(payload);
        seal_in_place(&cipher, &repr, &mut packet).unwrap();
        packet
    }

    fn payload() -> Vec<u8> {
        (0..100u8).collect()
    }

    #[test]
    fn round_trip_keeps_clear_bytes_in_clear() {
        for suite in Suite::ALL {
            for backend in Backend::ALL {
                let mut packet = seal(suite, backend, 5, None, &payload());
                assert_eq!(&packet[16..36], &payload()[..20], "clear region");
                if suite.encrypts() {
                    assert_ne!(&packet[36..116], &payload()[20..]);
                } else {
                    assert_eq!(&packet[36..116], &payload()[20..]);
                }
                let cipher = backend.cipher(suite, &vec![0x11; suite.key_len()]).unwrap();
                let opened = open_in_place(&cipher, &mut packet).unwrap();
                assert_eq!(&packet[opened.payload.clone()], &payload()[..]);
                assert_eq!(opened.header.iv, 77);
            }
        }
    }

    #[test]
    fn cookie_is_authenticated_and_excluded_from_the_payload() {
        let mut packet = seal(
            Suite::AesGcm256,
            Backend::AwsLc,
            2,
            Some(0xc0ffee),
            &payload(),
        );
        let cipher = Backend::AwsLc
            .cipher(Suite::AesGcm256, &[0x11; 32])
            .unwrap();
        let mut tampered = packet.clone();
        tampered[20] ^= 1;
        assert_eq!(
            open_in_place(&cipher, &mut tampered).unwrap_err(),
            Error::AuthenticationFailed
        );
        let opened = open_in_place(&cipher, &mut packet).unwrap();
        assert_eq!(opened.header.vc, Some(0xc0ffee));
        assert_eq!(&packet[opened.payload], &payload()[..]);
    }

    #[test]
    fn flipping_any_single_bit_makes_open_fail() {
        for suite in Suite::ALL {
            let packet = seal(suite, Backend::AwsLc, 1, None, &payload()[..24]);
            let cipher = Backend::AwsLc
                .cipher(suite, &vec![0x11; suite.key_len()])
                .unwrap();
            for bit in 0..packet.len() * 8 {
                let mut copy = packet.clone();
                copy[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    open_in_place(&cipher, &mut copy).is_err(),
                    "{suite}: bit {bit} flipped and still opened"
                );
            }
        }
    }

    #[test]
    fn suite_of_the_key_must_match_the_header() {
        let mut packet = seal(Suite::AesGcm128, Backend::Ring, 0, None, &payload());
        let cipher = Backend::Ring.cipher(Suite::AesGcm256, &[0x11; 32]).unwrap();
        assert!(matches!(
            open_in_place(&cipher, &mut packet),
            Err(Error::SuiteMismatch { .. })
        ));
    }
}
