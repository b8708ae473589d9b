//! Credentials the authority issues to operators of the management APIs: signed bearer
//! tokens and client certificates, each naming a caller, a role and optionally the one
//! tenant it is scoped to.
//!
//! A token is `cpo1.<base64url claims>.<base64url signature>`, the signature ECDSA P-256 by
//! the CA's key ([`crate::signing`], domain `cpclink operator token v1`). So an appliance
//! checks a token with the CA certificate it already trusts, without asking the authority.
//! An operator certificate is issued by the CA with `urn:cpclink:role:ROLE` (and
//! `urn:cpclink:tenant:TENANT` if scoped) as subject alternative names; an appliance's
//! certificate names no role and grants nothing here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cpclink_mgmt::{Caller, Role};
use serde::{Deserialize, Serialize};

use crate::authority::now_secs;
use crate::signing::{Signer, Verifier};
use crate::{Error, Result};

const PREFIX: &str = "cpo1";
const DOMAIN: &[u8] = b"cpclink operator token v1\0";
const SIGNER: &str = "authority";
const ROLE_URI: &str = "urn:cpclink:role:";
const TENANT_URI: &str = "urn:cpclink:tenant:";

/// The longest life of an issued credential, in seconds (90 days): issued tokens cannot be
/// withdrawn before they expire, so none lives long.
pub const MAX_TTL_SECS: u64 = 90 * 24 * 3600;

/// What an operator token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorClaims {
    /// Random id, audited at issue.
    pub id: String,
    /// Who holds it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one tenant it may see and act on; `None`: every tenant.
    pub tenant: Option<String>,
    /// Unix time (seconds) after which it is refused.
    pub expires: u64,
}

/// Signs `claims` into a token with the CA's key (PKCS#8).
pub fn issue_token(ca_key: &[u8], claims: &OperatorClaims) -> Result<String> {
    let body = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(claims).map_err(|e| Error::Frame(format!("token claims: {e}")))?,
    );
    let signature = Signer::from_pkcs8(ca_key)?.sign(DOMAIN, SIGNER, body.as_bytes())?;
    Ok(format!(
        "{PREFIX}.{body}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// The subject alternative names of an operator certificate.
pub fn operator_uris(role: Role, tenant: Option<&str>) -> Vec<String> {
    let mut uris = vec![format!("{ROLE_URI}{}", role.as_str())];
    uris.extend(tenant.map(|t| format!("{TENANT_URI}{t}")));
    uris
}

/// Checks operator credentials against the CA certificate.
#[derive(Debug, Clone)]
pub struct OperatorCredentials {
    /// The CAs whose signature on a token is accepted: the one given, and for an appliance
    /// under an operator's root, the intermediate its own certificate was issued by.
    cas: Vec<Verifier>,
}

impl OperatorCredentials {
    /// Credentials the CA whose certificate (DER) is `ca` issued.
    pub fn new(ca: &[u8]) -> Result<Self> {
        Ok(Self {
            cas: vec![Verifier::from_certificate(ca)?],
        })
    }

    /// Credentials for an appliance that trusts `anchor` and holds `identity`: the
    /// authority signs tokens with its own CA's key, which under an operator's root is the
    /// intermediate that issued `identity`. That intermediate is accepted too, once the
    /// identity's chain is checked to lead to `anchor`.
    pub fn for_appliance(
        anchor: &rustls::pki_types::CertificateDer<'static>,
        identity: &crate::pki::KeyedCert,
    ) -> Result<Self> {
        let mut credentials = Self::new(anchor)?;
        if let Some(issuer) = identity.chain.first() {
            if crate::tls::chains_to(anchor, &identity.cert, &identity.chain) {
                credentials.cas.push(Verifier::from_certificate(issuer)?);
            }
        }
        Ok(credentials)
    }

    /// The claims of a token this CA signed and that has not expired at `now_secs`.
    pub fn check_token(
        &self,
        token: &str,
        now_secs: u64,
    ) -> std::result::Result<OperatorClaims, String> {
        let mut parts = token.split('.');
        let (Some(PREFIX), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the bearer token is not one this API knows".into());
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| "the operator token's signature is not base64url".to_owned())?;
        if !self.cas.iter().any(|ca| {
            ca.verify(DOMAIN, SIGNER, body.as_bytes(), &signature)
                .is_ok()
        }) {
            return Err("the operator token is not signed by this authority's CA".to_owned());
        }
        let claims: OperatorClaims = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| "the operator token's claims are unreadable".to_owned())?;
        if claims.expires <= now_secs {
            return Err(format!(
                "the operator token {} of {} expired; ask an admin for a new one",
                claims.id, claims.name
            ));
        }
        Ok(claims)
    }
}

impl cpclink_mgmt::Credentials for OperatorCredentials {
    fn bearer(&self, token: &str) -> std::result::Result<Caller, String> {
        let claims = self.check_token(token, now_secs())?;
        Ok(Caller {
            name: claims.name,
            role: claims.role,
            tenant: claims.tenant,
        })
    }

    fn certificate(&self, der: &[u8]) -> Option<Caller> {
        let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
        let name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|n| n.as_str().ok())?
            .to_owned();
        let mut role = None;
        let mut tenant = None;
        for general in parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| san.value.general_names.clone())
            .unwrap_or_default()
        {
            if let x509_parser::extensions::GeneralName::URI(uri) = general {
                if let Some(r) = uri.strip_prefix(ROLE_URI) {
                    role = r.parse().ok();
                } else if let Some(t) = uri.strip_prefix(TENANT_URI) {
                    tenant = Some(t.to_owned());
                }
            }
        }
        Some(Caller {
            name,
            role: role?,
            tenant,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;
    use cpclink_mgmt::Credentials as _;

    fn claims(expires: u64) -> OperatorClaims {
        OperatorClaims {
            id: "t1".into(),
            name: "acme-noc".into(),
            role: Role::Operator,
            tenant: Some("acme".into()),
            expires,
        }
    }

    #[test]
    fn tokens_verify_only_under_their_ca_and_before_expiry() {
        let ca = Ca::generate("a").unwrap();
        let other = Ca::generate("b").unwrap();
        let creds = OperatorCredentials::new(&ca.cert_der()).unwrap();
        let token = issue_token(&ca.key_der(), &claims(now_secs() + 60)).unwrap();
        assert_eq!(
            creds.bearer(&token).unwrap(),
            Caller {
                name: "acme-noc".into(),
                role: Role::Operator,
                tenant: Some("acme".into())
            }
        );
        let forged = issue_token(&other.key_der(), &claims(now_secs() + 60)).unwrap();
        assert!(creds.bearer(&forged).unwrap_err().contains("not signed"));
        let expired = issue_token(&ca.key_der(), &claims(now_secs() - 1)).unwrap();
        assert!(creds.bearer(&expired).unwrap_err().contains("expired"));
        // A role raised in the claims breaks the signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut raised = claims(now_secs() + 60);
        raised.role = Role::Admin;
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&raised).unwrap());
        parts[1] = &body;
        assert!(creds.bearer(&parts.join(".")).is_err());
    }

    #[test]
    fn operator_certificates_name_role_and_tenant_and_appliance_ones_nothing() {
        let ca = Ca::generate("a").unwrap();
        let creds = OperatorCredentials::new(&ca.cert_der()).unwrap();
        let op = ca
            .issue_operator("alice", Role::Admin, Some("acme"), 30)
            .unwrap();
        assert_eq!(
            creds.certificate(&op.cert),
            Some(Caller {
                name: "alice".into(),
                role: Role::Admin,
                tenant: Some("acme".into())
            })
        );
        let server = ca.issue_authority().unwrap();
        assert_eq!(creds.certificate(&server.cert), None);
    }
}
