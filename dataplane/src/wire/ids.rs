//! The PSP header's vocabulary: the SPI that names an SA and the suite named by the version
//! field. Both live here, beside the header, so that the header depends on nothing above it;
//! the `sa` and `crypto` modules re-export them.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A security parameters index. Bit 31 selects the receiver's master-key generation.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Spi(pub u32);

impl Spi {
    /// The SPI bit that selects the master-key generation.
    pub const GENERATION_BIT: u32 = 1 << 31;

    /// The master-key generation (0 or 1) the SPI's key derives from.
    //= PSP Architecture Specification v1.0, "Key Rotation"
    //# The most significant bit of the SPI selects which of the two master keys is used.
    pub const fn generation(self) -> u8 {
        (self.0 >> 31) as u8
    }

    /// The SPI without its generation bit.
    pub const fn index(self) -> u32 {
        self.0 & !Self::GENERATION_BIT
    }
}

impl fmt::Debug for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Spi({:#010x})", self.0)
    }
}

impl fmt::Display for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// A PSP cryptographic suite, named on the wire by the header's version field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Suite {
    /// Version 0: AES-GCM with a 128-bit key.
    AesGcm128,
    /// Version 1: AES-GCM with a 256-bit key (the default).
    AesGcm256,
    /// Version 2: AES-GMAC with a 128-bit key, integrity only.
    AesGmac128,
    /// Version 3: AES-GMAC with a 256-bit key, integrity only.
    AesGmac256,
    /// Version 8, a cpclink extension: ChaCha20-Poly1305 for CPUs without AES instructions.
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

impl Suite {
    /// All suites, in version order.
    pub const ALL: [Suite; 5] = [
        Suite::AesGcm128,
        Suite::AesGcm256,
        Suite::AesGmac128,
        Suite::AesGmac256,
        Suite::ChaCha20Poly1305,
    ];

    /// The suite named by a PSP version field.
    pub fn from_version(version: u8) -> Result<Self> {
        match version {
            0 => Ok(Suite::AesGcm128),
            1 => Ok(Suite::AesGcm256),
            2 => Ok(Suite::AesGmac128),
            3 => Ok(Suite::AesGmac256),
            8 => Ok(Suite::ChaCha20Poly1305),
            other => Err(Error::UnknownVersion(other)),
        }
    }

    /// The PSP version field value.
    pub const fn version(self) -> u8 {
        match self {
            Suite::AesGcm128 => 0,
            Suite::AesGcm256 => 1,
            Suite::AesGmac128 => 2,
            Suite::AesGmac256 => 3,
            Suite::ChaCha20Poly1305 => 8,
        }
    }

    /// Key length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            Suite::AesGcm128 | Suite::AesGmac128 => 16,
            Suite::AesGcm256 | Suite::AesGmac256 | Suite::ChaCha20Poly1305 => 32,
        }
    }

    /// Whether the payload is encrypted (GMAC suites only authenticate it).
    pub const fn encrypts(self) -> bool {
        !matches!(self, Suite::AesGmac128 | Suite::AesGmac256)
    }

    /// The suite's name in configs and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Suite::AesGcm128 => "aes-gcm-128",
            Suite::AesGcm256 => "aes-gcm-256",
            Suite::AesGmac128 => "aes-gmac-128",
            Suite::AesGmac256 => "aes-gmac-256",
            Suite::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Suite {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Suite::ALL
            .into_iter()
            .find(|suite| suite.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Suite::ALL.iter().map(|s| s.name()).collect();
                format!("unknown suite {s:?} (expected one of {})", names.join(", "))
            })
    }
}
