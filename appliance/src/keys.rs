//! Where an appliance's SAs come from: one trait, two sources. The key plane
//! ([`crate::keyed::KeyPlane`]: a key agent enrolled with the authority) and static lab keys
//! ([`crate::lab::LabKeys`]). The appliance's owner task drives either the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;

use cpclink_dataplane::engine::{Event, PeerId};
use cpclink_dataplane::sa::Spi;
use serde::Serialize;

use crate::config::Prefix;

/// What changed for the appliance after a key source acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum KeyUpdate {
    /// Nothing the appliance must act on.
    Nothing,
    /// Peers or the prefixes they serve changed: the route table must be rebuilt.
    RoutesChanged,
    /// The source can no longer key this appliance (its own appliance was revoked): the
    /// appliance stops.
    Revoked,
}

/// A source of SAs, peers and peers' prefixes, driven by the appliance's owner task.
///
/// The owner awaits [`next`](KeySource::next) beside its other inputs and passes what it
/// returns to [`handle`](KeySource::handle); `next` must be cancel-safe (dropping it loses
/// nothing), because the owner drops it whenever another input is ready first.
pub trait KeySource: Send + 'static {
    /// What the source waits for.
    type Input: Send;
    /// Waits for the source's next input.
    fn next(&mut self) -> impl Future<Output = Self::Input> + Send;
    /// Acts on an input.
    fn handle(&mut self, input: Self::Input) -> KeyUpdate;
    /// A worker's transmit SA is due or exhausted: get it a new one.
    fn on_engine_event(&mut self, event: Event);
    /// What the source has given the engine, for operators and tests.
    fn status(&self) -> KeyingStatus;
    /// Takes a reloaded configuration (validated, of the same keying kind): peers and keys
    /// it lists change, SAs of peers it leaves alone do not.
    fn reload(
        &mut self,
        config: &crate::config::ApplianceConfig,
    ) -> Result<KeyUpdate, crate::Error>;
    /// Active peers with their engine index and the prefixes the source says they serve.
    fn routes(&self) -> Vec<(String, PeerId, Vec<Prefix>)>;
    /// The engine index of an active peer, by name.
    fn peer_id(&self, name: &str) -> Option<PeerId>;
    /// Sends a metric advertisement (opaque bytes) to every peer allowed to talk to this
    /// appliance, signed by this appliance's identity; sources without one send nothing.
    fn publish_metrics(&self, payload: Vec<u8>);
    /// Metric advertisements peers sent since the last call, each with the peer whose
    /// signature it carried.
    fn take_metrics(&mut self) -> Vec<(String, Vec<u8>)>;
    /// This appliance's id as peers know it, if the source has one.
    fn own_id(&self) -> Option<String>;
    /// Sends an operator action at this appliance to the authority's audit log; sources
    /// without an authority only log it.
    fn report(&self, report: cpclink_keymgr::audit::ApplianceReport);
    /// Stops the source (the engine keeps the SAs it has).
    fn shutdown(self) -> impl Future<Output = ()> + Send;
}

/// A peer as the key source sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// Its index in the engine.
    pub peer: PeerId,
    /// Where its data plane listens, once known.
    pub endpoint: Option<SocketAddr>,
    /// Whether it may talk to this appliance now.
    pub active: bool,
    /// Whether it was revoked (or its SAs dropped for good).
    pub revoked: bool,
    /// The inner prefixes the source says it serves.
    pub prefixes: Vec<Prefix>,
    /// The transmit SA each worker uses towards it.
    pub tx: Vec<Option<Spi>>,
}

/// What a key source has given the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyingStatus {
    /// Peers by name (appliance id).
    pub peers: BTreeMap<String, PeerStatus>,
    /// Receive SAs installed and not retired, with the peer that sends on each.
    pub rx: BTreeMap<Spi, String>,
    /// Receive SAs retired by rotations.
    pub retired_rx: BTreeSet<Spi>,
    /// Every SA in use (transmit and receive): when it was installed and when it ends.
    /// Never key material.
    pub sas: BTreeMap<Spi, SaRecord>,
}

/// One SA in use, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SaRecord {
    /// `tx` (this appliance seals with it) or `rx` (a peer does).
    pub direction: &'static str,
    /// The peer at the other end.
    pub peer: String,
    /// The worker that uses it.
    pub worker: usize,
    /// Its key generation (the SPI's top bit).
    pub generation: u8,
    /// When it was installed, unix milliseconds.
    pub installed_ms: u64,
    /// The seconds left of its lifetime when installed, if it has one (transmit SAs end
    /// where the peer's grant says; the data plane also ends one at its packet limit).
    pub lifetime_secs: Option<u64>,
}

impl SaRecord {
    /// A record of an SA installed now.
    pub fn now(
        direction: &'static str,
        peer: &str,
        worker: usize,
        spi: Spi,
        lifetime_secs: Option<u64>,
    ) -> Self {
        Self {
            direction,
            peer: peer.to_owned(),
            worker,
            generation: spi.generation(),
            installed_ms: crate::paths::now_ms(),
            lifetime_secs,
        }
    }
}
