//! One-time enrolment tokens: `cpt1.<hex claims>.<hex HMAC-SHA256>`.
//!
//! The MAC proves the authority minted the token; the expiry bounds its life; single use is
//! enforced by the authority recording the token id in its store (an insert-if-absent) before
//! it signs a certificate.

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};

use crate::error::TokenError;

const PREFIX: &str = "cpt1";

/// What a token entitles its bearer to: a certificate for this appliance in this centre.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Random id, recorded when the token is redeemed.
    pub id: String,
    /// The appliance id the certificate will name.
    pub appliance: String,
    /// The centre the certificate will name.
    pub centre: String,
    /// The tenant the appliance serves.
    pub tenant: String,
    /// Unix time (seconds) after which the token is refused.
    pub expires: u64,
}

/// Mints a token for `claims` under the authority's token key.
pub fn mint(key: &[u8; 32], claims: &TokenClaims) -> String {
    let body = hex::encode(serde_json::to_vec(claims).unwrap_or_default());
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), body.as_bytes());
    format!("{PREFIX}.{body}.{}", hex::encode(tag.as_ref()))
}

/// Checks the token's MAC and expiry; returns its claims. Does not check single use.
pub fn check(key: &[u8; 32], token: &str, now_secs: u64) -> Result<TokenClaims, TokenError> {
    let mut parts = token.trim().split('.');
    let (Some(PREFIX), Some(body), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let tag = hex::decode(tag).map_err(|_| TokenError::Malformed)?;
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        body.as_bytes(),
        &tag,
    )
    .map_err(|_| TokenError::Forged)?;
    let claims: TokenClaims = hex::decode(body)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    if now_secs >= claims.expires {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires: u64) -> TokenClaims {
        TokenClaims {
            id: "t1".into(),
            appliance: "a1".into(),
            centre: "dc1".into(),
            tenant: "acme".into(),
            expires,
        }
    }

    #[test]
    fn minted_token_checks_until_expiry() {
        let key = [3u8; 32];
        let t = mint(&key, &claims(100));
        assert_eq!(check(&key, &t, 99).unwrap(), claims(100));
        assert_eq!(check(&key, &t, 100), Err(TokenError::Expired));
    }

    #[test]
    fn forged_and_altered_tokens_are_refused() {
        let key = [3u8; 32];
        assert_eq!(
            check(&key, &mint(&[4u8; 32], &claims(100)), 1),
            Err(TokenError::Forged)
        );
        let t = mint(&key, &claims(100));
        let body = hex::encode(serde_json::to_vec(&claims(10_000)).unwrap());
        let tag = t.rsplit('.').next().unwrap();
        assert_eq!(
            check(&key, &format!("cpt1.{body}.{tag}"), 1),
            Err(TokenError::Forged)
        );
        assert_eq!(check(&key, "cpt1.zz", 1), Err(TokenError::Malformed));
        assert_eq!(check(&key, "", 1), Err(TokenError::Malformed));
    }
}
