//! The PSP header (PSP Architecture Specification v1.0, "Packet Formats").
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Next Header  |  Hdr Ext Len  | R |Crypt Offset |S|D|Version|V|1|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                Security Parameters Index (SPI)                |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  Initialization Vector (IV), 64 bits          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Virtualization Cookie (VC), 64 bits, when V = 1        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use super::ids::{Spi, Suite};
use crate::error::{Error, Result};

/// Length of the fixed PSP header: next header to IV.
pub const PSP_BASE_HEADER_LEN: usize = 16;
/// Length of the virtualization cookie present when V = 1.
pub const VC_LEN: usize = 8;
/// Length of the integrity check value that trails every PSP packet.
pub const ICV_LEN: usize = 16;

mod field {
    pub const NEXT_HEADER: usize = 0;
    pub const HDR_EXT_LEN: usize = 1;
    pub const CRYPT_OFFSET: usize = 2;
    pub const FLAGS: usize = 3;
    pub const SPI: std::ops::Range<usize> = 4..8;
    pub const IV: std::ops::Range<usize> = 8..16;
    pub const VC: std::ops::Range<usize> = 16..24;
}

const FLAG_SAMPLE: u8 = 0x80;
const FLAG_DROP: u8 = 0x40;
const FLAG_VIRT: u8 = 0x02;
const FLAG_ONE: u8 = 0x01;
const CRYPT_OFFSET_MASK: u8 = 0x3f;

/// A zero-copy view of a PSP packet: header, clear bytes, ciphertext and ICV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PspHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> PspHeader<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after checking that the header, the clear bytes the crypt offset
    /// names and the ICV all fit, and that the version is known.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    fn check(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < PSP_BASE_HEADER_LEN {
            return Err(Error::Truncated {
                needed: PSP_BASE_HEADER_LEN,
                got: data.len(),
            });
        }
        let flags = data[field::FLAGS];
        if flags & FLAG_ONE == 0 {
            return Err(Error::MissingOneBit);
        }
        let virt = flags & FLAG_VIRT != 0;
        let hdr_ext_len = data[field::HDR_EXT_LEN];
        //= PSP Architecture Specification v1.0, "PSP Header"
        //# Hdr Ext Len: length of the PSP header in 8-octet units, not counting the first 8
        //# octets; 1 without a virtualization cookie, 2 with one.
        if hdr_ext_len != 1 + u8::from(virt) {
            return Err(Error::BadHeaderExtLength { hdr_ext_len, virt });
        }
        Suite::from_version(self.version())?;
        let needed = self.header_len() + ICV_LEN;
        if data.len() < needed {
            return Err(Error::Truncated {
                needed,
                got: data.len(),
            });
        }
        // The clear region starts right after the IV; a cookie, when present, lies inside it.
        let payload = data.len() - ICV_LEN - PSP_BASE_HEADER_LEN;
        let offset = self.crypt_offset_bytes();
        if offset > payload || (virt && offset < VC_LEN) {
            return Err(Error::CryptOffsetBeyondPayload { offset, payload });
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The protocol of the encapsulated packet (4 IPv4, 41 IPv6 in tunnel mode).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// The header-extension length field.
    pub fn hdr_ext_len(&self) -> u8 {
        self.buffer.as_ref()[field::HDR_EXT_LEN]
    }

    /// The crypt offset in 4-byte words, counted from the end of the IV.
    pub fn crypt_offset(&self) -> u8 {
        self.buffer.as_ref()[field::CRYPT_OFFSET] & CRYPT_OFFSET_MASK
    }

    /// The crypt offset in bytes.
    pub fn crypt_offset_bytes(&self) -> usize {
        usize::from(self.crypt_offset()) * 4
    }

    /// The S bit: the receiver should sample this packet.
    pub fn sample(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_SAMPLE != 0
    }

    /// The D bit: drop after sampling.
    pub fn drop_after_sampling(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_DROP != 0
    }

    /// The 4-bit version field, which names the suite.
    pub fn version(&self) -> u8 {
        (self.buffer.as_ref()[field::FLAGS] >> 2) & 0x0f
    }

    /// The V bit: a virtualization cookie follows the IV.
    pub fn has_vc(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_VIRT != 0
    }

    /// The security parameters index.
    pub fn spi(&self) -> Spi {
        let b = &self.buffer.as_ref()[field::SPI];
        Spi(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The initialization vector (a per-SA packet counter in cpclink).
    pub fn iv(&self) -> u64 {
        let b = &self.buffer.as_ref()[field::IV];
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// The virtualization cookie, when V = 1.
    pub fn vc(&self) -> Option<u64> {
        self.has_vc().then(|| {
            let b = &self.buffer.as_ref()[field::VC];
            u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        })
    }

    /// Length of the header proper: 16 bytes, or 24 with a cookie.
    pub fn header_len(&self) -> usize {
        (usize::from(self.hdr_ext_len()) + 1) * 8
    }

    /// Offset of the first encrypted byte: the end of the IV plus the crypt offset.
    pub fn encrypted_start(&self) -> usize {
        PSP_BASE_HEADER_LEN + self.crypt_offset_bytes()
    }

    /// Everything authenticated but not encrypted: header, cookie and clear bytes.
    pub fn aad(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.encrypted_start()]
    }

    /// The ciphertext between the clear bytes and the ICV.
    pub fn ciphertext(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[self.encrypted_start()..data.len() - ICV_LEN]
    }

    /// The trailing integrity check value.
    pub fn icv(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[data.len() - ICV_LEN..]
    }
}

/// The fields of a PSP header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PspRepr {
    /// Protocol of the encapsulated packet.
    pub next_header: u8,
    /// Clear bytes after the IV, in 4-byte words (the cookie counts when present).
    pub crypt_offset: u8,
    /// S bit.
    pub sample: bool,
    /// D bit.
    pub drop_after_sampling: bool,
    /// The suite named by the version field.
    pub suite: Suite,
    /// Security parameters index.
    pub spi: Spi,
    /// Initialization vector.
    pub iv: u64,
    /// Virtualization cookie.
    pub vc: Option<u64>,
}

impl PspRepr {
    /// Parses a checked view.
    pub fn parse<T: AsRef<[u8]>>(packet: &PspHeader<T>) -> Result<Self> {
        Ok(Self {
            next_header: packet.next_header(),
            crypt_offset: packet.crypt_offset(),
            sample: packet.sample(),
            drop_after_sampling: packet.drop_after_sampling(),
            suite: Suite::from_version(packet.version())?,
            spi: packet.spi(),
            iv: packet.iv(),
            vc: packet.vc(),
        })
    }

    /// Length of the header this emits: 16 bytes, 24 with a cookie.
    pub const fn buffer_len(&self) -> usize {
        if self.vc.is_some() {
            PSP_BASE_HEADER_LEN + VC_LEN
        } else {
            PSP_BASE_HEADER_LEN
        }
    }

    /// Writes the header into the first `buffer_len()` bytes of `buffer`.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<()> {
        let len = self.buffer_len();
        if buffer.len() < len {
            return Err(Error::BufferTooSmall {
                needed: len,
                got: buffer.len(),
            });
        }
        if self.crypt_offset > CRYPT_OFFSET_MASK {
            return Err(Error::CryptOffsetTooLarge(self.crypt_offset.into()));
        }
        if self.vc.is_some() && usize::from(self.crypt_offset) * 4 < VC_LEN {
            return Err(Error::CryptOffsetBeyondPayload {
                offset: usize::from(self.crypt_offset) * 4,
                payload: VC_LEN,
            });
        }
        buffer[field::NEXT_HEADER] = self.next_header;
        buffer[field::HDR_EXT_LEN] = 1 + u8::from(self.vc.is_some());
        buffer[field::CRYPT_OFFSET] = self.crypt_offset;
        let mut flags = FLAG_ONE | (self.suite.version() << 2);
        if self.sample {
            flags |= FLAG_SAMPLE;
        }
        if self.drop_after_sampling {
            flags |= FLAG_DROP;
        }
        if self.vc.is_some() {
            flags |= FLAG_VIRT;
        }
        buffer[field::FLAGS] = flags;
        buffer[field::SPI].copy_from_slice(&self.spi.0.to_be_bytes());
        buffer[field::IV].copy_from_slice(&self.iv.to_be_bytes());
        if let Some(vc) = self.vc {
            buffer[field::VC].copy_from_slice(&vc.to_be_bytes());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr() -> PspRepr {
        PspRepr {
            next_header: 4,
            crypt_offset: 5,
            sample: true,
            drop_after_sampling: false,
            suite: Suite::AesGcm256,
            spi: Spi(0x8000_1234),
            iv: 0x0102_0304_0506_0708,
            vc: None,
        }
    }

    fn packet(repr: &PspRepr, payload: usize) -> Vec<u8> {
        let mut buf = vec![0u8; PSP_BASE_HEADER_LEN + payload + ICV_LEN];
        repr.emit(&mut buf).unwrap();
        buf
    }

    #[test]
    fn emit_then_parse_round_trips() {
        for vc in [None, Some(0xdead_beef_0000_0001)] {
            let repr = PspRepr { vc, ..repr() };
            let buf = packet(&repr, 40);
            let view = PspHeader::new_checked(&buf[..]).unwrap();
            assert_eq!(PspRepr::parse(&view).unwrap(), repr);
            assert_eq!(view.header_len(), repr.buffer_len());
            assert_eq!(view.aad().len(), 16 + 20);
            assert_eq!(view.ciphertext().len(), 20);
        }
    }

    #[test]
    fn header_bytes_match_the_specification_layout() {
        let buf = packet(&repr(), 20);
        assert_eq!(
            &buf[..16],
            &[
                4,
                1,
                5,
                0x80 | (1 << 2) | 1,
                0x80,
                0,
                0x12,
                0x34,
                1,
                2,
                3,
                4,
                5,
                6,
                7,
                8
            ]
        );
    }

    #[test]
    fn short_buffers_are_truncated() {
        let buf = packet(&repr(), 20);
        assert_eq!(
            PspHeader::new_checked(&buf[..10]).unwrap_err(),
            Error::Truncated {
                needed: 16,
                got: 10
            }
        );
        assert!(matches!(
            PspHeader::new_checked(&buf[..20]).unwrap_err(),
            Error::Truncated { needed: 32, .. }
        ));
    }

    #[test]
    fn unknown_version_is_rejected() {
        let mut buf = packet(&repr(), 20);
        buf[3] = (buf[3] & 0xc3) | (5 << 2);
        assert_eq!(
            PspHeader::new_checked(&buf[..]).unwrap_err(),
            Error::UnknownVersion(5)
        );
    }

    #[test]
    fn extension_length_must_agree_with_v_bit() {
        let mut buf = packet(&repr(), 20);
        buf[1] = 3;
        assert_eq!(
            PspHeader::new_checked(&buf[..]).unwrap_err(),
            Error::BadHeaderExtLength {
                hdr_ext_len: 3,
                virt: false
            }
        );
        buf[1] = 1;
        buf[3] |= FLAG_VIRT;
        assert_eq!(
            PspHeader::new_checked(&buf[..]).unwrap_err(),
            Error::BadHeaderExtLength {
                hdr_ext_len: 1,
                virt: true
            }
        );
    }

    #[test]
    fn crypt_offset_beyond_payload_is_rejected() {
        let repr = PspRepr {
            crypt_offset: 6,
            ..repr()
        };
        let buf = packet(&repr, 20);
        assert_eq!(
            PspHeader::new_checked(&buf[..]).unwrap_err(),
            Error::CryptOffsetBeyondPayload {
                offset: 24,
                payload: 20
            }
        );
    }

    #[test]
    fn missing_one_bit_is_rejected() {
        let mut buf = packet(&repr(), 20);
        buf[3] &= !FLAG_ONE;
        assert_eq!(
            PspHeader::new_checked(&buf[..]).unwrap_err(),
            Error::MissingOneBit
        );
    }

    #[test]
    fn cookie_must_lie_inside_the_clear_region() {
        let repr = PspRepr {
            vc: Some(7),
            crypt_offset: 1,
            ..repr()
        };
        let mut buf = vec![0u8; 64];
        assert!(repr.emit(&mut buf).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(proptest::num::u8::ANY, 0..96)) {
            if let Ok(view) = PspHeader::new_checked(&data[..]) {
                let repr = PspRepr::parse(&view).unwrap();
                let _ = (view.aad(), view.ciphertext(), view.icv(), view.vc());
                let mut again = vec![0u8; repr.buffer_len()];
                repr.emit(&mut again).unwrap();
                let expected = [data[0], data[1], data[2] & CRYPT_OFFSET_MASK, data[3]];
                proptest::prop_assert_eq!(&again[..4], &expected[..]);
                proptest::prop_assert_eq!(&again[4..16], &data[4..16]);
            }
        }
    }
}
