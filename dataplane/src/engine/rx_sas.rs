//! A worker's receive SAs: those the control plane installed and those derived on demand
//! from the master keys, bounded in number and in derivations per second.
//!
//! An SPI that is not in the table costs a key derivation and one AEAD open. The table keeps
//! a derived SA only once a packet authenticated under it, so packets with made-up SPIs can
//! neither fill the table nor cost more than the derivation budget allows.
//!
//! The budget is kept per sending address, not per worker: a flood of made-up SPIs from one
//! address (a peer's, spoofed or not) spends that address's budget only, so another peer
//! that restarts under it still gets its new SAs derived at once. Only a peer's endpoint
//! address is ever offered a derivation, and a peer has one endpoint, so the budgets live
//! in a fixed array indexed by the peer: bounded, allocation-free, no lookup cost.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use super::PeerId;
use crate::crypto::{Backend, Suite};
use crate::error::{Error, Result};
use crate::psp::Opened;
use crate::sa::{MasterKeys, RxSa, SaLimits, Spi};

/// Where keys for SPIs nobody installed come from: the local master keys (PSP's stateless
/// receiver).
#[derive(Debug, Clone)]
pub struct RxKeySource {
    /// The two master-key generations.
    pub keys: MasterKeys,
    /// The suite derived SAs use; packets of another suite are refused.
    pub suite: Suite,
    /// Derivations allowed per second, per worker and per sending peer address.
    pub derivations_per_second: u32,
}

/// Hashes an SPI with one multiplication (Fibonacci hashing) instead of SipHash: the lookup
/// is on every received packet. A keyed hash is not needed: only SAs whose first packet
/// authenticated are ever inserted, so a sender of forged SPIs cannot shape the table.
#[derive(Debug, Default)]
struct SpiHasher(u64);

impl Hasher for SpiHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, spi: u32) {
        self.0 = u64::from(spi).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

struct Entry {
    sa: RxSa,
    peer: PeerId,
    last_used: u64,
}

/// Why a packet did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxRefusal {
    /// From an address that is no peer, with an SPI the table lacks.
    UnknownPeer,
    /// No SA could be had for the SPI (or it never authenticated).
    UnknownSpi {
        /// The derivation budget was spent.
        throttled: bool,
    },
    /// The SA refused it: the error says why.
    Sa(Error),
    /// The SA belongs to a revoked peer.
    Revoked,
}

/// Derivation budgets kept apart: peers `i` and `i + DERIVE_BUDGETS` share one (a worker
/// with more peers than this degrades to a few peers per budget, never to one for all).
const DERIVE_BUDGETS: usize = 64;

/// The receive SAs of one worker.
pub struct RxSaTable {
    entries: HashMap<u32, Entry, BuildHasherDefault<SpiHasher>>,
    capacity: usize,
    source: Option<RxKeySource>,
    backend: Backend,
    limits: SaLimits,
    /// Derivations each sender may still cost this tick, indexed by peer modulo the length.
    budgets: [u32; DERIVE_BUDGETS],
    clock: u64,
    revoked: Vec<PeerId>,
}

impl std::fmt::Debug for RxSaTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxSaTable")
            .field("entries", &self.entries.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl RxSaTable {
    /// An empty table of at most `capacity` SAs.
    pub fn new(capacity: usize, backend: Backend, limits: SaLimits) -> Self {
        Self {
            entries: HashMap::with_capacity_and_hasher(
                capacity.min(4096),
                BuildHasherDefault::default(),
            ),
            capacity: capacity.max(1),
            source: None,
            backend,
            limits,
            budgets: [0; DERIVE_BUDGETS],
            clock: 0,
            revoked: Vec::new(),
        }
    }

    /// Sets (or clears) the master keys SAs are derived from.
    pub fn set_source(&mut self, source: Option<RxKeySource>) {
        self.budgets
            .fill(source.as_ref().map_or(0, |s| s.derivations_per_second / 10));
        self.source = source;
    }

    /// Refills every sender's derivation budget; the worker calls this ten times a second.
    pub fn tick(&mut self) {
        self.clock += 1;
        if let Some(source) = &self.source {
            self.budgets
                .fill((source.derivations_per_second / 10).max(1));
        }
    }

    /// SAs held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no SA is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Each SA held, with its peer and counters.
    pub fn counters(&self) -> impl Iterator<Item = (&RxSa, PeerId)> + '_ {
        self.entries.values().map(|e| (&e.sa, e.peer))
    }

    /// Installs an SA the control plane granted.
    pub fn install(&mut self, peer: PeerId, sa: RxSa) {
        self.revoked.retain(|p| *p != peer);
        self.make_room();
        self.entries.insert(
            sa.spi().0,
            Entry {
                sa,
                peer,
                last_used: self.clock,
            },
        );
    }

    /// Forgets one SA.
    pub fn retire(&mut self, spi: Spi) -> bool {
        self.entries.remove(&spi.0).is_some()
    }

    /// Forgets every SA of a peer and refuses to derive new ones for it until an SA for it
    /// is installed again.
    pub fn revoke(&mut self, peer: PeerId) {
        self.entries.retain(|_, e| e.peer != peer);
        if !self.revoked.contains(&peer) {
            self.revoked.push(peer);
        }
    }

    fn make_room(&mut self) {
        if self.entries.len() < self.capacity {
            return;
        }
        // Evicting is rare (a table full of authenticated SAs), so a scan is fine.
        if let Some(oldest) = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.last_used)
            .map(|(spi, _)| *spi)
        {
            self.entries.remove(&oldest);
        }
    }

    /// Opens `packet` in place with the SA of `spi`, deriving one if need be. `peer_of`
    /// maps the sender's address to a peer for derived SAs.
    #[inline]
    pub fn open(
        &mut self,
        spi: Spi,
        src: IpAddr,
        packet: &mut [u8],
        peer_of: impl Fn(IpAddr) -> Option<PeerId>,
    ) -> Result<(Opened, PeerId), RxRefusal> {
        if let Some(entry) = self.entries.get_mut(&spi.0) {
            entry.last_used = self.clock;
            return entry
                .sa
                .open(packet)
                .map(|o| (o, entry.peer))
                .map_err(RxRefusal::Sa);
        }
        let peer = peer_of(src).ok_or(RxRefusal::UnknownPeer)?;
        if self.revoked.contains(&peer) {
            return Err(RxRefusal::Revoked);
        }
        let Some(source) = &self.source else {
            return Err(RxRefusal::UnknownSpi { throttled: false });
        };
        let budget = &mut self.budgets[peer.0 as usize % DERIVE_BUDGETS];
        if *budget == 0 {
            return Err(RxRefusal::UnknownSpi { throttled: true });
        }
        *budget -= 1;
        let unknown = || RxRefusal::UnknownSpi { throttled: false };
        let key = source
            .keys
            .derive(spi, source.suite)
            .map_err(|_| unknown())?;
        let cipher = self
            .backend
            .cipher(source.suite, key.as_bytes())
            .map_err(|_| unknown())?;
        let mut sa = RxSa::new(spi, cipher, self.limits);
        let opened = sa.open(packet).map_err(|_| unknown())?;
        self.install(peer, sa);
        Ok((opened, peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sa::TxSa;
    use std::time::Instant;

    const SUITE: Suite = Suite::AesGcm256;
    const PEER: PeerId = PeerId(0);

    fn keys() -> MasterKeys {
        MasterKeys::with_generations([3; 32], [4; 32], 0)
    }

    fn sealed_with(keys: &MasterKeys, spi: Spi) -> Vec<u8> {
        let key = keys.derive(spi, SUITE).unwrap();
        let mut sa = TxSa::from_key(
            spi,
            Backend::AwsLc,
            SUITE,
            &key,
            SaLimits::default(),
            Instant::now(),
        )
        .unwrap();
        let mut packet = vec![0u8; 64];
        packet[16] = 0x45;
        sa.seal(4, 0, &mut packet).unwrap();
        packet
    }

    fn table(capacity: usize, per_second: u32) -> RxSaTable {
        let mut t = RxSaTable::new(capacity, Backend::AwsLc, SaLimits::default());
        t.set_source(Some(RxKeySource {
            keys: keys(),
            suite: SUITE,
            derivations_per_second: per_second,
        }));
        t
    }

    fn open(t: &mut RxSaTable, spi: u32, packet: &mut [u8]) -> Result<PeerId, RxRefusal> {
        let src: IpAddr = "192.0.2.1".parse().unwrap();
        t.open(Spi(spi), src, packet, |ip| (ip == src).then_some(PEER))
            .map(|(_, peer)| peer)
    }

    #[test]
    fn an_sa_is_derived_on_demand_and_kept_only_once_it_authenticates() {
        let mut t = table(8, 1000);
        let mut forged = sealed_with(&MasterKeys::new([9; 32]), Spi(7));
        assert_eq!(
            open(&mut t, 7, &mut forged),
            Err(RxRefusal::UnknownSpi { throttled: false })
        );
        assert!(
            t.is_empty(),
            "a packet that did not authenticate leaves no SA behind"
        );
        let mut genuine = sealed_with(&keys(), Spi(7));
        assert_eq!(open(&mut t, 7, &mut genuine.clone()), Ok(PEER));
        assert_eq!(t.len(), 1);
        // The same packet again meets the stored SA's replay window.
        assert!(matches!(
            open(&mut t, 7, &mut genuine),
            Err(RxRefusal::Sa(Error::Replayed(1)))
        ));
    }

    #[test]
    fn made_up_spis_cost_at_most_the_derivation_budget() {
        let mut t = table(8, 30);
        let other = MasterKeys::new([9; 32]);
        let mut throttled = 0;
        for spi in 1..=20u32 {
            let mut p = sealed_with(&other, Spi(spi));
            if open(&mut t, spi, &mut p) == Err(RxRefusal::UnknownSpi { throttled: true }) {
                throttled += 1;
            }
        }
        assert_eq!(throttled, 20 - 3, "3 derivations per tenth of a second");
        t.tick();
        let mut p = sealed_with(&keys(), Spi(99));
        assert_eq!(open(&mut t, 99, &mut p), Ok(PEER), "the budget refills");
    }

    #[test]
    fn a_flood_from_one_address_does_not_spend_another_peers_budget() {
        let mut t = table(8, 30);
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let flooder: IpAddr = "192.0.2.66".parse().unwrap();
        let peer_of = |ip: IpAddr| match ip {
            ip if ip == peer => Some(PeerId(0)),
            ip if ip == flooder => Some(PeerId(1)),
            _ => None,
        };
        let other = MasterKeys::new([9; 32]);
        let mut throttled = 0;
        for spi in 1..=100u32 {
            let mut p = sealed_with(&other, Spi(spi));
            if t.open(Spi(spi), flooder, &mut p, peer_of).map(|_| ())
                == Err(RxRefusal::UnknownSpi { throttled: true })
            {
                throttled += 1;
            }
        }
        assert_eq!(throttled, 100 - 3, "the flooder's own budget is spent");
        // In the same tenth of a second, the peer's new SA is still derived.
        let mut genuine = sealed_with(&keys(), Spi(500));
        assert_eq!(
            t.open(Spi(500), peer, &mut genuine, peer_of)
                .map(|(_, p)| p),
            Ok(PeerId(0))
        );
        // And the flooder stays throttled until the next tick.
        let mut p = sealed_with(&keys(), Spi(501));
        assert_eq!(
            t.open(Spi(501), flooder, &mut p, peer_of).map(|_| ()),
            Err(RxRefusal::UnknownSpi { throttled: true })
        );
    }

    #[test]
    fn strangers_revoked_peers_and_a_full_table_are_handled() {
        let mut t = table(2, 1000);
        let mut p = sealed_with(&keys(), Spi(1));
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            t.open(Spi(1), stranger, &mut p, |_| None).map(|_| ()),
            Err(RxRefusal::UnknownPeer)
        );
        for spi in 1..=3 {
            let mut p = sealed_with(&keys(), Spi(spi));
            assert_eq!(open(&mut t, spi, &mut p), Ok(PEER));
            t.tick();
        }
        assert_eq!(t.len(), 2, "the least recently used SA made room");
        t.revoke(PEER);
        assert!(t.is_empty());
        let mut p = sealed_with(&keys(), Spi(4));
        assert_eq!(open(&mut t, 4, &mut p), Err(RxRefusal::Revoked));
    }
}
