//! SRH HMAC (RFC 8754 §2.1.2.1), computed the way Linux seg6 computes it.

use std::fmt;
use std::net::Ipv6Addr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Error;

/// Length of the HMAC field cpclink and Linux emit: a full SHA-256 digest.
pub const HMAC_LEN: usize = 32;

/// Longest secret Linux accepts (`SEG6_HMAC_SECRET_LEN`).
pub const MAX_SECRET_LEN: usize = 64;

/// A pre-shared HMAC key: the key id carried in the HMAC TLV and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct HmacKey {
    /// Key id, never 0 (Linux refuses 0).
    pub key_id: u32,
    secret: Vec<u8>,
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacKey")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl HmacKey {
    /// A key; the id must be non-zero and the secret 1 to 64 bytes (Linux's limits).
    pub fn new(key_id: u32, secret: Vec<u8>) -> Result<Self, Error> {
        if key_id == 0 {
            return Err(Error::BadHmacKey(
                "key id 0 is reserved (use 1 to 4294967295)".into(),
            ));
        }
        if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
            return Err(Error::BadHmacKey(format!(
                "secret is {} bytes (expected 1 to {MAX_SECRET_LEN})",
                secret.len()
            )));
        }
        Ok(Self { key_id, secret })
    }

    /// Parses `KEYID:SECRET_HEX`, the form the CLI takes.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (id, hex_secret) = s
            .split_once(':')
            .ok_or_else(|| Error::BadHmacKey(format!("{s:?} is not KEYID:SECRET_HEX")))?;
        let key_id = id.trim().parse::<u32>().map_err(|_| {
            Error::BadHmacKey(format!(
                "key id {id:?} is not a number from 1 to 4294967295"
            ))
        })?;
        let secret = hex::decode(hex_secret.trim())
            .map_err(|e| Error::BadHmacKey(format!("secret is not hex ({e})")))?;
        Self::new(key_id, secret)
    }

    /// The secret bytes.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    fn mac(&self, source: Ipv6Addr, last_entry: u8, flags: u8, segments: &[u8]) -> Hmac<Sha256> {
        //= https://www.rfc-editor.org/rfc/rfc8754#section-2.1.2.1
        //# The HMAC text is the concatenation of: the IPv6 header source address, the Last
        //# Entry field, the Flags field, the HMAC Key ID and all addresses in the Segment List.
        // Linux (net/ipv6/seg6_hmac.c, seg6_hmac_compute) builds the same text, with the key
        // id in network byte order, and feeds it to HMAC-SHA256.
        // HMAC accepts keys of any length, so new_from_slice cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(&source.octets());
        mac.update(&[last_entry, flags]);
        mac.update(&self.key_id.to_be_bytes());
        mac.update(segments);
        mac
    }

    /// Computes the HMAC over an SRH's fields; `segments` is the raw segment list.
    pub fn compute(
        &self,
        source: Ipv6Addr,
        last_entry: u8,
        flags: u8,
        segments: &[u8],
    ) -> [u8; HMAC_LEN] {
        self.mac(source, last_entry, flags, segments)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a received HMAC field (possibly truncated, RFC 8754 allows 8 to 32 bytes) in
    /// constant time.
    pub fn verify(
        &self,
        source: Ipv6Addr,
        last_entry: u8,
        flags: u8,
        segments: &[u8],
        field: &[u8],
    ) -> bool {
        !field.is_empty()
            && self
                .mac(source, last_entry, flags, segments)
                .verify_truncated_left(field)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_hmac_sha256() {
        // Known answer computed independently (Python: hmac.new(b"secret",
        // bytes.fromhex(text), hashlib.sha256)) for source fd00:a::1, last entry 1,
        // flags 0x08, key id 7, segments [fd00:200:1::6, fd00:100:1::1].
        let key = HmacKey::new(7, b"secret".to_vec()).unwrap();
        let mut segs = Vec::new();
        segs.extend_from_slice(&"fd00:200:1::6".parse::<Ipv6Addr>().unwrap().octets());
        segs.extend_from_slice(&"fd00:100:1::1".parse::<Ipv6Addr>().unwrap().octets());
        let got = key.compute("fd00:a::1".parse().unwrap(), 1, 0x08, &segs);
        assert_eq!(hex::encode(got), KNOWN);
        assert!(key.verify("fd00:a::1".parse().unwrap(), 1, 0x08, &segs, &got));
        assert!(key.verify("fd00:a::1".parse().unwrap(), 1, 0x08, &segs, &got[..16]));
        assert!(!key.verify("fd00:a::2".parse().unwrap(), 1, 0x08, &segs, &got));
        assert!(!key.verify("fd00:a::1".parse().unwrap(), 1, 0x00, &segs, &got));
        assert!(!key.verify("fd00:a::1".parse().unwrap(), 1, 0x08, &segs, &[]));
    }

    const KNOWN: &str = "9292049d4358babe9beab3eb8fb12b5868e5c13bef28d51fb2b73152b3f08cc8";

    #[test]
    fn key_limits_follow_linux() {
        assert!(HmacKey::new(0, vec![1]).is_err());
        assert!(HmacKey::new(1, vec![]).is_err());
        assert!(HmacKey::new(1, vec![0; 65]).is_err());
        assert!(HmacKey::new(1, vec![0; 64]).is_ok());
        let k = HmacKey::parse("9:00ff").unwrap();
        assert_eq!((k.key_id, k.secret()), (9, &[0u8, 0xff][..]));
        assert!(HmacKey::parse("9").is_err());
        assert!(HmacKey::parse("x:00").is_err());
        assert!(HmacKey::parse("9:zz").is_err());
        assert!(!format!("{k:?}").contains("ff"));
    }
}
