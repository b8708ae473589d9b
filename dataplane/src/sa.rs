//! Security associations: transmit and receive state, replay protection, SPI allocation and
//! the master keys SA keys are derived from. Sans-IO: time is passed in.

use std::fmt;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::crypto::{derive_sa_key, Backend, Cipher, SaKey};
use crate::error::{Error, Result};
use crate::psp::{self, Opened, PSP_OVERHEAD};
use crate::wire::{PspRepr, PSP_BASE_HEADER_LEN};

pub use crate::wire::{Spi, Suite};

/// When an SA must be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaLimits {
    /// After this many packets the sender fetches the next SA (make-before-break).
    pub soft_packets: u64,
    /// IVs at or above this are never sent and always rejected.
    pub hard_packets: u64,
    /// After this long the sender fetches the next SA.
    pub soft_lifetime: Duration,
    /// After this long the SA seals nothing more.
    pub hard_lifetime: Duration,
}

impl Default for SaLimits {
    fn default() -> Self {
        Self {
            soft_packets: 1 << 28,
            hard_packets: 1 << 32,
            soft_lifetime: Duration::from_secs(600),
            hard_lifetime: Duration::from_secs(900),
        }
    }
}

/// What the sender should do about its SA after a seal or a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxSaState {
    /// Keep using it.
    Fresh,
    /// Fetch the next SA now; this one still works.
    RekeyDue,
    /// Sealing fails until a new SA is installed.
    Exhausted,
}

/// A transmit SA: the SPI and key the receiver granted, and the IV counter.
#[derive(Debug)]
pub struct TxSa {
    spi: Spi,
    cipher: Cipher,
    /// The first 8 header bytes of a whole-packet seal (next header left 0): written per
    /// packet instead of emitting the header field by field.
    template: Option<[u8; 8]>,
    next_iv: u64,
    limits: SaLimits,
    installed_at: Instant,
    expired: bool,
}

impl TxSa {
    /// An SA whose first packet carries IV 1.
    pub fn new(spi: Spi, cipher: Cipher, limits: SaLimits, now: Instant) -> Self {
        let suite = crate::crypto::Aead::suite(&cipher);
        let mut header = [0u8; PSP_BASE_HEADER_LEN];
        let template = PspRepr {
            next_header: 0,
            crypt_offset: 0,
            sample: false,
            drop_after_sampling: false,
            suite,
            spi,
            iv: 0,
            vc: None,
        }
        .emit(&mut header)
        .ok()
        .map(|()| {
            let mut t = [0u8; 8];
            t.copy_from_slice(&header[..8]);
            t
        });
        Self {
            spi,
            cipher,
            template,
            next_iv: 1,
            limits,
            installed_at: now,
            expired: false,
        }
    }

    /// Builds the SA from raw key bytes.
    pub fn from_key(
        spi: Spi,
        backend: Backend,
        suite: Suite,
        key: &SaKey,
        limits: SaLimits,
        now: Instant,
    ) -> Result<Self> {
        Ok(Self::new(
            spi,
            backend.cipher(suite, key.as_bytes())?,
            limits,
            now,
        ))
    }

    /// The SPI every packet of this SA carries.
    pub fn spi(&self) -> Spi {
        self.spi
    }

    /// The suite of this SA.
    pub fn suite(&self) -> Suite {
        crate::crypto::Aead::suite(&self.cipher)
    }

    /// Packets sealed so far.
    pub fn sealed(&self) -> u64 {
        self.next_iv - 1
    }

    /// The limits it was installed with.
    pub fn limits(&self) -> SaLimits {
        self.limits
    }

    /// Whether the SA should be replaced, looking at packets and, given `now`, at its age.
    /// Engines call this from their timer, not per packet.
    pub fn state(&mut self, now: Instant) -> TxSaState {
        let age = now.saturating_duration_since(self.installed_at);
        if age >= self.limits.hard_lifetime {
            self.expired = true;
        }
        if self.expired || self.next_iv >= self.limits.hard_packets {
            TxSaState::Exhausted
        } else if self.next_iv > self.limits.soft_packets || age >= self.limits.soft_lifetime {
            TxSaState::RekeyDue
        } else {
            TxSaState::Fresh
        }
    }

    /// Seals one packet in place with the next IV (see [`psp::seal_in_place`] for the layout).
    /// An exhausted or expired SA is an error: the counter never wraps.
    #[inline]
    pub fn seal(&mut self, next_header: u8, crypt_offset: u8, packet: &mut [u8]) -> Result<u64> {
        if self.expired {
            return Err(Error::SaExpired(self.spi.0));
        }
        let iv = self.next_iv;
        if iv >= self.limits.hard_packets {
            return Err(Error::SaExhausted {
                spi: self.spi.0,
                sealed: iv - 1,
            });
        }
        match self.template {
            // The data plane's case: a whole inner packet, nothing in clear, no cookie. The
            // header is the SA's template plus the next header and IV; the same bytes as
            // the general path below (a test compares them), without emitting field by field.
            Some(template) if crypt_offset == 0 && packet.len() >= PSP_OVERHEAD => {
                packet[..8].copy_from_slice(&template);
                packet[0] = next_header;
                packet[8..PSP_BASE_HEADER_LEN].copy_from_slice(&iv.to_be_bytes());
                psp::seal_written(
                    &self.cipher,
                    &psp::nonce(self.spi, iv),
                    PSP_BASE_HEADER_LEN,
                    packet,
                )?;
            }
            _ => {
                let repr = PspRepr {
                    next_header,
                    crypt_offset,
                    sample: false,
                    drop_after_sampling: false,
                    suite: self.suite(),
                    spi: self.spi,
                    iv,
                    vc: None,
                };
                psp::seal_in_place(&self.cipher, &repr, packet)?;
            }
        }
        self.next_iv = iv + 1;
        Ok(iv)
    }
}

/// Bits in the replay window: how far behind the newest packet an older one may arrive.
pub const REPLAY_WINDOW: u64 = 8192;
const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// A sliding bitmap of the IVs accepted recently.
#[derive(Clone)]
pub struct ReplayWindow {
    highest: u64,
    bits: [u64; WORDS],
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .finish_non_exhaustive()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            highest: 0,
            bits: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    /// The highest IV accepted so far (0 before the first).
    pub fn highest(&self) -> u64 {
        self.highest
    }

    fn slot(iv: u64) -> (usize, u64) {
        let bit = iv % REPLAY_WINDOW;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    /// Whether `iv` could be accepted; changes nothing.
    pub fn check(&self, iv: u64) -> Result<()> {
        if iv > self.highest {
            return Ok(());
        }
        if self.highest - iv >= REPLAY_WINDOW {
            return Err(Error::TooOld {
                iv,
                highest: self.highest,
            });
        }
        let (word, mask) = Self::slot(iv);
        if self.bits[word] & mask != 0 {
            return Err(Error::Replayed(iv));
        }
        Ok(())
    }

    /// Records `iv` as accepted. Call only after the packet's ICV verified and
    /// [`check`](Self::check) passed.
    pub fn update(&mut self, iv: u64) {
        if iv > self.highest {
            let advance = iv - self.highest;
            if advance >= REPLAY_WINDOW {
                self.bits = [0; WORDS];
            } else {
                for skipped in self.highest + 1..iv {
                    let (word, mask) = Self::slot(skipped);
                    self.bits[word] &= !mask;
                }
            }
            self.highest = iv;
        }
        let (word, mask) = Self::slot(iv);
        self.bits[word] |= mask;
    }
}

/// Counters of one receive SA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxSaStats {
    /// Packets verified and delivered.
    pub accepted: u64,
    /// Packets whose IV was already accepted.
    pub replayed: u64,
    /// Packets older than the window.
    pub too_old: u64,
    /// Packets whose ICV failed.
    pub auth_failed: u64,
    /// Packets with IV 0 or at or above the hard limit.
    pub iv_out_of_range: u64,
    /// Packets with a malformed header or a header for another SA.
    pub malformed: u64,
}

/// A receive SA: the key derived for one SPI and its replay window.
#[derive(Debug)]
pub struct RxSa {
    spi: Spi,
    cipher: Cipher,
    window: ReplayWindow,
    hard_limit: u64,
    stats: RxSaStats,
}

impl RxSa {
    /// A receive SA for `spi`.
    pub fn new(spi: Spi, cipher: Cipher, limits: SaLimits) -> Self {
        Self {
            spi,
            cipher,
            window: ReplayWindow::default(),
            hard_limit: limits.hard_packets,
            stats: RxSaStats::default(),
        }
    }

    /// The SA's SPI.
    pub fn spi(&self) -> Spi {
        self.spi
    }

    /// The IV at and above which packets are refused.
    pub fn hard_limit(&self) -> u64 {
        self.hard_limit
    }

    /// The SA's counters.
    pub fn stats(&self) -> RxSaStats {
        self.stats
    }

    /// Verifies, replay-checks and decrypts one packet in place. Every rejection is counted;
    /// the window moves only for packets whose ICV verified.
    #[inline]
    pub fn open(&mut self, packet: &mut [u8]) -> Result<Opened> {
        let result = self.open_uncounted(packet);
        match &result {
            Ok(_) => self.stats.accepted += 1,
            Err(Error::Replayed(_)) => self.stats.replayed += 1,
            Err(Error::TooOld { .. }) => self.stats.too_old += 1,
            Err(Error::AuthenticationFailed) => self.stats.auth_failed += 1,
            Err(Error::IvOutOfRange { .. }) => self.stats.iv_out_of_range += 1,
            Err(_) => self.stats.malformed += 1,
        }
        result
    }

    fn open_uncounted(&mut self, packet: &mut [u8]) -> Result<Opened> {
        let parsed = psp::parse_for_open(packet)?;
        let header = &parsed.header;
        if header.spi != self.spi {
            return Err(Error::SpiMismatch {
                expected: self.spi.0,
                got: header.spi.0,
            });
        }
        if header.iv == 0 || header.iv >= self.hard_limit {
            return Err(Error::IvOutOfRange {
                iv: header.iv,
                limit: self.hard_limit,
            });
        }
        let iv = header.iv;
        self.window.check(iv)?;
        let opened = psp::open_parsed(&self.cipher, parsed, packet)?;
        self.window.update(iv);
        Ok(opened)
    }
}

/// Hands out SPIs from a monotonic counter per generation; never the same one twice.
///
/// The counters are the state to persist: a receiver that restarts resumes from them (or
/// from a reserved high-water mark), so a sender can never be granted a used (key, SPI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpiAllocator {
    next: [u32; 2],
}

impl Default for SpiAllocator {
    fn default() -> Self {
        // SPI index 0 is never used, so a zeroed header never names a real SA.
        Self { next: [1, 1] }
    }
}

impl SpiAllocator {
    /// Resumes from persisted counters: the next index of generation 0 and 1.
    pub fn resume(next: [u32; 2]) -> Self {
        Self {
            next: [next[0].max(1), next[1].max(1)],
        }
    }

    /// The next index each generation will hand out.
    pub fn next_indices(&self) -> [u32; 2] {
        self.next
    }

    /// Allocates the next SPI of `generation` (0 or 1).
    pub fn allocate(&mut self, generation: u8) -> Result<Spi> {
        let slot = usize::from(generation & 1);
        let index = self.next[slot];
        if index > Spi::GENERATION_BIT - 1 {
            return Err(Error::SpiSpaceExhausted(generation & 1));
        }
        self.next[slot] = index + 1;
        Ok(Spi(index | (u32::from(generation & 1) << 31)))
    }

    /// Starts a generation afresh after its master key was replaced: the new key makes
    /// every (key, SPI) pair new, so indices may begin again.
    pub fn reset_generation(&mut self, generation: u8) {
        self.next[usize::from(generation & 1)] = 1;
    }
}

/// A 256-bit master key, wiped on drop.
pub type MasterKey = Zeroizing<[u8; 32]>;

/// The two master-key generations of a receiver; bit 31 of an SPI picks one.
#[derive(Clone)]
pub struct MasterKeys {
    keys: [Option<MasterKey>; 2],
    current: u8,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeys")
            .field("current", &self.current)
            .field("held", &[self.keys[0].is_some(), self.keys[1].is_some()])
            .finish()
    }
}

impl MasterKeys {
    /// Keys with only generation 0, which is current.
    pub fn new(generation0: [u8; 32]) -> Self {
        Self {
            keys: [Some(Zeroizing::new(generation0)), None],
            current: 0,
        }
    }

    /// Keys with both generations held and `current` (0 or 1) in use for new SAs.
    pub fn with_generations(generation0: [u8; 32], generation1: [u8; 32], current: u8) -> Self {
        Self {
            keys: [
                Some(Zeroizing::new(generation0)),
                Some(Zeroizing::new(generation1)),
            ],
            current: current & 1,
        }
    }

    /// The generation new SAs are allocated from.
    pub fn current_generation(&self) -> u8 {
        self.current
    }

    /// The key of a generation, if held.
    pub fn key(&self, generation: u8) -> Option<&[u8; 32]> {
        self.keys[usize::from(generation & 1)].as_deref()
    }

    /// Installs `new_key` as the other generation and makes it current. The previous
    /// generation stays valid for SAs already granted until the next rotation replaces it.
    /// Returns the new current generation.
    pub fn rotate(&mut self, new_key: [u8; 32]) -> u8 {
        let next = self.current ^ 1;
        self.keys[usize::from(next)] = Some(Zeroizing::new(new_key));
        self.current = next;
        next
    }

    /// Derives the key of `spi` from the generation its bit 31 selects.
    pub fn derive(&self, spi: Spi, suite: Suite) -> Result<SaKey> {
        let generation = spi.generation();
        let master = self.key(generation).ok_or(Error::NoMasterKey(generation))?;
        Ok(derive_sa_key(master, spi, suite))
    }
}

#[cfg(test)]
mod tests;
