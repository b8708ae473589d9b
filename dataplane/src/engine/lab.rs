//! Lab mode: static master keys from the configuration instead of a key plane.
//!
//! Each appliance's config holds its own two master keys (to derive receive SAs on demand,
//! PSP's stateless receiver) and each peer's (to derive the transmit SAs it sends with).
//! A sender picks its SPIs at random in the peer's current generation at every start, one
//! per worker, so a restarted sender starts fresh SAs instead of reusing (key, IV) pairs.

use super::{Engine, PeerId, RxKeySource, SaProfile};
use crate::crypto::Suite;
use crate::error::{Error, Result};
use crate::sa::{MasterKeys, Spi};

/// A fresh random SPI index (bit 31 clear, never 0), with consecutive ones for `count`
/// workers so the receiver's SPI steering spreads them over its workers.
pub fn random_spi_base(count: usize) -> Result<u32> {
    let mut bytes = [0u8; 4];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Io {
        what: "random SPI",
        reason: "the system random generator failed".into(),
    })?;
    let span = count as u32 + 1;
    Ok((u32::from_be_bytes(bytes) & 0x7fff_ffff).clamp(1, 0x7fff_ffff - span))
}

/// Installs a fresh transmit SA to `peer` on every worker, keyed from the peer's master keys.
pub fn install_tx_sas(
    engine: &Engine,
    peer: PeerId,
    peer_keys: &MasterKeys,
    profile: SaProfile,
) -> Result<Vec<Spi>> {
    let base = random_spi_base(engine.workers())?;
    let generation = u32::from(peer_keys.current_generation()) << 31;
    let mut spis = Vec::with_capacity(engine.workers());
    for worker in 0..engine.workers() {
        let spi = Spi(generation | (base + worker as u32));
        let key = peer_keys.derive(spi, profile.suite)?;
        engine.install_tx_sa(worker, peer, spi, &key, profile)?;
        spis.push(spi);
    }
    Ok(spis)
}

/// Replaces one worker's transmit SA to `peer` (after a rekey event).
pub fn rekey_tx_sa(
    engine: &Engine,
    worker: usize,
    peer: PeerId,
    peer_keys: &MasterKeys,
    profile: SaProfile,
) -> Result<Spi> {
    let generation = u32::from(peer_keys.current_generation()) << 31;
    let spi = Spi(generation | random_spi_base(1)?);
    let key = peer_keys.derive(spi, profile.suite)?;
    engine.install_tx_sa(worker, peer, spi, &key, profile)?;
    Ok(spi)
}

/// Lets the engine derive receive SAs from the local master keys.
pub fn enable_rx_derivation(engine: &Engine, local_keys: &MasterKeys, suite: Suite) -> Result<()> {
    engine.set_rx_key_source(Some(RxKeySource {
        keys: local_keys.clone(),
        suite,
        derivations_per_second: 1000,
    }))
}
