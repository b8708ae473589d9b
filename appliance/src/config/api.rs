//! `[api]`: the management API (see [`crate::api`]).
//!
//! ```toml
//! [api]
//! listen = "127.0.0.1:7443"           # HTTPS, with this appliance's key-plane certificate
//!
//! [[api.token]]                       # bearer tokens: a name, a role, the token's SHA-256
//! name = "noc"
//! role = "viewer"                     # viewer | operator | admin
//! sha256 = "<64 hex>"                 # `printf %s "$TOKEN" | sha256sum`
//! ```

pub use cpclink_mgmt::{ApiConfig, RawApi};

use super::Ctx;
use crate::Error;

impl Ctx<'_> {
    pub(super) fn api(&self, raw: RawApi, key_plane: bool) -> Result<ApiConfig, Error> {
        if !key_plane {
            return Err(self.err_fix(
                "[api]",
                "the management API serves HTTPS with the appliance's key-plane certificate; lab keys have none",
                "key the appliance with [keymgr], or remove [api]",
            ));
        }
        Ok(raw.check(self.text)?)
    }
}
