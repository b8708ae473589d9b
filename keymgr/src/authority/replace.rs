//! Replacing an appliance: new hardware takes over a revoked appliance's id and role.
//!
//! The flow has three steps, each audited. `revoke` kills the old certificate and every SA
//! peers held with it. [`Authority::replace`] (an operator's action) records a replacement
//! order naming one token. Enrolment with that token, by an agent with fresh keys, gives
//! the entry a new certificate and ends its revoked state in one store transaction, which
//! also records the old serial as revoked for good. Until then the entry stays revoked, and
//! a plain token for the id is refused, naming this flow.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{check_id, now_secs, random_bytes, Authority};
use crate::audit::AuditEvent;
use crate::prefix::InnerPrefix;
use crate::store::{self, Store, Write};
use crate::token::{self, TokenClaims};
use crate::{Error, Result};

/// A replacement the operator ordered and no agent has redeemed yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ReplaceOrder {
    /// The only token that may re-enrol the id.
    pub token_id: String,
    /// The revoked certificate's serial.
    pub old_serial: String,
    /// Who ordered it.
    pub by: String,
}

/// The store key of `id`'s pending replacement order.
pub(super) fn order_key(id: &str) -> String {
    format!("replace/{id}")
}

/// The store key that marks a certificate serial revoked for good.
pub(super) fn revoked_serial_key(serial: &str) -> String {
    format!("revoked-serial/{serial}")
}

impl Authority {
    /// Orders the revoked appliance `appliance` replaced and returns the token its new agent
    /// enrols with (fresh keys, a new certificate). The old certificate stays refused.
    /// Refused for an appliance that is not enrolled or not revoked. A later order replaces
    /// an earlier one (only the newest token enrols). `prefixes` are added to the
    /// appliance's assignment first.
    pub async fn replace(
        &self,
        appliance: &str,
        centre: &str,
        tenant: &str,
        ttl: Option<Duration>,
        prefixes: &[InnerPrefix],
        by: &str,
    ) -> Result<String> {
        check_id(appliance)?;
        let entry = self.enrolled(appliance).await.map_err(|_| {
            Error::NotAuthorised(format!(
                "{appliance} is not enrolled, so there is nothing to replace: create a token with `cpclink keymgr token create`"
            ))
        })?;
        if !entry.revoked {
            return Err(Error::NotAuthorised(format!(
                "{appliance} is not revoked: revoke it first (`cpclink keymgr revoke {appliance}`) so the old hardware's certificate and SAs die, then replace it"
            )));
        }
        if !prefixes.is_empty() {
            self.assign_prefixes(appliance, prefixes, by).await?;
        }
        let claims = TokenClaims {
            id: hex::encode(*random_bytes::<16>()?),
            appliance: appliance.to_owned(),
            centre: centre.to_owned(),
            tenant: tenant.to_owned(),
            expires: now_secs() + ttl.unwrap_or(self.inner.token_ttl).as_secs(),
        };
        let order = ReplaceOrder {
            token_id: claims.id.clone(),
            old_serial: entry.cert_serial.clone(),
            by: by.to_owned(),
        };
        self.inner
            .store
            .put(&order_key(appliance), &store::json(&order))
            .await?;
        self.audit(AuditEvent::ReplacementOrdered {
            appliance: appliance.to_owned(),
            old_serial: entry.cert_serial,
            token_id: claims.id.clone(),
            by: by.to_owned(),
        })
        .await?;
        Ok(token::mint(&self.inner.token_key, &claims))
    }

    /// The replacement order for `id` that token `token_id` redeems, or
    /// [`Error::ReplaceRequired`]: a revoked id enrols only through its order.
    pub(super) async fn replacement_for(&self, id: &str, token_id: &str) -> Result<ReplaceOrder> {
        match store::get_json::<ReplaceOrder>(&self.inner.store, &order_key(id)).await? {
            Some(order) if order.token_id == token_id => Ok(order),
            _ => Err(Error::ReplaceRequired {
                appliance: id.to_owned(),
            }),
        }
    }

    /// The writes that retire the replaced appliance's state along with the enrolment:
    /// the order is spent, the old serial recorded revoked, and its escrowed keys set
    /// aside (the new agent's keys start again at epoch 1 and must be escrowed afresh).
    pub(super) async fn replacement_writes(
        &self,
        id: &str,
        order: &ReplaceOrder,
    ) -> Result<Vec<Write>> {
        let mut writes = vec![
            Write::Delete(order_key(id)),
            Write::Put(revoked_serial_key(&order.old_serial), store::json(&id)),
        ];
        let escrow_key = format!("escrow/{id}");
        if let Some(old) = self.inner.store.get(&escrow_key).await? {
            writes.push(Write::Put(
                format!("escrow-replaced/{id}/{}", order.old_serial),
                old,
            ));
            writes.push(Write::Delete(escrow_key));
        }
        Ok(writes)
    }

    /// Forgets what the replaced hardware reported, once its replacement enrolled.
    pub(super) fn forget_reports(&self, id: &str) {
        self.inner.rotated.send_modify(|m| {
            m.remove(id);
        });
        self.obeyed().remove(id);
    }
}
