//! Inner prefixes at the authority: the operator's assignments, each agent's announcement,
//! and the directory's accepted set, which is always announced ∩ covered by the assignment.
//!
//! Both sides can change it: an agent announcing on subscribe ([`Authority::announce`]) and
//! the operator assigning or removing ([`Authority::assign_prefixes`]). Either way the
//! entry's new `prefixes` and the assignment record are stored in one transaction under
//! the state lock, and the agent hears which of its announced prefixes are refused.

use std::time::Duration;

use super::{assignment_key, check_id, Authority, Published};
use crate::audit::AuditEvent;
use crate::directory::Change;
use crate::prefix::{self, InnerPrefix, Refusal};
use crate::proto::PrefixRecord;
use crate::store::{self, Store, Write};
use crate::token::{self, TokenClaims};
use crate::{Error, Result};

use super::{now_secs, random_bytes, Push};

impl Authority {
    /// Records what `id`'s agent publishes on subscribing: its control address, endpoints,
    /// capabilities, and the announced prefixes its assignment covers. The rest are refused,
    /// and each refusal not refused before is audited as a hijack attempt. Returns the
    /// refusals, for the agent.
    pub(super) async fn announce(&self, id: &str, published: Published) -> Result<Vec<Refusal>> {
        let mut st = self.inner.state.lock().await;
        let Some(entry) = st.master.live().appliances.get(id).cloned() else {
            return Err(Error::NotAuthorised(format!("{id} is not enrolled")));
        };
        let (accepted, refused) = st.assignments.judge(id, &published.prefixes);
        let mut next = entry.clone();
        if !published.control.is_empty() {
            next.control = published.control;
        }
        next.endpoints = published.endpoints;
        next.capabilities = published.capabilities;
        next.prefixes = accepted;
        next.joined = true;
        st.announced.insert(id.to_owned(), published.prefixes);
        let before = st
            .refused
            .insert(id.to_owned(), refused.clone())
            .unwrap_or_default();
        if next != entry {
            let what = format!("update {id}: prefixes {}", prefix::list(&next.prefixes));
            self.commit(&mut st, Change::Upsert(next), Vec::new(), None, what)
                .await?;
        }
        drop(st);
        let attempts: Vec<AuditEvent> = refused
            .iter()
            .filter(|r| !before.contains(r))
            .map(|r| {
                tracing::warn!(
                    "refused prefix {} announced by {id}: {}",
                    r.prefix,
                    r.reason
                );
                AuditEvent::PrefixRefused {
                    appliance: id.to_owned(),
                    prefix: r.prefix,
                    reason: r.reason.clone(),
                }
            })
            .collect();
        if !attempts.is_empty() {
            self.audit_all(attempts).await?;
        }
        Ok(refused)
    }

    /// Adds `prefixes` to `appliance`'s assignment (enrolled or not yet), refused, naming
    /// both appliances, if one overlaps another appliance's. A prefix the appliance already
    /// announced takes effect at once. Returns the directory version.
    pub async fn assign_prefixes(
        &self,
        appliance: &str,
        prefixes: &[InnerPrefix],
        by: &str,
    ) -> Result<u64> {
        self.reassign(appliance, prefixes, false, by).await
    }

    /// Removes `prefixes` (each exactly as assigned) from `appliance`'s assignment; the
    /// directory withdraws what they covered. Returns the directory version.
    pub async fn remove_prefixes(
        &self,
        appliance: &str,
        prefixes: &[InnerPrefix],
        by: &str,
    ) -> Result<u64> {
        self.reassign(appliance, prefixes, true, by).await
    }

    async fn reassign(
        &self,
        id: &str,
        prefixes: &[InnerPrefix],
        remove: bool,
        by: &str,
    ) -> Result<u64> {
        check_id(id)?;
        if prefixes.is_empty() {
            return Err(Error::Prefix("name at least one prefix".into()));
        }
        let mut st = self.inner.state.lock().await;
        let held = if remove {
            st.assignments.with_removed(id, prefixes)
        } else {
            st.assignments.with_added(id, prefixes)
        }
        .map_err(Error::Prefix)?;
        let write = if held.is_empty() {
            Write::Delete(assignment_key(id))
        } else {
            Write::Put(assignment_key(id), store::json(&held))
        };
        let mut assignments = st.assignments.clone();
        assignments.set(id, held);
        // Re-judge what the appliance announced: assigning later makes a refused
        // announcement take effect without the agent reconnecting.
        let announced = st.announced.get(id).cloned().unwrap_or_default();
        let (accepted, refused) = assignments.judge(id, &announced);
        let changed = st
            .master
            .live()
            .appliances
            .get(id)
            .filter(|e| e.prefixes != accepted)
            .cloned();
        let version = match changed {
            Some(mut entry) => {
                entry.prefixes = accepted;
                let what = format!("update {id}: prefixes {}", prefix::list(&entry.prefixes));
                self.commit(&mut st, Change::Upsert(entry), vec![write], None, what)
                    .await?
            }
            None => {
                self.inner.store.apply(vec![write]).await?;
                st.master.live().version
            }
        };
        st.assignments = assignments;
        if st.announced.contains_key(id) && st.refused.get(id) != Some(&refused) {
            st.refused.insert(id.to_owned(), refused.clone());
            if let Some(s) = self.subscribers().get(id) {
                s.push(Push::Refused(refused));
            }
        }
        drop(st);
        let (appliance, prefixes, by) = (id.to_owned(), prefixes.to_vec(), by.to_owned());
        self.audit(if remove {
            AuditEvent::PrefixesRemoved {
                appliance,
                prefixes,
                by,
            }
        } else {
            AuditEvent::PrefixesAssigned {
                appliance,
                prefixes,
                by,
            }
        })
        .await?;
        Ok(version)
    }

    /// Every appliance with prefixes assigned, announced or accepted, in id order.
    pub async fn prefixes(&self) -> Vec<PrefixRecord> {
        let st = self.inner.state.lock().await;
        let live = st.master.live();
        let mut ids: Vec<&String> = st
            .assignments
            .iter()
            .map(|(id, _)| id)
            .chain(st.announced.keys())
            .chain(
                live.appliances
                    .values()
                    .filter(|e| !e.prefixes.is_empty())
                    .map(|e| &e.id),
            )
            .collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|id| PrefixRecord {
                appliance: id.clone(),
                assigned: st.assignments.of(id).to_vec(),
                announced: st.announced.get(id).cloned().unwrap_or_default(),
                accepted: live
                    .appliances
                    .get(id)
                    .map(|e| e.prefixes.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Mints an enrolment token for an operator, audited; `prefixes` are assigned first, so
    /// an overlapping assignment mints nothing. `ttl` defaults to the configured lifetime.
    pub async fn issue_token(
        &self,
        appliance: &str,
        centre: &str,
        tenant: &str,
        ttl: Option<Duration>,
        prefixes: &[InnerPrefix],
        by: &str,
    ) -> Result<String> {
        check_id(appliance)?;
        if self.enrolled(appliance).await.is_ok_and(|e| e.revoked) {
            return Err(Error::ReplaceRequired {
                appliance: appliance.to_owned(),
            });
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
        self.audit(AuditEvent::TokenCreated {
            token_id: claims.id.clone(),
            appliance: appliance.to_owned(),
            by: by.to_owned(),
            tenant: claims.tenant.clone(),
            expires: claims.expires,
        })
        .await?;
        Ok(token::mint(&self.inner.token_key, &claims))
    }

    /// Whether the enrolment token `id` was revoked.
    pub(crate) async fn token_revoked(&self, id: &str) -> Result<bool> {
        Ok(self
            .inner
            .store
            .get(&format!("token-revoked/{id}"))
            .await?
            .is_some())
    }

    /// Where the enrolment token `id` stands: `revoked`, `spent` (redeemed) or `unused`.
    pub async fn token_state(&self, id: &str) -> Result<&'static str> {
        if self.token_revoked(id).await? {
            return Ok("revoked");
        }
        Ok(match self.inner.store.get(&format!("token/{id}")).await? {
            Some(_) => "spent",
            None => "unused",
        })
    }

    /// Revokes the enrolment token `id` as `by` asked, so it can never be redeemed; a
    /// token already redeemed is refused (revoke its appliance instead).
    pub async fn revoke_token(&self, id: &str, by: &str) -> Result<()> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Refused(format!(
                "{id:?} is not a token id (hex, as `tokens` lists it)"
            )));
        }
        if self.token_state(id).await? == "spent" {
            return Err(Error::Refused(format!(
                "token {id} was already redeemed; revoke the appliance it enrolled instead"
            )));
        }
        self.inner
            .store
            .apply(vec![Write::Put(
                format!("token-revoked/{id}"),
                crate::store::json(&now_secs()),
            )])
            .await?;
        self.audit(AuditEvent::TokenRevoked {
            token_id: id.to_owned(),
            by: by.to_owned(),
        })
        .await
    }
}
