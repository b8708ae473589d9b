//! Lab mode as the appliance's [`KeySource`]: static master keys from the configuration.
//!
//! Receive SAs are derived on demand from this appliance's own keys (PSP's stateless
//! receiver); transmit SAs from each peer's keys, with fresh random SPIs at every start and
//! every rekey, so a restarted sender never reuses a (key, IV). A receiver keeps no state
//! across restarts, so packets captured before a restart and replayed after it are accepted
//! again: lab mode says so at start. The key plane has no such gap (its SAs die with the
//! process that granted them).

use std::collections::BTreeMap;
use std::sync::Arc;

use cpclink_dataplane::engine::{lab, Engine, Event, PeerConfig, PeerId, SaProfile};
use cpclink_dataplane::sa::MasterKeys;

use crate::config::{ApplianceConfig, Keying, Peer, Prefix};
use crate::keys::{KeySource, KeyUpdate, KeyingStatus, PeerStatus};
use crate::Error;

/// Static lab keys driving an engine.
#[derive(Debug)]
pub struct LabKeys {
    engine: Arc<Engine>,
    profile: SaProfile,
    /// Peers by name with their engine index; removed peers keep their index (revoked).
    peers: BTreeMap<String, LabPeer>,
}

#[derive(Debug)]
struct LabPeer {
    id: PeerId,
    config: Peer,
    active: bool,
    tx: Vec<Option<cpclink_dataplane::sa::Spi>>,
}

impl LabKeys {
    /// Lets the engine derive receive SAs from this appliance's keys and installs transmit
    /// SAs to every configured peer.
    pub fn start(engine: Arc<Engine>, config: &ApplianceConfig) -> Result<Self, Error> {
        let Keying::Lab { master_keys } = &config.keying else {
            return Err(Error::Config(cpclink_diagnostics::Diagnostic {
                file: config.file.display().to_string(),
                field: "[appliance].master_keys".into(),
                line: None,
                reason: "lab keys asked of a configuration keyed by the key plane".into(),
                fix: None,
            }));
        };
        lab::enable_rx_derivation(&engine, master_keys, config.suite)?;
        tracing::warn!(
            "lab mode: static keys; a receiver keeps no replay state across restarts, so packets captured before a restart are accepted once more after it (use the key plane in production)"
        );
        let mut keys = Self {
            profile: SaProfile {
                suite: config.suite,
                crypto: config.crypto,
                limits: Default::default(),
            },
            engine,
            peers: BTreeMap::new(),
        };
        for peer in &config.peers {
            keys.add(peer.clone())?;
        }
        Ok(keys)
    }

    fn add(&mut self, config: Peer) -> Result<(), Error> {
        let id = match self.peers.get(&config.name) {
            Some(p) => p.id,
            None => PeerId(self.peers.len() as u32),
        };
        self.engine.set_peer(
            id,
            PeerConfig {
                endpoint: config.endpoint,
            },
        )?;
        let spis = lab::install_tx_sas(&self.engine, id, &config.master_keys, self.profile)?;
        tracing::info!(
            "peer {} at {}: transmit SPIs {spis:?}",
            config.name,
            config.endpoint
        );
        self.peers.insert(
            config.name.clone(),
            LabPeer {
                id,
                config,
                active: true,
                tx: spis.into_iter().map(Some).collect(),
            },
        );
        Ok(())
    }

    /// Takes a reloaded configuration's peers: new ones are keyed, changed ones re-keyed,
    /// removed ones dropped (every SA with them, both ways). Peers left alone keep their
    /// SAs untouched, so their traffic does not notice.
    fn reload_peers(&mut self, config: &ApplianceConfig) -> Result<KeyUpdate, Error> {
        let mut changed = false;
        for peer in &config.peers {
            let same = self
                .peers
                .get(&peer.name)
                .is_some_and(|p| p.active && p.config.same_as(peer));
            if !same {
                tracing::info!("reload: peer {} added or changed", peer.name);
                self.add(peer.clone())?;
                changed = true;
            }
        }
        for (name, p) in &mut self.peers {
            if p.active && !config.peers.iter().any(|q| q.name == *name) {
                tracing::info!("reload: peer {name} removed; dropping every SA with it");
                self.engine.revoke_peer(p.id)?;
                p.active = false;
                p.tx.iter_mut().for_each(|t| *t = None);
                changed = true;
            }
        }
        Ok(if changed {
            KeyUpdate::RoutesChanged
        } else {
            KeyUpdate::Nothing
        })
    }

    fn keys_of(&self, peer: PeerId) -> Option<(&str, &MasterKeys)> {
        self.peers
            .iter()
            .find(|(_, p)| p.id == peer && p.active)
            .map(|(name, p)| (name.as_str(), &p.config.master_keys))
    }
}

impl KeySource for LabKeys {
    type Input = std::convert::Infallible;

    async fn next(&mut self) -> Self::Input {
        std::future::pending().await
    }

    fn handle(&mut self, input: Self::Input) -> KeyUpdate {
        match input {}
    }

    fn on_engine_event(&mut self, event: Event) {
        let (Event::RekeyDue { worker, peer } | Event::SaExhausted { worker, peer }) = event;
        let Some((name, keys)) = self.keys_of(peer) else {
            return;
        };
        let name = name.to_owned();
        match lab::rekey_tx_sa(&self.engine, worker, peer, keys, self.profile) {
            Ok(spi) => {
                tracing::info!("worker {worker} rekeyed to peer {name} with SPI {spi}");
                if let Some(p) = self.peers.get_mut(&name) {
                    if let Some(slot) = p.tx.get_mut(worker) {
                        *slot = Some(spi);
                    }
                }
            }
            Err(e) => tracing::error!("worker {worker} could not rekey to {name}: {e}"),
        }
    }

    fn status(&self) -> KeyingStatus {
        KeyingStatus {
            peers: self
                .peers
                .iter()
                .map(|(name, p)| {
                    (
                        name.clone(),
                        PeerStatus {
                            peer: p.id,
                            endpoint: Some(p.config.endpoint),
                            active: p.active,
                            revoked: !p.active,
                            prefixes: p.config.prefixes.clone(),
                            tx: p.tx.clone(),
                        },
                    )
                })
                .collect(),
            ..KeyingStatus::default()
        }
    }

    fn reload(&mut self, config: &ApplianceConfig) -> Result<KeyUpdate, Error> {
        self.reload_peers(config)
    }

    fn routes(&self) -> Vec<(String, PeerId, Vec<Prefix>)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.active)
            .map(|(name, p)| (name.clone(), p.id, p.config.prefixes.clone()))
            .collect()
    }

    fn peer_id(&self, name: &str) -> Option<PeerId> {
        self.peers.get(name).filter(|p| p.active).map(|p| p.id)
    }

    fn report(&self, report: cpclink_keymgr::audit::ApplianceReport) {
        // Lab keys have no authority: the log is the only record.
        tracing::info!("operator action (no authority to report to): {report:?}");
    }

    fn publish_metrics(&self, _payload: Vec<u8>) {
        // Lab keys have no identity to sign with and no channel to peers.
    }

    fn take_metrics(&mut self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }

    fn own_id(&self) -> Option<String> {
        None
    }

    async fn shutdown(self) {}
}
