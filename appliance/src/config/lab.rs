//! Lab mode: static master keys in `[appliance]` and the peers in `[[peers]]`.

use std::net::SocketAddr;

use cpclink_dataplane::sa::MasterKeys;
use serde::Deserialize;

use super::{Ctx, Prefix};
use crate::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) name: String,
    endpoint: String,
    #[serde(default)]
    prefixes: Vec<String>,
    master_keys: Vec<String>,
    #[serde(default)]
    current_generation: u8,
}

/// A lab-mode peer appliance.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Where it listens.
    pub endpoint: SocketAddr,
    /// Inner prefixes routed to it.
    pub prefixes: Vec<Prefix>,
    /// Its master keys (lab mode: the sender derives its SAs from them).
    pub master_keys: MasterKeys,
}

impl Ctx<'_> {
    /// Two master-key generations and the current one.
    pub(super) fn keys(
        &self,
        field: &str,
        keys: &[String],
        current: u8,
    ) -> Result<MasterKeys, Error> {
        let fix = "give two generations, [\"<64 hex digits>\", \"<64 hex digits>\"]";
        if keys.len() != 2 {
            return Err(self.err_fix(field, format!("{} keys given", keys.len()), fix));
        }
        let mut parsed = [[0u8; 32]; 2];
        for (i, key) in keys.iter().enumerate() {
            let bytes = hex::decode(key.trim())
                .map_err(|_| self.err_fix(format!("{field}[{i}]"), "is not hex", fix))?;
            if bytes.len() != 32 {
                return Err(self.err_fix(
                    format!("{field}[{i}]"),
                    format!("has {} bytes; a master key has 32", bytes.len()),
                    fix,
                ));
            }
            parsed[i].copy_from_slice(&bytes);
        }
        if current > 1 {
            return Err(self.err_fix(
                field.replace("master_keys", "current_generation"),
                format!("{current} is not a generation"),
                "give 0 or 1",
            ));
        }
        Ok(MasterKeys::with_generations(parsed[0], parsed[1], current))
    }

    pub(super) fn peers(&self, raw: Vec<RawPeer>, listen: SocketAddr) -> Result<Vec<Peer>, Error> {
        let mut peers: Vec<Peer> = Vec::with_capacity(raw.len());
        for p in raw {
            let at = format!("[peers.{}]", p.name);
            if p.name.is_empty() {
                return Err(self.err_fix("[[peers]].name", "is empty", "name every peer"));
            }
            if peers.iter().any(|q| q.name == p.name) {
                return Err(self.err_fix(
                    at,
                    "this peer name appears twice",
                    "give each peer a name of its own",
                ));
            }
            let endpoint = self.endpoint(&format!("{at}.endpoint"), &p.endpoint)?;
            if endpoint.is_ipv4() != listen.is_ipv4() {
                return Err(self.err_fix(
                    format!("{at}.endpoint"),
                    format!(
                        "{endpoint} is not of the address family of [appliance].listen {listen}"
                    ),
                    "give the peer's address of the same family",
                ));
            }
            let prefixes = self.prefixes(&format!("{at}.prefixes"), &p.prefixes)?;
            let master_keys = self.keys(
                &format!("{at}.master_keys"),
                &p.master_keys,
                p.current_generation,
            )?;
            peers.push(Peer {
                name: p.name,
                endpoint,
                prefixes,
                master_keys,
            });
        }
        Ok(peers)
    }
}

impl Peer {
    /// Whether `other` keys, reaches and routes this peer exactly as this does.
    pub fn same_as(&self, other: &Peer) -> bool {
        let keys = |k: &MasterKeys| (k.key(0).copied(), k.key(1).copied(), k.current_generation());
        self.name == other.name
            && self.endpoint == other.endpoint
            && self.prefixes == other.prefixes
            && keys(&self.master_keys) == keys(&other.master_keys)
    }
}
