//! An authority configuration for tests on one machine.

use std::path::Path;

use cpclink_keymgr::config::AuthorityConfig;

/// An authority under `dir` with a fresh KEK, on an ephemeral loopback port, a redb store,
/// daily certificates, no rotation during a test, and the default policy (appliances of
/// one tenant talk).
pub fn authority_config(dir: &Path) -> AuthorityConfig {
    let kek_file = dir.join("kek");
    std::fs::write(&kek_file, "33".repeat(32)).unwrap();
    AuthorityConfig::on_loopback(dir.join("authority"), kek_file)
}
