//! Crypto suite: seal and open through `cpclink_dataplane::crypto`, against the same
//! library's bare AEAD call on the same buffer in the same run.
//!
//! Measurements of one (backend, suite, size) are interleaved round by round, and each
//! reports its best round, so a burst of noise from a neighbour hits all three alike.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cpclink_dataplane::crypto::{Aead, Backend, Suite, NONCE_LEN, TAG_LEN};
use cpclink_dataplane::psp::nonce;
use cpclink_dataplane::sa::Spi;

use crate::Error;

/// Payload sizes measured when none are given.
pub const DEFAULT_SIZES: [usize; 6] = [64, 512, 1400, 4096, 9000, 65536];
/// Suites measured: the ones cpclink encrypts with.
pub const SUITES: [Suite; 3] = [Suite::AesGcm128, Suite::AesGcm256, Suite::ChaCha20Poly1305];

/// What one row measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Sealing through the data plane's AEAD trait.
    Seal,
    /// Opening through the data plane's AEAD trait.
    Open,
    /// The library's own seal call, no cpclink code in between.
    Baseline,
}

/// One measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CryptoRow {
    /// Backend name.
    pub backend: &'static str,
    /// Suite name.
    pub suite: &'static str,
    /// What was measured.
    pub op: Op,
    /// Payload bytes per call.
    pub size: usize,
    /// Payload throughput, in gigabits per second.
    pub gbps: f64,
}

/// How long and how often to measure.
#[derive(Debug, Clone, Copy)]
pub struct CryptoPlan {
    /// Length of one round of one measurement.
    pub round: Duration,
    /// Rounds per measurement; the best counts.
    pub rounds: usize,
}

impl Default for CryptoPlan {
    fn default() -> Self {
        Self {
            round: Duration::from_millis(40),
            rounds: 5,
        }
    }
}

/// The library's AEAD with no cpclink code around it.
#[allow(clippy::large_enum_variant)] // one per measurement, never moved on the hot path
enum Bare {
    AwsLc(aws_lc_rs::aead::LessSafeKey),
    Ring(ring::aead::LessSafeKey),
    RustAes128(Box<aes_gcm::Aes128Gcm>),
    RustAes256(Box<aes_gcm::Aes256Gcm>),
    RustChaCha(Box<chacha20poly1305::ChaCha20Poly1305>),
}

impl Bare {
    fn new(backend: Backend, suite: Suite, key: &[u8]) -> Result<Self, Error> {
        use aes_gcm::aead::KeyInit;
        let fail = |_| Error::Baseline(backend.name());
        Ok(match backend {
            Backend::AwsLc => {
                use aws_lc_rs::aead::{UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};
                let alg = match suite {
                    Suite::AesGcm128 | Suite::AesGmac128 => &AES_128_GCM,
                    Suite::AesGcm256 | Suite::AesGmac256 => &AES_256_GCM,
                    Suite::ChaCha20Poly1305 => &CHACHA20_POLY1305,
                };
                let key = UnboundKey::new(alg, key).map_err(|_| Error::Baseline("aws-lc-rs"))?;
                Bare::AwsLc(aws_lc_rs::aead::LessSafeKey::new(key))
            }
            Backend::Ring => {
                use ring::aead::{UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};
                let alg = match suite {
                    Suite::AesGcm128 | Suite::AesGmac128 => &AES_128_GCM,
                    Suite::AesGcm256 | Suite::AesGmac256 => &AES_256_GCM,
                    Suite::ChaCha20Poly1305 => &CHACHA20_POLY1305,
                };
                let key = UnboundKey::new(alg, key).map_err(|_| Error::Baseline("ring"))?;
                Bare::Ring(ring::aead::LessSafeKey::new(key))
            }
            _ => match suite {
                Suite::AesGcm128 | Suite::AesGmac128 => Bare::RustAes128(Box::new(
                    aes_gcm::Aes128Gcm::new_from_slice(key).map_err(fail)?,
                )),
                Suite::AesGcm256 | Suite::AesGmac256 => Bare::RustAes256(Box::new(
                    aes_gcm::Aes256Gcm::new_from_slice(key).map_err(fail)?,
                )),
                Suite::ChaCha20Poly1305 => Bare::RustChaCha(Box::new(
                    chacha20poly1305::ChaCha20Poly1305::new_from_slice(key).map_err(fail)?,
                )),
            },
        })
    }

    #[inline]
    fn seal(&self, n: [u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        use aes_gcm::aead::AeadInPlace;
        let mut out = [0u8; TAG_LEN];
        // The libraries fail only for inputs larger than any benchmark size; a failure
        // leaves a zero tag, which `black_box` still consumes.
        match self {
            Bare::AwsLc(k) => {
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(n);
                if let Ok(t) =
                    k.seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::from(aad), buf)
                {
                    out.copy_from_slice(t.as_ref());
                }
            }
            Bare::Ring(k) => {
                let nonce = ring::aead::Nonce::assume_unique_for_key(n);
                if let Ok(t) = k.seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), buf)
                {
                    out.copy_from_slice(t.as_ref());
                }
            }
            Bare::RustAes128(k) => {
                if let Ok(t) = k.encrypt_in_place_detached((&n).into(), aad, buf) {
                    out = t.into();
                }
            }
            Bare::RustAes256(k) => {
                if let Ok(t) = k.encrypt_in_place_detached((&n).into(), aad, buf) {
                    out = t.into();
                }
            }
            Bare::RustChaCha(k) => {
                if let Ok(t) = k.encrypt_in_place_detached((&n).into(), aad, buf) {
                    out = t.into();
                }
            }
        }
        out
    }
}

/// Runs `step` repeatedly for `round` and returns payload Gbit/s.
fn gbps(round: Duration, size: usize, mut step: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    loop {
        for _ in 0..16 {
            calls += 1;
            step(calls);
        }
        let elapsed = start.elapsed();
        if elapsed >= round {
            return (calls as f64 * size as f64 * 8.0) / elapsed.as_secs_f64() / 1e9;
        }
    }
}

/// Measures every backend and suite at each size.
pub fn run(sizes: &[usize], plan: CryptoPlan) -> Result<Vec<CryptoRow>, Error> {
    let mut rows = Vec::new();
    for &size in sizes {
        if size == 0 || size > 65536 {
            return Err(Error::BadSize(size));
        }
    }
    for backend in Backend::ALL {
        for suite in SUITES {
            let key: Vec<u8> = (0..suite.key_len()).map(|i| i as u8 ^ 0x5a).collect();
            let cipher = backend.cipher(suite, &key)?;
            let bare = Bare::new(backend, suite, &key)?;
            for &size in sizes {
                let aad = [0u8; 16];
                let spi = Spi(0x1000);
                let mut buf = vec![0xa5u8; size];

                // A sealed packet to open over and over: opening is not stateful, so the
                // same IV is valid each time.
                let mut sealed = vec![0x3cu8; size];
                let sealed_tag = cipher.seal_in_place(&nonce(spi, 1), &aad, &mut sealed)?;
                let mut scratch = sealed.clone();

                let mut best = [0f64; 3];
                for _ in 0..plan.rounds {
                    best[0] = best[0].max(gbps(plan.round, size, |iv| {
                        let tag = cipher.seal_in_place(&nonce(spi, iv), &aad, &mut buf);
                        black_box(tag.ok());
                    }));
                    best[1] = best[1].max(gbps(plan.round, size, |_| {
                        scratch.copy_from_slice(&sealed);
                        let opened =
                            cipher.open_in_place(&nonce(spi, 1), &aad, &mut scratch, &sealed_tag);
                        black_box(opened.is_ok());
                    }));
                    best[2] = best[2].max(gbps(plan.round, size, |iv| {
                        black_box(bare.seal(nonce(spi, iv), &aad, &mut buf));
                    }));
                }
                for (op, gbps) in [Op::Seal, Op::Open, Op::Baseline].into_iter().zip(best) {
                    rows.push(CryptoRow {
                        backend: backend.name(),
                        suite: suite.name(),
                        op,
                        size,
                        gbps,
                    });
                }
            }
        }
    }
    Ok(rows)
}

/// Renders rows as a table with seal and open beside the baseline, and their ratios.
pub fn table(rows: &[CryptoRow]) -> String {
    let mut out = Vec::new();
    for chunk in rows.chunks(3) {
        let [seal, open, base] = chunk else { continue };
        out.push(vec![
            seal.backend.to_string(),
            seal.suite.to_string(),
            seal.size.to_string(),
            format!("{:.2}", seal.gbps),
            format!("{:.2}", open.gbps),
            format!("{:.2}", base.gbps),
            format!("{:.3}", seal.gbps / base.gbps),
        ]);
    }
    crate::markdown_table(
        &[
            "backend",
            "suite",
            "bytes",
            "seal Gb/s",
            "open Gb/s",
            "baseline Gb/s",
            "seal/baseline",
        ],
        &out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_and_suite_is_measured_against_its_baseline() {
        let plan = CryptoPlan {
            round: Duration::from_millis(2),
            rounds: 1,
        };
        let rows = run(&[64, 1400], plan).unwrap();
        assert_eq!(rows.len(), 3 * 3 * 2 * 3);
        assert!(
            rows.iter().all(|r| r.gbps > 0.0 && r.gbps.is_finite()),
            "{rows:?}"
        );
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[2]["op"], "baseline");
        assert_eq!(json[0]["backend"], "aws-lc-rs");
        assert_eq!(json[0]["suite"], "aes-gcm-128");
        assert_eq!(json[0]["size"], 64);
        let text = table(&rows);
        assert_eq!(text.lines().count(), 2 + 3 * 3 * 2);
    }

    #[test]
    fn the_bare_baseline_produces_the_same_tag_as_the_trait() {
        for backend in Backend::ALL {
            for suite in SUITES {
                let key = vec![9u8; suite.key_len()];
                let cipher = backend.cipher(suite, &key).unwrap();
                let bare = Bare::new(backend, suite, &key).unwrap();
                let (mut a, mut b) = (vec![1u8; 100], vec![1u8; 100]);
                let n = nonce(Spi(5), 6);
                let t1 = cipher.seal_in_place(&n, b"x", &mut a).unwrap();
                let t2 = bare.seal(n, b"x", &mut b);
                assert_eq!((a, t1), (b, t2), "{backend} {suite}");
            }
        }
    }

    #[test]
    fn out_of_range_sizes_are_refused() {
        assert!(matches!(
            run(&[0], CryptoPlan::default()),
            Err(Error::BadSize(0))
        ));
        assert!(matches!(
            run(&[70000], CryptoPlan::default()),
            Err(Error::BadSize(70000))
        ));
    }
}
