//! The authority's certificate authority and appliance identities.
//!
//! An appliance certificate names the appliance in its common name and DNS SAN (so TLS server
//! names are appliance ids) and its centre in the organisational unit.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::config::CERT_DAYS;
use crate::seal::random_bytes;
use crate::{Error, Result};

/// The TLS server name of the authority's control endpoint.
pub const AUTHORITY_NAME: &str = "authority.cpclink";

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The appliance id (common name).
    pub appliance: String,
    /// The centre (organisational unit).
    pub centre: String,
}

/// Checks that `id` can be an appliance id: 1–63 of `a-z 0-9 -`, not starting with `-`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A certificate with its private key.
#[derive(Clone)]
pub struct KeyedCert {
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// The PKCS#8 private key, DER; wiped on drop.
    pub key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert").finish_non_exhaustive()
    }
}

impl KeyedCert {
    /// The key in the form rustls takes.
    pub fn private_key(&self) -> rustls::pki_types::PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.to_vec()).into()
    }
}

fn serial() -> Result<SerialNumber> {
    let mut bytes = *random_bytes::<16>()?;
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}

fn window(days: u64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    // Clamped as well as checked at load (a caller may skip the config), so the end date
    // is always one X.509 can hold.
    let days = days.clamp(*CERT_DAYS.start(), *CERT_DAYS.end());
    window_for(Duration::from_secs(days.saturating_mul(86_400)))
}

/// Valid from an hour ago (clock slack) until `lifetime` from now.
fn window_for(lifetime: Duration) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::from(SystemTime::now());
    let end = time::Duration::try_from(lifetime)
        .ok()
        .and_then(|l| now.checked_add(l))
        .unwrap_or(now);
    // An hour of slack for clocks that disagree a little.
    (now - Duration::from_secs(3600), end)
}

fn dns(name: &str) -> Result<SanType> {
    Ok(SanType::DnsName(name.to_owned().try_into()?))
}

/// The certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA with a fresh P-256 key.
    pub fn generate(name: &str) -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (params.not_before, params.not_after) = window(3650);
        params.serial_number = Some(serial()?);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// Restores the CA from its certificate and PKCS#8 key.
    pub fn load(cert: &CertificateDer<'_>, key_der: &[u8]) -> Result<Self> {
        let key = KeyPair::try_from(key_der)?;
        let params = CertificateParams::from_ca_cert_der(cert)?;
        // Re-signing with the same subject and key yields an issuer that chains identically.
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The CA's PKCS#8 private key, DER.
    pub fn key_der(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.serialize_der())
    }

    /// A server certificate for the authority's control endpoint.
    pub fn issue_authority(&self) -> Result<KeyedCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![AUTHORITY_NAME.to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, AUTHORITY_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        (params.not_before, params.not_after) = window(3650);
        params.serial_number = Some(serial()?);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(KeyedCert {
            cert: cert.der().clone(),
            key: Zeroizing::new(key.serialize_der()),
        })
    }

    /// A client certificate for an operator of the management APIs: its name as the
    /// subject, its role and tenant scope as URIs ([`crate::credentials`] reads them back).
    /// Client authentication only: it can never serve as an appliance or the authority.
    pub fn issue_operator(
        &self,
        name: &str,
        role: cpclink_mgmt::Role,
        tenant: Option<&str>,
        days: u64,
    ) -> Result<KeyedCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = crate::credentials::operator_uris(role, tenant)
            .into_iter()
            .map(|uri| Ok(SanType::URI(uri.try_into()?)))
            .collect::<Result<_>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        (params.not_before, params.not_after) = window(days);
        params.serial_number = Some(serial()?);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(KeyedCert {
            cert: cert.der().clone(),
            key: Zeroizing::new(key.serialize_der()),
        })
    }

    /// Signs an appliance's CSR, naming `identity` whatever the CSR asked for: the token
    /// decides who the appliance is, not the appliance. Returns the certificate and its serial.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        days: u64,
    ) -> Result<(CertificateDer<'static>, String)> {
        let days = days.clamp(*CERT_DAYS.start(), *CERT_DAYS.end());
        self.sign_csr_for(csr_der, identity, Duration::from_secs(days * 86_400))
    }

    /// [`Ca::sign_csr`] for a certificate valid `lifetime` from now (at least a second).
    pub fn sign_csr_for(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<(CertificateDer<'static>, String)> {
        let mut csr = CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(csr_der),
        )?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.appliance.as_str());
        dn.push(DnType::OrganizationalUnitName, identity.centre.as_str());
        csr.params.distinguished_name = dn;
        csr.params.subject_alt_names = vec![dns(&identity.appliance)?];
        csr.params.is_ca = IsCa::NoCa;
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        (csr.params.not_before, csr.params.not_after) =
            window_for(lifetime.max(Duration::from_secs(1)));
        let serial = serial()?;
        let serial_hex = hex::encode(serial.as_ref());
        csr.params.serial_number = Some(serial);
        let cert = csr.signed_by(&self.cert, &self.key)?;
        Ok((cert.der().clone(), serial_hex))
    }
}

/// An appliance's fresh key pair and the CSR to enrol with.
pub fn appliance_csr(appliance: &str) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![appliance.to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, appliance);
    let csr = params.serialize_request(&key)?;
    Ok((Zeroizing::new(key.serialize_der()), csr.der().to_vec()))
}

/// A CSR naming `appliance` for the key pair it already holds (PKCS#8 DER): what an
/// enrolled appliance renews its certificate with.
pub fn renewal_csr(appliance: &str, key_der: &[u8]) -> Result<Vec<u8>> {
    let key = KeyPair::try_from(key_der)?;
    let mut params = CertificateParams::new(vec![appliance.to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, appliance);
    Ok(params.serialize_request(&key)?.der().to_vec())
}

/// When a certificate stops being valid.
pub fn not_after(cert: &[u8]) -> Result<SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Error::Certificate(format!("unparsable certificate: {e}")))?;
    let secs = parsed.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// The public key a certificate or CSR's key pair carries (DER SubjectPublicKeyInfo).
pub fn public_key_of(cert: &[u8]) -> Result<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Error::Certificate(format!("unparsable certificate: {e}")))?;
    Ok(parsed.public_key().raw.to_vec())
}

/// Reads the identity a certificate names.
pub fn identity_of(cert: &[u8]) -> Result<Identity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Error::Certificate(format!("unparsable peer certificate: {e}")))?;
    let subject = parsed.subject();
    let appliance = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| Error::Certificate("certificate has no common name".into()))?;
    let centre = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default();
    Ok(Identity {
        appliance: appliance.to_owned(),
        centre: centre.to_owned(),
    })
}

/// The serial number a certificate carries, hex, as [`Ca::sign_csr`] reports it.
pub fn serial_of(cert: &[u8]) -> Result<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Error::Certificate(format!("unparsable peer certificate: {e}")))?;
    Ok(hex::encode(parsed.raw_serial()))
}

/// Whether two hex serials are the same number: DER may drop or add a leading zero byte
/// that the issuing side's hex kept or lacked.
pub fn same_serial(a: &str, b: &str) -> bool {
    let digits = |s: &str| s.trim_start_matches('0').to_ascii_lowercase();
    !a.is_empty() && digits(a) == digits(b)
}

/// PEM-encodes a certificate.
pub fn cert_pem(cert: &CertificateDer<'_>) -> String {
    pem_encode("CERTIFICATE", cert.as_ref())
}

/// PEM-encodes a PKCS#8 private key.
pub fn key_pem(key_der: &[u8]) -> String {
    pem_encode("PRIVATE KEY", key_der)
}

fn pem_encode(tag: &str, der: &[u8]) -> String {
    use std::fmt::Write;
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {tag}-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
    }
    let _ = writeln!(out, "-----END {tag}-----");
    out
}

/// Decodes the first certificate of a PEM file.
pub fn cert_from_pem(pem: &str) -> Result<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::Certificate(format!("bad PEM certificate: {e}")))
}

/// A certificate and its PKCS#8 private key from PEM (an operator's, for `cpclink ctl`).
pub fn keyed_cert_from_pem(cert: &str, key: &str) -> Result<KeyedCert> {
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| Error::Certificate(format!("bad PEM private key (PKCS#8 expected): {e}")))?;
    Ok(KeyedCert {
        cert: cert_from_pem(cert)?,
        key: Zeroizing::new(key.secret_pkcs8_der().to_vec()),
    })
}

/// An appliance certificate `ca` issued for `id` (centre dc1), for tests.
#[cfg(test)]
pub(crate) fn issued_for_tests(ca: &Ca, id: &str) -> KeyedCert {
    let (key, csr) = appliance_csr(id).unwrap();
    let identity = Identity {
        appliance: id.into(),
        centre: "dc1".into(),
    };
    let (cert, _) = ca.sign_csr(&csr, &identity, 1).unwrap();
    KeyedCert {
        cert: CertificateDer::from(cert.to_vec()),
        key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_is_signed_with_the_tokens_identity_not_the_csrs() {
        let ca = Ca::generate("test ca").unwrap();
        let (_key, csr) = appliance_csr("mallory").unwrap();
        let id = Identity {
            appliance: "a1".into(),
            centre: "dc1".into(),
        };
        let (cert, serial) = ca.sign_csr(&csr, &id, 30).unwrap();
        assert_eq!(identity_of(&cert).unwrap(), id);
        assert_eq!(serial.len(), 32);
        // What a peer reads off the presented certificate matches what the CA recorded.
        assert!(same_serial(&serial_of(&cert).unwrap(), &serial));
        let (other, other_serial) = ca.sign_csr(&csr, &id, 30).unwrap();
        assert!(!same_serial(&serial_of(&other).unwrap(), &serial));
        assert!(same_serial(&serial_of(&other).unwrap(), &other_serial));
        assert!(same_serial("00ab", "AB") && !same_serial("", ""));
        let reloaded = Ca::load(&ca.cert_der(), &ca.key_der()).unwrap();
        let (cert2, _) = reloaded.sign_csr(&csr, &id, 30).unwrap();
        assert_eq!(identity_of(&cert2).unwrap(), id);
        assert_eq!(
            cert_from_pem(&cert_pem(&ca.cert_der())).unwrap(),
            ca.cert_der()
        );
    }

    /// Found by a hostile probe: `cert_days` this large overflowed the certificate's end
    /// date and aborted the first enrolment.
    #[test]
    fn an_absurd_lifetime_is_capped_not_overflowed() {
        let ca = Ca::generate("test ca").unwrap();
        let (_key, csr) = appliance_csr("a1").unwrap();
        let id = Identity {
            appliance: "a1".into(),
            centre: "dc1".into(),
        };
        let (cert, _) = ca.sign_csr(&csr, &id, u64::MAX).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let days = (parsed.validity().not_after.timestamp()
            - parsed.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, 3_650);
    }

    #[test]
    fn appliance_ids_are_dns_labels() {
        assert!(valid_id("dc1-edge-7"));
        assert!(!valid_id(""));
        assert!(!valid_id("-x"));
        assert!(!valid_id("A"));
        assert!(!valid_id("a.b"));
        assert!(!valid_id(&"a".repeat(64)));
    }
}
