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

use std::net::SocketAddr;

use serde::Deserialize;

use super::Ctx;
use crate::api::{ApiToken, Role};
use crate::Error;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    listen: String,
    #[serde(default)]
    token: Vec<RawToken>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    role: Role,
    sha256: String,
}

/// The management API's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Where it listens (HTTPS).
    pub listen: SocketAddr,
    /// The bearer tokens it accepts.
    pub tokens: Vec<ApiToken>,
}

impl Ctx<'_> {
    pub(super) fn api(&self, raw: RawApi, key_plane: bool) -> Result<ApiConfig, Error> {
        if !key_plane {
            return Err(self.err_fix(
                "[api]",
                "the management API serves HTTPS with the appliance's key-plane certificate; lab keys have none",
                "key the appliance with [keymgr], or remove [api]",
            ));
        }
        let listen = self.endpoint("[api].listen", &raw.listen)?;
        let mut tokens: Vec<ApiToken> = Vec::new();
        for (i, t) in raw.token.into_iter().enumerate() {
            let sha256 = hex::decode(t.sha256.trim())
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| {
                    self.err_fix(
                        format!("[[api.token]][{i}].sha256"),
                        "is not 64 hex digits",
                        "write the token's SHA-256 in hex: printf %s \"$TOKEN\" | sha256sum",
                    )
                })?;
            if t.name.is_empty()
                || tokens
                    .iter()
                    .any(|o| o.name == t.name || o.sha256 == sha256)
            {
                return Err(self.err_fix(
                    format!("[[api.token]][{i}]"),
                    format!(
                        "{:?} is empty or listed twice (by name or by token)",
                        t.name
                    ),
                    "give every token its own name and its own secret",
                ));
            }
            tokens.push(ApiToken {
                name: t.name,
                role: t.role,
                sha256,
            });
        }
        Ok(ApiConfig { listen, tokens })
    }
}
