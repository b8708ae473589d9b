//! An authority configuration for tests on one machine.

use std::net::Ipv4Addr;
use std::path::Path;

use cpclink_keymgr::config::{AuthorityConfig, StoreConfig};

/// An authority under `dir` with a fresh KEK, on an ephemeral loopback port, a redb store,
/// daily certificates, no rotation during a test, and the default policy (appliances of
/// one tenant talk).
pub fn authority_config(dir: &Path) -> AuthorityConfig {
    let kek_file = dir.join("kek");
    std::fs::write(&kek_file, "33".repeat(32)).unwrap();
    AuthorityConfig {
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: dir.join("authority"),
        kek_file,
        rotation_interval_secs: 86_400,
        cert_days: 1,
        token_ttl_secs: 600,
        store: StoreConfig::Redb { path: None },
        rules: Vec::new(),
        api: None,
        ca: None,
    }
}
